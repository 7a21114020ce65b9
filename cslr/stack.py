"""The generated project in a build directory (compose.yaml + .env) and the commands that act on
it: compose calls, the state of its services, down, status and the test-cluster runner.

Preflight (cslr/preflight.py), bring-up (cslr/lifecycle.py) and what gets printed
(cslr/report.py) live apart; everything that runs Compose goes through `Stack.command`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import compose, report
from .config import Config, parse_dotenv
from .errors import PlatformError

Runner = Callable[..., subprocess.CompletedProcess]


def docker_text(stack, args: Sequence[str]) -> str:
    """`docker ARGS` (an inspect with a --format) on the stack's runner: its stripped output, or
    "" when the engine does not know the object."""
    proc = stack.run(["docker", *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


class StackError(PlatformError):
    exit_code = 1


@dataclass
class Stack:
    """A generated project in `build_dir` (compose.yaml + .env) and the config it came from."""

    cfg: Config
    build_dir: Path
    run: Runner = subprocess.run
    out: Callable[[str], None] = print
    _doc: dict | None = field(default=None, init=False, repr=False, compare=False)
    _env: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def project(self) -> str:
        return self.cfg.get("project", "name")

    def command(self, args: Sequence[str]) -> list[str]:
        return compose.compose_command([self.build_dir / "compose.yaml"], args, env_file=self.build_dir / ".env", binary=[compose.compose_binary()])

    def compose(self, args: Sequence[str], capture: bool = True, check: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = self.run(self.command(args), capture_output=capture, text=True, env=compose.subprocess_env(), timeout=timeout)
        if check and proc.returncode != 0:
            detail = (proc.stderr or "").strip() if capture else ""
            raise StackError(f"docker compose {' '.join(args)} failed (exit {proc.returncode})" + (f":\n{detail}" if detail else ""))
        return proc

    # ------------------------------------------------------------------ the generated files

    # Read once per Stack: a task builds its Stack after generating, and nothing regenerates the
    # project while it acts on it (`refresh` forgets what was read, for a caller that does).

    def doc(self) -> dict:
        """The merged Compose project (read once)."""
        if self._doc is None:
            import yaml

            self._doc = yaml.safe_load((self.build_dir / "compose.yaml").read_text())
        return self._doc

    def env(self) -> dict[str, str]:
        """The generated env file's values (read once; a copy, so callers may change theirs)."""
        if self._env is None:
            self._env = {k: v for k, (v, _) in parse_dotenv((self.build_dir / ".env").read_text(), ".env").items()}
        return dict(self._env)

    def refresh(self) -> None:
        self._doc, self._env = None, None

    def healthchecked_services(self) -> set[str]:
        return {
            name for name, svc in self.doc().get("services", {}).items() if (svc.get("healthcheck") or {}).get("test") and not svc["healthcheck"].get("disable")
        }

    def active_profiles(self) -> set[str]:
        return {p for p in self.env().get("COMPOSE_PROFILES", "").split(",") if p}

    def expected_services(self) -> list[str]:
        """Services `up` starts: those without profiles and those of the active profiles."""
        active = self.active_profiles()
        return sorted(name for name, svc in self.doc().get("services", {}).items() if not svc.get("profiles") or active & set(svc["profiles"]))

    def claim(self, action: str) -> None:
        """Refuse (exit 2) to act on a project that another folder's stack owns (cslr/identity.py)."""
        from . import identity

        for line in identity.claim(identity.scope_of(self), identity.Engine(self.run), action):
            self.out(line)

    # ------------------------------------------------------------------ state

    def services(self) -> list[dict]:
        """`compose ps -a` as dicts (Service, State, Health, ExitCode, Publishers...)."""
        proc = self.compose(["ps", "-a", "--format", "json"], check=True)
        return report.parse_ps(proc.stdout)

    def logs_tail(self, service: str, lines: int = 30) -> str:
        return self.compose(["logs", "--no-color", "--tail", str(lines), service]).stdout

    def table(self, rows, show_secrets: bool = False) -> str:
        return report.table(rows, self.cfg, show_secrets)

    def down(self, volumes: bool = False, yes: bool = False) -> None:
        if volumes and not yes:
            raise StackError(
                "`down --volumes` deletes every volume of the stack (MLflow runs, Postgres, Redis; the notebooks and data folders on the host stay). Add --yes to confirm."
            )
        self.compose(["down", "--remove-orphans"] + (["--volumes"] if volumes else []), capture=False, check=True)
        if volumes:
            self._remove_left_volumes()

    def _remove_left_volumes(self) -> None:
        """`compose down --volumes` removes the volumes of the services of the active profiles
        only; `inv up` creates every declared one (labelled with its owner, identity.py), so a
        disabled service's volume (redis-data with redis off) would stay behind and belong to
        this folder after it is gone. Removed here: the declared volumes of this project."""
        from .identity import declared_volumes

        declared = set(declared_volumes(self.doc(), self.project).values())
        listed = self.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"], capture_output=True, text=True)
        left = sorted(declared & set((listed.stdout or "").split())) if listed.returncode == 0 else []
        if left:
            self.run(["docker", "volume", "rm", *left], capture_output=True, text=True)

    def build(self, services: list[str]) -> None:
        """`compose build` with its output on the user's terminal (progress is not swallowed)."""
        self.compose(["build", *services], capture=False, check=True)

    # ------------------------------------------------------------------ inside the stack

    def exec_python(self, service: str, code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.compose(["exec", "-T", service, "python3", "-c", code], timeout=timeout)

    def ray_nodes(self, service: str) -> list[dict]:
        """Ray's own node table, read inside `service` (a running Ray node) under a timeout."""
        proc = self.exec_python(service, RAY_NODES_SNIPPET, timeout=90)
        if proc.returncode != 0:
            raise StackError(f"reading Ray's node table in {service} failed:\n{proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def status(self) -> dict:
        rows = {r["Service"]: r for r in self.services()}
        ray_services = [s for s in rows if s.startswith("ray-") and rows[s].get("State") == "running"]
        result: dict = {"services": rows, "ray_nodes": [], "head": None, "mlflow": None, "redis": None}
        for service in ray_services:
            try:
                result["ray_nodes"] = self.ray_nodes(service)
                break
            except (StackError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
                result["ray_error"] = str(exc)
        heads = [n for n in result["ray_nodes"] if n["role"] == "head" and n["alive"]]
        result["head"] = heads[0]["hostname"] if len(heads) == 1 else None
        if "mlflow" in rows:
            result["mlflow"] = report.http_ok(report.service_urls(self.cfg)["mlflow"] + "health")
        if "redis" in rows:
            proc = self.compose(["exec", "-T", "redis", "redis-cli", "ping"])
            result["redis"] = proc.returncode == 0 and "PONG" in proc.stdout
        result["custom"] = report.custom_states(self.cfg, rows)
        return result

    def test_cluster(self) -> int:
        return self.compose(["run", "--rm", "--no-deps", "test-cluster"], capture=False).returncode


RAY_NODES_SNIPPET = r"""
import json, os, socket, sys
import ray
# A Ray call against a dead head blocks ~40 s: the caller runs this under a timeout, and we
# connect to the node's own cluster only.
ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
out = []
for n in ray.nodes():
    res = n.get("Resources", {})
    out.append({"hostname": n.get("NodeManagerHostname"), "ip": n.get("NodeManagerAddress"),
                "role": "head" if "node:__internal_head__" in res else "worker",
                "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0), "alive": bool(n.get("Alive"))})
print(json.dumps(out))
"""

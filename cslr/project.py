"""The pipeline every task runs once: load + detect + validate (`load_validated`), then resolve
the image source, plan and generate (`generate`), then the `Stack` built from the result (or,
for the tasks that act on an existing project, `existing_stack` / `stack_for_down`).

`tasks.py` calls these and turns `PlatformError` into `invoke.Exit`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from . import compose, config, gpu, identity, images, topology, validate
from .errors import PlatformError, Problem
from .stack import Stack


@dataclass
class Loaded:
    cfg: config.Config
    gpu: gpu.GpuState
    warnings: list[Problem]


def load_validated(
    config_path: str | os.PathLike = "config.yaml",
    env_path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    detect: Callable[[str], gpu.GpuState] = gpu.detect,
) -> Loaded:
    """Load, detect GPUs (per `gpu:`), validate. Raises ConfigSyntaxError / ConfigError."""
    cfg = config.load(config_path, env_path, environ)
    mode = cfg.get("gpu") if cfg.get("gpu") in ("auto", "on", "off") else "auto"
    state = detect(mode)
    problems = validate.validate(cfg, gpu_node=state.node_enabled)  # every rule, images' too: one list
    gpu_warning = gpu.on_without_gpu(state, cfg.location(("gpu",)))
    return Loaded(cfg, state, problems + ([gpu_warning] if gpu_warning else []))


def plan_for(loaded: Loaded, test_cluster: bool = True, host: str | None = None, image_source: str = "pull") -> compose.Plan:
    return compose.plan(loaded.cfg, loaded.gpu, test_cluster=test_cluster, host=host, image_source=image_source)


def generation_report(plan: compose.Plan, written: list[Path], out_dir: Path, root: Path) -> list[str]:
    """What `inv generate` prints: detection, overlays, profiles, files, and the equivalent
    plain Compose command (runnable from the repository root)."""
    lines = [plan.gpu.describe() + (f"; host {plan.host}" if plan.host else "")]
    lines.append("overlays: " + (", ".join(str(relative(f, root)) for f in plan.files[1:]) or "none"))
    lines.append("profiles: " + (", ".join(plan.active_profiles) or "none") + " (active; set by COMPOSE_PROFILES in the env file)")
    lines += [f"wrote {relative(path, root)} (mode {path.stat().st_mode & 0o777:04o})" for path in written]
    files = [relative(out_dir / f.name if f.name in plan.generated else f, root) for f in plan.files]
    cmd = compose.compose_command(files, ["config"], env_file=relative(out_dir / ".env", root), profiles=plan.profiles)
    lines.append("equivalent: " + shell_join(cmd))
    return lines


def shell_join(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path


# ---------------------------------------------------------------------------- the pipeline


@dataclass
class Generated:
    """One run of the pipeline: the validated config, the plan, what was written, and why the
    images come from where they do."""

    loaded: Loaded
    plan: compose.Plan
    build_dir: Path
    written: list[Path]
    image_source: str  # pull | local (images.source resolved)
    image_source_why: str

    def stack(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run, out: Callable[[str], None] = print) -> Stack:
        return Stack(self.loaded.cfg, self.build_dir, run, out)


def generate(
    loaded: Loaded,
    build_dir: Path,
    *,
    host: str | None = None,
    test_cluster: bool = True,
    probe_pull: bool = False,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Generated:
    """Resolve the image source (one probe pull only when `probe_pull` and undecided), plan, and
    write the project into `build_dir` (`docker compose config`): the one generate pipeline."""
    services = images.services_of(loaded.cfg, loaded.gpu.node_enabled)
    source, why = images.resolve_source(loaded.cfg, images.Docker(run), services, probe_pull)
    p = plan_for(loaded, test_cluster=test_cluster, host=host, image_source=source)
    written = compose.generate(p, build_dir, run=run)
    return Generated(loaded, p, build_dir, written, source, why)


class NotGenerated(PlatformError):
    exit_code = 1


def existing_stack(loaded: Loaded, build_dir: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Stack:
    """The Stack of an already generated project (ps, logs, status, backup...): nothing is
    generated; a missing project is an error that says which command makes it."""
    if not (build_dir / "compose.yaml").exists():
        raise NotGenerated(f"{build_dir / 'compose.yaml'} does not exist: run `inv generate` or `inv up` first")
    return Stack(loaded.cfg, build_dir, run)


def stack_for_down(loaded: Loaded, build_dir: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Stack | None:
    """`down` needs the project's Compose files (its services and volumes, for Compose and for
    the ownership claim): the generated project when there is one. Without one it generates only
    when the engine knows something of the project; None: nothing to stop, nothing written."""
    if (build_dir / "compose.yaml").exists():
        return Stack(loaded.cfg, build_dir, run)
    engine = identity.Engine(run)
    project = loaded.cfg.get("project", "name")
    containers = engine.containers(project)
    volumes = engine.volumes(project, [f"{project}_{key}" for key in topology.DATA_VOLUMES])
    if containers == [] and volumes == []:
        return None
    return generate(loaded, build_dir, run=run).stack(run)

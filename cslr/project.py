"""The steps every task shares: load + detect + validate, then plan and generate.

`tasks.py` calls these and turns `PlatformError` into `invoke.Exit`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from . import compose, config, gpu, validate
from .errors import Problem


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

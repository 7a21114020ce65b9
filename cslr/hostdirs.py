"""Host folders in the containers: data sets (`data:`, read-only at /data/NAME), the writable
`workspace` (/workspace) and the notebooks folder (`services.marimo.notebooks`, /notebooks).

Compose cannot produce a list whose length depends on the config by interpolation, so the data
and workspace bind mounts are rendered from overlays/data-mounts.yaml.j2 into the build
directory (as the multi-host name resolution is); the notebooks folder is one fixed mount that
compose/compose.yaml interpolates from `MARIMO_NOTEBOOKS`.

Pure functions first (`mounts`, `render_overlay`, `problems`); nothing here touches Docker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import ROOT, Config
from .errors import Problem

TEMPLATE = Path("overlays/data-mounts.yaml.j2")
OVERLAY = "data-mounts.yaml"  # generated into the build directory
DATA_ROOT = "/data"
WORKSPACE = "/workspace"
NOTEBOOKS = "/notebooks"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(cfg: Config) -> list[Mount]:
    """Every data set (read-only, sorted by name) and the workspace (read-write), if any."""
    out = [Mount(str(path), f"{DATA_ROOT}/{name}", True) for name, path in sorted((cfg.get("data") or {}).items())]
    workspace = cfg.get("workspace")
    if workspace:
        out.append(Mount(str(workspace), WORKSPACE, False))
    return out


def services(gpu_node: bool) -> list[str]:
    """The services that see the host folders: every Ray node (and so every job) and the notebook."""
    return ["ray-cpu"] + (["ray-gpu"] if gpu_node else []) + ["marimo"]


def _compose_literal(path: str) -> str:
    # Compose interpolates `$` in every file it reads: a path with a dollar must say `$$`.
    return path.replace("$", "$$")


def render_overlay(cfg: Config, gpu_node: bool, root: Path = ROOT) -> str | None:
    """The generated overlay's text, or None when there is nothing to mount."""
    found = mounts(cfg)
    if not found:
        return None
    import jinja2

    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = env.from_string((root / TEMPLATE).read_text())
    rows = [{"source": _compose_literal(m.source), "target": m.target, "read_only": m.read_only} for m in found]
    return template.render(services=services(gpu_node), mounts=rows) + "\n"


def notebooks_dir(cfg: Config) -> Path:
    """The notebooks folder, absolute (a relative setting is relative to config.yaml)."""
    value = cfg.get("services", "marimo", "notebooks") or "notebooks"
    return (cfg.config_path.resolve().parent / os.path.expanduser(value)).resolve()


# ------------------------------------------------------------------------------ validation


def _kind(path: Path) -> str | None:
    """None for a directory; else what the path is instead."""
    try:
        if path.is_dir():
            return None
        if path.exists():
            return "not a directory"
    except (OSError, ValueError):
        return "not a usable path"
    return "missing"


def _folder_problem(cfg: Config, path: tuple, raw: str, access: int, need: str) -> Iterable[Problem]:
    where, name = cfg.location(path), cfg.display_name(path)
    if not os.path.isabs(raw):
        yield Problem(where, name, f"found {raw!r}, expected an absolute host path such as /srv/datasets/{path[-1] if path[0] == 'data' else 'outputs'}")
        return
    kind = _kind(Path(raw))
    if kind is not None:
        yield Problem(where, name, f"found {raw!r}, which is {kind} on this host; expected an existing {need} directory")
    elif not os.access(raw, access):
        yield Problem(where, name, f"found {raw!r}, which this user cannot {'read' if access == os.R_OK | os.X_OK else 'write'}; expected a {need} directory")


def problems(cfg: Config) -> Iterable[Problem]:
    """data.NAME: absolute, existing, readable directories; workspace: the same, writable;
    services.marimo.notebooks: a directory or absent (`inv up` creates it)."""
    for key, raw in (cfg.get("data") or {}).items():
        yield from _folder_problem(cfg, ("data", key), raw, os.R_OK | os.X_OK, "readable")
    workspace = cfg.get("workspace")
    if workspace is not None:
        yield from _folder_problem(cfg, ("workspace",), workspace, os.W_OK | os.X_OK, "writable")
    path = ("services", "marimo", "notebooks")
    folder = notebooks_dir(cfg)
    kind = _kind(folder)
    if kind not in (None, "missing"):
        yield Problem(
            cfg.location(path),
            cfg.display_name(path),
            f"found {cfg.get(*path)!r} ({folder}), which is {kind}; expected a directory for the notebooks (or nothing: `inv up` creates it)",
        )

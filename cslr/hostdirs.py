"""Host folders in the containers: data sets (`data:`, read-only at /data/NAME), the writable
`workspace` (/workspace) and the notebooks folder (`services.marimo.notebooks`, /notebooks).

Compose cannot produce a list whose length depends on the config by interpolation, so the data
and workspace bind mounts are rendered from overlays/data-mounts.yaml.j2 into the build
directory (as the multi-host name resolution is); the notebooks folder is one fixed mount that
compose/compose.yaml interpolates from `MARIMO_NOTEBOOKS`.

Whose files: the containers that write into these folders (every Ray node, the notebook) run as
the user who runs `inv` (`host_user`, written to the generated env file as `CSLR_UID` /
`CSLR_GID`), so what they write is that user's, as if written on the host. docs/security.md.

Pure functions first (`host_user`, `mounts`, `render_overlay`, `problems`); nothing here touches Docker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import ROOT, Config
from .errors import ConfigError, Location, Problem

TEMPLATE = Path("overlays/data-mounts.yaml.j2")
OVERLAY = "data-mounts.yaml"  # generated into the build directory
DATA_ROOT = "/data"
WORKSPACE = "/workspace"
NOTEBOOKS = "/notebooks"
USER_VARS = ("CSLR_UID", "CSLR_GID")  # the generated env file's names for `host_user`
ID_MAX = 2**31 - 2  # the largest id the kernel accepts (2**32 - 1 is "no id"; Docker takes an int32)


def host_user(environ: Mapping[str, str] = os.environ, getuid: Callable[[], int] = os.getuid, getgid: Callable[[], int] = os.getgid) -> tuple[int, int]:
    """(uid, gid) the containers that write into host folders run as: the user running `inv`.

    `CSLR_UID` / `CSLR_GID` in the environment override it, for an engine whose container ids
    are not the host's (rootless Docker, userns-remap: there `CSLR_UID=0 CSLR_GID=0` is the
    user). A value that is not a plain id is refused, naming the variable.
    """
    found = []
    ids = []
    for name, own in zip(USER_VARS, (getuid, getgid)):
        raw = environ.get(name, "")
        if raw == "":
            ids.append(own())
        elif raw.isascii() and raw.isdigit() and int(raw) <= ID_MAX:
            ids.append(int(raw))
        else:
            found.append(
                Problem(
                    Location(f"environment ${name}"),
                    name,
                    f"found {raw[:40]!r}, expected a numeric {'user' if name == 'CSLR_UID' else 'group'} id such as 1000 (0..{ID_MAX}), or unset for the id of the user running inv",
                )
            )
    if found:
        raise ConfigError(found)
    return ids[0], ids[1]


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


def folder_problems(cfg: Config, path: tuple, raw: str, read_only: bool) -> Iterable[Problem]:
    """A host folder mounted elsewhere (a custom service's volume): checked as `data:` is when
    read-only, as the workspace is when writable."""
    if read_only:
        return _folder_problem(cfg, path, raw, os.R_OK | os.X_OK, "readable")
    return _folder_problem(cfg, path, raw, os.W_OK | os.X_OK, "writable")


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


# ------------------------------------------------------------------------------ ownership

SCAN_LIMIT = 2000  # entries looked at per folder: `inv up` stays quick on a large workspace


def foreign_owned(folder: Path, uid: int, recursive: bool = True, limit: int = SCAN_LIMIT) -> tuple[list[tuple[Path, int]], bool]:
    """(path, owner uid) of the entries under `folder` (itself included) that `uid` does not own,
    and whether the scan stopped at `limit`. Symlinks are not followed; unreadable parts skipped."""
    out: list[tuple[Path, int]] = []
    seen = 0
    stack = [folder]
    try:
        own = folder.lstat().st_uid
    except OSError:
        return [], False
    if own != uid:
        out.append((folder, own))
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            seen += 1
            if seen > limit:
                return out, True
            try:
                owner = entry.stat(follow_symlinks=False).st_uid
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if owner != uid:
                out.append((Path(entry.path), owner))
            if recursive and is_dir:
                stack.append(Path(entry.path))
    return out, False


def ownership_notes(cfg: Config, uid: int, gid: int) -> list[str]:
    """What `inv up` says about files in the notebooks folder (and the workspace's top level)
    that the user who runs the stack does not own, e.g. root-owned ones an older stack wrote.
    Nothing is changed: the note gives the command that would take them back."""
    if uid == 0:
        return []  # root can save over anything
    import shlex

    folders = [("notebooks", notebooks_dir(cfg), True)]
    if cfg.get("workspace"):
        folders.append(("workspace", Path(cfg.get("workspace")), False))
    lines = []
    for label, folder, recursive in folders:
        found, truncated = foreign_owned(folder, uid, recursive)
        if not found:
            continue
        owners = ", ".join(str(o) for o in sorted({owner for _, owner in found}))
        example = found[0][0] if found[0][0] == folder else found[0][0].relative_to(folder)
        more = "+" if truncated else ""
        lines.append(
            f"{label}: {len(found)}{more} file(s) in {folder} belong to uid {owners}, not to you (uid {uid}), e.g. {example}; "
            "probably written by an older stack whose containers ran as root. The stack now runs as you and cannot save over them. "
            f"Nothing was changed; to take them back: sudo chown -R {uid}:{gid} {shlex.quote(str(folder))}"
        )
    return lines

"""The notebooks folder on the host, and the one-time move of an older stack's notebooks out of
its `marimo-notebooks` named volume into that folder.

Nothing is overwritten or deleted: a notebook already in the folder with the same content is left
as it is; one with other content is kept and the volume's copy is written beside it as
`NAME.from-volume.EXT` (`…from-volume-2…` if that exists too). The volume itself is kept; the
report says how to remove it once checked.

`plan_copy` is pure; `migrate` reads the volume with `tar` in a throw-away container of the
project's Ray image (no network) and writes the files as the user who runs `inv`.
"""

from __future__ import annotations

import io
import posixpath
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

VOLUME = "marimo-notebooks"  # the volume name earlier versions of compose/compose.yaml declared
MARKER = ".notebooks-migrated"  # in the build directory: the volume was read once already


@dataclass(frozen=True)
class Action:
    kind: str  # "copy" (new file), "same" (identical file present), "beside" (conflict: kept both)
    source: str  # path inside the volume
    dest: Path


def volume_name(project: str) -> str:
    return f"{project}_{VOLUME}"


def _beside(rel: PurePosixPath, n: int) -> PurePosixPath:
    tag = "from-volume" if n == 1 else f"from-volume-{n}"
    return rel.with_name(f"{rel.stem}.{tag}{rel.suffix}") if rel.suffix else rel.with_name(f"{rel.name}.{tag}")


def safe_relative(name: str) -> PurePosixPath | None:
    """A tar member name as a relative path inside the folder, or None if it would leave it."""
    norm = posixpath.normpath(name.lstrip("/"))
    if norm in (".", "") or norm.startswith("../") or norm == ".." or "\0" in norm:
        return None
    return PurePosixPath(norm)


def plan_copy(files: Mapping[str, bytes], folder: Path) -> list[Action]:
    """What to do with each file of the volume (relative path -> content), given the folder."""
    actions, taken = [], set()
    for name in sorted(files):
        rel = safe_relative(name)
        if rel is None:
            continue
        dest, content = folder / rel, files[name]
        if not dest.exists() and dest not in taken:
            actions.append(Action("copy", name, dest))
            taken.add(dest)
            continue
        if dest.is_file() and dest.read_bytes() == content:
            actions.append(Action("same", name, dest))
            continue
        n = 1
        while True:
            alt = folder / _beside(rel, n)
            if alt.is_file() and alt.read_bytes() == content:
                actions.append(Action("same", name, alt))
                break
            if not alt.exists() and alt not in taken:
                actions.append(Action("beside", name, alt))
                taken.add(alt)
                break
            n += 1
    return actions


def read_tar(data: bytes) -> dict[str, bytes]:
    """Regular files of a tar stream (links, devices and the like are skipped)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    out[member.name] = handle.read()
    return out


def apply(actions: list[Action], files: Mapping[str, bytes]) -> None:
    for action in actions:
        if action.kind in ("copy", "beside"):
            action.dest.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(action.dest, files[action.source])


def _write_bytes(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(0o644)
    tmp.replace(path)


def summary(actions: list[Action], folder: Path, volume: str) -> list[str]:
    copied = [a for a in actions if a.kind == "copy"]
    beside = [a for a in actions if a.kind == "beside"]
    same = [a for a in actions if a.kind == "same"]
    lines = [
        (
            f"notebooks: moved the notebooks of the volume {volume} into {folder}: {len(copied)} copied, "
            f"{len(beside)} kept beside a different file of the same name, {len(same)} already there"
        )
    ]
    lines += [f"  {safe_relative(a.source)} -> {a.dest.relative_to(folder)}" for a in copied + beside]
    lines.append(f"  the volume is kept and no longer used; once checked: docker volume rm {volume}")
    return lines


def ensure_folder(folder: Path) -> list[str]:
    if folder.is_dir():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [f"notebooks: created {folder}"]


def migrate(project: str, folder: Path, image: str, build_dir: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Copy the notebooks of `<project>_marimo-notebooks`, once, into `folder`; say what happened."""
    volume = volume_name(project)
    marker = build_dir / MARKER
    if marker.is_file() and volume in marker.read_text().split():
        return []
    if run(["docker", "volume", "inspect", volume], capture_output=True).returncode != 0:
        return []
    proc = run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0:0",
            "-v",
            f"{volume}:/from:ro",
            "--entrypoint",
            "tar",
            image,
            "-C",
            "/from",
            "-cf",
            "-",
            ".",
        ],
        capture_output=True,
    )
    if proc.returncode != 0:
        return [
            f"notebooks: could not read the volume {volume} (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()[-300:]}; nothing was changed"
        ]
    files = read_tar(proc.stdout)
    actions = plan_copy(files, folder)
    apply(actions, files)
    build_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(volume + "\n")
    return summary(actions, folder, volume)

"""`inv wheelhouse`: download once every wheel the images' `pip install` layers need.

One `pip download` per image family resolves what that family's images install: the Ray base
(ray[default]) with what the Ray and Marimo Dockerfiles add and the experiment's requirements
(images.requirements), and the MLflow base (mlflow) with what the MLflow Dockerfile adds. The two
are separate Python environments, so an `images.mlflow_base` of another MLflow than the Ray
image's client (compose/ray/requirements.txt) resolves. Wheels are for the images' interpreter (CPython 3.11, glibc, this machine's
architecture) whatever Python runs `inv`. Builds mount the folder and install from it; with the
`local` image source they install from it only (`pip --no-index`), which is how an air-gapped
machine and CI build the same images a connected one does.

A marker file named after the hash of the inputs says the folder is complete for them.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .config import ROOT, Config
from .errors import PlatformError
from .images import mlflow_version, requirements_path

DEFAULT_DIR = ROOT / "wheelhouse"
IMAGE_PYTHON = "3.11"  # rayproject/ray:*-py311-* and ghcr.io/mlflow/mlflow (python:3.11-slim)
RAY_REQUIREMENTS = ("compose/ray/requirements.txt", "compose/marimo/requirements.txt")  # the Ray and Marimo images
MLFLOW_REQUIREMENTS = ("compose/mlflow/requirements.txt",)  # the MLflow image


class WheelhouseError(PlatformError):
    exit_code = 1


def requirement_groups(cfg: Config, root: Path = ROOT) -> list[list[str]]:
    """What each image family installs, as pip requirement arguments (`-r FILE` or a pin): one
    list per separate Python environment (Ray + Marimo, MLflow), each resolved on its own."""
    ray = [f"ray[default]=={cfg.get('ray', 'version')}"] + [f"-r{root / rel}" for rel in RAY_REQUIREMENTS]
    # redis-py needs async-timeout on Python < 3.11.3 (Debian bookworm's 3.11.2, the local bases);
    # pip evaluates that marker against "3.11" here and would leave it out.
    ray.append("async-timeout>=4.0.3")
    extra = requirements_path(cfg, root)
    if extra is not None:
        ray.append(f"-r{extra}")
    mlflow = [f"mlflow=={mlflow_version(cfg.get('images', 'mlflow_base'))}"] + [f"-r{root / rel}" for rel in MLFLOW_REQUIREMENTS]
    return [ray, mlflow]


def requirement_lines(cfg: Config, root: Path = ROOT) -> list[str]:
    """Everything the images install (every group), as pip requirement arguments, in the order
    the completeness marker has always hashed them (a wheelhouse complete before stays so)."""
    ray, mlflow = requirement_groups(cfg, root)
    return [ray[0], mlflow[0], ray[1], *mlflow[1:], *ray[2:]]


def machine_arch(machine: str | None = None) -> str:
    m = (machine or platform.machine()).lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def platforms(arch: str) -> list[str]:
    """Every manylinux tag a glibc-2.35 image accepts (pip does not widen an explicit tag)."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(35, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return tags


def download_commands(cfg: Config, dest: Path, root: Path = ROOT, python: str = sys.executable, arch: str | None = None) -> list[list[str]]:
    """One `pip download` per requirement group (see requirement_groups)."""
    return [_download_command(group, dest, python, arch) for group in requirement_groups(cfg, root)]


def _download_command(group: list[str], dest: Path, python: str, arch: str | None) -> list[str]:
    args: list[str] = []
    for line in group:
        args += ["-r", line[2:]] if line.startswith("-r") else [line]
    return [
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        IMAGE_PYTHON,
        "--abi",
        "cp" + IMAGE_PYTHON.replace(".", ""),
        *[x for tag in platforms(machine_arch(arch)) for x in ("--platform", tag)],
        *args,
    ]


def inputs_hash(cfg: Config, root: Path = ROOT, arch: str | None = None) -> str:
    h = hashlib.sha256(f"{IMAGE_PYTHON} {platforms(machine_arch(arch))}\n".encode())
    for line in requirement_lines(cfg, root):
        if line.startswith("-r"):  # by content, so that a clone elsewhere has the same hash
            h.update(b"-r\n" + Path(line[2:]).read_bytes())
        else:
            h.update(line.encode() + b"\n")
    return h.hexdigest()[:16]


def marker(dest: Path, cfg: Config, root: Path = ROOT) -> Path:
    return dest / f".complete-{inputs_hash(cfg, root)}"


def is_complete(cfg: Config, dest: Path = DEFAULT_DIR, root: Path = ROOT) -> bool:
    return marker(dest, cfg, root).exists()


def ensure(
    cfg: Config, dest: Path = DEFAULT_DIR, root: Path = ROOT, run: Callable = subprocess.run, out: Callable[[str], None] = print, force: bool = False
) -> str:
    """Download unless the folder is complete for these inputs; return what was done."""
    mark = marker(dest, cfg, root)
    if mark.exists() and not force:
        return f"wheelhouse {dest} is complete ({len(list(dest.glob('*.whl')))} wheels)"
    dest.mkdir(parents=True, exist_ok=True)
    out(f"downloading wheels into {dest} (pip download, CPython {IMAGE_PYTHON} {machine_arch()})")
    for cmd in download_commands(cfg, dest, root):
        proc = run(cmd, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip download into {dest} failed (exit {proc.returncode}); its output is above")
    # Other inputs' markers stay: a download only adds wheels, so a folder complete for an earlier
    # config (another images.mlflow_base, say) still is, and switching back downloads nothing.
    mark.write_text("complete\n")
    return f"wheelhouse {dest}: {len(list(dest.glob('*.whl')))} wheels"

"""The stack's images: where their bases come from, the project's own images built on them, and
making every image present before `up`.

Bases are the official images (`images.source: pull`) or local stand-ins built from Debian
packages and PyPI wheels that keep the official images' documented contract (`local`, see
docs/images.md and tools/build-local-bases.sh); `auto` uses the official ones when the registry
answers and says so when it falls back. The project's images (compose/ray, compose/mlflow,
compose/marimo) are built FROM either source with the same Dockerfiles and carry a tag derived
from the content of everything that goes into them, so a changed requirement means a new tag
and a build, and an unchanged one means no build at all.

Pure functions first (`base_refs`, `project_tags`, `image_env`, `choose_source`); `ensure` and
`Docker` are the only parts that run anything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .config import ROOT, Config
from .errors import PlatformError, Problem

SOURCES = ("pull", "local", "auto")
NO_REQUIREMENTS = "compose/ray/no-experiment-requirements.txt"

# Env variable of each base -> config key under `images:`.
BASE_KEYS = {
    "RAY_BASE_IMAGE": "ray",
    "RAY_GPU_BASE_IMAGE": "ray_gpu",
    "MLFLOW_BASE_IMAGE": "mlflow_base",
    "POSTGRES_IMAGE": "postgres",
    "REDIS_IMAGE": "redis",
    "PROMETHEUS_IMAGE": "prometheus",
    "REDIS_EXPORTER_IMAGE": "redis_exporter",
    "POSTGRES_EXPORTER_IMAGE": "postgres_exporter",
}
# The local stand-in of each base (tools/build-local-bases.sh names them so).
LOCAL_BUILD_NAME = {
    "RAY_BASE_IMAGE": "ray",
    "RAY_GPU_BASE_IMAGE": "ray",
    "MLFLOW_BASE_IMAGE": "mlflow",
    "POSTGRES_IMAGE": "postgres",
    "REDIS_IMAGE": "redis",
    "PROMETHEUS_IMAGE": "prometheus",
    "REDIS_EXPORTER_IMAGE": "redis-exporter",
    "POSTGRES_EXPORTER_IMAGE": "postgres-exporter",
}
LOCAL_POSTGRES_MAJOR = "15"  # Debian bookworm's PostgreSQL
LOCAL_REDIS_MAJOR = "7"  # Debian bookworm's redis-server
LOCAL_PROMETHEUS_MAJOR = "2"  # Debian bookworm's Prometheus (2.42)
LOCAL_REDIS_EXPORTER_MAJOR = "1"  # Debian bookworm's prometheus-redis-exporter (1.45)
LOCAL_POSTGRES_EXPORTER_MAJOR = "0.11"  # Debian bookworm's prometheus-postgres-exporter (0.11; a 0.x minor may break)


@dataclass(frozen=True)
class ProjectImage:
    """One image the project builds: its tag variable, Dockerfile folder, and its base variable."""

    env: str
    repo: str
    folder: str
    base_env: str
    services: tuple[str, ...]


PROJECT_IMAGES = (
    ProjectImage("RAY_IMAGE", "cslr/ray", "compose/ray", "RAY_BASE_IMAGE", ("ray-cpu", "health", "test-cluster")),
    ProjectImage("RAY_GPU_IMAGE", "cslr/ray-gpu", "compose/ray", "RAY_GPU_BASE_IMAGE", ("ray-gpu",)),
    ProjectImage("MLFLOW_IMAGE", "cslr/mlflow", "compose/mlflow", "MLFLOW_BASE_IMAGE", ("mlflow",)),
    ProjectImage("MARIMO_IMAGE", "cslr/marimo", "compose/marimo", "RAY_IMAGE", ("marimo",)),
)
# Which base each service needs present before its project image can be built or it can run.
SERVICE_BASES = {
    "health": ("RAY_BASE_IMAGE",),
    "ray-cpu": ("RAY_BASE_IMAGE",),
    "test-cluster": ("RAY_BASE_IMAGE",),
    "ray-gpu": ("RAY_GPU_BASE_IMAGE",),
    "marimo": ("RAY_BASE_IMAGE",),
    "mlflow": ("MLFLOW_BASE_IMAGE",),
    "postgres": ("POSTGRES_IMAGE",),
    "redis": ("REDIS_IMAGE",),
    "prometheus": ("PROMETHEUS_IMAGE",),
    "redis-exporter": ("REDIS_EXPORTER_IMAGE",),
    "postgres-exporter": ("POSTGRES_EXPORTER_IMAGE",),
}


class ImageError(PlatformError):
    exit_code = 1


# ------------------------------------------------------------------------------------ pure


def mlflow_version(ref: str) -> str:
    """`ghcr.io/mlflow/mlflow:v3.17.2` -> `3.17.2` (the tag without a leading v)."""
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    return tag[1:] if tag[:1] == "v" else tag


def local_ref(env: str, cfg: Config) -> str:
    """The tag tools/build-local-bases.sh gives the local stand-in of a base."""
    if env in ("RAY_BASE_IMAGE", "RAY_GPU_BASE_IMAGE"):
        return f"cslr-local/ray:{cfg.get('ray', 'version')}"
    if env == "MLFLOW_BASE_IMAGE":
        return f"cslr-local/mlflow:{mlflow_version(cfg.get('images', 'mlflow_base'))}"
    if env == "POSTGRES_IMAGE":
        return f"cslr-local/postgres:{LOCAL_POSTGRES_MAJOR}"
    if env == "PROMETHEUS_IMAGE":
        return f"cslr-local/prometheus:{LOCAL_PROMETHEUS_MAJOR}"
    if env == "REDIS_EXPORTER_IMAGE":
        return f"cslr-local/redis-exporter:{LOCAL_REDIS_EXPORTER_MAJOR}"
    if env == "POSTGRES_EXPORTER_IMAGE":
        return f"cslr-local/postgres-exporter:{LOCAL_POSTGRES_EXPORTER_MAJOR}"
    return f"cslr-local/redis:{LOCAL_REDIS_MAJOR}"


def base_refs(cfg: Config, source: str) -> dict[str, str]:
    """Env variable -> image reference of every base, for a resolved source (pull | local)."""
    if source == "local":
        return {env: local_ref(env, cfg) for env in BASE_KEYS}
    return {env: cfg.get("images", key) for env, key in BASE_KEYS.items()}


def requirements_path(cfg: Config, root: Path = ROOT) -> Path | None:
    """The experiment requirements file config.yaml names (relative to the config file)."""
    value = cfg.get("images", "requirements")
    if not value:
        return None
    return (cfg.config_path.resolve().parent / value).resolve()


def requirements_problems(cfg: Config, root: Path = ROOT) -> list[Problem]:
    """The file must exist and lie inside the project folder, the images' build context."""
    path = requirements_path(cfg, root)
    if path is None:
        return []
    where = cfg.location(("images", "requirements"))
    if not path.is_file():
        return [
            Problem(
                where, "$.images.requirements", f"found {cfg.get('images', 'requirements')!r}, expected an existing pip requirements file ({path} is not one)"
            )
        ]
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return [Problem(where, "$.images.requirements", f"found {path}, expected a file inside {root} (the images' build context)")]
    return []


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:12]


def _inputs(folder: Path) -> list[bytes]:
    return [p.name.encode() + b"\0" + p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def experiment_requirements(cfg: Config, root: Path = ROOT) -> str:
    """Build argument: the requirements file relative to the build context (the repository)."""
    path = requirements_path(cfg, root)
    return NO_REQUIREMENTS if path is None else path.relative_to(root.resolve()).as_posix()


def project_tags(cfg: Config, bases: Mapping[str, str], pip_no_index: str, root: Path = ROOT) -> dict[str, str]:
    """Env variable -> content-hashed tag of each project image.

    The hash covers the image's Dockerfile folder, its base reference, the offline switch and,
    for the Ray images, the experiment requirements; the Marimo image's base is the Ray image's
    tag, so it changes whenever that one does.
    """
    version = {
        "cslr/ray": cfg.get("ray", "version"),
        "cslr/ray-gpu": cfg.get("ray", "version"),
        "cslr/mlflow": mlflow_version(cfg.get("images", "mlflow_base")),
        "cslr/marimo": _pinned(root / "compose/marimo/requirements.txt", "marimo"),
    }
    req = experiment_requirements(cfg, root)
    tags: dict[str, str] = {}
    known = dict(bases)
    for image in PROJECT_IMAGES:
        parts = _inputs(root / image.folder) + [known[image.base_env].encode(), pip_no_index.encode()]
        if image.folder == "compose/ray":
            parts.append((root / req).read_bytes())
        tag = f"{image.repo}:{version[image.repo]}-{_digest(parts)}"
        tags[image.env] = known[image.env] = tag
    return tags


def _pinned(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.strip().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    return "latest"


def image_env(cfg: Config, source: str, root: Path = ROOT) -> dict[str, str]:
    """Every image variable the compose files interpolate, for a resolved source."""
    if source not in ("pull", "local"):
        raise ValueError(f"unresolved image source {source!r}")
    bases = base_refs(cfg, source)
    pip_no_index = "1" if source == "local" else "0"
    env = dict(bases)
    env.update(project_tags(cfg, bases, pip_no_index, root))
    env["PIP_NO_INDEX"] = pip_no_index
    env["EXPERIMENT_REQUIREMENTS"] = experiment_requirements(cfg, root)
    env["CSLR_IMAGE_SOURCE"] = source
    return env


def choose_source(requested: str, official_present: bool, local_present: bool, can_pull: Callable[[], str | None] | None) -> tuple[str, str]:
    """Resolve `auto`: (source, why). `can_pull` returns None when a pull works, else the reason;
    when it is None (no engine, or `generate` that must not pull) an undecided `auto` means pull."""
    if requested in ("pull", "local"):
        return requested, f"images.source: {requested}"
    if official_present:
        return "pull", "images.source auto: the official bases are present"
    if local_present:
        return "local", "images.source auto: the local bases are present (no official ones)"
    if can_pull is None:
        return "pull", "images.source auto: not checked yet"
    reason = can_pull()
    if reason is None:
        return "pull", "images.source auto: the registry answers"
    return "local", f"images.source auto: the registry cannot be reached ({reason}); using local bases built from Debian packages and PyPI wheels"


def services_of(cfg: Config, gpu_node: bool) -> list[str]:
    """The services a config runs, as far as their images are concerned."""
    from . import topology

    return topology.running(cfg, gpu_node)


def needed_bases(services: Iterable[str]) -> list[str]:
    """Base variables the given services need, in a stable order, without repeats."""
    out: list[str] = []
    for service in services:
        for base in SERVICE_BASES.get(service, ()):
            if base not in out:
                out.append(base)
    return [b for b in BASE_KEYS if b in out]


# ------------------------------------------------------------------------------------ impure

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class Docker:
    """The few engine calls this module makes."""

    run: Runner = subprocess.run

    def present(self, ref: str) -> bool:
        try:
            return self.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def present_refs(self, refs: list[str]) -> set[str] | None:
        """Which of these images are present, in one engine call; None when the engine does not answer."""
        if not refs:
            return set()
        try:
            proc = self.run(["docker", "image", "inspect", "--format", "{{.Id}}", *refs], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0 and not proc.stdout.strip():
            err = (proc.stderr or "").lower()
            if "no such image" not in err and "no such object" not in err:
                return None  # not an answer about images: the engine is not there
        # One line per image found, in argument order among the found ones: ask per ref only
        # when some are missing (rare, and only then is the order ambiguous).
        if proc.returncode == 0:
            return set(refs)
        return {ref for ref in refs if self.present(ref)}

    def pull(self, ref: str, quiet: bool = False) -> subprocess.CompletedProcess:
        # Progress goes to the user's terminal unless quiet (a probe).
        return self.run(["docker", "pull", ref], capture_output=quiet, text=True, timeout=None if not quiet else 120)

    def can_pull(self, ref: str) -> str | None:
        """None if `docker pull ref` works, else the engine's one-line reason."""
        try:
            proc = self.pull(ref, quiet=True)
        except subprocess.TimeoutExpired:
            return "no answer within 120 s"
        if proc.returncode == 0:
            return None
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        return lines[-1][:300] if lines else f"exit {proc.returncode}"


def resolve_source(cfg: Config, docker: Docker | None, services: Iterable[str], probe_pull: bool) -> tuple[str, str]:
    """Resolve images.source for these services; pulls one base as the probe only if asked.
    Without an engine (docker None, or no answer) an undecided `auto` stays `pull`."""
    requested = cfg.get("images", "source") or "auto"
    if requested != "auto" or docker is None:
        return choose_source(requested, False, False, None)
    wanted = needed_bases(services)
    official = [base_refs(cfg, "pull")[b] for b in wanted]
    local = [base_refs(cfg, "local")[b] for b in wanted]
    present = docker.present_refs(sorted(set(official + local)))
    if present is None:
        return choose_source(requested, False, False, None)
    missing = [ref for ref in official if ref not in present]
    probe = (lambda: docker.can_pull(missing[0])) if probe_pull and missing else None
    return choose_source(requested, not missing, all(ref in present for ref in local), probe)


def ensure(
    env: Mapping[str, str],
    services: list[str],
    build: Callable[[list[str]], None],
    out: Callable[[str], None],
    docker: Docker,
    build_local_bases: Callable[[list[str], Mapping[str, str]], None],
    wheelhouse: Callable[[], None],
    force_build: bool = False,
) -> list[str]:
    """Make every image the services need present: bases (pulled, or built locally), then the
    project's images (built by Compose, output shown). Returns one line per thing done."""
    done: list[str] = []
    source = env.get("CSLR_IMAGE_SOURCE", "pull")
    missing_bases = [b for b in needed_bases(services) if not docker.present(env[b])]
    if missing_bases and source == "pull":
        for base in missing_bases:
            out(f"pulling {env[base]}")
            proc = docker.pull(env[base])
            if proc.returncode != 0:
                raise ImageError(
                    f"`docker pull {env[base]}` failed (exit {proc.returncode}). Without access to its registry set images.source: local (or auto) in config.yaml to build the bases locally (docs/images.md)."
                )
            done.append(f"pulled {env[base]}")
    elif missing_bases:
        names = sorted({LOCAL_BUILD_NAME[b] for b in missing_bases})
        if env.get("PIP_NO_INDEX") == "1":
            wheelhouse()
        out(f"building local bases: {', '.join(names)} (tools/build-local-bases.sh)")
        build_local_bases(names, env)
        done.append(f"built local bases {', '.join(names)}")
    if source == "local" and env.get("PIP_NO_INDEX") == "1":
        wheelhouse()
    # Ray first: the Marimo image is built FROM the Ray image.
    for image in PROJECT_IMAGES:
        wanted = [s for s in image.services if s in services]
        if not wanted:
            continue
        if force_build or not docker.present(env[image.env]):
            out(f"building {env[image.env]} ({image.folder}/Dockerfile on {env[image.base_env]})")
            build(wanted[:1])
            if not docker.present(env[image.env]):
                raise ImageError(f"building {env[image.env]} did not produce the image")
            done.append(f"built {env[image.env]}")
    return done


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def run_local_bases_script(names: list[str], env: Mapping[str, str], cfg_versions: Mapping[str, str], root: Path = ROOT, run: Runner = subprocess.run) -> None:
    """tools/build-local-bases.sh for these bases (root only: debootstrap and chroot)."""
    if not is_root():
        # The versions config.yaml names (another images.mlflow_base, say), not the script's defaults.
        pinned = " ".join(f"{k}={v}" for k, v in sorted(cfg_versions.items()))
        raise ImageError(
            f"the local bases {', '.join(names)} are missing and building them needs root (debootstrap, chroot). "
            f"Build them once with `sudo make bases` (or `sudo {pinned + ' ' if pinned else ''}bash tools/build-local-bases.sh {' '.join(names)}`), then rerun."
        )
    script_env = {**os.environ, **cfg_versions}
    proc = run(["bash", str(root / "tools" / "build-local-bases.sh"), *names], env=script_env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ImageError(f"tools/build-local-bases.sh {' '.join(names)} failed (exit {proc.returncode}); its output is above")


def versions(cfg: Config) -> dict[str, str]:
    return {"RAY_VERSION": str(cfg.get("ray", "version")), "MLFLOW_VERSION": mlflow_version(cfg.get("images", "mlflow_base"))}


def problems(cfg: Config, root: Path = ROOT) -> list[Problem]:
    """Validation rules of the `images:` section that need no engine."""
    out = requirements_problems(cfg, root)
    source = cfg.get("images", "source")
    if source in ("local", "auto"):
        pg = cfg.get("images", "postgres") or ""
        tag = pg.rsplit(":", 1)[1] if ":" in pg.rsplit("/", 1)[-1] else ""
        if tag and tag.split(".")[0].split("-")[0] != LOCAL_POSTGRES_MAJOR:
            out.append(
                Problem(
                    cfg.location(("images", "postgres")),
                    "$.images.postgres",
                    f"found {pg}, while images.source {source} may use the local PostgreSQL {LOCAL_POSTGRES_MAJOR} base; "
                    f"a data volume is bound to one major version, so use postgres:{LOCAL_POSTGRES_MAJOR} or images.source: pull",
                    "warning",
                )
            )
    return out

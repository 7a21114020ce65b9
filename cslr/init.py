"""`inv init`: write config.yaml (if absent) and `.env` with strong random secrets (mode 0600).

Nothing is ever lost: an existing `.env` keeps every line (comments, overrides, secrets) except
the ones a run must change, and is backed up first to `.env.backups/.env.bak-<UTC timestamp>`
(0600, in a 0700 folder beside `.env`). A backup holds the same secrets as `.env`, so it lives
where neither git nor `inv submit` picks it up: the folder carries its own `.gitignore` (`*`, so
git ignores it in any repository), the project's .gitignore ignores `.env*`, and `inv submit`
never uploads `.env`, a `.env.bak-*` or this folder (cslr/jobs.py, `never_uploaded`). A
missing or empty secret is added; existing secrets are replaced only by `rotate_secrets`, which
refuses while a data volume of the stack still depends on the old values. config.yaml is written
from the template only when absent, or with `reset_config` (after a backup).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from . import textfile, topology
from .config import ROOT, format_dotenv, parse_dotenv
from .errors import PlatformError
from .fsutil import write_atomic

SECRET_ENV = topology.secret_env()  # every secret of the schema (`x-secret`), in its order
DATA_VOLUMES = topology.DATA_VOLUMES  # data volume -> the secret it is made with

HEADER = (
    "Secrets of this machine's CSLR stack; written by `inv init`. Never commit this file.\n"
    "Per-machine overrides of config.yaml (see docs/config-reference.md) may follow."
)
_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")

Runner = Callable[..., subprocess.CompletedProcess]


def new_secrets(names: Sequence[str] | None = None, token=secrets.token_urlsafe) -> dict[str, str]:
    # 32 bytes of entropy each; URL-safe so they can sit in URLs (Redis, Postgres) unquoted.
    return {name: token(32) for name in (SECRET_ENV if names is None else names)}


def timestamp(clock: Callable[[], float] = time.time) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))


ENV_BACKUPS = ".env.backups"  # the folder of `.env`'s backups, beside it


def backup_dir(env_path: Path) -> Path:
    """The private folder of `env_path`'s backups (0700), with a `.gitignore` of `*`: git ignores
    it in whatever repository it sits, without relying on that repository's .gitignore."""
    folder = env_path.parent / ENV_BACKUPS
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        raise PlatformError(f"{folder} is not a folder; {env_path} is unchanged (it is where its backups go)")
    folder.chmod(0o700)
    ignore = folder / ".gitignore"
    if not ignore.is_file():
        write_atomic(ignore, "# Backups of .env by `inv init`: they hold secrets. Never commit them.\n*\n", 0o600)
    return folder


def backup(path: Path, clock: Callable[[], float] = time.time, folder: Path | None = None) -> Path:
    """Copy `path` to `<folder>/<name>.bak-<UTC timestamp>` (0600, never overwriting an earlier
    backup); `folder` defaults to the file's own."""
    stem = f"{path.name}.bak-{timestamp(clock)}"
    folder = path.parent if folder is None else folder
    target, n = folder / stem, 1
    while target.exists():
        target, n = folder / f"{stem}-{n}", n + 1
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(path.read_bytes())
    return target


def set_values(text: str, values: dict[str, str]) -> str:
    """`text` with the lines of each key in `values` replaced (or appended); every other line kept."""
    lines = text.splitlines(keepends=True)
    placed: set[str] = set()
    out = []
    for line in lines:
        match = _KEY.match(line)
        key = match.group(1) if match else None
        if key in values:
            out.append(format_dotenv({key: values[key]}))
            placed.add(key)
        else:
            out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out += [format_dotenv({k: v}) for k, v in values.items() if k not in placed]
    return "".join(out)


def project_name(config_path: Path, env_path: Path) -> str:
    from .config import load

    return load(config_path, env_path).get("project", "name")


def existing_volumes(project: str, run: Runner = subprocess.run) -> list[str]:
    """The stack's data volumes (`<project>_<name>`) that exist on this machine's Docker engine.

    No docker CLI: none (the stack never ran here). An engine that does not answer: PlatformError,
    since rotation must not guess.
    """
    found = []
    for name in DATA_VOLUMES:
        volume = f"{project}_{name}"
        try:
            proc = run(["docker", "volume", "inspect", volume], capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return []
        if proc.returncode == 0:
            found.append(volume)
        elif "no such volume" not in (proc.stderr or "").lower():
            raise PlatformError(
                f"cannot tell whether volume {volume} exists (`docker volume inspect` exit {proc.returncode}: "
                f"{(proc.stderr or '').strip()}); start the Docker engine and retry --rotate-secrets"
            )
    return found


def init(
    config_path: Path,
    env_path: Path,
    force: bool = False,
    rotate_secrets: bool = False,
    reset_config: bool = False,
    project: str | None = None,
    run: Runner = subprocess.run,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Create or complete the files; return what was done. Nothing is replaced without a backup.

    `force` is accepted for compatibility and replaces nothing: see `rotate_secrets` and
    `reset_config`. `project` names the Compose project whose volumes `rotate_secrets` checks
    (default: `project.name` as config.yaml, .env and the environment set it).
    """
    done = []
    if force:
        done.append("--force replaces nothing any more: new secrets need --rotate-secrets, a fresh config.yaml --reset-config")
    done.append(_config(config_path, reset_config, clock))
    if not env_path.exists():
        write_atomic(env_path, format_dotenv(new_secrets(), HEADER), 0o600)
        done.append(f"wrote {env_path} (mode 0600) with new {', '.join(SECRET_ENV)}")
        return done
    text = textfile.read_text(env_path, str(env_path))
    existing = parse_dotenv(text, str(env_path))
    missing = [k for k in SECRET_ENV if not existing.get(k, ("",))[0]]
    if rotate_secrets:
        volumes = existing_volumes(project or project_name(config_path, env_path), run)
        if volumes:
            raise PlatformError(
                f"refusing --rotate-secrets: volume(s) {', '.join(volumes)} still depend on the current "
                f"{', '.join(DATA_VOLUMES[v.split('_', 1)[1]] for v in volumes)}; {env_path} is unchanged. Either delete the data "
                "first (`inv down --volumes --yes`), or change the password inside the running service (e.g. Postgres "
                "`ALTER USER`) and set the new value in .env by hand"
            )
        changed = new_secrets()
    elif missing:
        changed = new_secrets(missing)
    else:
        env_path.chmod(0o600)
        done.append(f"kept {env_path} (every secret is set; --rotate-secrets replaces them)")
        return done
    saved = backup(env_path, clock, backup_dir(env_path))
    write_atomic(env_path, set_values(text, changed), 0o600)
    verb = "replaced" if rotate_secrets else "added"
    done.append(f"backed up {env_path} to {saved.parent.name}/{saved.name} (mode 0600; git-ignored, never uploaded by inv submit)")
    done.append(f"{verb} {', '.join(changed)} in {env_path} (mode 0600); every other line kept")
    if rotate_secrets:
        done.append("run `inv up` so that every container gets the new values (running ones keep the old ones)")
    return done


def _config(config_path: Path, reset: bool, clock: Callable[[], float]) -> str:
    template = ROOT / "config.yaml"
    if config_path.exists() and config_path.resolve() == template.resolve():
        return f"kept {config_path} (it is the project's documented default)"
    if config_path.exists() and not reset:
        return f"kept {config_path} (exists; --reset-config rewrites it from the template after a backup)"
    note = ""
    if config_path.exists():
        note = f" (the old one is in {backup(config_path, clock).name})"
    text = template.read_text().replace("$schema=schema/", f"$schema={_rel_schema(config_path)}")
    write_atomic(config_path, text, 0o644)
    return f"wrote {config_path}{note}"


def _rel_schema(config_path: Path) -> str:
    schema_dir = ROOT / "schema"
    try:
        return os.path.relpath(schema_dir, config_path.resolve().parent) + "/"
    except ValueError:
        return str(schema_dir) + "/"

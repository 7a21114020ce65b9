"""The upgrade phase of `inv up`: what changes when images.postgres or images.mlflow_base move.

    * Postgres: a data volume written by another major version cannot be opened by this one.
      Found before anything starts (the volume's PG_VERSION against the image's PG_MAJOR, both
      part of the official image's contract) and refused with the backup -> restore path.
    * MLflow: a newer MLflow needs its database schema migrated (`mlflow db upgrade`); the server
      refuses to start on an older schema. `inv up` starts Postgres alone, asks the new image
      which schema it wants and which the database has, and when they differ takes a pg_dump
      into backups/ first (0600), migrates once in a one-off container of the new image, and says
      so. A database newer than the image (a downgrade) is refused.

Pure decisions first; every engine call goes through `Stack` or the injectable runner.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Callable

from .stack import Stack, StackError, docker_text

PGDATA_IN_VOLUME = "pgdata/PG_VERSION"  # PGDATA=/var/lib/postgresql/data/pgdata, the volume at .../data

SCHEMA_SNIPPET = r"""
import json, os, sqlalchemy
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision
engine = sqlalchemy.create_engine(os.environ["MLFLOW_BACKEND_STORE_URI"])
current = None
if sqlalchemy.inspect(engine).has_table("alembic_version"):
    with engine.connect() as conn:
        current = conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar()
known = True
if current:
    try:
        known = ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(current) is not None
    except Exception:
        known = False
print(json.dumps({"current": current, "head": _get_latest_schema_revision(), "known": known}))
"""

NONE, FRESH, MIGRATE, NEWER = "none", "fresh", "migrate", "newer"


# ------------------------------------------------------------------------------ pure


def postgres_finding(volume_major: str | None, image_major: str | None, image: str) -> list[str]:
    """A refusal when the volume's data is of another Postgres major version than the image."""
    if not volume_major or not image_major or volume_major.strip() == image_major.strip():
        return []
    return [
        f"the Postgres volume holds data of PostgreSQL {volume_major.strip()}, but images.postgres ({image}) is PostgreSQL {image_major.strip()}: "
        "it cannot open that data. Upgrade through a backup (docs/upgrading.md): set images.postgres back, `inv up`, `inv backup`, "
        "`inv down --volumes --yes`, set the new images.postgres, `inv up`, `inv restore ARCHIVE`"
    ]


def schema_action(answer: dict) -> str:
    """What to do with MLflow's database: nothing, nothing (fresh), migrate, or refuse (newer)."""
    current, head = answer.get("current"), answer.get("head")
    if not current:
        return FRESH  # the server creates the schema on its first start
    if current == head:
        return NONE
    if not answer.get("known", True):
        return NEWER
    return MIGRATE


def pre_upgrade_name(project: str, now: dt.datetime) -> str:
    return f"cslr-{project}-pre-mlflow-upgrade-{now.astimezone(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.pgdump"


def pg_major_from_env(env_lines: list[str]) -> str | None:
    for item in env_lines:
        if isinstance(item, str) and item.startswith("PG_MAJOR="):
            return item.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------------ engine


def volume_exists(name: str, run=subprocess.run) -> bool:
    return run(["docker", "volume", "inspect", name], capture_output=True, text=True).returncode == 0


def image_pg_major(image: str, run=subprocess.run) -> str | None:
    proc = run(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", image], capture_output=True, text=True)
    try:
        return pg_major_from_env(json.loads(proc.stdout or "[]") or []) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def volume_pg_major(volume: str, image: str, run=subprocess.run) -> str | None:
    proc = run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/d:ro", "--entrypoint", "cat", image, f"/d/{PGDATA_IN_VOLUME}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


def postgres_findings(stack: Stack) -> list[str]:
    """Before start: the Postgres volume (if any) is of the image's major version."""
    if "postgres" not in stack.expected_services():
        return []
    volume, image = f"{stack.project}_postgres-data", stack.env().get("POSTGRES_IMAGE", "")
    if not image or not volume_exists(volume, stack.run):
        return []
    return postgres_finding(volume_pg_major(volume, image, stack.run), image_pg_major(image, stack.run), image)


def mlflow_schema(stack: Stack, backup_dir: Path, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> list[str]:
    """Before start, with an existing Postgres volume: migrate MLflow's schema once if the image
    wants a newer one (after a pg_dump into backup_dir). Lines to print."""
    volume = f"{stack.project}_postgres-data"
    if "mlflow" not in stack.expected_services() or not volume_exists(volume, stack.run):
        return []
    # Checked once per (MLflow image, database volume): a warm `inv up` pays two inspects.
    key = docker_text(stack, ["image", "inspect", "--format", "{{.Id}}", stack.env().get("MLFLOW_IMAGE", "")])
    key += "|" + docker_text(stack, ["volume", "inspect", "--format", "{{.CreatedAt}}", volume])
    marker = stack.build_dir / "mlflow-schema-checked"
    if marker.exists() and marker.read_text() == key:
        return []
    lines = _check_and_migrate(stack, backup_dir, now)
    marker.write_text(key)
    return lines


def _check_and_migrate(stack: Stack, backup_dir: Path, now: Callable[[], dt.datetime]) -> list[str]:
    stack.compose(["up", "-d", "--no-deps", "--wait", "postgres"], check=True, timeout=300)
    # A one-off container of the mlflow service takes its static address: a running mlflow
    # (the old image, or this one) is stopped first; `up` starts it again right after.
    running = any(r.get("Service") == "mlflow" and r.get("State") == "running" for r in stack.services())
    stack.compose(["stop", "mlflow"], check=True, timeout=120)
    try:
        lines = _ask_and_migrate(stack, backup_dir, now)
    except BaseException:
        if running:
            stack.compose(["start", "mlflow"], timeout=300)
        raise
    if running and not lines:  # nothing migrated: as it was (after a migration `up` recreates it)
        stack.compose(["start", "mlflow"], timeout=300)
    return lines


def _ask_and_migrate(stack: Stack, backup_dir: Path, now: Callable[[], dt.datetime]) -> list[str]:
    proc = stack.compose(["run", "--rm", "--no-deps", "-T", "--entrypoint", "python3", "mlflow", "-c", SCHEMA_SNIPPET], timeout=300)
    try:
        answer = json.loads((proc.stdout or "").strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise StackError(f"could not read MLflow's schema version (exit {proc.returncode}):\n{(proc.stderr or '').strip()[-1500:]}") from None
    action = schema_action(answer)
    if action in (NONE, FRESH):
        return []
    if action == NEWER:
        raise StackError(
            f"MLflow's database is at schema {answer['current']}, newer than images.mlflow_base knows (head {answer['head']}): "
            "a downgrade. Set images.mlflow_base back to the version that wrote it, or restore a backup made with this version"
        )
    from .backup import Engine

    backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dump = backup_dir / pre_upgrade_name(stack.project, now())
    Engine(stack).dump(dump)
    dump.chmod(0o600)
    migrate = stack.compose(
        ["run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "mlflow", "-c", 'mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"'], timeout=1800
    )
    if migrate.returncode != 0:
        raise StackError(
            f"MLflow's schema migration {answer['current']} -> {answer['head']} failed (exit {migrate.returncode}); the database dump "
            f"taken before it is {dump} (pg_restore it, or restore a full `inv backup`):\n{(migrate.stderr or '').strip()[-1500:]}"
        )
    return [f"upgrade: MLflow's database schema migrated {answer['current']} -> {answer['head']} (backup of the database first: {dump})"]

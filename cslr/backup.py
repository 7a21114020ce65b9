"""`inv backup` / `inv restore`: one timestamped archive of what a lab cannot lose.

An archive (`backups/cslr-PROJECT-YYYYmmddTHHMMSSZ.tar`, mode 0600) holds
    manifest.json     platform version, when, project, images, row counts, every member's sha256
    mlflow.pgdump     `pg_dump --format=custom` of MLflow's database, taken in the running
                      postgres (a consistent snapshot; pg_restore of a newer Postgres reads it,
                      which is the path across a Postgres major upgrade: docs/upgrading.md)
    artifacts.tar.gz  the MLflow artifact store (the mlflow-data volume's /mlflow/artifacts)
    notebooks.tar.gz  the notebooks folder (services.marimo.notebooks)
    config.yaml       the config the stack was made from
    env               .env, only with --with-env (the archive is 0600 either way: it holds data)
Restore goes onto an empty stack (no MLflow run, no artifact); over a non-empty one only with
`--yes`. It stops MLflow, restores the database and the artifacts, starts MLflow again and
verifies: every table's row count and the artifacts' file count and bytes equal the manifest.
Notebooks are restored into an empty notebooks folder, else beside it (nothing is overwritten).

Pure parts first (names, manifests, checks); every engine call goes through `Stack`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import __version__, hostdirs
from .errors import PlatformError
from .stack import Stack

TABLES = ("experiments", "runs", "metrics", "latest_metrics", "params", "tags", "experiment_tags")
MEMBERS = ("manifest.json", "mlflow.pgdump", "artifacts.tar.gz", "notebooks.tar.gz", "config.yaml")
ARTIFACTS = "/mlflow/artifacts"
# Inside the postgres container: its own env names the database; the password stays an env var.
PSQL = 'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v ON_ERROR_STOP=1 -tA'
PG_DUMP = 'PGPASSWORD="$POSTGRES_PASSWORD" pg_dump -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" --format=custom'
PG_RESTORE = 'PGPASSWORD="$POSTGRES_PASSWORD" pg_restore -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" --clean --if-exists --no-owner --exit-on-error'
ARTIFACT_STATS = f"mkdir -p {ARTIFACTS} && find {ARTIFACTS} -type f -printf '%s\\n' | awk '{{n++; b+=$1}} END {{printf \"%d %d\\n\", n, b}}'"


class BackupError(PlatformError):
    exit_code = 1


# ------------------------------------------------------------------------------ pure


def archive_name(project: str, now: dt.datetime) -> str:
    return f"cslr-{project}-{now.astimezone(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.tar"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def _sha256_stream(stream) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def parse_counts(text: str) -> dict[str, int]:
    """`table|count` lines from psql -tA -> {table: count}; anything else is an error."""
    out = {}
    for line in text.strip().splitlines():
        name, sep, count = line.partition("|")
        if not sep or not count.strip().isdigit():
            raise BackupError(f"unexpected answer from psql: {line[:120]!r}")
        out[name.strip()] = int(count)
    return out


def counts_query(tables=TABLES) -> str:
    return " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables) + ";"


def parse_stats(text: str) -> tuple[int, int]:
    parts = text.strip().split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise BackupError(f"unexpected artifact statistics: {text.strip()[:120]!r}")
    return int(parts[0]), int(parts[1])


def is_empty(counts: dict[str, int], artifacts: tuple[int, int]) -> bool:
    """No run, and no artifact file (MLflow itself creates the Default experiment)."""
    return counts.get("runs", 0) == 0 and artifacts[0] == 0


def mismatches(manifest: dict, counts: dict[str, int], artifacts: tuple[int, int]) -> list[str]:
    out = [f"{t}: {counts.get(t)} rows, the backup has {n}" for t, n in manifest["counts"].items() if counts.get(t) != n]
    if list(artifacts) != list(manifest["artifacts"]):
        out.append(f"artifacts: {artifacts[0]} files / {artifacts[1]} bytes, the backup has {manifest['artifacts'][0]} / {manifest['artifacts'][1]}")
    return out


# ------------------------------------------------------------------------------ engine calls


class Engine:
    """The few engine calls of a backup, on a Stack (streams, not text, for dumps and tars)."""

    def __init__(self, stack: Stack, log: Callable[[str], None] = print) -> None:
        self.stack, self.log = stack, log

    def _stream(self, args: list[str], stdout=None, stdin=None, what: str = "") -> None:
        proc = self.stack.run(self.stack.command(args), stdout=stdout, stdin=stdin, stderr=subprocess.PIPE, env=_env())
        if proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip()[-1500:]
            raise BackupError(f"{what} failed (exit {proc.returncode}): {err}")

    def sh(self, service: str, script: str, what: str, user: list[str] | None = None) -> str:
        proc = self.stack.compose(["exec", "-T", *(user or []), service, "sh", "-c", script])
        if proc.returncode != 0:
            raise BackupError(f"{what} failed in {service} (exit {proc.returncode}): {(proc.stderr or '').strip()[-1500:]}")
        return proc.stdout

    def counts(self) -> dict[str, int]:
        return parse_counts(self.sh("postgres", f'{PSQL} -c "{counts_query()}"', "counting MLflow's rows"))

    def artifact_stats(self) -> tuple[int, int]:
        return parse_stats(self.sh("mlflow", ARTIFACT_STATS, "reading the artifact store", self.mlflow_user()))

    def dump(self, dest: Path) -> None:
        with open(dest, "wb") as f:
            self._stream(["exec", "-T", "postgres", "sh", "-c", PG_DUMP], stdout=f, what="pg_dump")

    def restore_db(self, src: Path) -> None:
        with open(src, "rb") as f:
            self._stream(["exec", "-T", "postgres", "sh", "-c", PG_RESTORE], stdin=f, what="pg_restore")

    def mlflow_user(self) -> list[str]:
        """`--user` of the uid the MLflow server drops to (MLFLOW_RUN_AS; it owns the artifacts, and
        the container's root holds no DAC capability to write there), if the service says one."""
        env = ((self.stack.doc().get("services") or {}).get("mlflow") or {}).get("environment") or {}
        run_as = env.get("MLFLOW_RUN_AS") if isinstance(env, dict) else None
        return ["--user", str(run_as)] if run_as else []

    def tar_artifacts(self, dest: Path) -> None:
        script = f"mkdir -p {ARTIFACTS} && tar -C {ARTIFACTS} -czf - ."
        with open(dest, "wb") as f:
            self._stream(["exec", "-T", *self.mlflow_user(), "mlflow", "sh", "-c", script], stdout=f, what="reading the artifacts")

    def untar_artifacts(self, src: Path) -> None:
        # MLflow is stopped: a one-off container of its image with its volume does the writing.
        script = f"mkdir -p {ARTIFACTS} && tar -C {ARTIFACTS} --no-same-owner -xzf -"
        with open(src, "rb") as f:
            self._stream(
                ["run", "--rm", "--no-deps", "-T", *self.mlflow_user(), "--entrypoint", "sh", "mlflow", "-c", script], stdin=f, what="writing the artifacts"
            )

    def running(self) -> set[str]:
        return {r["Service"] for r in self.stack.services() if r.get("State") == "running"}


def _env() -> dict:
    from .compose import subprocess_env

    return subprocess_env()


def _need_running(engine: Engine, what: str) -> None:
    missing = {"postgres", "mlflow"} - engine.running()
    if missing:
        raise BackupError(f"{what} needs the stack running: {', '.join(sorted(missing))} is not running (inv up)")


def _tar_folder(folder: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz") as tar:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if "__marimo__" in path.parts:
                    continue  # marimo's session cache beside the notebooks
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)


# ------------------------------------------------------------------------------ the two commands


def backup(
    stack: Stack,
    dest_dir: Path,
    config_path: Path,
    env_path: Path,
    with_env: bool = False,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    log=print,
) -> Path:
    """Write one archive into dest_dir (created 0700); returns its path. Nothing is half-written:
    the archive appears under its name only when complete and verified."""
    engine = Engine(stack, log)
    _need_running(engine, "a backup")
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = archive_name(stack.project, now())
    with tempfile.TemporaryDirectory(prefix=".cslr-backup-", dir=dest_dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        counts = engine.counts()
        t0 = time.monotonic()
        engine.dump(work / "mlflow.pgdump")
        log(
            f"backup: MLflow database: {counts.get('runs', 0)} runs, {counts.get('metrics', 0)} metric values -> {_size(work / 'mlflow.pgdump')} in {time.monotonic() - t0:.1f} s"
        )
        t0 = time.monotonic()
        stats = engine.artifact_stats()
        engine.tar_artifacts(work / "artifacts.tar.gz")
        log(f"backup: artifacts: {stats[0]} files, {stats[1]} bytes -> {_size(work / 'artifacts.tar.gz')} in {time.monotonic() - t0:.1f} s")
        notebooks = hostdirs.notebooks_dir(stack.cfg)
        _tar_folder(notebooks, work / "notebooks.tar.gz")
        log(f"backup: notebooks: {notebooks}")
        shutil.copyfile(config_path, work / "config.yaml")
        members = list(MEMBERS[1:])
        if with_env:
            shutil.copyfile(env_path, work / "env")
            members.append("env")
        manifest = {
            "platform_version": __version__,
            "created": now().astimezone(dt.timezone.utc).isoformat(),
            "project": stack.project,
            "images": {k: stack.env().get(k, "") for k in ("POSTGRES_IMAGE", "MLFLOW_IMAGE")},
            "counts": counts,
            "artifacts": list(stats),
            "notebooks": str(notebooks),
            "sha256": {m: sha256_file(work / m) for m in members},
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        part = dest_dir / (name + ".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            for m in ["manifest.json", *members]:
                tar.add(work / m, arcname=m)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        read_manifest(part)  # verify what was written before it takes its name
        final = dest_dir / name
        os.replace(part, final)
    log(f"backup: wrote {final} ({_size(final)}, mode 0600)" + (" with .env" if with_env else " (without .env: add --with-env to include it)"))
    return final


def read_manifest(archive: Path) -> dict:
    """The manifest, after checking every member's sha256 against it."""
    try:
        with tarfile.open(archive, "r:") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            for member, want in manifest["sha256"].items():
                if _sha256_stream(tar.extractfile(member)) != want:
                    raise BackupError(f"{archive}: {member} does not match its checksum (a damaged archive)")
    except (OSError, tarfile.TarError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BackupError(f"{archive}: not a readable cslr backup ({exc})") from None
    return manifest


def restore(stack: Stack, archive: Path, yes: bool = False, log=print) -> dict:
    """Restore `archive` onto this stack (running); returns the manifest. Verifies the result."""
    manifest = read_manifest(archive)
    engine = Engine(stack, log)
    _need_running(engine, "a restore")
    counts, stats = engine.counts(), engine.artifact_stats()
    if not is_empty(counts, stats) and not yes:
        raise BackupError(
            f"this stack is not empty ({counts.get('runs', 0)} MLflow runs, {stats[0]} artifact files): restoring replaces them. "
            "Back it up first (inv backup), then add --yes"
        )
    with tempfile.TemporaryDirectory(prefix="cslr-restore-") as tmp:
        work = Path(tmp)
        with tarfile.open(archive, "r:") as tar:
            for m in ("mlflow.pgdump", "artifacts.tar.gz", "notebooks.tar.gz"):
                with open(work / m, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(m), out)
        stack.compose(["stop", "mlflow"], check=True)
        try:
            t0 = time.monotonic()
            engine.restore_db(work / "mlflow.pgdump")
            log(f"restore: MLflow database in {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            engine.untar_artifacts(work / "artifacts.tar.gz")
            log(f"restore: artifacts in {time.monotonic() - t0:.1f} s")
        finally:
            stack.compose(["start", "mlflow"], check=True)
        where = _restore_notebooks(work / "notebooks.tar.gz", hostdirs.notebooks_dir(stack.cfg))
        log(f"restore: notebooks -> {where}")
    _wait_healthy(stack, "mlflow")
    problems = mismatches(manifest, engine.counts(), engine.artifact_stats())
    if problems:
        raise BackupError("restore: the result differs from the backup: " + "; ".join(problems))
    log(
        f"restore: verified {manifest['counts'].get('runs', 0)} runs, {manifest['counts'].get('metrics', 0)} metric values, {manifest['artifacts'][0]} artifact files"
    )
    return manifest


def _restore_notebooks(src: Path, folder: Path) -> Path:
    """Into the notebooks folder when it is empty, else beside it (nothing overwritten)."""
    target = folder
    if folder.exists() and any(folder.iterdir()):
        target = folder.with_name(folder.name + ".restored-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, "r:gz") as tar:
        _extract_plain(tar, target)
    return target


def _extract_plain(tar: tarfile.TarFile, target: Path) -> None:
    """Only regular files and folders, only inside `target` (no links, devices, absolute or `..`
    paths): what tarfile's "data" filter does, on every Python 3.11 (the filter came in 3.11.4)."""
    root = target.resolve()
    members = []
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()):
            continue
        dest = (root / m.name).resolve()
        if dest != root and root not in dest.parents:
            raise BackupError(f"the archive's notebooks hold a path outside the folder: {m.name!r}")
        m.mode = (m.mode | 0o600) & 0o755 if m.isfile() else 0o755
        members.append(m)
    tar.extractall(root, members=members, numeric_owner=False)


def _wait_healthy(stack: Stack, service: str, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        row = next((r for r in stack.services() if r.get("Service") == service), {})
        if row.get("State") == "running" and row.get("Health") in ("healthy", "", None):
            return
        time.sleep(2)
    raise BackupError(f"{service} did not become healthy within {timeout:.0f} s after the restore (inv logs {service})")


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"

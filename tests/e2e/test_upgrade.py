"""Upgrades on the real engine (issue 17): a stack made with an older MLflow keeps every run when
`images.mlflow_base` moves to today's MLflow, and a Postgres data volume of another major version
is refused before anything starts.

The older MLflow is built the way today's base is: `inv up` (as root, as CI runs the tier) sees
that config.yaml names `ghcr.io/mlflow/mlflow:v3.9.0`, downloads its wheels into the wheelhouse
(`inv wheelhouse`) and builds `cslr-local/mlflow:3.9.0` with tools/build-local-bases.sh; that
image is cached by its inputs label like every local base, so a later run builds nothing. Why
3.9.0: the stack's command line needs `--allowed-hosts` (MLflow >= 3.5), and a local base
installs today's SQLAlchemy 2.1, which MLflow before 3.9 cannot import (its
`FallbackAsyncAdaptedQueuePool`; the official images of those versions carry SQLAlchemy 2.0).
Its database schema is about 25 migrations behind 3.17.2's: `mlflow db upgrade` really migrates.

A stack of its own: project cslr-e2e-upgrade, subnet 172.27.0.0/16, host ports 23xxx.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cslr import backup, config, identity, images
from tests.e2e.conftest import ROOT, clean_env, compose_cmd, remove_project
from tests.e2e.test_backup import seed, snapshot

pytestmark = pytest.mark.e2e

PROJECT = "cslr-e2e-upgrade"
OLDER = "3.9.0"
PORT = 23500
URL = f"http://127.0.0.1:{PORT}"
CONFIG = """\
project: {{name: {project}}}
gpu: off
network:
  subnet: 172.27.0.0/16
  addresses: {{health: 172.27.0.2, ray_cpu: 172.27.0.10, ray_gpu: 172.27.0.11, redis: 172.27.0.20, mlflow: 172.27.0.30, postgres: 172.27.0.31, marimo: 172.27.0.40}}
images: {{source: local{mlflow_base}}}
ray:
  cpu: {{cpus: 1, memory: 2g, shm_size: 1g, ports: {{gcs: 23379, dashboard: 23265, client: 23001}}}}
  gpu: {{ports: {{gcs: 23380, dashboard: 23266, client: 23002}}}}
services:
  health: {{port: 23888, ray_client_port: 23101, dashboard_port: 23260}}
  redis: {{enabled: false, port: 23381}}
  mlflow: {{enabled: true, port: {port}}}
  marimo: {{enabled: false, port: 23080}}
"""


def write_config(folder: Path, mlflow_base: str) -> None:
    (folder / "config.yaml").write_text(CONFIG.format(project=PROJECT, port=PORT, mlflow_base=f", mlflow_base: {mlflow_base}" if mlflow_base else ""))


def current_mlflow_base(tmp_path: Path) -> str:
    """Today's default images.mlflow_base (the schema's default), read as the product reads it."""
    probe = tmp_path / "default"
    probe.mkdir()
    write_config(probe, "")
    (probe / ".env").write_text("")
    return config.load(probe / "config.yaml", probe / ".env", environ=clean_env()).get("images", "mlflow_base")


class Folder:
    def __init__(self, path: Path):
        self.path = path

    def inv(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        task, rest = args[0], list(args[1:])
        where = ["--config", str(self.path / "config.yaml")] + ([] if task == "init" else ["--out", str(self.path / "_build")])
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), task, *where, *rest]
        proc = subprocess.run(cmd, cwd=self.path, env=clean_env(), capture_output=True, text=True, timeout=timeout)
        sys.stdout.write(f"\n$ inv {' '.join(args)} -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(compose_cmd(self.path / "_build") + list(args), capture_output=True, text=True, env=clean_env(), timeout=300)

    def mlflow_version(self) -> str:
        proc = self.compose("exec", "-T", "mlflow", "python3", "-c", "import mlflow; print(mlflow.__version__)")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def dumps(self) -> list[Path]:
        return sorted((self.path / "backups").glob(f"cslr-{PROJECT}-pre-mlflow-upgrade-*.pgdump"))

    def dump_stack(self) -> None:
        for args in (["ps", "-a"], ["logs", "--no-color", "--tail", "80"]):
            proc = self.compose(*args)
            sys.stdout.write(f"\n$ docker compose {' '.join(args)}\n{proc.stdout}{proc.stderr}")


def running_containers(project: str) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"], capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.fixture
def folder(tmp_path):
    remove_project(PROJECT)
    f = Folder(tmp_path / "clone")
    f.path.mkdir()
    try:
        yield f
    except BaseException:
        f.dump_stack()
        raise
    finally:
        if (f.path / "_build" / "compose.yaml").exists():
            f.inv("down", "--volumes", "--yes", timeout=300)
        remove_project(PROJECT)


def test_mlflow_upgrade_between_two_versions_keeps_every_run(folder, tmp_path):
    current = current_mlflow_base(tmp_path)
    assert images.mlflow_version(current) != OLDER
    write_config(folder.path, f"ghcr.io/mlflow/mlflow:v{OLDER}")
    assert folder.inv("init").returncode == 0

    # The older stack. On a fresh box this `up` downloads 3.9.0's wheels and builds its base (root).
    up = folder.inv("up", "--timeout", "900", timeout=3600)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    label = subprocess.run(
        ["docker", "image", "inspect", "--format", '{{index .Config.Labels "org.cslr.local.stands-for"}}', f"cslr-local/mlflow:{OLDER}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert label == f"ghcr.io/mlflow/mlflow:v{OLDER}"
    assert folder.mlflow_version() == OLDER
    assert "upgrade:" not in up.stdout  # a fresh database: MLflow creates its schema itself
    seed("upgrade-e2e", runs=3, metrics=3, steps=20, base=URL)
    before = snapshot(base=URL)
    ours = {k: v for k, v in before.items() if k[0] == "upgrade-e2e"}
    assert len(ours) == 3 and all(v["artifacts"] and len(v["metrics"]) == 3 and v["params"] for v in ours.values())

    # Today's MLflow: one `inv up` backs the database up, migrates it once and says so.
    write_config(folder.path, current)
    up = folder.inv("up", "--timeout", "900", timeout=1800)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    said = [line for line in up.stdout.splitlines() if line.startswith("upgrade: MLflow's database schema migrated")]
    assert len(said) == 1, up.stdout
    # The switched-off Redis's volume, made by the first `inv up`, carries its fingerprint too.
    assert "no secret fingerprint" not in up.stdout + up.stderr
    old_rev, new_rev = said[0].split("migrated ", 1)[1].split(" (", 1)[0].split(" -> ")
    assert old_rev != new_rev
    dumps = folder.dumps()
    assert len(dumps) == 1 and str(dumps[0]) in said[0]
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    assert dumps[0].read_bytes()[:5] == b"PGDMP" and dumps[0].stat().st_size > 10_000  # pg_dump's custom format, with the runs
    assert folder.mlflow_version() == images.mlflow_version(current)
    revision = folder.compose("exec", "-T", "postgres", "sh", "-c", f'{backup.PSQL} -c "select version_num from alembic_version"')
    assert revision.stdout.strip() == new_rev, revision.stdout + revision.stderr
    assert snapshot(base=URL) == before  # every run, param, tag, metric value (step, timestamp), artifact byte

    # Again: nothing to migrate, no second dump, the same runs.
    again = folder.inv("up", "--timeout", "900", timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "upgrade:" not in again.stdout and "migrated" not in again.stdout
    assert folder.dumps() == dumps
    assert snapshot(base=URL) == before

    # A Postgres major change: a data volume another major version wrote (its PG_VERSION says so,
    # as a postgres:14 volume's would) is refused before any container starts, with the way out.
    assert folder.inv("down").returncode == 0
    volume = f"{PROJECT}_postgres-data"
    pg_image = images.local_ref("POSTGRES_IMAGE", config.load(folder.path / "config.yaml", folder.path / ".env", environ=clean_env()))
    set_version = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{volume}:/d",
            "--entrypoint",
            "sh",
            pg_image,
            "-c",
            "cat /d/pgdata/PG_VERSION && echo 14 > /d/pgdata/PG_VERSION",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert set_version.returncode == 0 and set_version.stdout.strip() == images.LOCAL_POSTGRES_MAJOR, set_version.stderr
    refused = folder.inv("up", "--timeout", "900")
    assert refused.returncode != 0
    assert "PostgreSQL 14" in refused.stderr and f"PostgreSQL {images.LOCAL_POSTGRES_MAJOR}" in refused.stderr
    assert "inv backup" in refused.stderr and "inv restore ARCHIVE" in refused.stderr and "Traceback" not in refused.stderr
    assert running_containers(PROJECT) == []
    labels = json.loads(subprocess.run(["docker", "volume", "inspect", "--format", "{{json .Labels}}", volume], capture_output=True, text=True).stdout)
    assert labels[identity.OWNER_LABEL] == str(folder.path)  # still this folder's data, untouched

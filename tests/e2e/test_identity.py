"""Two folders (clones) on one Docker engine: a stack belongs to the folder that created it, its
data to the .env that created it, and `inv init --project` gives a second folder a stack of its
own beside the first.

The refusals use the cheapest services: "folder A's stack" is what phase 4 of A's `inv up` does
(the product's own identity.create_volumes, then `compose up` of postgres and redis from A's
generated project); every refusal is the product's own `inv` (it refuses in phase 1, before
images are even looked at). The last test runs two whole stacks at once with `inv up`: A's as
root, B's as a non-root docker-group user from a clone of their own (`inv init --project`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from cslr import config, identity, lifecycle, stack
from tests.e2e.conftest import E2E_USER, ROOT, Inv, clean_env, compose_cmd, remove_project, user_clone

pytestmark = pytest.mark.e2e

PROJECT = "cslr-e2e-id"
CONFIG = f"""\
project: {{name: {PROJECT}}}
gpu: off
network:
  subnet: 172.31.0.0/16
  addresses: {{health: 172.31.0.2, ray_cpu: 172.31.0.10, ray_gpu: 172.31.0.11, redis: 172.31.0.20, mlflow: 172.31.0.30, postgres: 172.31.0.31, marimo: 172.31.0.40}}
images: {{source: local}}
ray:
  cpu: {{cpus: 1, memory: 2g, shm_size: 1g, ports: {{gcs: 36379, dashboard: 38265, client: 31001}}}}
  gpu: {{ports: {{gcs: 36380, dashboard: 38266, client: 31002}}}}
services:
  health: {{port: 38888, ray_client_port: 31101, dashboard_port: 38260}}
  redis: {{enabled: true, port: 36381}}
  mlflow: {{enabled: true, port: 35000}}
  marimo: {{enabled: false, port: 38080}}
"""
SERVICES = ["postgres", "redis"]  # the data services: what A's stack needs to hold data here


class Folder:
    """A clone as far as a stack is concerned: config.yaml, .env and the generated project."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(CONFIG)

    def inv(self, *args: str) -> subprocess.CompletedProcess:
        task, rest = args[0], list(args[1:])
        where = ["--config", str(self.path / "config.yaml")] + ([] if task == "init" else ["--out", str(self.path / "_build")])
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), task, *where, *rest]
        proc = subprocess.run(cmd, cwd=self.path, env=clean_env(), capture_output=True, text=True, timeout=600)
        sys.stdout.write(f"\n$ inv {' '.join(args)} ({self.path.name}) -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def stack(self) -> stack.Stack:
        return stack.Stack(config.load(self.path / "config.yaml", self.path / ".env"), self.path / "_build")

    def start_data_services(self) -> None:
        """What phase 4 of this folder's `inv up` does for the data services."""
        st = self.stack()
        lines = identity.create_volumes(identity.scope_of(st), identity.Engine(), lifecycle.data_secrets(st), st.env())
        sys.stdout.write("\n".join(lines) + "\n")
        build = self.path / "_build"
        proc = subprocess.run(
            compose_cmd(build) + ["up", "-d", "--no-build", "--pull", "never", "--wait", *SERVICES],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def engine_objects(project: str) -> dict:
    def names(*argv):
        return sorted(subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout.split())

    label = f"label=com.docker.compose.project={project}"
    return {
        "containers": names("ps", "-a", "--format", "{{.Names}}", "--filter", label),
        "networks": names("network", "ls", "--format", "{{.Name}}", "--filter", label),
        "volumes": names("volume", "ls", "-q", "--filter", label),
    }


def working_dir(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format", '{{index .Config.Labels "com.docker.compose.project.working_dir"}}', container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def volume_labels(name: str) -> dict:
    return json.loads(subprocess.run(["docker", "volume", "inspect", "--format", "{{json .Labels}}", name], capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def folders(tmp_path):
    for name in (PROJECT, PROJECT + "-b"):
        remove_project(name)
    a, b = Folder(tmp_path / "clone-a"), Folder(tmp_path / "clone-b")
    for f in (a, b):
        assert f.inv("init").returncode == 0
    assert a.inv("generate").returncode == 0
    a.start_data_services()
    try:
        yield a, b
    finally:
        for name in (PROJECT, PROJECT + "-b"):
            remove_project(name)


def test_a_second_folder_is_refused_a_running_stack_and_leaves_it_alone(folders):
    a, b = folders
    before = engine_objects(PROJECT)
    assert b.inv("generate").returncode == 0
    for args in (["up"], ["ps"], ["logs", "all"], ["down"]):
        proc = b.inv(*args)
        assert proc.returncode == 2, args
        assert str(a.path) in proc.stderr and "inv init --project NAME" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert engine_objects(PROJECT) == before  # nothing started, stopped or recreated
    assert all(working_dir(c) == str(a.path / "_build") for c in before["containers"])
    assert a.inv("ps").returncode == 0  # the owner still acts on it


def test_a_new_env_over_data_left_after_down_is_refused_before_anything_starts(folders):
    a, b = folders
    assert a.inv("down").returncode == 0
    volumes = engine_objects(PROJECT)["volumes"]
    assert f"{PROJECT}_postgres-data" in volumes and volumes == engine_objects(PROJECT)["volumes"]
    assert volume_labels(f"{PROJECT}_postgres-data")[identity.OWNER_LABEL] == str(a.path)
    assert identity.SECRET_LABEL in volume_labels(f"{PROJECT}_redis-data")

    # Another folder: the volumes are A's.
    proc = b.inv("up")
    assert proc.returncode == 2 and str(a.path) in proc.stderr and "volume" in proc.stderr

    # The same folder after losing .env: a fresh `inv init` gives new secrets that do not open the data.
    shutil.move(a.path / ".env", a.path / "lost.env")
    assert a.inv("init").returncode == 0
    proc = a.inv("up")
    assert proc.returncode == 2
    assert f"{PROJECT}_postgres-data" in proc.stderr and "POSTGRES_PASSWORD" in proc.stderr and f"{PROJECT}_redis-data" in proc.stderr
    assert "inv down --volumes --yes" in proc.stderr and "docs/stacks.md" in proc.stderr
    # The refused run left the generated project as it was: it still holds the secrets that made the data.
    assert str(a.path / "_build" / ".env") in proc.stderr
    old = config.parse_dotenv((a.path / "lost.env").read_text(), ".env")["POSTGRES_PASSWORD"][0]
    assert f"POSTGRES_PASSWORD={old}" in (a.path / "_build" / ".env").read_text()
    assert engine_objects(PROJECT)["containers"] == [] and engine_objects(PROJECT)["networks"] == []  # nothing started

    # The .env that created them opens them again (phase 1 passes on the real engine's labels).
    shutil.move(a.path / "lost.env", a.path / ".env")
    assert a.inv("generate").returncode == 0
    st = a.stack()
    assert lifecycle.claim_for_up(st, identity.Engine()) == []


def test_init_project_gives_a_second_folder_a_stack_beside_the_first(folders):
    a, b = folders
    proc = b.inv("init", "--project", PROJECT + "-b")
    assert proc.returncode == 0 and "project cslr-e2e-id-b" in proc.stdout
    cfg_b = config.load(b.path / "config.yaml", b.path / ".env")
    assert cfg_b.get("project", "name") == PROJECT + "-b"
    assert cfg_b.get("network", "subnet") != "172.31.0.0/16"
    assert cfg_b.get("services", "redis", "port") != 36381
    assert b.inv("generate").returncode == 0
    # Phase 1 of B's `inv up` while A runs: B's stack is its own, and nothing collides.
    st_b = b.stack()
    assert lifecycle.claim_for_up(st_b, identity.Engine()) == []
    assert lifecycle.check_preflight(st_b) == []
    b.start_data_services()
    running = engine_objects(PROJECT)["containers"] + engine_objects(PROJECT + "-b")["containers"]
    states = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", *running], capture_output=True, text=True, check=True).stdout.split()
    assert len(running) == 4 and states == ["healthy"] * 4
    assert b.inv("ps").returncode == 0 and a.inv("ps").returncode == 0


def containers(project: str) -> dict:
    """Each container of a project: what would change if anything recreated, restarted or moved it."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], capture_output=True, text=True, check=True
    ).stdout.split()
    if not ids:
        return {}
    fmt = '{{index .Config.Labels "com.docker.compose.service"}}|{{.Id}}|{{.State.StartedAt}}|{{.RestartCount}}|{{index .Config.Labels "com.docker.compose.project.working_dir"}}|{{.Config.Image}}'
    rows = subprocess.run(["docker", "inspect", "--format", fmt, *ids], capture_output=True, text=True, check=True).stdout.splitlines()
    return {row.split("|", 1)[0]: row.split("|", 1)[1] for row in rows}


def volumes(project: str) -> dict:
    return {name: volume_labels(name) for name in engine_objects(project)["volumes"]}


def healthy(project: str) -> list[str]:
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"], capture_output=True, text=True, check=True
    ).stdout.split()
    fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    return subprocess.run(["docker", "inspect", "--format", fmt, *ids], capture_output=True, text=True, check=True).stdout.split()


def test_two_clones_one_as_a_non_root_user_run_whole_stacks_at_once(tmp_path):
    """Done-when of issue 17: two clones side by side (one as a non-root user) each run their own
    stack at once, and neither touches the other's containers, volumes or labels."""
    b_project = PROJECT + "-b"
    for name in (PROJECT, b_project):
        remove_project(name)
    a = Folder(tmp_path / "clone-a")  # root's clone
    clone, prefix, env = user_clone(Path(tempfile.gettempdir()))  # the non-root docker-group user's own clone and venv
    (clone / "config.yaml").write_text(CONFIG)  # the same tracked config: the same project name, subnet and ports
    b = Inv(clone, clone, prefix, env)
    try:
        assert a.inv("init").returncode == 0
        up_a = a.inv("up", "--timeout", "900")
        assert up_a.returncode == 0, up_a.stdout[-2000:] + up_a.stderr[-2000:]
        before_a, vols_a = containers(PROJECT), volumes(PROJECT)
        assert {"postgres", "redis", "mlflow", "ray-cpu", "health"} <= set(before_a)
        assert all(row.split("|")[3] == str(a.path / "_build") for row in before_a.values())

        # B: one step to a stack of its own, then `inv up` while A runs.
        init_b = b("init", "--config", str(clone / "config.yaml"), "--project", b_project)
        assert init_b.returncode == 0 and f"project {b_project}" in init_b.stdout
        up_b = b("up", "--timeout", "900")
        assert up_b.returncode == 0, up_b.stdout[-2000:] + up_b.stderr[-2000:]

        # Both whole stacks run at once, each healthy.
        after_b = containers(b_project)
        assert set(after_b) == set(before_a) and set(healthy(PROJECT)) == {"healthy"} and set(healthy(b_project)) == {"healthy"}
        # A's containers are the same containers, never restarted, still A's; its volumes and their labels unchanged.
        assert containers(PROJECT) == before_a and volumes(PROJECT) == vols_a
        # B's are B's: created from B's folder, its volumes owned by B's folder (made by the non-root user).
        assert all(row.split("|")[3] == str(clone / "_build") for row in after_b.values())
        vols_b = volumes(b_project)
        assert vols_b and all(labels[identity.OWNER_LABEL] == str(clone) for labels in vols_b.values())
        assert not set(vols_b) & set(vols_a)
        owner = subprocess.run(["stat", "-c", "%U", str(clone / "_build" / "compose.yaml")], capture_output=True, text=True).stdout.strip()
        assert owner == E2E_USER  # B's project was generated by the non-root user
        # Each MLflow answers on its own host port, with its own (empty) store.
        cfg_a = config.load(a.path / "config.yaml", a.path / ".env", environ=clean_env())
        cfg_b = config.load(clone / "config.yaml", clone / ".env", environ=clean_env())
        ports = [c.get("services", "mlflow", "port") for c in (cfg_a, cfg_b)]
        assert ports[0] != ports[1] and cfg_a.get("network", "subnet") != cfg_b.get("network", "subnet")
        for port in ports:
            assert requests.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        assert a.inv("ps").returncode == 0 and b("ps").returncode == 0

        # Each down is its own: A's down leaves B's stack running as it was.
        assert a.inv("down").returncode == 0
        assert containers(b_project) == after_b and set(healthy(b_project)) == {"healthy"} and volumes(b_project) == vols_b
        assert volumes(PROJECT) == vols_a  # `down` without --volumes keeps A's data
    finally:
        b("down", "--volumes", "--yes", timeout=300)
        for name in (PROJECT, b_project):
            remove_project(name)
        shutil.rmtree(clone, ignore_errors=True)

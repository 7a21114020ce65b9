"""A custom service from config.yaml (`services.custom`) on the real engine: it starts, its
healthcheck passes, a Ray task reaches it by its name on ray-network, its environment value
comes from .env, `ps` / `status` / `doctor` list it, and a colliding port is refused before
anything starts.

The service runs the local Ray base (`make bases`; no registry) with a stdlib HTTP server declared
here. A small stack of its own: project cslr-e2e-custom, subnet 172.32.0.0/16, ports 3xxxx."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
import yaml

from tests.e2e.conftest import ROOT, clean_env, compose_cmd, remove_project

pytestmark = pytest.mark.e2e

PROJECT = "cslr-e2e-custom"
SERVER = (
    "import http.server, os\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = os.environ['GREETING'].encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 9000), Handler).serve_forever()\n"
)
CONFIG = {
    "project": {"name": PROJECT},
    "gpu": "off",
    "network": {
        "subnet": "172.32.0.0/16",
        "addresses": {
            "health": "172.32.0.2",
            "ray_cpu": "172.32.0.10",
            "ray_gpu": "172.32.0.11",
            "redis": "172.32.0.20",
            "mlflow": "172.32.0.30",
            "postgres": "172.32.0.31",
            "marimo": "172.32.0.40",
        },
    },
    "images": {"source": "local"},
    "ray": {"cpu": {"cpus": 1, "memory": "2g", "shm_size": "1g", "ports": {"gcs": 36379, "dashboard": 38265, "client": 31001}}},
    "nodes": {"head_whitelist": ["ray-cpu"]},
    "services": {
        "health": {"port": 38888, "ray_client_port": 31101, "dashboard_port": 38260},
        "redis": {"enabled": False},
        "mlflow": {"enabled": False},
        "marimo": {"enabled": False},
        "custom": {
            "my_service": {
                "image": "cslr-local/ray:2.60.0",
                "port": 39000,
                "container_port": 9000,
                "command": ["python3", "-c", SERVER],
                "environment": {"GREETING": "${CUSTOM_GREETING}"},
                "healthcheck": {"http": "/health", "interval_seconds": 2, "start_period_seconds": 20},
                "memory": "256m",
            }
        },
    },
}
TASK = """
import urllib.request
import ray
ray.init(address="auto", log_to_driver=False, logging_level="ERROR")

@ray.remote
def fetch():
    return urllib.request.urlopen("http://my_service:9000/", timeout=10).read().decode()

print("GOT", ray.get(fetch.remote(), timeout=120))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("custom")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    where = ["--config", str(workdir / "config.yaml"), "--out", str(workdir / "_build")]

    def run(*args, timeout=900):
        proc = subprocess.run([*inv, *args], cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=timeout)
        sys.stdout.write(f"\n$ inv {' '.join(args)} -> exit {proc.returncode}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
        return proc

    assert run("init", "--config", str(workdir / "config.yaml")).returncode == 0
    with open(workdir / ".env", "a") as env:
        env.write("CUSTOM_GREETING=hello-from-dotenv\n")
    remove_project(PROJECT)
    try:
        up = run("up", "--timeout", "600", *where)
        assert up.returncode == 0, "inv up failed"
        yield run, where, workdir
    finally:
        run("down", "--volumes", "--yes", *where, timeout=300)
        remove_project(PROJECT)


def test_the_custom_service_is_healthy_and_answers_on_its_published_port(stack):
    run, where, workdir = stack
    rows = subprocess.run(
        compose_cmd(workdir / "_build") + ["ps", "--format", "{{.Service}} {{.State}} {{.Health}}"], capture_output=True, text=True, env=clean_env()
    )
    assert "my_service running healthy" in rows.stdout, rows.stdout + rows.stderr
    with urllib.request.urlopen("http://127.0.0.1:39000/", timeout=10) as resp:
        assert resp.read().decode() == "hello-from-dotenv"  # the value of .env, through _build/.env
    inspect = subprocess.run(
        ["docker", "inspect", f"{PROJECT}-my_service-1", "--format", "{{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.Memory}}"],
        capture_output=True,
        text=True,
    )
    assert inspect.stdout.split() == ['["ALL"]', '["no-new-privileges:true"]', str(256 * 1024**2)], inspect.stdout + inspect.stderr


def test_a_ray_task_reaches_the_custom_service_by_its_name(stack):
    run, where, workdir = stack
    proc = subprocess.run(
        compose_cmd(workdir / "_build") + ["exec", "-T", "ray-cpu", "python3", "-c", TASK], capture_output=True, text=True, env=clean_env(), timeout=300
    )
    assert "GOT hello-from-dotenv" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_ps_status_and_doctor_list_the_custom_service(stack):
    run, where, workdir = stack
    ps = run("ps", *where)
    assert ps.returncode == 0 and any(line.startswith("my_service") and "127.0.0.1:39000" in line for line in ps.stdout.splitlines()), ps.stdout
    status = run("status", *where)
    assert "custom my_service: healthy" in status.stdout, status.stdout
    doctor = run("doctor", *where)
    line = next(line for line in doctor.stdout.splitlines() if "service my_service" in line)
    assert line.startswith("OK") and "healthy" in line, line


def test_a_custom_port_that_collides_is_refused_before_anything_starts(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["project"]["name"] = "cslr-e2e-custom-refused"
    config["services"]["custom"]["my_service"]["port"] = 38888  # the health service's
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    subprocess.run([*inv, "init", "--config", str(tmp_path / "config.yaml")], cwd=tmp_path, env=clean_env(), capture_output=True, check=True)
    with open(tmp_path / ".env", "a") as env:
        env.write("CUSTOM_GREETING=x\n")
    up = subprocess.run(
        [*inv, "up", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "_build")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode == 2, up.stdout + up.stderr
    assert "$.services.custom.my_service.port: found host port 38888, already published by $.services.health.port" in up.stderr
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=cslr-e2e-custom-refused"], capture_output=True, text=True)
    assert listed.stdout.split() == []

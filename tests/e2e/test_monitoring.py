"""End to end, services.monitoring on (local image source): Prometheus reports every Ray node's
metrics target up through Ray's own service-discovery list, follows a head failover, the
health service's /metrics counts a refused forged POST, and the Redis and PostgreSQL exporters'
targets are up and reach their databases (docs/monitoring.md).

Its own stack (project cslr-e2e-mon, its own subnet 172.26.0.0/16 - no other module's, so it may run
beside them - and ports), brought up by `inv up` as the
e2e user like tests/e2e/conftest.py's, without Marimo: two Ray nodes, health, Redis (GCS fault
tolerance off: the failover here is the plain one), MLflow and PostgreSQL, Prometheus and the two
exporters. Needs the local Prometheus and exporter bases (`sudo make bases-monitoring`; `make
test` builds them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from cslr.config import parse_dotenv
from tests.e2e.conftest import E2E, E2E_USER, Inv, clean_env, compose_cmd, running_stack, user_clone

PROJECT = "cslr-e2e-mon"
HEALTH = "http://127.0.0.1:28888"
PROMETHEUS = "http://127.0.0.1:29090"
CPU, GPU = "172.26.0.10", "172.26.0.11"

CONFIG = f"""\
project:
  name: {PROJECT}
gpu: on
extra_overlays: [no-gpu-devices.yaml]
network:
  subnet: 172.26.0.0/16
  addresses: {{health: 172.26.0.2, ray_cpu: {CPU}, ray_gpu: {GPU}, redis: 172.26.0.20, mlflow: 172.26.0.30, postgres: 172.26.0.31, marimo: 172.26.0.40}}
images:
  source: local
ray:
  cpu: {{cpus: 2, memory: 3g, shm_size: 1g, ports: {{gcs: 26379, dashboard: 28265}}}}
  gpu: {{cpus: 2, memory: 3g, shm_size: 1g, ports: {{gcs: 26380, dashboard: 28266}}}}
  gcs_fault_tolerance: false
nodes:
  head_whitelist: [ray-cpu, ray-gpu]
services:
  health: {{port: 28888, ray_client_port: 21001, dashboard_port: 28260}}
  redis: {{enabled: true, port: 26381, memory: 256m}}
  mlflow: {{enabled: true, port: 25000}}
  marimo: {{enabled: false, port: 28080}}
  monitoring: {{enabled: true, port: 29090, grafana_port: 23000}}
"""

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def mon():
    if shutil.which("docker") is None:
        pytest.fail("the e2e tier needs the Docker engine and the local bases; run `make e2e`")
    for base in ("cslr-local/prometheus:2", "cslr-local/redis-exporter:1", "cslr-local/postgres-exporter:0.11"):
        if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode != 0:
            pytest.fail(f"no local base {base}: sudo make bases-monitoring")
    if os.geteuid() == 0:
        repo, prefix, env = user_clone(Path(tempfile.gettempdir()))
        workdir = repo / "_e2e-mon"
        subprocess.run([*prefix, "mkdir", "-p", str(workdir)], check=True)
    else:
        repo, prefix, env = Path(__file__).resolve().parents[2], [], clean_env()
        workdir = Path(tempfile.mkdtemp(prefix="cslr-e2e-mon-"))
    (workdir / "config.yaml").write_text(CONFIG)
    shutil.copy(E2E / "no-gpu-devices.yaml", workdir / "no-gpu-devices.yaml")
    if prefix:
        subprocess.run(["chown", f"{E2E_USER}:", str(workdir / "config.yaml"), str(workdir / "no-gpu-devices.yaml")], check=True)
    with running_stack(Inv(workdir, repo, prefix, env), PROJECT) as runner:
        yield runner


def seen_by_prometheus(build: Path) -> str:
    """What Prometheus sees: its targets, and the service-discovery files in the nodes' volumes."""
    files = subprocess.run(
        compose_cmd(build) + ["exec", "-T", "prometheus", "sh", "-c", "ls -la /ray/ray-cpu /ray/ray-gpu; head -c 600 /ray/*/cslr-prometheus-sd.json"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    state = subprocess.run(
        compose_cmd(build) + ["ps", "-a", "--format", "{{.Service}} {{.State}} {{.Status}}"], capture_output=True, text=True, env=clean_env()
    )
    logs = subprocess.run(compose_cmd(build) + ["logs", "--no-color", "--tail", "40", "prometheus"], capture_output=True, text=True, env=clean_env())
    return f"targets: {targets('ray')}\n{files.stdout}{files.stderr}\n{state.stdout}{logs.stdout[-4000:]}{logs.stderr[-1000:]}"


def wait_until(predicate, seconds: float, what: str, explain=None):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what} (last: {last!r})" + (f"\n{explain()}" if explain else ""))


def targets(job: str) -> dict:
    """{address: health} of a Prometheus job's active targets."""
    try:
        active = requests.get(f"{PROMETHEUS}/api/v1/targets", params={"state": "active"}, timeout=5).json()["data"]["activeTargets"]
    except (requests.RequestException, ValueError, KeyError):
        return {}
    return {t["labels"]["instance"]: t["health"] for t in active if t["labels"].get("job") == job}


def nodes_up(*ips: str):
    """The ray job's targets when the nodes' metrics agents (port 8090) listed are exactly those
    of ``ips`` and every one is up (the head's dashboard target is listed too; its health is not
    the nodes')."""
    got = targets("ray")
    agents = {addr: health for addr, health in got.items() if addr.endswith(":8090")}
    return got if {a.rsplit(":", 1)[0] for a in agents} == set(ips) and set(agents.values()) == {"up"} else None


def known_head() -> str:
    try:
        return requests.get(f"{HEALTH}/", timeout=5).json().get("known_head") or ""
    except requests.RequestException:
        return ""


def metric(text: str, line_start: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_grafana_does_not_run_under_local_images_and_up_says_why(mon):
    env = dict(line.split("=", 1) for line in (mon.workdir / "_build" / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert env["PROMETHEUS_IMAGE"] == "cslr-local/prometheus:2" and env["GRAFANA_ENABLED"] == "false"
    assert env["RAY_GRAFANA_HOST"] == "DISABLED" and "grafana" not in env["COMPOSE_PROFILES"].split(",")
    ps = subprocess.run(compose_cmd(mon.workdir / "_build") + ["ps", "--format", "{{.Service}}"], capture_output=True, text=True, env=clean_env())
    expected = {"health", "ray-cpu", "ray-gpu", "redis", "postgres", "mlflow", "prometheus", "redis-exporter", "postgres-exporter"}
    assert set(ps.stdout.split()) == expected, ps.stdout + ps.stderr


def query(promql: str) -> list:
    try:
        return requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]
    except (requests.RequestException, ValueError, KeyError):
        return []


def test_prometheus_scrapes_the_redis_and_postgres_exporters(mon):
    """Both exporters' targets are up (found by name through Docker's DNS) and each reaches its
    database with the password it was given by environment: redis_up and pg_up are 1."""
    assert wait_until(lambda: targets("redis") == {"redis-exporter:9121": "up"}, 180, "the Redis exporter's target up", lambda: str(targets("redis")))
    assert wait_until(
        lambda: targets("postgres") == {"postgres-exporter:9187": "up"}, 180, "the PostgreSQL exporter's target up", lambda: str(targets("postgres"))
    )
    wait_until(lambda: [r["value"][1] for r in query("redis_up")] == ["1"], 120, "redis_up == 1 (the exporter authenticated)")
    wait_until(lambda: [r["value"][1] for r in query("pg_up")] == ["1"], 120, "pg_up == 1 (the exporter authenticated)")
    # The passwords are in neither exporter's command line.
    env = {k: v for k, (v, _) in parse_dotenv((mon.workdir / "_build" / ".env").read_text(), ".env").items()}
    assert env["REDIS_PASSWORD"] and env["POSTGRES_PASSWORD"]
    for service in ("redis-exporter", "postgres-exporter"):
        cid = subprocess.run(compose_cmd(mon.workdir / "_build") + ["ps", "-q", service], capture_output=True, text=True, env=clean_env()).stdout.strip()
        args = subprocess.run(["docker", "inspect", "-f", "{{json .Path}} {{json .Args}}", cid], capture_output=True, text=True, check=True).stdout
        assert env["REDIS_PASSWORD"] not in args and env["POSTGRES_PASSWORD"] not in args, service


def test_prometheus_scrapes_every_ray_node_and_the_health_service(mon):
    got = wait_until(lambda: nodes_up(CPU, GPU), 240, "both Ray nodes' metrics targets up")
    assert f"{CPU}:44227" in got  # the head's dashboard process, as Ray lists it
    assert wait_until(lambda: targets("cslr-health") == {"health:8080": "up"}, 120, "the health service's target up")
    # Ray's own series arrive (one of the node metrics its Grafana dashboards plot).
    series = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": "count(ray_node_cpu_utilization) by (instance)"}, timeout=10).json()
    assert series["status"] == "success"


def test_health_metrics_count_a_refused_forged_post(mon):
    before = metric(requests.get(f"{HEALTH}/metrics", timeout=5).text, 'cslr_health_refused_total{reason="bad_mac"}')
    forged = requests.post(
        f"{HEALTH}/register",
        json={"hostname": "intruder", "address": "10.0.0.66", "role": "head"},
        headers={"X-CSLR-Time": str(int(time.time())), "X-CSLR-Nonce": "0" * 32, "X-CSLR-MAC": "f" * 64},
        timeout=5,
    )
    assert forged.status_code == 403
    text = requests.get(f"{HEALTH}/metrics", timeout=5).text
    assert metric(text, 'cslr_health_refused_total{reason="bad_mac"}') == before + 1
    assert metric(text, "cslr_health_head_elected") == 1 and 'cslr_health_head_info{host="ray-cpu"' in text
    # And Prometheus sees it too, on its next scrape.
    query = {"query": 'cslr_health_refused_total{reason="bad_mac"}'}

    def scraped():
        result = requests.get(f"{PROMETHEUS}/api/v1/query", params=query, timeout=5).json()["data"]["result"]
        return result and float(result[0]["value"][1]) >= before + 1

    wait_until(scraped, 120, "Prometheus to scrape the refusal")


def test_prometheus_follows_a_head_failover(mon):
    compose = compose_cmd(mon.workdir / "_build")
    wait_until(lambda: nodes_up(CPU, GPU), 240, "both Ray nodes' metrics targets up", lambda: seen_by_prometheus(mon.workdir / "_build"))
    assert known_head().startswith("ray-cpu:")
    subprocess.run(compose + ["stop", "ray-cpu"], check=True, capture_output=True, env=clean_env())
    wait_until(lambda: known_head().startswith("ray-gpu:"), 180, "ray-gpu to become head")

    # The new head's list is read: its node and its dashboard are scraped and up. (The stopped
    # ex-head's copy stays while that node is down - its targets, down, are the truth - unless its
    # ray_node.py got docker stop's SIGTERM; it is removed when that node starts again.)
    def new_head_up():
        got = targets("ray")
        return got if got.get(f"{GPU}:8090") == "up" and f"{GPU}:44227" in got else None

    wait_until(new_head_up, 240, "Prometheus to follow the new head", lambda: seen_by_prometheus(mon.workdir / "_build"))
    changes = metric(requests.get(f"{HEALTH}/metrics", timeout=5).text, "cslr_health_head_changes_total")
    assert changes >= 2  # the first election, then the failover
    # The old head comes back as a worker: the new head lists it, and every target is up again.
    subprocess.run(compose + ["start", "ray-cpu"], check=True, capture_output=True, env=clean_env())

    # Its stale copy is gone (removed when it started), so its old dashboard target is too.
    def rejoined():
        got = nodes_up(CPU, GPU)
        return got if got and f"{CPU}:44227" not in got else None

    wait_until(rejoined, 300, "ray-cpu's metrics target up again, listed by ray-gpu", lambda: seen_by_prometheus(mon.workdir / "_build"))
    assert known_head().startswith("ray-gpu:")

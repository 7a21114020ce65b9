"""`inv up` on a stack that never becomes healthy: a non-zero exit that names the failing
service and shows its last log lines, and nothing left running afterwards (teardown)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, clean_env

pytestmark = pytest.mark.e2e

CONFIG = """\
project: {name: cslr-e2e-fail}
gpu: off
extra_overlays: [failing-health.yaml]
network:
  subnet: 172.30.0.0/16
  addresses: {health: 172.30.0.2, ray_cpu: 172.30.0.10, ray_gpu: 172.30.0.11, redis: 172.30.0.20, mlflow: 172.30.0.30, postgres: 172.30.0.31, marimo: 172.30.0.40}
images: {source: local}
ray:
  cpu: {cpus: 1, memory: 2g, shm_size: 1g, ports: {gcs: 26379, dashboard: 28265, client: 21001}}
services:
  health: {port: 28888, ray_client_port: 21101, dashboard_port: 28260}
  redis: {enabled: false}
  mlflow: {enabled: false}
  marimo: {enabled: false}
"""


def prepare(tmp_path, config=CONFIG):
    (tmp_path / "config.yaml").write_text(config)
    (tmp_path / "failing-health.yaml").write_text((Path(__file__).parent / "failing-health.yaml").read_text())
    inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    where = ["--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "_build")]

    def run(*a):
        return subprocess.run([*inv, *a], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)

    assert run("init", "--config", str(tmp_path / "config.yaml")).returncode == 0
    return run, where


def containers() -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=cslr-e2e-fail"], capture_output=True, text=True).stdout.split()


def test_preflight_refuses_a_busy_host_port_before_starting_anything(tmp_path):
    import socket

    run, where = prepare(tmp_path)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 28888))
        sock.listen()
        up = run("up", *where)
    assert up.returncode == 1
    assert "preflight failed" in up.stderr and "host port 127.0.0.1:28888 (services.health.port) is already in use" in up.stderr
    assert containers() == []


def test_preflight_refuses_a_ray_version_mismatch(tmp_path):
    # A pulled base (here the local one, named as images.ray) that carries another Ray version.
    config = CONFIG.replace("ray:\n", "ray:\n  version: 2.59.0\n").replace("images: {source: local}", "images: {source: pull, ray: cslr-local/ray:2.60.0}")
    run, where = prepare(tmp_path, config)
    up = run("up", *where)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "images.ray cslr-local/ray:2.60.0 carries Ray 2.60.0, expected ray.version 2.59.0" in up.stderr
    assert containers() == []


def test_up_reports_the_unhealthy_service_with_its_logs(tmp_path):
    run, where = prepare(tmp_path)
    try:
        up = run("up", "--timeout", "180", *where)
        sys.stdout.write(up.stdout + up.stderr)
        assert up.returncode != 0
        assert "health is running unhealthy. Its last log lines:" in up.stderr
        assert "health-1  |" in up.stderr  # the service's own log lines follow
        assert "Its last healthcheck (exit 1): probe failed on purpose" in up.stderr
    finally:
        down = run("down", "--volumes", "--yes", *where)
        assert down.returncode == 0, down.stderr
    assert containers() == []

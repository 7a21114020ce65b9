"""Preflight findings (cslr/preflight.py). Engine answers are recorded `docker` outputs: the
real engine is exercised by the e2e tier; the NVIDIA runtime only exists on a GPU host."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess

import pytest

from cslr import compose, preflight


def answer(stdout="", returncode=0, stderr=""):
    return lambda *a, **k: subprocess.CompletedProcess(a[0] if a else [], returncode, stdout, stderr)


def test_host_routes_parses_proc_net_route(tmp_path):
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    )
    assert preflight.host_routes(str(route)) == [ipaddress.IPv4Network("192.168.0.0/24"), ipaddress.IPv4Network("172.17.0.0/16")]


def test_port_free_sees_a_listener():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert preflight.port_free("127.0.0.1", port) is False
        found = preflight.busy_ports("127.0.0.1", [(("services", "mlflow", "port"), port)], lambda path: False)
        assert found == [f"host port 127.0.0.1:{port} (services.mlflow.port) is already in use; free it or change that port in config.yaml"]
        # The stack's own running service holds it: not a finding.
        assert preflight.busy_ports("127.0.0.1", [(("services", "mlflow", "port"), port)], lambda path: True) == []
    assert preflight.port_free("127.0.0.1", port) is True


def test_subnet_overlaps_other_networks_and_routes_but_not_its_own_bridge():
    subnet = ipaddress.IPv4Network("172.28.0.0/16")
    found = preflight.subnet_overlaps(subnet, [("other_net", ipaddress.IPv4Network("172.28.5.0/24"))], [subnet, ipaddress.IPv4Network("172.16.0.0/12")])
    assert found == [
        "network.subnet 172.28.0.0/16 overlaps Docker network 'other_net' (172.28.5.0/24); choose another network.subnet",
        "network.subnet 172.28.0.0/16 overlaps the host route 172.16.0.0/12; choose another network.subnet",
    ]


@pytest.mark.parametrize(
    "stdout,ok",
    [("2.40.3\n", True), ("v2.24.4\n", True), ("2.24.3\n", False), ("1.29.2\n", False), ("", False)],
)
def test_compose_available_needs_v2_at_least_the_minimum(stdout, ok):
    found = preflight.compose_available(answer(stdout), binary="/x/docker-compose")
    assert (found == []) is ok, found


def test_compose_available_missing_binary_says_how_to_get_one():
    def missing(*a, **k):
        raise FileNotFoundError(a[0][0])

    (finding,) = preflight.compose_available(missing, binary="/nowhere/docker-compose")
    assert "looked for /nowhere/docker-compose" in finding and "make venv" in finding


def test_docker_available_reports_permission_and_old_engines():
    (denied,) = preflight.docker_available(answer(returncode=1, stderr="permission denied while trying to connect to the Docker daemon socket"))
    assert "docker` group" in denied
    (old,) = preflight.docker_available(answer("1.40\n"))
    assert "API 1.40" in old
    assert preflight.docker_available(answer("1.41\n")) == []


GPU_DOC = {
    "services": {
        "ray-gpu": {"deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}},
        "ray-cpu": {},
    }
}


def test_wants_nvidia_devices_reads_the_merged_project():
    assert preflight.wants_nvidia_devices(GPU_DOC, ["ray-cpu", "ray-gpu"]) is True
    assert preflight.wants_nvidia_devices(GPU_DOC, ["ray-cpu"]) is False
    assert preflight.wants_nvidia_devices({"services": {"ray-gpu": {}}}, ["ray-gpu"]) is False


@pytest.mark.parametrize(
    "info,ok",
    [
        ({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}, True),
        ({"Runtimes": {"runc": {}}, "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=all"}]}, True),
        ({"Runtimes": {"runc": {}}, "DiscoveredDevices": [{"Source": "cdi", "ID": "vendor.com/fpga=0"}]}, False),
        ({"Runtimes": {"runc": {}}}, False),
    ],
)
def test_gpu_runtime_accepts_the_nvidia_runtime_or_cdi_devices(info, ok):
    found = preflight.gpu_runtime(answer(json.dumps(info)))
    assert (found == []) is ok
    if not ok:
        assert "NVIDIA Container Toolkit" in found[0]


def test_parse_compose_version():
    assert compose.parse_compose_version("Docker Compose version v2.40.3-desktop.1") == (2, 40, 3)
    assert compose.parse_compose_version("garbage") is None


def test_an_engine_that_remaps_ids_is_named_with_the_fix():
    rootless = ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]
    [finding] = preflight.remapped_ids(rootless, 1001)
    assert "rootless" in finding and "uid 1001" in finding and "CSLR_UID=0 CSLR_GID=0 inv up" in finding
    [finding] = preflight.remapped_ids(["name=apparmor", "name=userns"], 1001)
    assert "userns-remap" in finding and "CSLR_UID" in finding
    assert preflight.remapped_ids(rootless, 0) == []  # container root is the user there
    assert preflight.remapped_ids(["name=apparmor", "name=seccomp,profile=builtin", "name=cgroupns"], 1001) == []  # Docker CE as root


def test_security_options_tolerate_an_engine_that_says_nothing_useful():

    def run(out, code=0):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, code, out, "")

    assert preflight.security_options(run('["name=rootless"]\n')) == ["name=rootless"]
    assert preflight.security_options(run("null\n")) == []
    assert preflight.security_options(run("garbage")) == []
    assert preflight.security_options(run('["name=rootless"]', code=1)) == []

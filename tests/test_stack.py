"""Pure parts of the stack module; the real engine is exercised by the e2e tier."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from cslr import config, stack


def test_parse_ps_json_lines_and_array():
    lines = '{"Service":"a","State":"running","Health":""}\n{"Service":"b","State":"exited","Health":""}\n'
    assert [r["Service"] for r in stack.parse_ps(lines)] == ["a", "b"]
    assert [r["Service"] for r in stack.parse_ps('[{"Service":"c"}]')] == ["c"]
    assert stack.parse_ps("") == []


@pytest.mark.parametrize(
    "row,checked,ready",
    [
        ({"State": "running", "Health": "healthy"}, True, True),
        ({"State": "running", "Health": "starting"}, True, False),
        # A restarted container briefly reports no health at all: not healthy yet.
        ({"State": "running", "Health": ""}, True, False),
        ({"State": "running", "Health": ""}, False, True),
        ({"State": "created", "Health": ""}, False, False),
    ],
)
def test_is_ready(row, checked, ready):
    assert stack.is_ready(row, checked) is ready


def test_service_urls_use_bind_address_and_token(project):
    cfg = config.load(project("services:\n  mlflow: {port: 5500}\n"), environ={})
    urls = stack.service_urls(cfg)
    assert urls["mlflow"] == "http://127.0.0.1:5500/"
    assert urls["marimo"] == "http://127.0.0.1:8080/?access_token=marimo-secret"
    wide = config.load(project("network: {bind_address: 0.0.0.0}\n"), environ={})
    assert stack.service_urls(wide)["health"] == "http://127.0.0.1:8888/ (Ray client: ray://127.0.0.1:10001)"


def test_format_status_lists_nodes_head_first():
    report = {
        "ray_nodes": [
            {"hostname": "ray-gpu", "ip": "172.28.0.11", "role": "worker", "cpus": 4.0, "gpus": 1.0, "alive": True},
            {"hostname": "ray-cpu", "ip": "172.28.0.10", "role": "head", "cpus": 2.0, "gpus": 0.0, "alive": True},
        ],
        "head": "ray-cpu", "mlflow": True, "redis": None,
    }
    lines = stack.format_status(report).splitlines()
    assert lines[2].split() == ["ray-cpu", "172.28.0.10", "head", "2", "0", "yes"]
    assert lines[3].split() == ["ray-gpu", "172.28.0.11", "worker", "4", "1", "yes"]
    assert "head: ray-cpu (2 alive node(s))" in lines and "mlflow: reachable" in lines and "redis: switched off" in lines


def test_host_routes_parses_proc_net_route(tmp_path):
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    )
    assert stack.host_routes(str(route)) == [ipaddress.IPv4Network("192.168.0.0/24"), ipaddress.IPv4Network("172.17.0.0/16")]


def test_port_free_sees_a_listener():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert stack.port_free("127.0.0.1", port) is False
    assert stack.port_free("127.0.0.1", port) is True


def test_down_volumes_needs_yes(project, tmp_path):
    calls = []
    st = stack.Stack(config.load(project("{}\n"), environ={}), tmp_path, run=lambda *a, **k: calls.append(a))
    with pytest.raises(stack.StackError, match="--yes"):
        st.down(volumes=True)
    assert calls == []  # refused before anything ran


def test_stack_command_targets_the_generated_project(project, tmp_path):
    st = stack.Stack(config.load(project("{}\n"), environ={}), tmp_path / "_build")
    cmd = st.command(["ps"])
    assert cmd[1:] == ["--env-file", str(tmp_path / "_build" / ".env"), "-f", str(tmp_path / "_build" / "compose.yaml"), "ps"]

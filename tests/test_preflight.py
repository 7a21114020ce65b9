"""Preflight findings (cslr/preflight.py). Engine answers are recorded `docker` outputs: the
real engine is exercised by the e2e tier; the NVIDIA runtime only exists on a GPU host."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from pathlib import Path

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


# ------------------------------------------------------------------------------ multi-host firewall

TWO_HOSTS = (Path(__file__).parent / "contract" / "multihost-config.yaml").read_text()


def saved_with(markers, jumps=True, chains=True):
    """What `iptables-save -t filter` prints with the rules of `inv firewall` loaded."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":DOCKER-USER - [0:0]"]
    if chains:
        lines += [":CSLR-FW - [0:0]", ":CSLR-FW-INPUT - [0:0]"]
    if jumps:
        lines += ["-A INPUT -j CSLR-FW-INPUT", "-A DOCKER-USER -j CSLR-FW"]
    lines.append("-A DOCKER-USER -j RETURN")
    if chains:
        for chain, name in (("CSLR-FW", markers.forward), ("CSLR-FW-INPUT", markers.input)):
            lines += [
                f"-A {chain} -j RETURN",
                f'-A {chain} -m recent --rcheck --name {name} --mask 255.255.255.255 --rsource -m comment --comment "cslr marker (never matches)" -j RETURN',
            ]
    return "\n".join(lines + ["COMMIT"]) + "\n"


@pytest.fixture
def two_hosts(project):
    from cslr import config

    return config.load(project(TWO_HOSTS), environ={})


def test_a_multi_host_start_needs_the_loaded_rules_of_this_config(two_hosts):
    from cslr import multihost

    markers = multihost.firewall_markers(two_hosts, "host-a")
    # Not root (iptables-save unreadable): the markers in /proc/net/xt_recent decide.
    findings, notes = preflight.firewall_check(two_hosts, "host-a", saved=lambda: None, lists=lambda: set(markers.names) | {"other"})
    assert findings == [] and "seen without root" in notes[0] and "root also sees the jumps" in notes[0]
    [finding], notes = preflight.firewall_check(two_hosts, "host-a", saved=lambda: None, lists=set)
    assert notes == []
    assert finding.startswith("multi-host: the firewall of host-a is not in place (seen without root: the markers /proc/net/xt_recent/cslr-fw-")
    assert "MLflow (no login)" in finding and "network.bind_address 0.0.0.0" in finding
    assert "`inv firewall --host host-a --persist | sudo sh`" in finding and "`inv up --firewall-elsewhere`" in finding
    # Only one of the two chains loaded is not enough.
    [finding], _ = preflight.firewall_check(two_hosts, "host-a", saved=lambda: None, lists=lambda: {markers.forward})
    assert "are absent" in finding
    # Root: iptables-save decides, jumps included.
    findings, notes = preflight.firewall_check(two_hosts, "host-a", saved=lambda: saved_with(markers), lists=set)
    assert findings == [] and "seen in iptables-save" in notes[0]


def test_rules_of_another_config_or_host_do_not_count(two_hosts):
    from cslr import multihost

    theirs = multihost.firewall_markers(two_hosts, "host-b")  # e.g. config.yaml changed since they were applied
    [finding], _ = preflight.firewall_check(two_hosts, "host-a", saved=lambda: None, lists=lambda: set(theirs.names))
    assert "the loaded rules are from another config.yaml" in finding
    [finding], _ = preflight.firewall_check(two_hosts, "host-a", saved=lambda: saved_with(theirs), lists=set)
    assert "do not hold the rules of this config.yaml" in finding


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"jumps": False}, "DOCKER-USER does not jump to CSLR-FW; INPUT does not jump to CSLR-FW-INPUT"),
        ({"chains": False, "jumps": False}, "iptables-save shows no chain CSLR-FW"),
    ],
)
def test_as_root_the_jumps_are_checked_too(two_hosts, kwargs, reason):
    from cslr import multihost

    markers = multihost.firewall_markers(two_hosts, "host-a")
    [finding], _ = preflight.firewall_check(two_hosts, "host-a", saved=lambda: saved_with(markers, **kwargs), lists=set)
    assert reason in finding
    # The markers loaded while this backend's iptables-save shows nothing: another backend's rules, which Docker's chains never reach.
    [finding], _ = preflight.firewall_check(two_hosts, "host-a", saved=lambda: saved_with(markers, **kwargs), lists=lambda: set(markers.names))
    assert "another iptables backend" in finding


def test_firewall_elsewhere_skips_the_check_loudly(two_hosts):
    def unread():
        raise AssertionError("not consulted")

    findings, [note] = preflight.firewall_check(two_hosts, "host-a", elsewhere=True, saved=unread, lists=unread)
    assert findings == [] and note.startswith("WARNING: --firewall-elsewhere: the firewall of `inv firewall` is NOT checked")


def test_a_single_host_stack_needs_no_rules(project):
    from cslr import config

    cfg = config.load(project('network:\n  bind_address: "0.0.0.0"\n'), environ={})
    assert preflight.firewall_check(cfg, None, saved=lambda: None, lists=set) == ([], [])


def test_recent_lists_and_iptables_rules_read_what_a_non_root_user_can(tmp_path):
    (tmp_path / "cslr-fw-abc").write_text("")
    assert preflight.recent_lists(str(tmp_path)) == {"cslr-fw-abc"}
    assert preflight.recent_lists(str(tmp_path / "absent")) == set()  # no xt_recent module: no marker loaded
    denied = answer("", returncode=1, stderr="iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)")
    assert preflight.iptables_rules(denied, binary="iptables-save") is None
    assert preflight.iptables_rules(answer("*filter\nCOMMIT\n"), binary="iptables-save") == "*filter\nCOMMIT\n"

"""`inv init --project NAME` (cslr/beside.py): a second stack on this machine in one step."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cslr import beside, config, identity
from cslr.errors import PlatformError

Net = ipaddress.IPv4Network


def test_free_subnet_skips_the_copied_config_and_every_taken_network():
    current = Net("172.28.0.0/16")
    taken = [Net("172.16.0.0/16"), Net("172.17.0.0/16"), Net("172.18.0.0/15")]
    assert beside.free_subnet(current, taken) == Net("172.20.0.0/16")
    assert beside.free_subnet(Net("172.16.0.0/16"), []) == Net("172.17.0.0/16")


def test_free_subnet_moves_to_the_next_pool_and_gives_up_when_nothing_is_left():
    assert beside.free_subnet(Net("172.28.0.0/16"), [Net("172.16.0.0/12")]) == Net("192.168.0.0/16")
    assert beside.free_subnet(Net("10.0.0.0/8"), [Net("172.16.0.0/12"), Net("192.168.0.0/16")], beside.POOLS) is None


@given(
    st.integers(8, 28),
    st.lists(st.builds(lambda a, p: Net(f"{ipaddress.IPv4Address(a)}/{p}", strict=False), st.integers(0, 2**32 - 1), st.integers(8, 30)), max_size=6),
)
def test_a_chosen_subnet_never_overlaps_what_is_taken(prefix, taken):
    current = Net(f"172.28.0.0/{prefix}", strict=False)
    chosen = beside.free_subnet(current, taken)
    if chosen is not None:
        assert chosen.prefixlen == current.prefixlen
        assert not chosen.overlaps(current) and not any(chosen.overlaps(t) for t in taken)


def test_addresses_keep_their_host_part():
    assert beside.move_address("172.28.0.10", Net("172.29.0.0/16")) == "172.29.0.10"
    assert beside.move_address("172.28.1.40", Net("10.1.0.0/16")) == "10.1.1.40"


def test_ports_shift_together_past_taken_and_busy_ones():
    ports = {("a",): 8080, ("b",): 8888}
    assert beside.shift_ports(ports, taken=set(), free=lambda p: True) == (100, {("a",): 8180, ("b",): 8988})
    # 8180 published by a container, 8280 busy on the host: +300 is the first that fits
    assert beside.shift_ports(ports, taken={8180}, free=lambda p: p != 8280)[0] == 300
    assert beside.shift_ports({("a",): 65500}, taken=set(), free=lambda p: True) is None


def test_a_shift_never_lands_on_the_copied_configs_own_ports():
    ports = {("a",): 5000, ("b",): 5100}
    shift, moved = beside.shift_ports(ports, taken=set(), free=lambda p: True)
    assert shift == 200 and set(moved.values()) == {5200, 5300}


def test_host_ports_of_containers_are_read_from_hostile_inspect_output():
    inspected = [
        {"HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8888"}], "9/udp": None}}},
        {
            "HostConfig": {
                "PortBindings": {"1/tcp": [{"HostPort": ""}, "junk", {"HostPort": "x7"}, {"HostPort": "99999"}, {"HostPort": "9" * 5000}, {"HostPort": 6000}]}
            }
        },
        {"HostConfig": None},
        {"HostConfig": {"PortBindings": []}},
    ]
    assert beside.published_host_ports(inspected) == {8888, 6000}


def test_choose_moves_project_network_addresses_and_every_published_port(project):
    cfg = config.load(project("{}\n"), environ={})
    choice = beside.choose(cfg, "second", [Net("172.29.0.0/16")], {8980}, lambda port: True)
    values = choice.values()
    assert values["CSLR_PROJECT"] == "second" and values["CSLR_SUBNET"] == "172.16.0.0/16"
    assert values["RAY_CPU_IP"] == "172.16.0.10" and values["HEALTH_IP"] == "172.16.0.2"
    assert choice.shift == 100 and values["HEALTH_HOST_PORT"] == "8988" and values["MARIMO_HOST_PORT"] == "8180"
    assert values["RAY_GPU_GCS_HOST_PORT"] == "6480"  # the GPU node's too, should the GPU appear later


@pytest.mark.parametrize("name", ["Second", "", "-x", "a b", "x" * 64, "a/b"])
def test_choose_refuses_a_name_compose_would_not_take(project, name):
    cfg = config.load(project("{}\n"), environ={})
    with pytest.raises(PlatformError, match="--project"):
        beside.choose(cfg, name, [], set(), lambda port: True)


def test_write_env_keeps_every_line_and_backs_up(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# mine\nPOSTGRES_PASSWORD=pw\nCSLR_PROJECT=old   # was here\n")
    env.chmod(0o600)
    beside.write_env(env, {"CSLR_PROJECT": "second", "CSLR_SUBNET": "172.16.0.0/16"})
    text = env.read_text()
    assert text.startswith("# mine\nPOSTGRES_PASSWORD=pw\nCSLR_PROJECT=second\n")
    assert "inv init --project" in text and text.rstrip().endswith("CSLR_SUBNET=172.16.0.0/16")
    assert env.stat().st_mode & 0o777 == 0o600
    [saved] = tmp_path.glob(".env.bak-*")
    assert "CSLR_PROJECT=old" in saved.read_text()


class Engine:
    """`docker` for beside.make: networks, containers (none), volumes of a project owned by `owner`."""

    def __init__(self, owner=None):
        self.owner = owner

    def __call__(self, argv, **kw):
        ok = lambda out: subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
        if argv[:3] == ["docker", "network", "ls"]:
            return ok("bridge\nother_net\n")
        if argv[:3] == ["docker", "network", "inspect"]:
            return ok(json.dumps([{"Subnet": "172.17.0.0/16"}] if argv[3] == "bridge" else [{"Subnet": "172.16.0.0/16"}]))
        if argv[:2] == ["docker", "ps"]:
            return ok("")
        if argv[:4] == ["docker", "volume", "ls", "-q"]:
            return ok("second_postgres-data\n" if self.owner else "")
        if argv[:3] == ["docker", "volume", "inspect"]:
            labels = {identity.PROJECT_LABEL: "second", identity.VOLUME_LABEL: "postgres-data", identity.OWNER_LABEL: self.owner}
            return ok(json.dumps([{"Name": "second_postgres-data", "Labels": labels}]))
        raise AssertionError(argv)


def test_make_writes_a_working_second_stack_into_env(project, tmp_path, monkeypatch):
    monkeypatch.setattr(beside.preflight, "host_routes", lambda: [])
    cfg_path = project("{}\n")
    done = beside.make(cfg_path, tmp_path / ".env", "second", run=Engine(), free=lambda host, port: True)
    assert any("project second" in line for line in done)
    cfg = config.load(cfg_path, environ={})
    assert cfg.get("project", "name") == "second"
    assert cfg.get("network", "subnet") == "172.18.0.0/16"  # 172.16 and .17 are Docker networks
    assert cfg.get("services", "health", "port") == 8988
    assert cfg.get("secrets", "postgres_password")  # the secrets are still there


def test_make_refuses_a_project_name_another_folder_owns(project, tmp_path, monkeypatch):
    monkeypatch.setattr(beside.preflight, "host_routes", lambda: [])
    cfg_path = project("{}\n")
    before = (tmp_path / ".env").read_text()
    with pytest.raises(identity.IdentityError, match="belongs to /usr"):  # a folder that exists
        beside.make(cfg_path, tmp_path / ".env", "second", run=Engine(owner="/usr"), free=lambda host, port: True)
    assert (tmp_path / ".env").read_text() == before


def test_make_twice_never_goes_back_to_config_yamls_own_subnet_and_ports(project, tmp_path, monkeypatch):
    # The second run starts from the first one's .env; config.yaml's own values (the other
    # clones' stack, down or not) stay taken.
    monkeypatch.setattr(beside.preflight, "host_routes", lambda: [])
    cfg_path = project("network: {subnet: 172.16.0.0/16}\n")
    beside.make(cfg_path, tmp_path / ".env", "second", run=Engine(), free=lambda host, port: True)
    beside.make(cfg_path, tmp_path / ".env", "third", run=Engine(), free=lambda host, port: True)
    cfg = config.load(cfg_path, environ={})
    assert cfg.get("project", "name") == "third"
    assert cfg.get("network", "subnet") not in ("172.16.0.0/16", "172.17.0.0/16")
    assert cfg.get("services", "health", "port") == 8888 + 200


json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=12,
)


@given(st.lists(st.dictionaries(st.sampled_from(["HostConfig", "Name"]), st.dictionaries(st.sampled_from(["PortBindings"]), json_st) | json_st), max_size=3))
def test_published_host_ports_survive_any_inspect_output(inspected):
    assert all(isinstance(p, int) and 0 < p < 65536 for p in beside.published_host_ports(inspected))

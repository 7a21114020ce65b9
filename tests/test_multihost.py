"""Multi-host: node layout, per-host variables, cross-host validation, firewall rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cslr import config, multihost, validate
from cslr.errors import ConfigError

TWO_HOSTS = (Path(__file__).parent / "contract" / "multihost-config.yaml").read_text()


def load(project, text=TWO_HOSTS):
    return config.load(project(text), environ={})


def errors(cfg):
    try:
        return [str(p) for p in validate.validate(cfg) if p.severity == "error"]
    except ConfigError as exc:
        return [str(p) for p in exc.problems if p.severity == "error"]


def test_nodes_follow_the_hosts(project):
    names = [n.name for n in multihost.nodes(load(project))]
    assert names == ["ray-cpu-host-a", "ray-gpu-host-a", "ray-cpu-host-b", "ray-gpu-host-b"]


def test_cpu_and_gpu_node_of_a_host_share_no_port(project):
    cpu, gpu = multihost.nodes(load(project))[:2]
    assert set(cpu.ports().values()).isdisjoint(gpu.ports().values())
    cpu_workers = range(cpu.ports()["min_worker"], cpu.ports()["max_worker"] + 1)
    assert not any(p in cpu_workers for p in gpu.ports().values())


def test_whitelist_carries_each_nodes_own_port(project):
    assert multihost.whitelist(load(project)) == ["ray-cpu-host-a:6379", "ray-gpu-host-a:6380"]


def test_worker_only_host_points_at_the_services_host(project):
    cfg = load(project)
    b = multihost.host_env(cfg, multihost.this_host(cfg, "host-b"))
    assert b["MLFLOW_TRACKING_URI"] == "http://192.168.1.10:5000"
    assert b["REDIS_URL"] == "redis://:redis-secret@192.168.1.10:6381/0"
    assert b["RAY_REDIS_ADDRESS"] == "192.168.1.10:6381"
    assert b["HEALTH_URL"] == "http://127.0.0.1:8888"
    assert b["RAY_ADDRESS"] == "ray://health:10001"
    assert b["RAY_CLIENT_PORTS"] == "ray-cpu-host-a=10011,ray-gpu-host-a=10012,ray-cpu-host-b=10011,ray-gpu-host-b=10012"
    assert (b["RAY_CPU_NODE_NAME"], b["HOST_ADDRESS"]) == ("ray-cpu-host-b", "192.168.1.11")
    assert multihost.host_profiles(cfg, multihost.this_host(cfg, "host-b")) == []
    a = multihost.host_env(cfg, multihost.this_host(cfg, "host-a"))
    assert a["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert multihost.host_profiles(cfg, multihost.this_host(cfg, "host-a")) == ["redis", "mlflow", "marimo"]
    assert "192.168.1.11:*" in a["MLFLOW_ALLOWED_HOSTS"].split(",")


def test_unknown_host_names_the_known_ones(project):
    with pytest.raises(KeyError, match="host-a, host-b"):
        multihost.this_host(load(project), "host-z")


def test_two_host_config_is_valid(project):
    assert errors(load(project)) == []


def test_duplicate_host_names_and_addresses(project):
    text = TWO_HOSTS.replace("name: host-b", "name: HOST-A").replace("192.168.1.11", "192.168.1.10")
    out = errors(load(project, text))
    assert any("$.hosts[1].name: found 'HOST-A', already the name of hosts[0]" in e for e in out), out
    assert any("$.hosts[1].address: found 192.168.1.10, already the address of hosts[0]" in e for e in out), out


def test_whitelisted_node_must_be_placed_on_a_host(project):
    out = errors(load(project, TWO_HOSTS.replace("[ray-cpu-host-a, ray-gpu-host-a]", "[ray-cpu-host-a, ray-gpu-host-c]")))
    assert len(out) == 1 and "$.nodes.head_whitelist[1]" in out[0] and "'ray-gpu-host-c', which no host runs" in out[0]


def test_clashing_ports_on_one_host(project):
    text = TWO_HOSTS + "ray:\n  gpu:\n    ports: {gcs: 6379}\n"
    out = errors(load(project, text))
    assert any("$.ray.gpu.ports.gcs" in e and "already used by ray.cpu gcs" in e for e in out), out


def test_worker_port_range_must_not_cover_a_service_port(project):
    text = TWO_HOSTS + "services:\n  mlflow: {port: 20150}\n"
    out = errors(load(project, text))
    assert any("worker ports 20100-20199 include 20150" in e for e in out), out


def test_loopback_binding_cannot_serve_other_hosts(project):
    out = errors(load(project, TWO_HOSTS.replace("bind_address: 0.0.0.0", "bind_address: 127.0.0.1")))
    assert len(out) == 1 and "$.network.bind_address" in out[0] and "cannot reach MLflow" in out[0]


def test_one_host_per_service(project):
    text = TWO_HOSTS.replace("    gpu: true\n\n", "").replace("  - name: host-b\n    address: 192.168.1.11\n    gpu: true\n",
                                                               "  - name: host-b\n    address: 192.168.1.11\n    services: [mlflow]\n")
    out = errors(load(project, text))
    assert any("lists 'mlflow', which hosts[0] already runs" in e for e in out), out


def test_firewall_rules_allow_only_peers_and_exact_ports(project):
    text = multihost.firewall_rules(load(project), "host-a")
    ufw = [l for l in text.splitlines() if l.startswith("sudo ufw")]
    assert ufw == [
        "sudo ufw allow proto tcp from 192.168.1.11 to 192.168.1.10 port 6379,7379,10011,20000,20001,20002,20003,20004,20005,20100:20199 comment 'cslr ray-cpu-host-a'",
        "sudo ufw allow proto tcp from 192.168.1.11 to 192.168.1.10 port 6380,7380,10012,21000,21001,21002,21003,21004,21005,21100:21199 comment 'cslr ray-gpu-host-a'",
        "sudo ufw allow proto tcp from 192.168.1.11 to 192.168.1.10 port 6381 comment 'cslr redis'",
        "sudo ufw allow proto tcp from 192.168.1.11 to 192.168.1.10 port 5000 comment 'cslr mlflow'",
    ]
    assert sum(l.startswith("sudo iptables -A INPUT -p tcp -s 192.168.1.11 -d 192.168.1.10 -m multiport --dports ") for l in text.splitlines()) == 4


def test_firewall_needs_hosts(project):
    with pytest.raises(KeyError, match="no `hosts:`"):
        multihost.firewall_rules(load(project, "{}\n"), None)

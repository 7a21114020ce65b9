"""Multi-host: node layout, per-host variables, cross-host validation, firewall rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cslr import config, multihost, validate
from cslr.errors import ConfigError, UsageError

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
    assert b["RAY_DASHBOARD_PORTS"] == "ray-cpu-host-a=8265,ray-gpu-host-a=8266,ray-cpu-host-b=8265,ray-gpu-host-b=8266"
    assert (b["RAY_CPU_NODE_NAME"], b["HOST_ADDRESS"]) == ("ray-cpu-host-b", "192.168.1.11")
    assert multihost.host_profiles(cfg, multihost.this_host(cfg, "host-b")) == []
    a = multihost.host_env(cfg, multihost.this_host(cfg, "host-a"))
    assert a["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert multihost.host_profiles(cfg, multihost.this_host(cfg, "host-a")) == ["redis", "mlflow", "marimo"]
    assert "192.168.1.11:*" in a["MLFLOW_ALLOWED_HOSTS"].split(",")


def test_unknown_host_names_the_known_ones(project):
    with pytest.raises(UsageError, match="host-a, host-b"):
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


def test_dashboard_proxy_port_must_not_be_a_nodes_dashboard_port_on_host_networking(project):
    text = TWO_HOSTS + "ray:\n  cpu:\n    ports: {dashboard: 8260}\n"
    out = errors(load(project, text))
    assert any("$.ray.cpu.ports.dashboard" in e and "already used by services.health.dashboard_port" in e for e in out), out


def test_worker_port_range_must_not_cover_a_service_port(project):
    text = TWO_HOSTS + "services:\n  mlflow: {port: 20150}\n"
    out = errors(load(project, text))
    assert any("worker ports 20100-20199 include 20150" in e for e in out), out


def test_loopback_binding_cannot_serve_other_hosts(project):
    out = errors(load(project, TWO_HOSTS.replace("bind_address: 0.0.0.0", "bind_address: 127.0.0.1")))
    assert len(out) == 1 and "$.network.bind_address" in out[0] and "cannot reach MLflow" in out[0]


def test_one_host_per_service(project):
    text = TWO_HOSTS.replace("    gpu: true\n\n", "").replace(
        "  - name: host-b\n    address: 192.168.1.11\n    gpu: true\n", "  - name: host-b\n    address: 192.168.1.11\n    services: [mlflow]\n"
    )
    out = errors(load(project, text))
    assert any("lists 'mlflow', which hosts[0] already runs" in e for e in out), out


def commands(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_firewall_filters_docker_published_ports_in_docker_user(project):
    lines = commands(multihost.firewall_rules(load(project), "host-a"))
    ipt = "iptables -w"
    docker = lines[lines.index("set -e") + 1 : lines.index(f"{ipt} -N CSLR-FW-INPUT 2>/dev/null || {ipt} -F CSLR-FW-INPUT")]
    assert docker == [
        f"{ipt} -N CSLR-FW 2>/dev/null || {ipt} -F CSLR-FW",
        f"{ipt} -A CSLR-FW -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"{ipt} -A CSLR-FW -s 127.0.0.0/8 -j RETURN",
        f"{ipt} -A CSLR-FW -s 192.168.1.11 -j RETURN",
        f"{ipt} -A CSLR-FW -s 172.28.0.0/16 -j RETURN",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8888 -m comment --comment 'cslr services.health.port' -j DROP",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 10001 -m comment --comment 'cslr services.health.ray_client_port' -j DROP",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8260 -m comment --comment 'cslr services.health.dashboard_port' -j DROP",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 6381 -m comment --comment 'cslr services.redis.port' -j DROP",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 5000 -m comment --comment 'cslr services.mlflow.port' -j DROP",
        f"{ipt} -A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment 'cslr services.marimo.port' -j DROP",
        f"{ipt} -N DOCKER-USER 2>/dev/null || true",
        f"{ipt} -C DOCKER-USER -j CSLR-FW 2>/dev/null || {ipt} -I DOCKER-USER -j CSLR-FW",
    ]


def test_firewall_filters_host_network_ray_ports_in_input(project):
    lines = commands(multihost.firewall_rules(load(project), "host-b"))
    ipt = "iptables -w"
    cpu = "6379,7379,10011,20000,20001,20002,20003,20004,20005,20100:20199,8265"
    gpu = "6380,7380,10012,21000,21001,21002,21003,21004,21005,21100:21199,8266"
    start = lines.index(f"{ipt} -N CSLR-FW-INPUT 2>/dev/null || {ipt} -F CSLR-FW-INPUT")
    assert lines[start:] == [
        f"{ipt} -N CSLR-FW-INPUT 2>/dev/null || {ipt} -F CSLR-FW-INPUT",
        f"{ipt} -A CSLR-FW-INPUT -i lo -j RETURN",
        f"{ipt} -A CSLR-FW-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -s 192.168.1.10 -m multiport --dports {cpu} -m comment --comment 'cslr ray-cpu-host-b' -j ACCEPT",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -s 172.28.0.0/16 -m multiport --dports {cpu} -m comment --comment 'cslr ray-cpu-host-b' -j ACCEPT",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -m multiport --dports {cpu} -m comment --comment 'cslr ray-cpu-host-b' -j DROP",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -s 192.168.1.10 -m multiport --dports {gpu} -m comment --comment 'cslr ray-gpu-host-b' -j ACCEPT",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -s 172.28.0.0/16 -m multiport --dports {gpu} -m comment --comment 'cslr ray-gpu-host-b' -j ACCEPT",
        f"{ipt} -A CSLR-FW-INPUT -p tcp -m multiport --dports {gpu} -m comment --comment 'cslr ray-gpu-host-b' -j DROP",
        f"{ipt} -C INPUT -j CSLR-FW-INPUT 2>/dev/null || {ipt} -I INPUT -j CSLR-FW-INPUT",
    ]
    # A worker-only host publishes only its health service and proxy; Redis and MLflow live on host-a.
    drops = [line.split("--ctorigdstport ")[1].split()[0] for line in lines if "--ctorigdstport" in line]
    assert drops == ["8888", "10001", "8260"]


def test_firewall_covers_every_published_service_port_of_the_services_host(project):
    """The ports come from validate.published_ports, the list preflight checks: a switched-off service is absent."""
    text = TWO_HOSTS.replace("services: [redis, mlflow, marimo]", "services: [redis, mlflow]") + "services:\n  marimo:\n    enabled: false\n"
    cfg = load(project, text)
    lines = commands(multihost.firewall_rules(cfg, "host-a"))
    drops = sorted(int(line.split("--ctorigdstport ")[1].split()[0]) for line in lines if "--ctorigdstport" in line)
    expected = sorted(port for path, port in validate.published_ports(cfg, gpu_node=True) if path[0] == "services")
    assert drops == expected == [5000, 6381, 8260, 8888, 10001]


def test_firewall_script_is_valid_sh_and_removal_undoes_it(project, tmp_path):
    import subprocess

    for text in (multihost.firewall_rules(load(project), "host-a"), multihost.firewall_removal()):
        assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    removal = commands(multihost.firewall_removal("X"))
    assert removal == [
        "while iptables -w -D DOCKER-USER -j X 2>/dev/null; do :; done",
        "iptables -w -F X 2>/dev/null || true",
        "iptables -w -X X 2>/dev/null || true",
        "while iptables -w -D INPUT -j X-INPUT 2>/dev/null; do :; done",
        "iptables -w -F X-INPUT 2>/dev/null || true",
        "iptables -w -X X-INPUT 2>/dev/null || true",
    ]


def test_firewall_says_ufw_cannot_filter_docker_ports(project):
    text = multihost.firewall_rules(load(project), "host-a")
    assert "ufw,\n# which writes INPUT rules, cannot filter them" in text
    assert not any(line.startswith("sudo ufw") or " -A INPUT " in line for line in text.splitlines())


def test_firewall_needs_hosts(project):
    with pytest.raises(UsageError, match="no `hosts:`"):
        multihost.firewall_rules(load(project, "{}\n"), None)

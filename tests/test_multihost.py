"""Multi-host: node layout, per-host variables, cross-host validation, firewall rules."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def restore_input(script):
    """The iptables-restore input the script pipes (its here-document), comments left out."""
    lines = script.splitlines()
    body = lines[lines.index("cat <<'CSLR_FW_RULES'") + 1 : lines.index("CSLR_FW_RULES")]
    return [line for line in body if not line.startswith("#")]


def chain_rules(script, chain):
    return [line for line in restore_input(script) if line.startswith(f"-A {chain} ")]


def test_firewall_filters_docker_published_ports_and_the_subnet_in_docker_user(project):
    cfg = load(project)
    markers = multihost.firewall_markers(cfg, "host-a")
    assert chain_rules(multihost.firewall_rules(cfg, "host-a"), "CSLR-FW") == [
        "-A CSLR-FW -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A CSLR-FW -s 127.0.0.0/8 -j RETURN",
        "-A CSLR-FW -s 192.168.1.11 -j RETURN",
        "-A CSLR-FW -s 172.28.0.0/16 -j RETURN",
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8888 -m comment --comment "cslr services.health.port" -j DROP',
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 10001 -m comment --comment "cslr services.health.ray_client_port" -j DROP',
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8260 -m comment --comment "cslr services.health.dashboard_port" -j DROP',
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 6381 -m comment --comment "cslr services.redis.port" -j DROP',
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 5000 -m comment --comment "cslr services.mlflow.port" -j DROP',
        '-A CSLR-FW -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "cslr services.marimo.port" -j DROP',
        # Not only DNATed packets: anything routed straight to a container address, any protocol.
        '-A CSLR-FW -d 172.28.0.0/16 -m comment --comment "cslr network.subnet" -j DROP',
        "-A CSLR-FW -j RETURN",
        f'-A CSLR-FW -m recent --name {markers.forward} --rcheck -m comment --comment "cslr marker (never matches)" -j RETURN',
    ]


def test_the_subnet_drop_follows_network_subnet_and_every_trusted_source(project):
    cfg = load(project, TWO_HOSTS.replace("bind_address: 0.0.0.0", "bind_address: 0.0.0.0\n  subnet: 10.77.0.0/20"))
    rules = multihost.firewall_ruleset(cfg, "host-a")
    drop = rules.index('-A CSLR-FW -d 10.77.0.0/20 -m comment --comment "cslr network.subnet" -j DROP')
    returns = [i for i, line in enumerate(rules) if line.startswith("-A CSLR-FW -s ") and line.endswith("-j RETURN")]
    assert returns and max(returns) < drop  # the peers and the stack's own containers pass first
    assert "-A CSLR-FW -s 10.77.0.0/20 -j RETURN" in rules
    assert not any("172.28." in line for line in rules)


def test_firewall_filters_host_network_ray_ports_in_input(project):
    cfg = load(project)
    script = multihost.firewall_rules(cfg, "host-b")
    cpu = "6379,7379,10011,20000,20001,20002,20003,20004,20005,20100:20199,8265"
    gpu = "6380,7380,10012,21000,21001,21002,21003,21004,21005,21100:21199,8266"
    assert chain_rules(script, "CSLR-FW-INPUT") == [
        "-A CSLR-FW-INPUT -i lo -j RETURN",
        "-A CSLR-FW-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f'-A CSLR-FW-INPUT -p tcp -s 192.168.1.10 -m multiport --dports {cpu} -m comment --comment "cslr ray-cpu-host-b" -j ACCEPT',
        f'-A CSLR-FW-INPUT -p tcp -s 172.28.0.0/16 -m multiport --dports {cpu} -m comment --comment "cslr ray-cpu-host-b" -j ACCEPT',
        f'-A CSLR-FW-INPUT -p tcp -m multiport --dports {cpu} -m comment --comment "cslr ray-cpu-host-b" -j DROP',
        f'-A CSLR-FW-INPUT -p tcp -s 192.168.1.10 -m multiport --dports {gpu} -m comment --comment "cslr ray-gpu-host-b" -j ACCEPT',
        f'-A CSLR-FW-INPUT -p tcp -s 172.28.0.0/16 -m multiport --dports {gpu} -m comment --comment "cslr ray-gpu-host-b" -j ACCEPT',
        f'-A CSLR-FW-INPUT -p tcp -m multiport --dports {gpu} -m comment --comment "cslr ray-gpu-host-b" -j DROP',
        "-A CSLR-FW-INPUT -j RETURN",
        f'-A CSLR-FW-INPUT -m recent --name {multihost.firewall_markers(cfg, "host-b").input} --rcheck -m comment --comment "cslr marker (never matches)" -j RETURN',
    ]
    # A worker-only host publishes only its health service and proxies; Redis and MLflow live on host-a.
    drops = [line.split("--ctorigdstport ")[1].split()[0] for line in restore_input(script) if "--ctorigdstport" in line]
    assert drops == ["8888", "10001", "8260"]


def test_firewall_covers_every_published_service_port_of_the_services_host(project):
    """The ports come from validate.published_ports, the list preflight checks: a switched-off service is absent."""
    text = TWO_HOSTS.replace("services: [redis, mlflow, marimo]", "services: [redis, mlflow]") + "services:\n  marimo:\n    enabled: false\n"
    cfg = load(project, text)
    lines = restore_input(multihost.firewall_rules(cfg, "host-a"))
    drops = sorted(int(line.split("--ctorigdstport ")[1].split()[0]) for line in lines if "--ctorigdstport" in line)
    expected = sorted(port for path, port in validate.published_ports(cfg, gpu_node=True) if path[0] == "services")
    assert drops == expected == [5000, 6381, 8260, 8888, 10001]


def test_the_script_refreshes_in_one_iptables_restore_transaction(project):
    """No `iptables -A/-F/-I` outside the restore: one commit replaces both chains and adds a missing
    jump, so a refresh has no moment without rules; the jumps are looked up before the restore
    starts (iptables-legacy-restore holds the xtables lock that `iptables -C` would wait for)."""
    script = multihost.firewall_rules(load(project), "host-a")
    lines = commands(script)
    restore = lines.index("} | iptables-restore -w --noflush")
    assert lines[-1] == "} | iptables-restore -w --noflush"
    outside = [line for line in lines[: lines.index("{")] if line.startswith("iptables ")]
    assert outside == [
        "iptables -w -N DOCKER-USER 2>/dev/null || true  # Docker keeps an existing DOCKER-USER chain",
    ]
    checks = [line for line in lines if line.startswith("if iptables -w -C ")]
    assert checks == [
        "if iptables -w -C DOCKER-USER -j CSLR-FW 2>/dev/null; then fwd=''; else fwd='-I DOCKER-USER -j CSLR-FW'; fi",
        "if iptables -w -C INPUT -j CSLR-FW-INPUT 2>/dev/null; then inp=''; else inp='-I INPUT -j CSLR-FW-INPUT'; fi",
    ]
    assert all(lines.index(c) < lines.index("{") for c in checks)
    body = restore_input(script)
    assert body[:5] == ["*filter", ":CSLR-FW - [0:0]", ":CSLR-FW-INPUT - [0:0]", "-F CSLR-FW", "-F CSLR-FW-INPUT"]
    assert lines[restore - 3 : restore] == ['[ -z "$fwd" ] || echo "$fwd"', '[ -z "$inp" ] || echo "$inp"', "echo COMMIT"]


def test_the_marker_rules_are_unreachable_and_name_the_config(project):
    cfg = load(project)
    script = multihost.firewall_rules(cfg, "host-a")
    for chain in ("CSLR-FW", "CSLR-FW-INPUT"):
        rules = chain_rules(script, chain)
        assert rules[-2] == f"-A {chain} -j RETURN"  # unconditional: the marker after it is never evaluated
        assert "-m recent --name " in rules[-1] and "--rcheck" in rules[-1] and "--set" not in script
    markers = multihost.firewall_markers(cfg, "host-a")
    assert markers == multihost.firewall_markers(load(project), "host-a")  # stable
    assert markers.forward.startswith("cslr-fw-") and markers.input.startswith("cslr-fw-input-")
    assert f"/proc/net/xt_recent/{markers.forward}" in script
    # Another peer, port or subnet is another config: its markers differ.
    for changed in (
        TWO_HOSTS.replace("192.168.1.11", "192.168.1.12"),
        TWO_HOSTS + "services:\n  mlflow: {port: 5001}\n",
        TWO_HOSTS.replace("bind_address: 0.0.0.0", "bind_address: 0.0.0.0\n  subnet: 10.9.0.0/16"),
    ):
        other = multihost.firewall_markers(load(project, changed), "host-a")
        assert other.forward != markers.forward and other.input != markers.input
    assert multihost.firewall_markers(cfg, "host-b") != markers  # each host its own
    assert multihost.firewall_markers(cfg, "host-a", chain="T1").forward.startswith("t1-")


def ipv4_networks():
    return st.builds(lambda addr, prefix: ipaddress.IPv4Network((addr, prefix), strict=False), st.ip_addresses(v=4), st.integers(8, 29))


@settings(max_examples=40, deadline=None)
@given(net=ipv4_networks())
def test_any_stack_subnet_is_dropped_and_marked_with_a_valid_list_name(tmp_path_factory, net):
    from tests.conftest import write_project

    tmp = tmp_path_factory.mktemp("fw")
    cfg = config.load(write_project(tmp, TWO_HOSTS.replace("bind_address: 0.0.0.0", f"bind_address: 0.0.0.0\n  subnet: {net}")), environ={})
    rules = multihost.firewall_ruleset(cfg, "host-a")
    assert f'-A CSLR-FW -d {net} -m comment --comment "cslr network.subnet" -j DROP' in rules
    for name in multihost.firewall_markers(cfg, "host-a").names:
        assert re.fullmatch(r"[a-z0-9-]{1,199}", name)  # xt_recent names: under 200 characters


@pytest.mark.parametrize("bind", ["::", "::1", "fe80::1", "2001:db8::5"])
def test_an_ipv6_bind_address_is_refused_on_a_multi_host_config(project, bind):
    out = errors(load(project, TWO_HOSTS.replace("bind_address: 0.0.0.0", f'bind_address: "{bind}"')))
    assert len(out) == 1, out
    assert "config.yaml:4:" in out[0] and "$.network.bind_address" in out[0]
    assert f"found {bind!r}, an IPv6 address, on a multi-host config; expected an IPv4 address" in out[0]
    assert "filters IPv4 only" in out[0]


def test_an_ipv6_bind_address_stays_allowed_on_a_single_host(project):
    assert errors(load(project, 'network:\n  bind_address: "::1"\n')) == []


def test_an_ipv6_bind_address_from_the_environment_names_the_variable(project):
    cfg = config.load(project(TWO_HOSTS), environ={"CSLR_BIND_ADDRESS": "::"})
    [err] = errors(cfg)
    assert "CSLR_BIND_ADDRESS" in err and "an IPv6 address" in err, err


def test_firewall_script_is_valid_sh_and_removal_undoes_it(project, tmp_path):
    import subprocess

    cfg = load(project)
    for text in (multihost.firewall_rules(cfg, "host-a"), multihost.firewall_removal(), multihost.firewall_persist(cfg, "host-a")):
        assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    removal = commands(multihost.firewall_removal("X"))
    assert removal == [
        "if [ -e /etc/systemd/system/x.service ]; then systemctl disable x.service 2>/dev/null || true; "
        "rm -f /etc/systemd/system/x.service /etc/cslr/x.sh; systemctl daemon-reload 2>/dev/null || true; fi",
        "while iptables -w -D DOCKER-USER -j X 2>/dev/null; do :; done",
        "iptables -w -F X 2>/dev/null || true",
        "iptables -w -X X 2>/dev/null || true",
        "while iptables -w -D INPUT -j X-INPUT 2>/dev/null; do :; done",
        "iptables -w -F X-INPUT 2>/dev/null || true",
        "iptables -w -X X-INPUT 2>/dev/null || true",
    ]


def test_persist_installs_the_rules_script_and_a_boot_unit_before_docker(project, tmp_path):
    """The installer run for real under a scratch root (systemctl replaced by a recorder)."""
    import subprocess

    cfg = load(project)
    log = tmp_path / "systemctl.log"
    recorder = tmp_path / "systemctl"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    recorder.chmod(0o755)
    root = tmp_path / "root"
    installer = multihost.firewall_persist(cfg, "host-a", root=str(root), systemctl=str(recorder))
    run = subprocess.run(["sh", "-e"], input=installer, text=True, capture_output=True)
    assert run.returncode == 0, run.stderr
    script, unit = root / "etc/cslr/cslr-fw.sh", root / "etc/systemd/system/cslr-fw.service"
    assert script.read_text() == multihost.firewall_rules(cfg, "host-a") + "\n"  # exactly what `inv firewall` prints
    assert (script.stat().st_mode & 0o777, unit.stat().st_mode & 0o777) == (0o700, 0o644)
    text = unit.read_text()
    assert "ExecStart=/bin/sh /etc/cslr/cslr-fw.sh\n" in text  # the installed path, not the scratch root
    assert "Before=docker.service" in text and "WantedBy=multi-user.target" in text
    assert "After=firewalld.service ufw.service netfilter-persistent.service" in text
    assert "ExecStop" not in text  # a restart re-applies atomically instead of removing first
    assert log.read_text().splitlines() == ["daemon-reload", "enable cslr-fw.service", "restart cslr-fw.service"]
    assert not list(root.rglob("*.tmp"))
    # --remove takes the unit out again.
    removal = multihost.firewall_removal(root=str(root), systemctl=str(recorder))
    unit_only = "\n".join(removal.splitlines()[:3])  # the iptables part is exercised by the integration test
    assert subprocess.run(["sh"], input=unit_only, text=True).returncode == 0
    assert not script.exists() and not unit.exists()
    assert log.read_text().splitlines()[-2:] == ["disable cslr-fw.service", "daemon-reload"]


def test_firewall_says_ufw_cannot_filter_docker_ports(project):
    text = multihost.firewall_rules(load(project), "host-a")
    assert "ufw,\n# which writes INPUT rules, cannot filter them" in text
    assert not any(line.startswith("sudo ufw") or " -A INPUT " in line for line in text.splitlines())


def test_firewall_needs_hosts(project):
    with pytest.raises(UsageError, match="no `hosts:`"):
        multihost.firewall_rules(load(project, "{}\n"), None)

"""Multi-host deployments: one config.yaml, several physical hosts, one Ray cluster.

Every host runs its own compose project (`inv generate --host NAME`). The Ray nodes use host
networking so that they advertise the host's own address (a bridge address is unreachable from
other hosts); every node name resolves through `extra_hosts`; every Ray port is pinned (a
firewall can allow exactly these, see `inv firewall`). Pure functions: no I/O here.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

from . import topology
from .config import Config
from .errors import Problem, UsageError

KINDS = ("cpu", "gpu")
AGENT_OFFSET = 1000  # the election agent listens on GCS port + 1000 (scripts/ray_node.py)

# Ports Ray opens besides GCS, dashboard and client server, pinned per node kind so that the
# CPU and the GPU node of one host never collide and a firewall can name them.
PINNED = {
    "cpu": {
        "node_manager": 20000,
        "object_manager": 20001,
        "metrics_export": 20002,
        "dashboard_agent_listen": 20003,
        "dashboard_agent_grpc": 20004,
        "runtime_env_agent": 20005,
        "min_worker": 20100,
        "max_worker": 20199,
    },
    "gpu": {
        "node_manager": 21000,
        "object_manager": 21001,
        "metrics_export": 21002,
        "dashboard_agent_listen": 21003,
        "dashboard_agent_grpc": 21004,
        "runtime_env_agent": 21005,
        "min_worker": 21100,
        "max_worker": 21199,
    },
}


@dataclass(frozen=True)
class Node:
    kind: str
    name: str
    host: str
    address: str
    gcs: int
    dashboard: int
    client: int

    @property
    def agent(self) -> int:
        return self.gcs + AGENT_OFFSET

    def ports(self) -> dict[str, int]:
        return {"gcs": self.gcs, "agent": self.agent, "dashboard": self.dashboard, "client": self.client, **PINNED[self.kind]}

    def tcp_ports(self) -> list[str]:
        """Ports other hosts must reach (ufw syntax: `a` or `a:b` ranges). The dashboard stays local."""
        p = self.ports()
        singles = [
            p[k]
            for k in (
                "gcs",
                "agent",
                "client",
                "node_manager",
                "object_manager",
                "metrics_export",
                "dashboard_agent_listen",
                "dashboard_agent_grpc",
                "runtime_env_agent",
            )
        ]
        return [str(x) for x in sorted(singles)] + [f"{p['min_worker']}:{p['max_worker']}"]


def node_name(kind: str, host: str) -> str:
    return f"ray-{kind}-{host}"


def nodes(cfg: Config) -> list[Node]:
    out = []
    for host in cfg.get("hosts") or []:
        for kind in KINDS:
            if kind == "gpu" and not host.get("gpu"):
                continue
            ports = cfg.get("ray", kind, "ports")
            out.append(Node(kind, node_name(kind, host["name"]), host["name"], host["address"], ports["gcs"], ports["dashboard"], ports["client"]))
    return out


def services_host(cfg: Config, service: str) -> dict | None:
    """The host that runs `service` (the first host when no host lists any services)."""
    hosts = cfg.get("hosts") or []
    if not cfg.get("services", service, "enabled") or not hosts:
        return None
    if not any(h.get("services") for h in hosts):
        return hosts[0]
    return next((h for h in hosts if service in (h.get("services") or [])), None)


def this_host(cfg: Config, name: str | None) -> dict:
    """The host entry for `name` (default: this machine's hostname); UsageError says which exist."""
    wanted = name or socket.gethostname()
    for host in cfg.get("hosts") or []:
        if host["name"].lower() == wanted.lower():
            return host
    known = ", ".join(h["name"] for h in cfg.get("hosts") or [])
    raise UsageError(f"host {wanted!r} is not in config.yaml's hosts ({known}); pass --host NAME")


def whitelist(cfg: Config) -> list[str]:
    """The whitelist with each node's own GCS port, as the entrypoint needs it."""
    by_name = {n.name.lower(): n for n in nodes(cfg)}
    out = []
    for entry in cfg.get("nodes", "head_whitelist") or []:
        name = entry.partition(":")[0]
        node = by_name.get(name.lower())
        out.append(f"{name}:{node.gcs}" if node and ":" not in entry else entry)
    return out


def host_env(cfg: Config, host: dict) -> dict[str, str]:
    """Variables the multihost overlays interpolate, for one host."""
    env: dict[str, str] = {"HOST_NAME": host["name"], "HOST_ADDRESS": host["address"], "HEAD_WHITELIST": ",".join(whitelist(cfg))}
    for kind in KINDS:
        K = kind.upper()
        ports = cfg.get("ray", kind, "ports")
        env[f"RAY_{K}_NODE_NAME"] = node_name(kind, host["name"])
        env[f"RAY_{K}_AGENT_PORT"] = str(ports["gcs"] + AGENT_OFFSET)
        for key, value in PINNED[kind].items():
            env[f"RAY_{K}_{key.upper()}_PORT"] = str(value)
    local = topology.reachable_host(cfg.get("network", "bind_address"))

    def reach(service: str, port: int) -> str:
        owner = services_host(cfg, service)
        if owner is None:
            return ""
        return f"{local if owner['name'] == host['name'] else owner['address']}:{port}"

    redis = reach("redis", cfg.get("services", "redis", "port"))
    mlflow = reach("mlflow", cfg.get("services", "mlflow", "port"))
    env["HEALTH_URL"] = f"http://{local}:{cfg.get('services', 'health', 'port')}"
    env["RAY_REDIS_ADDRESS"] = redis
    env["REDIS_URL"] = topology.redis_url(cfg.get("secrets", "redis_password") or "", redis)
    env["MLFLOW_TRACKING_URI"] = f"http://{mlflow}" if mlflow else ""
    # Host networking: an external head's client server listens on its setting's port.
    env["RAY_ADDRESS"] = topology.ray_address(cfg, client_port=cfg.get("ray", "cpu", "ports", "client"))
    # The proxy of every host's health service must know each possible head's client port.
    env["RAY_CLIENT_PORTS"] = ",".join(f"{n.name}={n.client}" for n in nodes(cfg))
    # ... and its dashboard proxy each possible head's dashboard port.
    env["RAY_DASHBOARD_PORTS"] = ",".join(f"{n.name}={n.dashboard}" for n in nodes(cfg))
    hosts_allowed = list(cfg.get("services", "mlflow", "allowed_hosts") or [])
    for h in cfg.get("hosts") or []:
        hosts_allowed += [h["address"], f"{h['address']}:*"]
    env["MLFLOW_ALLOWED_HOSTS"] = ",".join(dict.fromkeys(hosts_allowed))
    return env


def host_profiles(cfg: Config, host: dict) -> list[str]:
    return topology.with_exporters([s for s in topology.OPTIONAL_SERVICES if (services_host(cfg, s) or {}).get("name") == host["name"]])


def extra_hosts(cfg: Config) -> list[tuple[str, str]]:
    return [(n.name, n.address) for n in nodes(cfg)] + [(h["name"], h["address"]) for h in cfg.get("hosts") or []]


# ------------------------------------------------------------------------------ validation


def problems(cfg: Config) -> Iterable[Problem]:
    hosts = cfg.get("hosts") or []
    if not hosts:
        return

    def p(path: tuple, message: str, severity: str = "error") -> Problem:
        return Problem(cfg.location(path), cfg.display_name(path), message, severity)

    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, host in enumerate(hosts):
        if not isinstance(host, dict) or "name" not in host or "address" not in host:
            continue  # the schema reported it
        lname = str(host["name"]).lower()
        if lname in names:
            yield p(("hosts", i, "name"), f"found {host['name']!r}, already the name of hosts[{names[lname]}]; expected unique host names")
        names.setdefault(lname, i)
        if host["address"] in addresses:
            yield p(("hosts", i, "address"), f"found {host['address']}, already the address of hosts[{addresses[host['address']]}]; expected unique addresses")
        addresses.setdefault(host["address"], i)
        try:
            if ipaddress.IPv4Address(host["address"]).is_loopback and len(hosts) > 1:
                yield p(
                    ("hosts", i, "address"), f"found {host['address']}, a loopback address; expected the host's address on the network between hosts", "warning"
                )
        except ValueError:
            pass
        for svc in host.get("services") or []:
            if not cfg.get("services", svc, "enabled"):
                yield p(("hosts", i, "services"), f"lists {svc!r}, which services.{svc}.enabled switches off")
    for svc in topology.OPTIONAL_SERVICES:
        owners = [i for i, h in enumerate(hosts) if svc in (h.get("services") or [])]
        if len(owners) > 1:
            yield p(("hosts", owners[1], "services"), f"lists {svc!r}, which hosts[{owners[0]}] already runs; expected one host per service")
        if any(h.get("services") for h in hosts) and cfg.get("services", svc, "enabled") and not owners and svc != "marimo":
            yield p(("hosts",), f"no host lists {svc!r} although services.{svc}.enabled is true; add it to one host's services")
    bind = str(cfg.get("network", "bind_address"))
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        addr = None  # check_network reported it
    if addr is not None and addr.version == 6:
        yield p(
            ("network", "bind_address"),
            f"found {bind!r}, an IPv6 address, on a multi-host config; expected an IPv4 address (0.0.0.0 or this host's address): "
            "`inv firewall` filters IPv4 only (iptables), so ports published on IPv6 would be open to every machine that reaches the host",
        )
    remote_users = len(hosts) > 1 and any(services_host(cfg, s) for s in ("redis", "mlflow"))
    if remote_users and addr is not None and addr.version == 4 and addr.is_loopback:
        yield p(
            ("network", "bind_address"),
            "found loopback with several hosts: the other hosts cannot reach MLflow and Redis on the services host; "
            "expected that host's address or 0.0.0.0 (then restrict with `inv firewall`)",
        )
    all_nodes = {n.name.lower() for n in nodes(cfg)}
    for i, entry in enumerate(cfg.get("nodes", "head_whitelist") or []):
        name = str(entry).partition(":")[0]
        if name.lower() not in all_nodes:
            yield p(("nodes", "head_whitelist", i), f"found {name!r}, which no host runs; expected one of: {', '.join(sorted(all_nodes))}")
    # Host networking: the CPU and GPU node of a host share its ports, and so do the services.
    used: dict[int, str] = {}
    for setting, port in topology.published(cfg, gpu_node=False):
        if setting[0] == "services":  # the Ray nodes' own ports follow
            if tuple(setting[:2]) == topology.CUSTOM and port in used:  # the first host runs the custom services
                yield p(setting, f"found host port {port}, already used by {used[port]} on the same host; expected a unique port")
            used.setdefault(port, ".".join(setting))
    kinds = ["cpu"] + (["gpu"] if any(h.get("gpu") for h in hosts) else [])
    for kind in kinds:
        ports = cfg.get("ray", kind, "ports")
        node = Node(kind, "", "", "", ports["gcs"], ports["dashboard"], ports["client"])
        for key, port in node.ports().items():
            if key == "min_worker":
                rng = range(port, node.ports()["max_worker"] + 1)
                clash = [u for u in used if u in rng]
                if clash:
                    yield p(
                        ("ray", kind, "ports"),
                        f"the {kind} node's worker ports {port}-{node.ports()['max_worker']} include {clash[0]} ({used[clash[0]]}); expected distinct ports on one host",
                    )
                continue
            if key == "max_worker":
                continue
            if port in used:
                yield p(
                    ("ray", kind, "ports", key) if key in ("gcs", "dashboard", "client") else ("ray", kind, "ports"),
                    f"the {kind} node's {key} port {port} is already used by {used[port]} on the same host; expected distinct ports (host networking)",
                )
            else:
                used[port] = f"ray.{kind} {key}"


# ------------------------------------------------------------------------------ firewall


FIREWALL_CHAIN = "CSLR-FW"  # jumped to from DOCKER-USER; CSLR-FW-INPUT from INPUT
FIREWALL_DOC = "https://docs.docker.com/engine/network/packet-filtering-firewalls/"


@dataclass(frozen=True)
class FirewallPlan:
    """What `inv firewall` filters on one host: who is trusted, and which ports take which path."""

    host: dict
    peers: list[str]  # the other hosts' addresses
    subnet: str  # this stack's containers (they reach the nodes via the host's address)
    published: list[tuple[str, int]]  # (config path, host port): DNATed by Docker -> FORWARD -> DOCKER-USER
    host_network: list[tuple[str, list[str]]]  # (node, ports in `a` / `a:b` form): host networking -> INPUT

    @property
    def trusted(self) -> list[str]:
        return self.peers + [self.subnet]


def firewall_plan(cfg: Config, host_name: str | None) -> FirewallPlan:
    if not cfg.get("hosts"):
        raise UsageError("config.yaml has no `hosts:`: a single-host stack publishes on network.bind_address only and needs no rules")
    host = this_host(cfg, host_name)
    peers = [h["address"] for h in cfg.get("hosts") if h["name"] != host["name"]]
    mine = {n.kind for n in nodes(cfg) if n.host == host["name"]}
    published = []
    # Multi-host Ray nodes publish nothing (host networking): only the services' ports are DNATed.
    for path, port in topology.published(cfg, gpu_node="gpu" in mine):
        if path[0] != "services":
            continue
        custom_here = path[1] == "custom" and cfg.get("hosts")[0]["name"] == host["name"]  # compose.custom_on_host
        if path[1] == "health" or custom_here or (services_host(cfg, path[1]) or {}).get("name") == host["name"]:
            published.append((".".join(path), port))
    host_network = [(n.name, n.tcp_ports() + [str(n.dashboard)]) for n in nodes(cfg) if n.host == host["name"]]
    return FirewallPlan(host, peers, cfg.get("network", "subnet"), published, host_network)


def firewall_ruleset(cfg: Config, host_name: str | None, chain: str = FIREWALL_CHAIN) -> list[str]:
    """The two chains of `inv firewall` in iptables-restore form (no markers, no jumps).

    `chain` (jumped to from DOCKER-USER) sees every packet Docker forwards: it returns the
    trusted sources, then drops what is addressed to the stack's subnet (DNATed to a published
    port, or routed straight to a container address). `chain`-INPUT filters the host-network
    Ray ports.
    """
    plan = firewall_plan(cfg, host_name)
    inp = f"{chain}-INPUT"
    lines = [
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {chain} -s 127.0.0.0/8 -j RETURN",
    ]
    lines += [f"-A {chain} -s {src} -j RETURN" for src in plan.trusted]
    lines += [
        f'-A {chain} -p tcp -m conntrack --ctstate DNAT --ctorigdstport {port} -m comment --comment "cslr {path}" -j DROP' for path, port in plan.published
    ]
    # Anything else addressed to a container of the stack (any protocol, any port): a LAN
    # neighbour that routes the subnet via this host reaches containers directly, without DNAT.
    lines.append(f'-A {chain} -d {plan.subnet} -m comment --comment "cslr network.subnet" -j DROP')
    lines += [
        f"-A {inp} -i lo -j RETURN",
        f"-A {inp} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    ]
    for name, ports in plan.host_network:
        dports = ",".join(ports)
        lines += [f'-A {inp} -p tcp -s {src} -m multiport --dports {dports} -m comment --comment "cslr {name}" -j ACCEPT' for src in plan.trusted]
        lines.append(f'-A {inp} -p tcp -m multiport --dports {dports} -m comment --comment "cslr {name}" -j DROP')
    return lines


@dataclass(frozen=True)
class FirewallMarkers:
    """Names of the xt_recent lists whose rules mark the loaded chains (see firewall_rules).

    The kernel shows each list as /proc/net/xt_recent/NAME exactly while a rule naming it is
    loaded, and every user may list that directory: `inv up` sees without root whether the rules
    of *this* config are in place. The names carry a hash of the rules, so rules of an older
    config.yaml (other peers, ports or subnet) do not count.
    """

    chain: str
    forward: str  # marks `chain` (DOCKER-USER)
    input: str  # marks `chain`-INPUT

    @property
    def names(self) -> tuple[str, str]:
        return (self.forward, self.input)


def firewall_markers(cfg: Config, host_name: str | None, chain: str = FIREWALL_CHAIN) -> FirewallMarkers:
    return _markers(firewall_ruleset(cfg, host_name, chain), chain)


def _markers(ruleset: list[str], chain: str) -> FirewallMarkers:
    import hashlib

    digest = hashlib.sha256("\n".join(ruleset).encode()).hexdigest()[:16]
    base = chain.lower()
    return FirewallMarkers(chain, f"{base}-{digest}", f"{base}-input-{digest}")


def _marker_rules(chain: str, marker: str) -> list[str]:
    # An unconditional RETURN ends the chain, so the marker rule after it is never evaluated
    # (no per-packet cost) and never matches (nothing ever adds to its list).
    return [f"-A {chain} -j RETURN", f'-A {chain} -m recent --name {marker} --rcheck -m comment --comment "cslr marker (never matches)" -j RETURN']


def firewall_rules(cfg: Config, host_name: str | None, chain: str = FIREWALL_CHAIN) -> str:
    """A shell script that loads the rules: only the other hosts reach what this host serves.

    One `iptables-restore --noflush` transaction creates or refills the two chains of its own
    (`chain`, jumped to from DOCKER-USER, and `chain`-INPUT, jumped to from INPUT) and adds each
    jump only if it is missing: a refresh is atomic (no moment without rules) and idempotent.
    """
    plan = firewall_plan(cfg, host_name)
    host, inp = plan.host, f"{chain}-INPUT"
    ruleset = firewall_ruleset(cfg, host_name, chain)
    markers = _markers(ruleset, chain)
    ipt = "iptables -w"
    forward = [line for line in ruleset if line.startswith(f"-A {chain} ")] + _marker_rules(chain, markers.forward)
    local = [line for line in ruleset if line.startswith(f"-A {inp} ")] + _marker_rules(inp, markers.input)
    lines = [
        "#!/bin/sh",
        f"# Firewall of {host['name']} ({host['address']}) in a multi-host CSLR cluster, from config.yaml.",
        f"# Apply as root: inv firewall --host {host['name']} | sudo sh    (re-running replaces the rules",
        f"# atomically; `inv firewall --host {host['name']} --persist | sudo sh` also re-applies them at every",
        "# boot, before Docker starts; `inv firewall --remove | sudo sh` takes them out again).",
        f"# Allowed: the other hosts ({', '.join(plan.peers) or 'none'}), loopback, this stack's containers",
        f"# ({plan.subnet}) and established connections. Everyone else is dropped on the ports below and",
        f"# on every address of {plan.subnet} (a neighbour that routes it via this host reaches the",
        "# containers directly, without Docker's DNAT: Docker before 28 lets such packets through).",
        "#",
        "# Ports Docker publishes are DNATed to a container and pass the FORWARD chain, never INPUT: ufw,",
        "# which writes INPUT rules, cannot filter them (`ufw deny PORT` leaves them open). They are",
        "# filtered in Docker's DOCKER-USER chain, see",
        f"# {FIREWALL_DOC}",
        "# The Ray nodes use host networking: their ports are filtered in INPUT. ufw may stay enabled.",
        "# IPv4 only: a multi-host config.yaml must bind IPv4 (inv validate refuses an IPv6 bind_address).",
        f"# Markers: /proc/net/xt_recent/{markers.forward} and /proc/net/xt_recent/{markers.input} exist",
        "# while these rules are loaded; `inv up` reads them (no root needed) and refuses to start without.",
        "set -e",
        f"{ipt} -N DOCKER-USER 2>/dev/null || true  # Docker keeps an existing DOCKER-USER chain",
        "# The jumps are looked up first: iptables-legacy-restore holds the xtables lock while it runs.",
        f"if {ipt} -C DOCKER-USER -j {chain} 2>/dev/null; then fwd=''; else fwd='-I DOCKER-USER -j {chain}'; fi",
        f"if {ipt} -C INPUT -j {inp} 2>/dev/null; then inp=''; else inp='-I INPUT -j {inp}'; fi",
        "{",
        "cat <<'CSLR_FW_RULES'",
        "*filter",
        f":{chain} - [0:0]",
        f":{inp} - [0:0]",
        f"-F {chain}",
        f"-F {inp}",
        f"# Docker-published ports: {', '.join(f'{port} ({path})' for path, port in plan.published)}",
        *forward,
        f"# Host-network Ray nodes: {', '.join(name for name, _ in plan.host_network) or 'none on this host'}",
        *local,
        "CSLR_FW_RULES",
        '[ -z "$fwd" ] || echo "$fwd"',
        '[ -z "$inp" ] || echo "$inp"',
        "echo COMMIT",
        "} | iptables-restore -w --noflush",
    ]
    return "\n".join(lines)


UNIT_DIR = "/etc/systemd/system"
SCRIPT_DIR = "/etc/cslr"


def unit_name(chain: str = FIREWALL_CHAIN) -> str:
    return f"{chain.lower()}.service"


def persist_paths(chain: str = FIREWALL_CHAIN, root: str = "") -> tuple[str, str]:
    """(rules script, systemd unit) that `--persist` installs, under `root` (tests: a temp dir)."""
    return f"{root}{SCRIPT_DIR}/{chain.lower()}.sh", f"{root}{UNIT_DIR}/{unit_name(chain)}"


def firewall_unit(host: dict, script: str) -> str:
    """A oneshot unit that loads the rules at boot: after the firewalls that flush tables at start
    (firewalld, ufw, netfilter-persistent) and before Docker starts a container. No ExecStop:
    a restart re-applies atomically and never leaves a moment without rules."""
    return "\n".join(
        [
            "[Unit]",
            f"Description=CSLR multi-host firewall of {host['name']} (inv firewall)",
            "Documentation=https://docs.docker.com/engine/network/packet-filtering-firewalls/",
            "After=firewalld.service ufw.service netfilter-persistent.service",
            "Before=docker.service network-pre.target",
            "Wants=network-pre.target",
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            f"ExecStart=/bin/sh {script}",
            f"ExecReload=/bin/sh {script}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def firewall_persist(cfg: Config, host_name: str | None, chain: str = FIREWALL_CHAIN, root: str = "", systemctl: str = "systemctl") -> str:
    """A shell script that installs the rules script and a systemd unit that re-applies it at
    every boot, then applies it now. `root` and `systemctl` exist for tests."""
    host = firewall_plan(cfg, host_name).host
    script, unit = persist_paths(chain, root)
    name = unit_name(chain)
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Makes the firewall of {host['name']} permanent: writes {script} (the rules of",
            f"# `inv firewall --host {host['name']}`) and {unit}, which applies them at every boot",
            "# before Docker starts, then applies them now. Apply as root: ... --persist | sudo sh",
            "# Re-run it after changing config.yaml; `inv firewall --remove | sudo sh` undoes it.",
            "set -e",
            "umask 077",
            f"mkdir -p {script.rsplit('/', 1)[0]} {unit.rsplit('/', 1)[0]}",
            f"cat > {script}.tmp <<'CSLR_FW_SCRIPT'",
            firewall_rules(cfg, host_name, chain),
            "CSLR_FW_SCRIPT",
            f"chmod 0700 {script}.tmp && mv -f {script}.tmp {script}",
            f"cat > {unit}.tmp <<'CSLR_FW_UNIT'",
            firewall_unit(host, script.removeprefix(root)).rstrip("\n"),
            "CSLR_FW_UNIT",
            f"chmod 0644 {unit}.tmp && mv -f {unit}.tmp {unit}",
            f"{systemctl} daemon-reload",
            f"{systemctl} enable {name}",
            f"{systemctl} restart {name}  # applies the rules now (atomically, see the script)",
        ]
    )


def firewall_removal(chain: str = FIREWALL_CHAIN, root: str = "", systemctl: str = "systemctl") -> str:
    """The commands that take `firewall_rules` (and `--persist`) out again (idempotent; nothing else is touched)."""
    ipt = "iptables -w"
    script, unit = persist_paths(chain, root)
    name = unit_name(chain)
    lines = [
        "#!/bin/sh",
        "# Removes the rules of `inv firewall` and its --persist unit. Apply as root: inv firewall --remove | sudo sh",
        f"if [ -e {unit} ]; then {systemctl} disable {name} 2>/dev/null || true; rm -f {unit} {script}; {systemctl} daemon-reload 2>/dev/null || true; fi",
    ]
    for parent, own in (("DOCKER-USER", chain), ("INPUT", f"{chain}-INPUT")):
        lines += [f"while {ipt} -D {parent} -j {own} 2>/dev/null; do :; done", f"{ipt} -F {own} 2>/dev/null || true", f"{ipt} -X {own} 2>/dev/null || true"]
    return "\n".join(lines)

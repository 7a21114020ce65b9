"""`inv firewall` against the real Docker engine: the stack's ports and containers admit the peers and nobody else.

The "services host" is this machine's root namespace. A container started on the real engine, on a
Docker network whose subnet is the test config's `network.subnet`, publishes every service port of
the test config.yaml on 0.0.0.0 (one small Python HTTP server behind all of them, standing in for
health, the Ray client proxy, Redis, MLflow and Marimo; it also listens on a port nothing
publishes), and a plain listening socket in the root namespace stands in for a host-network Ray
node's GCS port. Two network namespaces are attached by veth pairs to a bridge on a private test
subnet, with their default route via this host (so they can also route straight to the
container's address, as a LAN neighbour can): the *peer* has the address config.yaml's `hosts:`
lists for the other host, the *non-peer* does not.

The test applies exactly the scripts `multihost.firewall_persist` and `multihost.firewall_rules`
print (through `sh`, as the user does with `| sudo sh`), under a chain name of its own so that
nothing of another stack or session is touched; the drop rules match only this test's freshly
picked ports and subnet.

Checks: before the rules both namespaces reach every published port and the non-peer reaches the
container's own address (Docker 20.10 forwards such packets: the hole this closes); the rules
installed by `--persist` (as the boot unit runs them) let the peer reach every port and the
container's address and the non-peer none of them, and the packets it sent are counted by the
rules' DROPs; `inv up`'s check sees the rules, as root and as an unprivileged user; refreshing the
rules five times while another thread reads the rule set all along never shows a moment without
them, and leaves one jump per parent chain and the same rules; after `firewall_removal` the
non-peer reaches the ports again and the check sees no rules. Fixtures clean up the rules,
namespaces, bridge, container and Docker network in `finally`, also when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from cslr import config, multihost, preflight, validate  # noqa: E402
from tests.conftest import SECRETS  # every secret the stack needs, one place

pytestmark = [pytest.mark.integration]

if os.geteuid() != 0:
    pytest.skip("network namespaces and iptables need root", allow_module_level=True)
for _tool in ("ip", "iptables", "iptables-save", "docker"):
    if shutil.which(_tool) is None:
        pytest.skip(f"`{_tool}` is not installed", allow_module_level=True)

PID = os.getpid()
TAG = f"cslrfw{PID}"  # + "h0": at most 15 characters (pid <= 4194304)
NS_PEER, NS_OTHER = f"cslrfw-{PID}-peer", f"cslrfw-{PID}-other"
BRIDGE = f"{TAG}b"
CONTAINER = f"cslrfw-{PID}"
CHAIN = f"CSLRFW{PID}"  # the production name is CSLR-FW; this run's own
NET = f"10.213.{100 + PID % 100}"
HOST_IP, PEER_IP, OTHER_IP = f"{NET}.1", f"{NET}.2", f"{NET}.3"
STACK_NET = f"10.214.{100 + PID % 100}"  # the test config's network.subnet: the container's Docker network
SUBNET, CONTAINER_IP = f"{STACK_NET}.0/24", f"{STACK_NET}.100"
ADDRESSES = {"health": 2, "ray_cpu": 10, "ray_gpu": 11, "redis": 20, "mlflow": 30, "postgres": 31, "marimo": 40}  # network.addresses in SUBNET
CONTAINER_PORT, UNPUBLISHED_PORT = 8000, 8001
SERVER = "\n".join(
    [
        "import http.server, sys, threading",
        "servers = [http.server.ThreadingHTTPServer(('0.0.0.0', int(p)), http.server.SimpleHTTPRequestHandler) for p in sys.argv[1:]]",
        "for s in servers[1:]: threading.Thread(target=s.serve_forever, daemon=True).start()",
        "servers[0].serve_forever()",
    ]
)


def sh(*argv: str, check: bool = True, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {out.returncode}: {out.stderr.strip()}")
    return out


def docker_ok() -> bool:
    try:
        return sh("docker", "info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def python_image() -> str | None:
    """A local image with python3 (none is pulled): CSLRFW_IMAGE, else a local Ray/MLflow image."""
    wanted = os.environ.get("CSLRFW_IMAGE")
    listed = sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", check=False).stdout.split("\n")
    candidates = [wanted] if wanted else [line.split()[1] for line in listed if line.strip() and any(k in line.split()[0] for k in ("ray", "mlflow", "python"))]
    for image in dict.fromkeys(candidates):
        probe = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", "pass", check=False, timeout=120)
        if probe.returncode == 0:
            return image
    return None


def free_ports(n: int) -> list[int]:
    """n distinct ports free on this host right now (from the kernel's ephemeral range)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("0.0.0.0", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


PROBE = textwrap.dedent("""
    import socket, sys
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            if sys.argv[4] == "http":
                s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
                ok = s.recv(64).startswith(b"HTTP/1.0 200")
            else:
                ok = s.recv(16) == b"gcs"
    except OSError:
        ok = False
    sys.exit(0 if ok else 1)
""")


def reaches(ns: str, port: int, kind: str = "http", timeout: float = 10.0, host: str = HOST_IP) -> bool:
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", PROBE, host, str(port), str(timeout), kind, check=False, timeout=timeout + 30)
    return out.returncode == 0


def drop_counts(chain: str) -> dict[str, int]:
    """Packets counted by each DROP rule of `chain`, keyed by the rule's comment."""
    counts = {}
    for line in sh("iptables-save", "-c", "-t", "filter").stdout.splitlines():
        if f"-A {chain} " in line and "-j DROP" in line and "--comment" in line:
            packets = int(line[1 : line.index(":")])
            comment = line.split("--comment ")[1].split(" -j")[0].strip('"')
            counts[comment] = counts.get(comment, 0) + packets
    return counts


def jumps(parent: str, chain: str) -> int:
    return sum(1 for line in sh("iptables", "-w", "-S", parent).stdout.splitlines() if line.strip() == f"-A {parent} -j {chain}")


def remove_rules() -> None:
    sh("sh", stdin=multihost.firewall_removal(CHAIN), check=False)


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def sweep_leftovers() -> None:
    """Remove what a killed earlier run (its pid gone) left: chains, container, namespaces, bridge."""
    import re

    def gone(pid: str) -> bool:
        return int(pid) != PID and not Path(f"/proc/{pid}").exists()

    for chain in set(re.findall(r"^-N (CSLRFW(\d+))$", sh("iptables", "-w", "-S").stdout, re.M)):
        if gone(chain[1]):
            sh("sh", stdin=multihost.firewall_removal(chain[0]), check=False)
    for name in sh("docker", "ps", "-a", "--filter", "label=cslrfw.test=1", "--format", "{{.Names}}", check=False).stdout.split():
        if re.fullmatch(r"cslrfw-\d+", name) and gone(name.split("-")[1]):
            sh("docker", "rm", "-f", name, check=False)
    for name in sh("docker", "network", "ls", "--filter", "label=cslrfw.test=1", "--format", "{{.Name}}", check=False).stdout.split():
        if re.fullmatch(r"cslrfw-\d+", name) and gone(name.split("-")[1]):
            sh("docker", "network", "rm", name, check=False)
    for ns in sh("ip", "netns", "list").stdout.split("\n"):
        m = re.match(r"(cslrfw-(\d+)-\w+)", ns)
        if m and gone(m.group(2)):
            sh("ip", "netns", "del", m.group(1), check=False)
    for bridge in re.findall(r"^\d+: (cslrfw(\d+)b):", sh("ip", "-o", "link").stdout, re.M):
        if gone(bridge[1]):
            sh("ip", "link", "del", bridge[0], check=False)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def lab():
    """Bridge + two namespaces, and a container publishing the test config's service ports."""
    if not docker_ok():
        pytest.skip("the Docker engine does not answer `docker info`")
    routes = sh("ip", "route").stdout
    for net in (NET, STACK_NET):
        if f"{net}." in routes:
            pytest.skip(f"{net}.0/24 is already routed on this machine")
    sweep_leftovers()
    image = python_image()
    if image is None:
        pytest.skip("no local image with python3 (set CSLRFW_IMAGE)")
    health, proxy, redis, mlflow, marimo, gcs, dashboard, client = free_ports(8)
    created_ns: list[str] = []
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i, (ns, addr) in enumerate(((NS_PEER, PEER_IP), (NS_OTHER, OTHER_IP))):
            sh("ip", "netns", "add", ns)
            created_ns.append(ns)
            outer, inner = f"{TAG}h{i}", f"{TAG}n{i}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", outer, "master", BRIDGE, "up")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", HOST_IP)
        publish = []
        for port in (health, proxy, redis, mlflow, marimo):
            publish += ["-p", f"0.0.0.0:{port}:{CONTAINER_PORT}"]
        sh("docker", "network", "create", "--subnet", SUBNET, "--label", "cslrfw.test=1", CONTAINER, timeout=60)
        sh(
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            CONTAINER,
            "--label",
            "cslrfw.test=1",
            "--network",
            CONTAINER,
            "--ip",
            CONTAINER_IP,
            *publish,
            "--entrypoint",
            "python3",
            image,
            "-c",
            SERVER,
            str(CONTAINER_PORT),
            str(UNPUBLISHED_PORT),
            timeout=120,
        )
        yield {"health": health, "proxy": proxy, "redis": redis, "mlflow": mlflow, "marimo": marimo, "gcs": gcs, "dashboard": dashboard, "client": client}
    finally:
        remove_rules()
        sh("docker", "rm", "-f", CONTAINER, check=False, timeout=60)
        sh("docker", "network", "rm", CONTAINER, check=False, timeout=60)
        for ns in created_ns:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)


@pytest.fixture
def gcs_listener(lab):
    """A TCP listener on the host's address at the config's GCS port: a host-network Ray node's stand-in."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST_IP, lab["gcs"]))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"gcs")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lab["gcs"]
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


def write_config(tmp: Path, ports: dict) -> Path:
    (tmp / ".env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    cfg = tmp / "config.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        network:
          bind_address: 0.0.0.0
          subnet: {SUBNET}
          addresses: {{{", ".join(f"{k}: {STACK_NET}.{v}" for k, v in ADDRESSES.items())}}}
        services:
          health: {{port: {ports["health"]}, ray_client_port: {ports["proxy"]}}}
          redis: {{enabled: true, port: {ports["redis"]}}}
          mlflow: {{enabled: true, port: {ports["mlflow"]}}}
          marimo: {{enabled: true, port: {ports["marimo"]}}}
        ray:
          cpu:
            ports: {{gcs: {ports["gcs"]}, dashboard: {ports["dashboard"]}, client: {ports["client"]}}}
        nodes:
          head_whitelist: [ray-cpu-fwhost]
        hosts:
          - name: fwhost
            address: {HOST_IP}
            services: [redis, mlflow, marimo]
          - name: fwpeer
            address: {PEER_IP}
        """)
    )
    return cfg


# ------------------------------------------------------------------------------ the test


def engine_major() -> int:
    version = sh("docker", "version", "--format", "{{.Server.Version}}", check=False).stdout.strip()
    return int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0


UNPRIVILEGED_CHECK = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from cslr import multihost, preflight
    markers = multihost.FirewallMarkers(*sys.argv[2:5])
    print(json.dumps(preflight.firewall_state(markers, preflight.iptables_rules(), preflight.recent_lists())))
""")


def state_as_nobody(markers) -> list:
    """`inv up`'s check run as an unprivileged user (uid 65534): it cannot read iptables."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", UNPRIVILEGED_CHECK, str(_ROOT)]
    out = sh(*argv, markers.chain, markers.forward, markers.input)
    return json.loads(out.stdout)


def snapshots_while(action, needles: list[str]) -> tuple[int, list[str]]:
    """Read the filter table over and over while `action` runs; (snapshots read, the first one
    lacking any of `needles`, if any)."""
    stop, seen, gaps = threading.Event(), [0], []

    def watch():
        while not stop.is_set():
            text = sh("iptables-save", "-t", "filter").stdout
            seen[0] += 1
            if not all(n in text for n in needles) and not gaps:
                gaps.append(text)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        action()
    finally:
        stop.set()
        thread.join(timeout=30)
    return seen[0], gaps


def test_the_stack_admits_the_peer_and_drops_the_non_peer_on_ports_and_container_addresses(lab, gcs_listener, tmp_path):
    cfg = config.load(write_config(tmp_path, lab), environ={})
    errors = [str(p) for p in validate.validate(cfg) if p.severity == "error"]
    assert not errors, errors
    script = multihost.firewall_rules(cfg, "fwhost", chain=CHAIN)
    markers = multihost.firewall_markers(cfg, "fwhost", chain=CHAIN)
    published = {name: lab[name] for name in ("health", "proxy", "redis", "mlflow", "marimo")}
    for port in published.values():  # the script drops exactly the ports this container publishes
        assert f"--ctorigdstport {port} " in script
    assert f"-A {CHAIN} -d {SUBNET} " in script

    # Without rules both namespaces reach everything: a later refusal is the firewall's doing.
    wait_for(lambda: reaches(NS_PEER, published["health"]), 90, "the container's HTTP server from the peer namespace")
    for name, port in published.items():
        assert reaches(NS_OTHER, port), f"non-peer cannot reach {name} ({port}) even without rules"
    assert reaches(NS_OTHER, gcs_listener, "gcs")
    direct_before = reaches(NS_OTHER, CONTAINER_PORT, host=CONTAINER_IP)
    if engine_major() < 28:  # Docker 28 drops such packets itself; 20.10 (Debian's docker.io) forwards them
        assert direct_before, "the non-peer should reach the container's own address without rules (Docker < 28)"
    assert preflight.firewall_state(markers, preflight.iptables_rules(), preflight.recent_lists())[0] is False

    try:
        # As after a reboot: the script that --persist installs, run the way its unit runs it.
        root = tmp_path / "root"
        installer = multihost.firewall_persist(cfg, "fwhost", chain=CHAIN, root=str(root), systemctl=":")
        sh("sh", "-e", stdin=installer)
        installed, _unit = multihost.persist_paths(CHAIN, str(root))
        sh("/bin/sh", installed)

        for name, port in published.items():
            assert reaches(NS_PEER, port), f"the peer no longer reaches {name} ({port})"
        assert reaches(NS_PEER, gcs_listener, "gcs"), "the peer no longer reaches the host-network GCS port"
        assert reaches(NS_PEER, CONTAINER_PORT, host=CONTAINER_IP), "the peer no longer reaches the container's address"
        for name, port in published.items():
            assert not reaches(NS_OTHER, port, timeout=2.0), f"the non-peer still reaches {name} ({port})"
        assert not reaches(NS_OTHER, gcs_listener, "gcs", timeout=2.0), "the non-peer still reaches the GCS port"
        for port in (CONTAINER_PORT, UNPUBLISHED_PORT):
            assert not reaches(NS_OTHER, port, timeout=2.0, host=CONTAINER_IP), f"the non-peer still reaches {CONTAINER_IP}:{port} directly"
        # The refusals are this script's DROP rules, not some other failure.
        dropped = drop_counts(CHAIN)
        for path in ("services.health.port", "services.health.ray_client_port", "services.redis.port", "services.mlflow.port", "services.marimo.port"):
            assert dropped.get(f"cslr {path}", 0) > 0, (path, dropped)
        if direct_before:
            assert dropped.get("cslr network.subnet", 0) > 0, dropped
        assert drop_counts(f"{CHAIN}-INPUT").get("cslr ray-cpu-fwhost", 0) > 0

        # `inv up`'s check: as root (iptables-save, jumps included) and as an unprivileged user (markers only).
        ok, how = preflight.firewall_state(markers, preflight.iptables_rules(), preflight.recent_lists())
        assert ok and "iptables-save" in how, how
        ok, how = state_as_nobody(markers)
        assert ok and "without root" in how, how

        # Refresh: five re-applications while the rule set is read all along; never a moment without rules.
        before = [sh("iptables", "-w", "-S", c).stdout for c in (CHAIN, f"{CHAIN}-INPUT")]
        needles = [
            f"-A DOCKER-USER -j {CHAIN}",
            f"-A INPUT -j {CHAIN}-INPUT",
            f"-A {CHAIN} -d {SUBNET} ",
            f"--name {markers.forward} ",
            f"--name {markers.input} ",
        ]
        reads, gaps = snapshots_while(lambda: [sh("sh", "-e", stdin=script) for _ in range(5)], needles)
        assert reads > 0 and gaps == [], f"a snapshot during the refresh lacked the rules:\n{gaps[:1]}"
        assert [sh("iptables", "-w", "-S", c).stdout for c in (CHAIN, f"{CHAIN}-INPUT")] == before
        assert (jumps("DOCKER-USER", CHAIN), jumps("INPUT", f"{CHAIN}-INPUT")) == (1, 1)
        assert reaches(NS_PEER, published["mlflow"])
        assert not reaches(NS_OTHER, published["mlflow"], timeout=2.0)
        assert not reaches(NS_OTHER, CONTAINER_PORT, timeout=2.0, host=CONTAINER_IP)
    finally:
        remove_rules()
    assert (jumps("DOCKER-USER", CHAIN), jumps("INPUT", f"{CHAIN}-INPUT")) == (0, 0)
    assert reaches(NS_OTHER, published["mlflow"]), "after --remove the non-peer should reach MLflow again"
    assert sh("iptables", "-w", "-S", CHAIN, check=False).returncode != 0, "the chain should be gone"
    assert preflight.firewall_state(markers, None, preflight.recent_lists())[0] is False, "the markers should be gone with the chains"

"""scripts/ray_node.py with real Ray: two nodes on 127.0.0.2 / 127.0.0.3, distinct ports, own temp dirs.

Slow tier (pytest marker ``integration``).  GCS fault tolerance needs redis-server
(tools/ci-deps.sh installs it).  Ray binds some ports on all interfaces, so every node gets
its own block of ports (as two nodes sharing one host do in a multi-host deployment).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # tests/ is no package; make tests._scripts importable under any runner
    sys.path.insert(0, _ROOT)
from tests._scripts import CONTROL_SECRET, SCRIPTS, load_script  # noqa: E402

pytestmark = pytest.mark.integration
rn = load_script("ray_node")
RAY = str(Path(sys.executable).with_name("ray"))
NODE = str(SCRIPTS / "ray_node.py")

if not Path(RAY).exists():
    pytest.skip("ray is not installed next to this interpreter", allow_module_level=True)

NODE_TABLE = r"""
import json, sys
from ray._raylet import GcsClient
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)
print(json.dumps([{"id": i.node_id.hex(), "ip": i.node_manager_address, "alive": i.state == 0}
                  for i in infos.values()]))
"""

ACTOR = r"""
import sys, ray
ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], namespace="t", log_to_driver=False)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0
    def bump(self):
        import os
        self.n += 1
        return self.n, os.getpid()

if sys.argv[3] == "create":
    c = Counter.options(name="c", lifetime="detached", scheduling_strategy=NodeAffinitySchedulingStrategy(sys.argv[4], soft=False)).remote()
else:
    c = ray.get_actor("c")
print("RESULT", *ray.get(c.bump.remote(), timeout=60))
"""


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _free_block(ip: str, size: int = 70) -> int:
    """A block of ports nobody else will be handed: outside the kernel's ephemeral range (any
    outgoing connection on the machine may take a port from there between our check and Ray's
    bind — the race that once failed this module under load) and outside Ray's default worker
    port range (10002-19999)."""
    rng = random.Random()
    ephemeral = _ephemeral_range()
    for _ in range(500):
        base = rng.randrange(21000, 32000 - 1000 - size)
        if any(p in ephemeral for p in (base, base + size, base + 1000)):
            continue
        try:
            for p in list(range(base, base + 14)) + [base + 1000]:
                with socket.socket() as s:
                    s.bind((ip, p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port block")


class RayNodes:
    def __init__(self, tmp: Path, extra=None, pidns=False):
        self.tmp = tmp
        # Ray's "already running" check greps every raylet on the machine; a container has
        # its own PID namespace, so where that matters each node gets one here too.
        self.pidns = pidns
        self.ips = ["127.0.0.2", "127.0.0.3"]
        self.base = {ip: _free_block(ip) for ip in self.ips}
        self.whitelist = ",".join(f"{ip}:{self.base[ip]}" for ip in self.ips)
        self.extra = extra or {}
        self.procs = {}

    def addr(self, ip):
        return f"{ip}:{self.base[ip]}"

    def env(self, ip):
        b = self.base[ip]
        env = dict(os.environ)
        env.update(
            {
                "NODE_HOSTNAME": ip,
                "NODE_IP": ip,
                "HEAD_WHITELIST": self.whitelist,
                "RAY_HEAD_PORT": str(b),
                "NODE_AGENT_BIND": ip,
                "HEALTH_URL": "http://127.0.0.1:9/",
                "RAY_BIN": RAY,
                "RAY_TEMP_DIR": str(self.tmp / ip.replace(".", "_")),
                "RAY_NUM_CPUS": "1",
                "RAY_OBJECT_STORE_MEMORY": str(100 * 1024 * 1024),
                "RAY_DASHBOARD_HOST": ip,
                "RAY_DASHBOARD_PORT": str(b + 1),
                "RAY_CLIENT_SERVER_PORT": str(b + 2),
                "RAY_NODE_MANAGER_PORT": str(b + 3),
                "RAY_OBJECT_MANAGER_PORT": str(b + 4),
                "RAY_METRICS_EXPORT_PORT": str(b + 5),
                "RAY_DASHBOARD_AGENT_LISTEN_PORT": str(b + 6),
                "RAY_DASHBOARD_AGENT_GRPC_PORT": str(b + 7),
                "RAY_RUNTIME_ENV_AGENT_PORT": str(b + 8),
                "RAY_MIN_WORKER_PORT": str(b + 20),
                "RAY_MAX_WORKER_PORT": str(b + 60),
                "HEAD_MONITOR_INTERVAL_S": "1",
                "CSLR_CONTROL_SECRET": CONTROL_SECRET,
            }
        )
        env.update(self.extra)
        return env

    def start(self, ip):
        log = open(self.tmp / f"{ip}.log", "a")
        prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] if self.pidns else []
        self.procs[ip] = subprocess.Popen(prefix + [sys.executable, NODE], env=self.env(ip), stdout=log, stderr=log)

    def signal_node(self, ip, sig):
        """Signal the entrypoint itself (under unshare it is the child of the unshare process)."""
        pid = self.procs[ip].pid
        if self.pidns:
            try:
                pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                return
        try:
            os.kill(pid, sig)
        except OSError:
            pass

    def state(self, ip):
        try:
            return json.loads((Path(self.env(ip)["RAY_TEMP_DIR"]) / "cslr-node.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_role(self, ip, role, head, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.state(ip)
            if s.get("role") == role and s.get("head_address") == head:
                return s
            time.sleep(0.2)
        pytest.fail(f"{ip} never became {role} of {head}: {s}\n{self.logs()}")

    def healthcheck(self, ip):
        return subprocess.run([sys.executable, NODE, "--healthcheck"], env=self.env(ip), timeout=15).returncode

    def wait_healthy(self, ip, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.healthcheck(ip) == 0:
                return
            time.sleep(0.5)
        pytest.fail(f"{ip} never healthy\n{self.logs()}")

    def nodes(self, addr, want_alive, timeout=90):
        """Ray's own node table (GCS), polled until ``want_alive`` nodes are alive."""
        end = time.monotonic() + timeout
        table = []
        while time.monotonic() < end:
            out = subprocess.run([sys.executable, "-c", NODE_TABLE, addr], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                table = json.loads(out.stdout.strip().splitlines()[-1])
                if sum(n["alive"] for n in table) == want_alive:
                    return table
            time.sleep(1)
        pytest.fail(f"node table never had {want_alive} alive: {table}\n{self.logs()}")

    def crash(self, ip):
        """Like a container dying: the entrypoint and every process of its Ray node get SIGKILL."""
        temp = self.env(ip)["RAY_TEMP_DIR"]
        self.signal_node(ip, signal.SIGKILL)  # in a PID namespace this takes the whole node down
        self.procs[ip].kill()
        self.procs[ip].wait(10)
        for _ in range(3):
            rn.kill_pids(rn.own_ray_pids(temp), signal.SIGKILL)
            time.sleep(0.5)

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self):
        for ip, p in self.procs.items():
            if p.poll() is None:
                self.signal_node(ip, signal.SIGTERM)
        for ip, p in self.procs.items():
            try:
                assert p.wait(60) == 0
            except subprocess.TimeoutExpired:
                p.kill()
            leftovers = rn.own_ray_pids(self.env(ip)["RAY_TEMP_DIR"])
            rn.kill_pids(leftovers, signal.SIGKILL)


@pytest.fixture
def ray_nodes(tmp_path_factory):
    made = []

    def make(pidns=False, **extra):
        nodes = RayNodes(tmp_path_factory.mktemp("ray"), extra, pidns)
        made.append(nodes)
        return nodes

    yield make
    for nodes in made:
        nodes.stop()


def test_head_and_worker_then_head_loss_fails_over(ray_nodes):
    c = ray_nodes()
    a, b = c.ips
    c.start(a)
    c.wait_role(a, "head", c.addr(a))
    c.wait_healthy(a)
    c.start(b)
    c.wait_role(b, "worker", c.addr(a))
    c.wait_healthy(b)
    table = c.nodes(c.addr(a), 2)
    assert {n["ip"] for n in table if n["alive"]} == {a, b}

    c.crash(a)
    # Without GCS FT the worker does not wait ~60 s for Ray to give up: it re-elects and,
    # being the only live whitelisted candidate, becomes the head on its own port.
    c.wait_role(b, "head", c.addr(b))
    table = c.nodes(c.addr(b), 1)
    assert [n["ip"] for n in table if n["alive"]] == [b]
    c.wait_healthy(b)

    c.start(a)  # the old head returns and joins the incumbent instead of splitting the cluster
    c.wait_role(a, "worker", c.addr(b))
    c.nodes(c.addr(b), 2)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing (tools/ci-deps.sh)")
def test_gcs_ft_restarted_head_keeps_worker_and_actor(ray_nodes, tmp_path):
    rport = _free_block("127.0.0.1")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        c = ray_nodes(
            pidns=shutil.which("unshare") is not None,
            RAY_GCS_FT="1",
            RAY_REDIS_ADDRESS=f"127.0.0.1:{rport}",
            RAY_CLUSTER_NAME=f"itest-{rport}",
            HEAD_LOSS_GRACE_S="90",
        )
        a, b = c.ips
        c.start(a)
        c.wait_role(a, "head", c.addr(a))
        c.start(b)
        c.wait_role(b, "worker", c.addr(a))
        table = c.nodes(c.addr(a), 2)
        b_id = next(n["id"] for n in table if n["ip"] == b and n["alive"])
        made = subprocess.run([sys.executable, "-c", ACTOR, c.addr(a), b, "create", b_id], capture_output=True, text=True, timeout=120)
        assert "RESULT 1" in made.stdout, made.stdout + made.stderr
        actor_pid = made.stdout.split("RESULT")[1].split()[1]

        c.crash(a)
        time.sleep(5)  # the worker notices the loss but, with GCS FT, keeps its Ray running
        assert c.state(b)["role"] == "worker"
        c.start(a)
        c.wait_role(a, "head", c.addr(a))
        table = c.nodes(c.addr(a), 2)
        assert b_id in {n["id"] for n in table if n["alive"]}  # the same worker node, not a new one
        again = subprocess.run([sys.executable, "-c", ACTOR, c.addr(a), b, "get"], capture_output=True, text=True, timeout=120)
        assert f"RESULT 2 {actor_pid}" in again.stdout, again.stdout + again.stderr
    finally:
        redis.terminate()
        redis.wait(10)

"""Helpers for tests/integration/test_multihost_netns.py: "physical hosts" as network namespaces.

A ``Lab`` is one switch namespace holding a Linux bridge, plus one namespace per host joined
to the bridge by a veth pair (switch side ``v<i>``, host side ``eth0``).  Every interface is
created inside the namespaces (never in the root namespace) and the test subnet exists only
there, so no address or route is added to the machine itself and no packet can leave: a host
namespace has a loopback and one connected /24, nothing else.  "Link down" is
``ip link set v<i> down`` in the switch namespace - the host keeps its address and its own
processes, exactly like a pulled cable.

Name resolution: ``ip netns exec NS`` bind-mounts every file of ``/etc/netns/NS/`` over
``/etc``; ``hosts`` there holds the generated ``extra_hosts`` entries (what Docker writes into
a container's /etc/hosts) plus localhost.

Processes (``Proc``) run as ``ip netns exec NS unshare --pid --fork --mount-proc --kill-child
CMD``: CMD is PID 1 of its own PID namespace, like the container's PID 1, so the entrypoint's
"kill every process that names my temp dir" sweep sees only its own node, and when CMD dies the
kernel kills everything left in that namespace.

Names carry ``PREFIX`` + this process's pid, so parallel runs never clash; ``sweep_leftovers``
removes namespaces (killing what still runs in them), /etc/netns dirs and Ray temp dirs of
earlier runs whose pid is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

PREFIX = "cslrmh"
NETNS_ETC = Path("/etc/netns")
_NAME = re.compile(rf"^{PREFIX}-(\d+)-")
# Ray temp dirs: /tmp/cslrmh<pid><tag><i> (tags start with a letter). Kept short: Ray's socket
# paths below it must stay under 107 characters.
TMP_PREFIX = f"/tmp/{PREFIX}"
_TMP_NAME = re.compile(rf"^{PREFIX}(\d+)[a-z]")


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {out.returncode}: {out.stderr.strip()}")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL every process whose network namespace is ``ns`` (only ever our own namespaces)."""
    for _ in range(5):
        out = sh("ip", "netns", "pids", ns, check=False)
        pids = [int(p) for p in out.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)


def delete_netns(ns: str) -> None:
    _kill_netns_pids(ns)
    sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def sweep_leftovers() -> List[str]:
    """Remove namespaces (and /etc/netns dirs) of our prefix left by runs whose process is gone."""
    names = set()
    out = sh("ip", "netns", "list", check=False)
    for line in out.stdout.splitlines():
        if line.split():
            names.add(line.split()[0])
    if NETNS_ETC.is_dir():
        names |= {p.name for p in NETNS_ETC.iterdir()}
    removed = []
    for name in sorted(names):
        m = _NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            delete_netns(name)
            removed.append(name)
    tmp = Path(TMP_PREFIX).parent
    for d in tmp.glob(f"{PREFIX}*"):
        m = _TMP_NAME.match(d.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def remove_empty_netns_etc() -> None:
    """/etc/netns itself, if it is empty (ip does not need it; we created it)."""
    try:
        NETNS_ETC.rmdir()
    except OSError:
        pass


class Lab:
    """A switch namespace with a bridge and one namespace per host (``hosts``: name -> address)."""

    def __init__(self, tag: str, hosts: Mapping[str, str], prefix_len: int = 24) -> None:
        self.tag = tag
        self.base = f"{PREFIX}-{os.getpid()}-{tag}"
        self.switch = f"{self.base}-sw"
        self.hosts = dict(hosts)
        self.prefix_len = prefix_len
        self.ns: Dict[str, str] = {h: f"{self.base}-{i}" for i, h in enumerate(self.hosts)}
        self.port: Dict[str, str] = {h: f"v{i}" for i, h in enumerate(self.hosts)}
        self.created: List[str] = []

    # --------------------------------------------------------------- topology
    def create(self, hosts_entries: Mapping[str, Sequence[tuple]]) -> "Lab":
        """Build the switch and the hosts; ``hosts_entries[host]``: its (name, address) pairs
        for /etc/hosts (the generated extra_hosts)."""
        sw = self.switch
        self._add_ns(sw)
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for host, addr in self.hosts.items():
            ns, port = self.ns[host], self.port[host]
            self._add_ns(ns)
            text = "127.0.0.1 localhost\n" + "".join(f"{a} {name}\n" for name, a in hosts_entries.get(host, ()))
            for attempt in range(3):  # a parallel run may rmdir an empty /etc/netns meanwhile
                try:
                    (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
                    (NETNS_ETC / ns / "hosts").write_text(text)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            # created inside the switch namespace, the peer moved straight into the host's
            sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", sw, "link", "set", port, "master", "br0")
            sh("ip", "-n", sw, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/{self.prefix_len}", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return self

    def _add_ns(self, ns: str) -> None:
        delete_netns(ns)  # a leftover of this very name (same pid, earlier crash)
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def link(self, host: str, up: bool) -> None:
        """Plug / unplug ``host``'s cable at the switch."""
        sh("ip", "-n", self.switch, "link", "set", self.port[host], "up" if up else "down")

    def exec_argv(self, host: str, argv: Sequence[str]) -> List[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def destroy(self) -> None:
        for ns in reversed(self.created):
            delete_netns(ns)
        self.created.clear()


class Proc:
    """One long-running process in a host namespace, PID 1 of its own PID namespace."""

    def __init__(self, lab: Lab, host: str, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.lab, self.host, self.name = lab, host, name
        self.argv, self.env = list(argv), dict(env)
        self.log_path = log_path
        self.popen: Optional[subprocess.Popen] = None

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        cmd = self.lab.exec_argv(self.host, ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", *self.argv])
        self.popen = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except OSError:
                pass

    def stop(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM to the group (``unshare --fork`` ignores it and waits; the child handles it),
        then SIGKILL after ``timeout``. The child is PID 1 of its PID namespace: once it is gone,
        the kernel kills whatever it left behind."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                return p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            return p.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


# Run inside a host namespace: what this host can see right now. Every probe is bounded.
# The agent exchange is written out here from docs/runtime.md, independent of cslr_control:
# request {"v": 3, "ts", "nonce", "target", "mac"}, reply {"body", "mac"}, HMAC-SHA256 over length-prefixed
# parts; the control secret comes from the environment (never argv).
PROBE = r"""
import hashlib, hmac, json, os, secrets, socket, sys, time, urllib.request
args = json.loads(sys.argv[1])
key = os.environ["CSLR_CONTROL_SECRET"].encode()
def mac(*parts):
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()
out = {"agents": {}, "gcs": {}, "health": None}
for name, host, port in args["agents"]:
    try:
        ts, nonce = "%.3f" % time.time(), secrets.token_hex(16)
        target = "%s:%d" % (host.lower(), port)
        req = json.dumps({"v": 3, "ts": ts, "nonce": nonce, "target": target, "mac": mac("AGENT", "/state", ts, nonce, target)}) + "\n"
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.settimeout(1.0)
            s.sendall(req.encode())
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data.decode() or "null")
        if not hmac.compare_digest(mac("AGENT-REPLY", nonce, target, reply["body"]), reply["mac"]):
            raise ValueError("reply MAC")
        if json.loads(reply["body"]).get("node") != target:
            raise ValueError("reply names another node")
        out["agents"][name] = json.loads(reply["body"])
    except Exception as exc:
        out["agents"][name] = {"error": type(exc).__name__}
for name, host, port in args["gcs"]:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            out["gcs"][name] = True
    except Exception:
        out["gcs"][name] = False
if args.get("health"):
    try:
        with urllib.request.urlopen(args["health"], timeout=2) as r:
            out["health"] = json.loads(r.read().decode())
    except Exception as exc:
        out["health"] = {"error": type(exc).__name__}
print(json.dumps(out))
"""

# Run inside a host namespace: Ray's own node table from the GCS at argv[1].
NODE_TABLE = r"""
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=2).close()  # no Ray call against a dead GCS
from ray._raylet import GcsClient
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)
print(json.dumps([{"id": i.node_id.hex(), "ip": i.node_manager_address, "alive": i.state == 0,
                   "head": bool(getattr(i, "is_head_node", False))} for i in infos.values()]))
"""


def run_in(lab: Lab, host: str, code: str, args: Sequence[str], env: Mapping[str, str], timeout: float = 20) -> Optional[object]:
    """Run ``python -c code args`` in ``host``'s namespace; its last stdout line as JSON, or None."""
    try:
        out = subprocess.run(lab.exec_argv(host, [sys.executable, "-c", code, *args]), env=dict(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except ValueError:
        return None


# =========================================================================== generated hosts


def parse_extra_hosts(items: Sequence[str]) -> List[tuple]:
    """Compose's merged ``extra_hosts`` (``name=address``, older ``name:address``) -> pairs."""
    out = []
    for item in items or []:
        name, sep, addr = str(item).partition("=")
        if not sep:
            name, _, addr = str(item).partition(":")
        out.append((name.strip(), addr.strip().strip("[]")))
    return out


def env_of(service: Mapping) -> Dict[str, str]:
    """A merged service's ``environment:`` mapping as strings (None -> absent, as Compose does)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items() if v is not None}


class Host:
    """One generated host: its merged Compose project and the processes that stand in for it."""

    def __init__(self, name: str, address: str, doc: Mapping) -> None:
        self.name, self.address, self.doc = name, address, doc
        self.services = doc["services"]
        self.node_env = env_of(self.services["ray-cpu"])
        self.health_env = env_of(self.services["health"])
        self.extra_hosts = parse_extra_hosts(self.services["ray-cpu"].get("extra_hosts", []))
        self.node_name = self.node_env["NODE_HOSTNAME"]
        self.gcs_port = int(self.node_env.get("RAY_HEAD_PORT") or 6379)
        self.agent_port = int(self.node_env.get("NODE_AGENT_PORT") or self.gcs_port + 1000)
        self.node: Optional[Proc] = None
        self.health: Optional[Proc] = None
        self.temp_dir = ""

    @property
    def health_url(self) -> str:
        return self.node_env.get("HEALTH_URL", "")

    def state(self) -> dict:
        """The entrypoint's state file (RAY_TEMP_DIR/cslr-node.json), {} while unwritten."""
        try:
            return json.loads((Path(self.temp_dir) / "cslr-node.json").read_text())
        except (OSError, ValueError):
            return {}


class Cluster:
    """Generated hosts brought up in a Lab: a health service and the ray-cpu node per host.

    ``overrides``: what a container gives for free (temp dir, PATH to ``ray``, HOME) plus the
    sizes 2 test cores can afford; everything else is the host's generated environment.
    """

    def __init__(self, tag: str, hosts: Mapping[str, Host], workdir: Path, python: str, scripts: Path, overrides: Mapping[str, str]) -> None:
        self.tag, self.hosts, self.workdir = tag, dict(hosts), workdir
        self.python, self.scripts, self.overrides = python, scripts, dict(overrides)
        self.lab = Lab(tag, {n: h.address for n, h in self.hosts.items()})
        self.whitelist = [e.strip() for e in next(iter(self.hosts.values())).node_env["HEAD_WHITELIST"].split(",") if e.strip()]
        self._dirs: List[str] = []
        base_path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        self.path = f"{Path(python).parent}:{base_path}"
        for i, h in enumerate(self.hosts.values()):
            # short: Ray's socket paths under it must stay below 107 characters
            h.temp_dir = f"{TMP_PREFIX}{os.getpid()}{tag}{i}"

    # --------------------------------------------------------------- lifecycle
    def up(self, health_timeout: float = 20) -> "Cluster":
        sweep_leftovers()
        self.lab.create({n: h.extra_hosts for n, h in self.hosts.items()})
        for name, h in self.hosts.items():
            url = h.health_url
            hostport = url.split("//", 1)[1].split("/", 1)[0]
            bind, _, port = hostport.rpartition(":")
            env = dict(h.health_env)
            env.update(HEALTH_BIND=bind, HEALTH_PORT=port, PATH=self.path, LANG="C.UTF-8")
            h.health = Proc(
                self.lab, name, "health", [self.python, str(self.scripts / "health.py")], env, self.workdir / f"{self.tag}-{name}-health.log"
            ).start()
        end = time.monotonic() + health_timeout
        pending = set(self.hosts)
        while pending and time.monotonic() < end:
            for name in sorted(pending):
                got = self.probe(name, agents=False)
                if got and isinstance(got.get("health"), dict) and got["health"].get("status") == "ok":
                    pending.discard(name)
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"health service never answered on {sorted(pending)}\n{self.logs()}")
        return self

    def node_env(self, name: str) -> Dict[str, str]:
        h = self.hosts[name]
        env = dict(h.node_env)
        home = h.temp_dir + "h"
        for d in (h.temp_dir, home):
            if d not in self._dirs:
                self._dirs.append(d)
        Path(home).mkdir(parents=True, exist_ok=True)
        env.update(self.overrides)
        env.update(RAY_TEMP_DIR=h.temp_dir, PATH=self.path, HOME=home, LANG="C.UTF-8")
        return env

    def start_nodes(self, names: Sequence[str]) -> None:
        procs = []
        for name in names:
            h = self.hosts[name]
            shutil.rmtree(h.temp_dir, ignore_errors=True)
            procs.append(
                Proc(
                    self.lab, name, "node", [self.python, str(self.scripts / "ray_node.py")], self.node_env(name), self.workdir / f"{self.tag}-{name}-node.log"
                )
            )
        for p in procs:  # back to back: "started together"
            self.hosts[p.host].node = p.start()

    def stop_nodes(self, names: Optional[Sequence[str]] = None, timeout: float = 40) -> Dict[str, Optional[int]]:
        """SIGTERM the chosen nodes together, then wait for each (SIGKILL after ``timeout``)."""
        procs = [(n, self.hosts[n].node) for n in (names or list(self.hosts)) if self.hosts[n].node is not None]
        for _, p in procs:
            p.terminate()
        return {n: p.stop(timeout) for n, p in procs}

    def down(self) -> None:
        try:
            self.stop_nodes()
            for h in self.hosts.values():
                if h.health is not None:
                    h.health.terminate()
            for h in self.hosts.values():
                if h.health is not None:
                    h.health.stop(10)
        finally:
            self.lab.destroy()  # kills whatever still runs in the namespaces
            for d in self._dirs:
                shutil.rmtree(d, ignore_errors=True)

    # --------------------------------------------------------------- observation
    def probe(self, name: str, agents: bool = True, timeout: float = 15) -> Optional[dict]:
        """From inside ``name``'s namespace: every whitelisted agent, every GCS port, its health."""
        h = self.hosts[name]
        wl = [(e.partition(":")[0], e.partition(":")[0], int(e.partition(":")[2] or 6379)) for e in self.whitelist]
        args = {
            "agents": [(n, host, h.agent_port) for n, host, _ in wl] if agents else [],
            "gcs": [(n, host, port) for n, host, port in wl] if agents else [],
            "health": h.health_url.rstrip("/") + "/",
        }
        env = {"PATH": self.path, "CSLR_CONTROL_SECRET": h.node_env.get("CSLR_CONTROL_SECRET", "")}
        return run_in(self.lab, name, PROBE, [json.dumps(args)], env, timeout)

    def node_table(self, name: str, gcs: str, timeout: float = 25) -> Optional[list]:
        """Ray's node table of the GCS at ``gcs``, read from inside ``name``'s namespace with the
        generated auth variables (what any client of the stack has)."""
        h = self.hosts[name]
        env = {k: v for k, v in h.node_env.items() if k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        env.update(PATH=self.path, HOME=h.temp_dir + "h", LANG="C.UTF-8", RAY_USAGE_STATS_ENABLED="0")
        return run_in(self.lab, name, NODE_TABLE, [gcs], env, timeout)

    def healthcheck(self, name: str) -> int:
        """The container healthcheck (``ray_node.py --healthcheck``) run in ``name``'s namespace."""
        cmd = self.lab.exec_argv(name, [self.python, str(self.scripts / "ray_node.py"), "--healthcheck"])
        try:
            return subprocess.run(cmd, env=self.node_env(name), capture_output=True, timeout=20).returncode
        except subprocess.TimeoutExpired:
            return -1

    def states(self) -> Dict[str, dict]:
        return {n: h.state() for n, h in self.hosts.items()}

    def logs(self) -> str:
        parts = []
        for n, h in self.hosts.items():
            for p in (h.health, h.node):
                if p is not None:
                    parts.append(f"----- {n} {p.name} ({p.log_path})\n{p.log_text()}")
        return "\n".join(parts)


class Recorder:
    """Background poller: every change of a node's state file and every ``ray_node:`` log line,
    stamped with seconds since ``mark()`` (the moment under test, e.g. the cable pull)."""

    def __init__(self, cluster: Cluster, interval: float = 0.25) -> None:
        import threading

        self.cluster, self.interval = cluster, interval
        self.t0 = time.monotonic()
        self.events: List[tuple] = []
        self.current: Dict[str, tuple] = {}
        self.violations: List[tuple] = []  # moments with more than one head
        self._offsets: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def mark(self, what: str) -> None:
        self.t0 = time.monotonic()
        self.events.append((self.t0, "-", f"=== {what}"))

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, host: str, what: str) -> None:
        self.events.append((time.monotonic(), host, what))

    def first(self, host: str, needle: str) -> Optional[float]:
        """Seconds after the last mark() of ``host``'s first event containing ``needle``."""
        for t, h, what in list(self.events):
            if h == host and needle in what and t >= self.t0:
                return round(t - self.t0, 2)
        return None

    def _poll(self) -> None:
        for name, h in self.cluster.hosts.items():
            st = h.state()
            pair = (st.get("role", ""), st.get("head_address", ""))
            if st and self.current.get(name) != pair:
                self.current[name] = pair
                self.note(name, f"state role={pair[0] or '-'} head={pair[1] or '-'}")
            if h.node is not None:
                try:
                    with open(h.node.log_path, "rb") as f:
                        f.seek(self._offsets.get(name, 0))
                        data = f.read()
                except OSError:
                    continue
                cut = data.rfind(b"\n") + 1
                self._offsets[name] = self._offsets.get(name, 0) + cut
                for line in data[:cut].decode(errors="replace").splitlines():
                    if line.startswith("ray_node:"):
                        self.note(name, "log " + line[len("ray_node:") :].strip()[:200])
        heads = {n for n, (role, _) in self.current.items() if role == "head"}
        if len(heads) > 1:
            self.violations.append((self.now(), sorted(heads)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def text(self) -> str:
        return "\n".join(f"{t - self.t0:8.2f}s {h:8s} {what}" for t, h, what in list(self.events))

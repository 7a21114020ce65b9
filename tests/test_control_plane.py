"""The authenticated control plane (issue 8) with real processes on loopback, and the scripts'
environment gate (issue 9).

* Forged health calls: a client without CSLR_CONTROL_SECRET forges registrations and
  heartbeats against the real scripts/health.py for several seconds; every call is refused and
  counted, and every connection through the Ray client proxy still reaches the real head.
  The head is a real scripts/ray_node.py whose ``ray`` is the stand-in of tests/_scripts.py: its
  "client server" answers ``IP:message``, standing for Ray's client server (the proxy relays bytes).
* Rogue agents: a process bound on a whitelisted address (127.0.0.x) without the secret cannot
  block an election (``--decide``) nor make a running head yield.
* Soak: many idle and half-open connections keep the health process's threads and fds bounded.
* Environment gate: random environments give exit 2 with ``VAR=value: expected ...`` or a valid
  configuration - never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests._scripts import CONTROL_SECRET, SCRIPTS, free_port, load_script  # noqa: E402
from tests.test_ray_node import Cluster, _free_pair  # noqa: E402

hs = load_script("health")
rn = load_script("ray_node")
cc = rn.cc
PY = sys.executable
HEALTH = str(SCRIPTS / "health.py")
NODE = str(SCRIPTS / "ray_node.py")


def _wait(pred, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _http(port, method, path, body=None, headers=None):
    """(status, JSON body) of one request to 127.0.0.1:port."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest or b"null")


def _through_proxy(port, message=b"ping"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        try:
            c.sendall(message)
            return c.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return b""


class Health:
    """scripts/health.py as a process on 127.0.0.1 with its Ray client proxy."""

    def __init__(self, tmp_path, whitelist, head_port, **extra):
        self.port, self.proxy = free_port(), free_port()
        env = dict(
            os.environ,
            HEALTH_BIND="127.0.0.1",
            HEALTH_PORT=str(self.port),
            RAY_CLIENT_PROXY_PORT=str(self.proxy),
            HEAD_WHITELIST=whitelist,
            RAY_HEAD_PORT=str(head_port),
            CSLR_CONTROL_SECRET=CONTROL_SECRET,
            HEALTH_ELECTION_POLL_S="0.1",
            **extra,
        )
        self.log = open(tmp_path / "health.log", "w")
        self.proc = subprocess.Popen([PY, HEALTH], env=env, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        _wait(lambda: self.status_or_none(), 15, "the health service")

    def status_or_none(self):
        try:
            return _http(self.port, "GET", "/")[1]
        except OSError:
            return None

    def status(self):
        return _http(self.port, "GET", "/")[1]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def stack(tmp_path):
    made = []

    def make(n, first_octet, **node_env):
        c = Cluster(tmp_path, n, first_octet=first_octet)
        h = Health(tmp_path, c.whitelist, c.port)
        c.health_url = h.url
        made.append((c, h))
        return c, h

    yield make
    for c, h in made:
        c.stop()
        h.stop()


class Listener:
    """A TCP listener counting the connections it accepts (the attacker's would-be head)."""

    def __init__(self, host="127.0.0.1", port=0):
        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


# ----------------------------------------------------------------- forged health calls


def test_forged_registrations_and_heartbeats_are_refused_and_the_proxy_keeps_the_real_head(stack):
    c, h = stack(1, first_octet=180)
    ip = c.ips[0]
    client_port = _free_pair(ip)
    c.start(ip, RAY_CLIENT_SERVER_PORT=str(client_port), HEALTH_URL=h.url)
    _wait(lambda: h.status()["known_head"] == f"{ip}:{c.port}", 30, "the elected head")
    _wait(lambda: _through_proxy(h.proxy) == f"{ip}:ping".encode(), 30, "the head's client server via the proxy")
    _wait(lambda: any(n["role"] == "head" for n in _http(h.port, "GET", "/nodes")[1]["nodes"]), 30, "registration")
    attacker = Listener()
    fake_head = {"hostname": "evil", "address": "127.0.0.1", "role": "head", "port": attacker.port, "client_port": attacker.port}
    demote = {"hostname": ip, "role": "worker", "head_address": f"127.0.0.1:{attacker.port}"}
    wrong = "not-the-stack-secret-0123456789"
    expected = {"missing": 0, "bad_mac": 0, "stale": 0, "replay": 0}
    forged = proxied = 0
    try:
        end = time.monotonic() + 4.0  # "several seconds" of forging; the count is what is asserted
        while time.monotonic() < end:
            for path, body in (("/register", fake_head), ("/heartbeat", demote)):
                raw = json.dumps(body).encode()
                # 1. no proof at all
                assert _http(h.port, "POST", path, body)[0] == 401
                expected["missing"] += 1
                # 2. signed with a guessed secret
                assert _http(h.port, "POST", path, body, cc.sign_request(wrong, "POST", path, raw))[0] == 403
                expected["bad_mac"] += 1
                # 3. a genuine request captured earlier and sent again later than the window
                old = cc.sign_request(CONTROL_SECRET, "POST", path, raw, now=time.time() - 120)
                assert _http(h.port, "POST", path, body, old)[0] == 403
                expected["stale"] += 1
                # 4. a genuine harmless request (the real node's own heartbeat) replayed at once
                own = json.dumps({"hostname": ip, "role": "head"}).encode()
                sig = cc.sign_request(CONTROL_SECRET, "POST", "/heartbeat", own)
                assert _http(h.port, "POST", "/heartbeat", {"hostname": ip, "role": "head"}, sig)[0] == 200
                assert _http(h.port, "POST", "/heartbeat", {"hostname": ip, "role": "head"}, sig)[0] == 403
                expected["replay"] += 1
                forged += 4
                # Every proxied connection still reaches the real head.
                assert _through_proxy(h.proxy, b"job") == f"{ip}:job".encode()
                proxied += 1
        status = h.status()
        assert status["refused"] == expected and sum(expected.values()) == forged and forged >= 40
        assert status["known_head"] == f"{ip}:{c.port}"
        nodes = {n["hostname"]: n for n in _http(h.port, "GET", "/nodes")[1]["nodes"]}
        assert "evil" not in nodes and nodes[ip]["role"] == "head"
        assert attacker.accepted == 0 and proxied >= 10
        # Refusals are logged once per source (then only counted).
        assert (Path(c.tmp) / "health.log").read_text().count("refused POST") <= len(expected)
    finally:
        attacker.close()


# ----------------------------------------------------------------- rogue agents


class RogueAgent:
    """A listener on a whitelisted node's agent port without the secret. ``mode``: a state to
    claim in the old unauthenticated format and in the new one with a made-up MAC, or "silent"
    (accepts and closes without a word)."""

    def __init__(self, ip, port, mode):
        self.sock = socket.create_server((ip, port))
        self.mode, self.asked = mode, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.asked += 1
            with conn:
                if self.mode == "silent":
                    continue
                fields = {"v": 2, "hostname": "rogue", "state": self.mode, "head": "", "index": 0, "client_port": 1}
                line = json.dumps(fields) if self.asked % 2 else json.dumps({"body": json.dumps(fields), "mac": "0" * 64})
                try:
                    conn.sendall(line.encode() + b"\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode, gcs", [("deciding", False), ("claiming", False), ("head", True), ("silent", True)])
def test_rogue_agent_cannot_block_an_election(tmp_path, mode, gcs):
    # The rogue holds the agent port (and in two cases the GCS port) of whitelist[0], the
    # highest-priority candidate, which is not running. Before authentication "deciding" or
    # "claiming" blocked the election forever, and "head" + an open GCS port took it over.
    c = Cluster(tmp_path, 2, first_octet=200 + 4 * ["deciding", "claiming", "head", "silent"].index(mode))
    rogue = RogueAgent(c.ips[0], c.port + 1000, mode)
    fake_gcs = Listener(c.ips[0], c.port) if gcs else None
    try:
        env = c.env(c.ips[1], PEER_DEAD_AFTER_S="1")
        if mode == "silent":
            # A silent agent port with an open GCS port is what a head whose agent strangers keep
            # busy looks like: it is never counted as gone (no second head beside a live one), so
            # the squatter delays the election only while it also holds the GCS port.
            proc = subprocess.Popen([PY, NODE, "--decide", "--decide-timeout", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            err_lines = []
            threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
            _wait(lambda: any("GCS port is open; not counted as gone" in line for line in err_lines), 30, "the candidate to wait")
            assert proc.poll() is None  # still deciding: no head while the peer's GCS port is open
            fake_gcs.close()
            fake_gcs = None
            stdout, _ = proc.communicate(timeout=90)
            out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(err_lines))
        else:
            out = subprocess.run([PY, NODE, "--decide", "--decide-timeout", "40"], env=env, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        d = json.loads(out.stdout)
        assert (d["role"], d["head_address"]) == ("head", f"{c.ips[1]}:{c.port}")
        assert rogue.asked >= 1
        if mode != "silent":
            assert "without proof of CSLR_CONTROL_SECRET" in out.stderr
    finally:
        rogue.close()
        if fake_gcs:
            fake_gcs.close()


def test_rogue_agent_cannot_make_a_running_head_yield(tmp_path):
    c = Cluster(tmp_path, 2, first_octet=230)
    try:
        c.start(c.ips[1], SPLIT_CHECK_INTERVAL_S="0.2", HEAD_MONITOR_INTERVAL_S="0.1")
        _wait(lambda: c.state(c.ips[1]).get("role") == "head", 30, "the head")
        # A rogue on the higher-priority address says "head" and holds that GCS port: before
        # authentication the running head yielded to it (the healed-partition rule).
        rogue = RogueAgent(c.ips[0], c.port + 1000, "head")
        fake_gcs = Listener(c.ips[0], c.port)
        try:
            log = tmp_path / f"{c.ips[1]}.log"
            _wait(lambda: "without proof of CSLR_CONTROL_SECRET" in log.read_text(), 30, "the head to read the rogue")
            seen = rogue.asked
            _wait(lambda: rogue.asked >= seen + 5, 30, "five more split checks")
            assert c.state(c.ips[1])["role"] == "head"
            assert "yielding" not in log.read_text() and c.procs[c.ips[1]].poll() is None
            assert rn.tcp_open(c.ips[1], c.port)  # its (stand-in) Ray still runs
        finally:
            rogue.close()
            fake_gcs.close()
    finally:
        c.stop()


# ----------------------------------------------------------------- proxy soak


def _counts(pid):
    with open(f"/proc/{pid}/status") as f:
        threads = int(next(line for line in f if line.startswith("Threads:")).split()[1])
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def test_many_idle_and_half_open_proxy_connections_keep_threads_and_fds_bounded(tmp_path):
    cap = 16
    ip = "127.0.0.250"
    port = _free_pair(ip)
    client_server = socket.create_server((ip, 0))  # stands for the head's Ray client server: accepts, never answers
    held = []
    threading.Thread(target=lambda: [held.append(client_server.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    agent = rn.Agent(ip, 0, ip, port + 1000, CONTROL_SECRET, client_port=client_server.getsockname()[1])
    agent.set("head", f"{ip}:{port}")
    h = Health(tmp_path, ip, port, RAY_CLIENT_PROXY_MAX_CONNECTIONS=str(cap), RAY_CLIENT_PROXY_IDLE_S="3")
    conns = []
    try:
        _wait(lambda: h.status()["known_head"] == f"{ip}:{port}", 30, "the elected head")
        base_threads, base_fds = _counts(h.proc.pid)
        worst = (0, 0)
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", h.proxy), timeout=10)
            if i % 2:
                try:
                    s.sendall(b"x")
                    s.shutdown(socket.SHUT_WR)  # half-open: we never read nor close
                except OSError:
                    pass  # already closed by the proxy: over its cap
            conns.append(s)
            if i % 25 == 0:
                t, f = _counts(h.proc.pid)
                worst = (max(worst[0], t), max(worst[1], f))
        for _ in range(20):
            t, f = _counts(h.proc.pid)
            worst = (max(worst[0], t), max(worst[1], f))
            time.sleep(0.05)
        print(f"soak: 300 connections, cap {cap}: threads {base_threads} -> max {worst[0]}, fds {base_fds} -> max {worst[1]}")
        # One relay thread and two sockets per connection, at most `cap` of them; the HTTP
        # side may hold a request thread of this test's status call.
        assert worst[0] <= base_threads + cap + 2, (base_threads, worst)
        assert worst[1] <= base_fds + 2 * cap + 4, (base_fds, worst)
        for s in conns:
            s.close()
        conns.clear()
        # Once the idle relays are gone, a new client gets through again.
        held_before = len(held)
        _wait(lambda: (socket.create_connection(("127.0.0.1", h.proxy), timeout=5).close() or True) and len(held) > held_before, 60, "a relay after the soak")
    finally:
        for s in conns:
            s.close()
        h.stop()
        agent.close()
        client_server.close()


# ----------------------------------------------------------------- environment gate

NODE_VARS = [
    "NODE_HOSTNAME",
    "NODE_IP",
    "HEAD_WHITELIST",
    "HEAD_ADDRESS",
    "CFG_HEAD_ADDRESS",
    "RAY_HEAD_PORT",
    "HEALTH_URL",
    "NODE_AGENT_PORT",
    "NODE_AGENT_BIND",
    "PEER_DEAD_AFTER_S",
    "RAY_NUM_CPUS",
    "RAY_NUM_GPUS",
    "RAY_MEMORY",
    "RAY_OBJECT_STORE_MEMORY",
    "RAY_DASHBOARD_PORT",
    "RAY_CLIENT_SERVER_PORT",
    "RAY_NODE_MANAGER_PORT",
    "RAY_GCS_FT",
    "RAY_REDIS_ADDRESS",
    "RAY_START_EXTRA_ARGS",
    "RAY_BIN",
    "HEARTBEAT_INTERVAL_S",
    "HEAD_LOSS_PROBES",
    "HEAD_LOSS_GRACE_S",
    "ELECTION_SETTLE_S",
    "SPLIT_CHECK_INTERVAL_S",
    "RAY_STOP_TIMEOUT_S",
    "CSLR_CONTROL_SECRET",
]
HEALTH_VARS = [
    "HEALTH_BIND",
    "HEALTH_PORT",
    "HEALTH_NODE_TTL",
    "HEAD_WHITELIST",
    "RAY_HEAD_PORT",
    "RAY_CLIENT_PROXY_PORT",
    "RAY_CLIENT_SERVER_PORT",
    "RAY_CLIENT_PORTS",
    "RAY_CLIENT_PROXY_MAX_CONNECTIONS",
    "RAY_CLIENT_PROXY_IDLE_S",
    "RAY_DASHBOARD_PROXY_PORT",
    "RAY_DASHBOARD_PORT",
    "RAY_DASHBOARD_PORTS",
    "HEALTH_ELECTION_POLL_S",
    "CSLR_CONTROL_SECRET",
]
NASTY = st.sampled_from(
    [
        "",
        "0",
        "1",
        "-1",
        "70000",
        "65535",
        "6379",
        "1e9",
        "nan",
        "inf",
        "0x10",
        " 7 ",
        "٣",
        "a",
        "a:b",
        "h:1:junk",
        "h:6379",
        "[::1]:1",
        "[::1",
        "a,b",
        "a,,b:99999",
        "x" * 300,
        "http://health:8080",
        "ftp://x",
        "'unclosed",
        "true",
        "maybe",
        "\x00",
        "a b",
        "é",
        "ray-cpu=10011",
        "=1",
        "s" * 40,
    ]
)
VALUE = st.one_of(NASTY, st.text(max_size=40))


def _env(draw_vars, base):
    return st.fixed_dictionaries({}, optional={v: VALUE for v in draw_vars}).map(lambda d: {**base, **d})


@settings(max_examples=400, deadline=None)
@given(env=_env(NODE_VARS, {"NODE_HOSTNAME": "a", "NODE_IP": "10.0.0.1", "HEAD_WHITELIST": "a", "CSLR_CONTROL_SECRET": CONTROL_SECRET}))
def test_ray_node_environment_is_valid_or_refused_with_its_variable(env):
    try:
        rn.load_config(env)
    except ValueError as exc:  # EnvError or a whitelist rule; main turns it into exit 2
        msg = str(exc)
        assert msg and "Traceback" not in msg and "invalid literal" not in msg
        if isinstance(exc, cc.EnvError):
            assert any(msg.startswith(v) for v in NODE_VARS), msg
            if msg.startswith("CSLR_CONTROL_SECRET"):
                # The message is fixed text: it never varies with the secret (a short secret such
                # as "1" may of course occur in it by chance, e.g. in "16").
                assert msg in (
                    "CSLR_CONTROL_SECRET: expected a printable secret of at least 16 characters (value not shown)",
                    "CSLR_CONTROL_SECRET is not set: expected the stack's secret (run `inv init`; compose passes it from .env)",
                ), msg


@settings(max_examples=400, deadline=None)
@given(env=_env(HEALTH_VARS, {"CSLR_CONTROL_SECRET": CONTROL_SECRET}))
def test_health_environment_is_valid_or_refused_with_its_variable(env):
    try:
        hs.Settings(env)
    except cc.EnvError as exc:
        msg = str(exc)
        assert any(msg.startswith(v) for v in HEALTH_VARS) and "invalid literal" not in msg, msg


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=_env(NODE_VARS, {"NODE_HOSTNAME": "a", "NODE_IP": "127.0.0.1", "HEAD_WHITELIST": "a"}))
def test_ray_node_process_never_shows_a_traceback(tmp_path_factory, env):
    env = {k: v.replace("\x00", "") for k, v in env.items()}  # the OS refuses NUL in an environment
    env.update(RAY_TEMP_DIR=str(tmp_path_factory.mktemp("n")), PATH=os.environ.get("PATH", ""))
    out = subprocess.run([PY, NODE, "--healthcheck"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    if out.returncode == 2:
        assert "configuration error:" in out.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HEAD_WHITELIST": "a:6379:junk"}, "HEAD_WHITELIST=a:6379:junk: expected comma-separated entries"),
        ({"RAY_HEAD_PORT": "70000"}, "RAY_HEAD_PORT=70000: expected an integer 1..65535"),
        ({"RAY_NODE_MANAGER_PORT": "x"}, "RAY_NODE_MANAGER_PORT=x: expected an integer 1..65535"),
        ({"CSLR_CONTROL_SECRET": "short"}, "CSLR_CONTROL_SECRET: expected a printable secret of at least 16"),
        ({"CSLR_CONTROL_SECRET": ""}, "CSLR_CONTROL_SECRET is not set"),
    ],
)
def test_ray_node_bad_environment_regressions(capsys, env, message):
    base = {"NODE_HOSTNAME": "a", "NODE_IP": "127.0.0.1", "HEAD_WHITELIST": "a", "CSLR_CONTROL_SECRET": CONTROL_SECRET}
    assert rn.main(["--decide"], environ={**base, **env}) == 2
    err = capsys.readouterr().err
    assert message in err and "invalid literal" not in err
    assert "short" not in err.split(":", 2)[-1] or "CSLR" not in message  # a secret's value is never shown


def test_busy_health_port_is_exit_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        env = {"HEALTH_BIND": "127.0.0.1", "HEALTH_PORT": str(s.getsockname()[1]), "CSLR_CONTROL_SECRET": CONTROL_SECRET}
        assert hs.main([], environ=env) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err

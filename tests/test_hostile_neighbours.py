"""A neighbour without the stack's secret (issue 16): real scripts/ray_node.py and
scripts/health.py processes on loopback, attacked by a process that can only open connections
or listen on a whitelisted address that is free (a node that is down).

* Relayed genuine replies: a listener on a down whitelisted node's agent address relays every
  connection to the real head's agent. The agent refuses a request meant for another node
  (``wrong_target``); the reader sees FORGED. Neither the health service's ``known_head``, its
  Ray client relay, the running head's split check nor a new worker's choice of head moves.
* Slow strangers: 500 connections each to the head's agent and to the health service, each
  trickling one byte every 0.3 s from 50 source addresses, while a higher-priority candidate
  runs its election: it joins the real head (never a second head), GET / keeps answering, and
  the evictions are counted.
* Any bytes as a MAC (hypothesis): a counted refusal, never a traceback or a 500.

The Ray processes are the stand-in of tests/_scripts.py (a GCS port that accepts TCP and a
"client server" that names its node): what is under test is the control plane, not Ray.
"""

from __future__ import annotations

import json
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

from tests._scripts import CONTROL_SECRET, load_script  # noqa: E402
from tests.test_control_plane import NODE, PY, Listener, _http, _through_proxy, _wait, stack  # noqa: E402,F401
from tests.test_ray_node import _free_pair  # noqa: E402

hs = load_script("health")
rn = load_script("ray_node")
cc = rn.cc


class Relay:
    """Listens on ``listen`` without the secret and relays every connection, byte for byte, to
    ``upstream`` (a genuine agent): the man in the middle that replays genuine replies."""

    def __init__(self, listen, upstream):
        self.sock = socket.create_server(listen)
        self.upstream, self.relayed = upstream, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                conn.close()
                continue
            self.relayed += 1
            threading.Thread(target=hs.relay, args=(conn, up, 3.0), daemon=True).start()

    def close(self):
        self.sock.close()


def test_a_relayed_genuine_reply_moves_no_head_no_relay_and_no_election(stack, tmp_path):  # noqa: F811  (the fixture)
    c, h = stack(2, first_octet=160)
    a, b = c.ips  # a: whitelist[0], down; b: the running head
    client_port = _free_pair([a, b])
    c.start(b, RAY_CLIENT_SERVER_PORT=str(client_port), HEALTH_URL=h.url, SPLIT_CHECK_INTERVAL_S="0.2", HEAD_MONITOR_INTERVAL_S="0.1")
    _wait(lambda: h.status()["known_head"] == f"{b}:{c.port}", 30, "the elected head")
    relay = Relay((a, c.port + 1000), (b, c.port + 1000))
    fake_gcs = Listener(a, c.port)  # a's GCS port accepts, as a live head's would
    fake_client = Listener(a, client_port)  # where the proxy would relay if it believed a
    try:
        _wait(lambda: relay.relayed >= 20, 30, "the reader and the head to ask a's address")
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert h.status()["known_head"] == f"{b}:{c.port}"
            assert _through_proxy(h.proxy) == f"{b}:ping".encode()
        # A new node that is not whitelisted picks its head from the whitelist's live heads.
        env = c.env("127.0.0.170", PEER_DEAD_AFTER_S="1")
        out = subprocess.run([PY, NODE, "--decide", "--decide-timeout", "30"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["head_address"] == f"{b}:{c.port}"
        assert "without proof of CSLR_CONTROL_SECRET" in out.stderr  # a's relayed answer read as forged
        log = (tmp_path / f"{b}.log").read_text()
        assert "yielding" not in log and c.state(b)["role"] == "head"
        assert "wrong_target" in log  # b's agent refused the requests meant for a, and said so
        assert fake_client.accepted == 0
    finally:
        relay.close()
        fake_gcs.close()
        fake_client.close()


class Trickle:
    """``n`` connections to ``target`` from ``sources`` (round robin), each sending one byte of
    ``prefix`` then filler every ``every`` s; a connection the server closed is opened again on
    the next round. Bounded: stops by ``stop()`` or after ``limit`` s."""

    def __init__(self, target, n, sources, prefix=b"", every=0.3, limit=120.0):
        self.target, self.sources, self.prefix, self.every = target, sources, prefix, every
        self.socks = [None] * n
        self.sent = [0] * n
        self.reopened = 0
        self._stop = threading.Event()
        self._end = time.monotonic() + limit
        threading.Thread(target=self._run, daemon=True).start()

    def _open(self, i):
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(1.0)
        try:
            s.bind((self.sources[i % len(self.sources)], 0))
            s.connect(self.target)
        except OSError:
            s.close()
            return None
        self.sent[i] = 0
        return s

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._end:
            for i, s in enumerate(self.socks):
                if s is None:
                    self.socks[i] = s = self._open(i)
                    if s is None:
                        continue
                    if self.sent[i] == 0 and i:
                        self.reopened += 1
                byte = self.prefix[self.sent[i] : self.sent[i] + 1] or b"x"
                try:
                    s.send(byte)
                    self.sent[i] += 1
                except OSError:
                    s.close()
                    self.socks[i] = None
            self._stop.wait(self.every)
        for s in self.socks:
            if s is not None:
                s.close()

    def stop(self):
        self._stop.set()


def test_slow_strangers_neither_split_the_election_nor_silence_health(stack, tmp_path):  # noqa: F811  (the fixture)
    c, h = stack(2, first_octet=164)
    a, b = c.ips  # b runs as head; a (higher priority) starts its election under the flood
    c.start(b, HEALTH_URL=h.url)
    _wait(lambda: h.status()["known_head"] == f"{b}:{c.port}", 30, "the elected head")
    sources = [f"127.0.1.{i}" for i in range(1, 51)]
    floods = [
        Trickle((b, c.port + 1000), 500, sources),
        Trickle(("127.0.0.1", h.port), 500, sources, prefix=b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "),
    ]
    try:
        time.sleep(2.0)  # the floods are open and trickling
        for _ in range(10):
            status = h.status()  # a fresh connection each time: GET / keeps answering
            assert status["known_head"] == f"{b}:{c.port}"
            time.sleep(0.2)
        env = c.env(a, PEER_DEAD_AFTER_S="1")
        started = time.monotonic()
        out = subprocess.run([PY, NODE, "--decide", "--decide-timeout", "40"], env=env, capture_output=True, text=True, timeout=90)
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        decision = json.loads(out.stdout)
        # Never a second head: the candidate joins the head whose agent strangers keep busy.
        assert (decision["role"], decision["head_address"]) == ("worker", f"{b}:{c.port}"), decision
        sys.stdout.write(f"\ncandidate decided in {took:.2f} s under the flood\n")
        assert c.state(b)["role"] == "head"
        refused = h.status()["refused"]
        assert refused.get("evicted", 0) + refused.get("deadline", 0) > 0, refused
        assert "refused agent connection" in (tmp_path / f"{b}.log").read_text()
        assert floods[0].reopened > 0 and floods[1].reopened > 0  # the strangers were let out, not in
    finally:
        for f in floods:
            f.stop()


# ----------------------------------------------------------------- any bytes as a MAC


@pytest.fixture(scope="module")
def server():
    reg = hs.Registry(ttl=30)
    srv = hs.make_server("127.0.0.1", 0, reg, CONTROL_SECRET)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _status_line(srv, raw: bytes) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_mac=st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")).filter(lambda b: b.strip()))
def test_any_bytes_as_the_http_mac_are_a_counted_refusal(server, given_mac):
    body = b'{"hostname": "x", "address": "a", "role": "head"}'
    headers = b"X-CSLR-Time: %.3f\r\nX-CSLR-Nonce: n%d\r\nX-CSLR-MAC: " % (time.time(), time.monotonic_ns())
    raw = b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body) + headers + given_mac + b"\r\n\r\n" + body
    before = sum(server.refusals.snapshot().values())
    line = _status_line(server, raw)
    assert line.split()[1] in (b"401", b"403"), line
    assert sum(server.refusals.snapshot().values()) == before + 1


@pytest.fixture(scope="module")
def agent():
    port = _free_pair("127.0.0.1")
    ag = rn.Agent("127.0.0.1", 0, "127.0.0.1", port, CONTROL_SECRET)
    yield ag
    ag.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_mac=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))), target_ok=st.booleans())
def test_any_text_as_the_agent_mac_is_a_counted_refusal(agent, given_mac, target_ok):
    target = agent.node if target_ok else "elsewhere:1"
    line = json.dumps({"v": 3, "ts": f"{time.time():.3f}", "nonce": cc.new_nonce(), "target": target, "mac": given_mac}).encode() + b"\n"
    before = agent.refusals.snapshot()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(line)
        reply = s.makefile("rb").readline()
    assert b"unauthorized" in reply
    after = agent.refusals.snapshot()
    assert sum(after.values()) == sum(before.values()) + 1
    reason = "missing" if not given_mac else "bad_mac"  # an empty MAC is no proof at all
    assert after.get(reason, 0) == before.get(reason, 0) + 1  # a refusal like any other, never an error


def test_large_request_heads_are_refused_and_counted(server):
    before = server.refusals.snapshot().get("too_large", 0)
    raw = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n" + b"X-Pad2: " + b"b" * 9000 + b"\r\n\r\n"
    assert _status_line(server, raw).split()[1] == b"431"
    assert server.refusals.snapshot().get("too_large", 0) == before + 1
    assert _http(server.server_address[1], "GET", "/")[0] == 200


# ----------------------------------------------------------------- the guard's bookkeeping


class FakeSock:
    def __init__(self):
        self.shut = False

    def shutdown(self, how):
        self.shut = True


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.sampled_from(["admit", "release", "tick"]), st.integers(0, 5), st.floats(0, 3)), max_size=80),
    max_total=st.integers(1, 6),
    per_source=st.integers(1, 4),
)
def test_connection_guard_bounds_every_source_and_the_total(events, max_total, per_source):
    now = [0.0]
    refused = []
    guard = cc.ConnectionGuard(max_total, per_source, 2.0, lambda src, why: refused.append((src, why)), clock=lambda: now[0])
    live = []  # (sock, source, admitted at) in admission order
    for what, n, dt in events:
        if what == "admit":
            s = FakeSock()
            guard.admit(s, f"10.0.0.{n}")
            live.append((s, f"10.0.0.{n}", now[0]))
        elif what == "release" and live:
            s, _, _ = live.pop(n % len(live))
            guard.release(s)
        else:
            now[0] += dt
            guard.reap()
        live = [x for x in live if not x[0].shut]
        assert guard.open_count() == len(live) <= max_total
        for src in {x[1] for x in live}:
            assert sum(1 for x in live if x[1] == src) <= per_source
        assert all(now[0] - t < 2.0 for _, _, t in live)  # nothing outlives its deadline after a reap
    assert all(why in (cc.EVICTED, cc.DEADLINE) for _, why in refused)


def test_the_guard_evicts_the_oldest_so_a_fresh_exchange_gets_in():
    guard = cc.ConnectionGuard(3, 2, 10.0)
    socks = [FakeSock() for _ in range(4)]
    for i, s in enumerate(socks[:3]):
        guard.admit(s, f"10.0.0.{i}")
    guard.admit(socks[3], "10.0.0.9")  # full: the oldest of all goes
    assert [s.shut for s in socks] == [True, False, False, False]
    mine = [FakeSock() for _ in range(3)]
    for s in mine:
        guard.admit(s, "10.0.1.1")
    # m0 and m1 each evicted the oldest of all (socks 1, 2); m2 found its source at the cap and
    # evicted that source's own oldest (m0), leaving socks[3] of another source alone.
    assert [s.shut for s in socks] == [True, True, True, False]
    assert [s.shut for s in mine] == [True, False, False]
    assert cc.source_key("2001:db8::1") == cc.source_key("2001:db8::ffff") != cc.source_key("2001:db8:0:1::1")
    assert cc.source_key("::ffff:10.1.2.3") == "10.1.2.3"

"""Tests of scripts/health.py: registry logic, the HTTP interface, and robustness to bad input."""

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
if _ROOT not in sys.path:  # tests/ is no package; make tests._scripts importable under any runner
    sys.path.insert(0, _ROOT)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests._scripts import CONTROL_SECRET, SCRIPTS, load_script  # noqa: E402

hs = load_script("health")


# ----------------------------------------------------------------- pure


def test_whitelist_parsing():
    assert hs.parse_whitelist("a, b:6380, ,", 6379) == [("a", 6379), ("b", 6380)]
    for bad in ("c:x", "d:0", "h:1:junk", "a b"):
        with pytest.raises(hs.cc.EnvError, match="HEAD_WHITELIST="):
            hs.parse_whitelist(bad, 6379)


@pytest.mark.parametrize(
    "payload, full, ok",
    [
        ({"hostname": "a", "address": "1.2.3.4", "role": "head"}, True, True),
        ({"hostname": "a", "role": "head"}, True, False),
        ({"hostname": "a"}, False, True),
        ({"hostname": ""}, False, False),
        ({"hostname": "a", "role": "king"}, False, False),
        ({"hostname": "a", "port": True}, False, False),
        ({"hostname": "a", "port": 70000}, False, False),
        ({"hostname": "x" * 300}, False, False),
        (["hostname"], False, False),
        (None, False, False),
    ],
)
def test_validate_node(payload, full, ok):
    record, error = hs.validate_node(payload, full)
    assert (record is not None) == ok and bool(error) != ok


def test_registry_ttl_heartbeat_and_known_head():
    now = [100.0]
    reg = hs.Registry(ttl=10, whitelist=[("a", 6379), ("b", 6380)], clock=lambda: now[0], wall=lambda: 1e9)
    assert not reg.heartbeat({"hostname": "a"})  # must register first
    assert reg.register({"hostname": "b", "address": "10.0.0.3", "role": "head", "port": 6380})
    assert reg.register({"hostname": "a", "address": "10.0.0.2", "role": "worker"})
    assert reg.registered_head() == "b:6380"
    assert reg.known_head() is None  # a registration alone never makes a head: only the agents do
    now[0] += 11
    assert reg.heartbeat({"hostname": "a"})
    alive = {n["hostname"]: n["alive"] for n in reg.nodes()}
    assert alive == {"a": True, "b": False}
    assert reg.registered_head() is None
    reg.elected = ("a", 6379, 10001)
    assert reg.status()["known_head"] == "a:6379" and reg.head_client() == ("a", 10001)
    now[0] += 10_000  # long-dead entries are pruned, keeping the table bounded
    assert reg.nodes() == []


def test_registrations_are_bounded_per_source_and_in_total():
    reg = hs.Registry()
    for i in range(hs.MAX_NODES_PER_SOURCE):
        assert reg.register({"hostname": f"n{i}", "address": "x", "role": "worker"}, "10.0.0.1")
    assert not reg.register({"hostname": "one-more", "address": "x", "role": "worker"}, "10.0.0.1")
    assert reg.register({"hostname": "n0", "address": "y", "role": "worker"}, "10.0.0.1")  # an update is fine
    for i in range(hs.MAX_NODES - hs.MAX_NODES_PER_SOURCE):
        assert reg.register({"hostname": f"m{i}", "address": "x", "role": "worker"}, f"10.1.{i // 200}.{i % 200}")
    assert not reg.register({"hostname": "full", "address": "x", "role": "worker"}, "10.9.9.9")
    assert len(reg.nodes()) == hs.MAX_NODES


def test_watch_election_takes_the_first_authenticated_head_in_whitelist_order():
    reg = hs.Registry(whitelist=[("a", 1), ("b", 2), ("c", 3)])
    stop = threading.Event()
    asked = []
    answers = {"a": (hs.cc.FORGED, {}), "b": ("head", {"client_port": 10012}), "c": ("head", {})}

    def read(host, port):
        asked.append((host, port))
        if host == "b":
            stop.set()  # one pass is enough; the loop finishes it before looking at stop
        return answers[host]

    hs.watch_election(reg, CONTROL_SECRET, stop, interval=0, read=read)
    assert reg.elected == ("b", 2, 10012) and asked == [("a", 1001), ("b", 1002)]
    assert hs.elected_head([("c", 3, "head", {"client_port": "x"})], {"c": 10013}, 10001) == ("c", 3, 10013)
    assert hs.elected_head([("a", 1, "worker", {}), ("b", 2, "unknown", {})], {}, 10001) is None


# ----------------------------------------------------------------- HTTP


@pytest.fixture
def server():
    reg = hs.Registry(ttl=30)
    srv = hs.make_server("127.0.0.1", 0, reg, CONTROL_SECRET)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _raw(srv, data: bytes, timeout=5.0) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the service may refuse (and close) before a large request is all sent
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    return out


def _req(srv, method, path, body=None, headers=None, secret=CONTROL_SECRET):
    payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    if method == "POST" and secret:
        lines += [f"{k}: {v}" for k, v in hs.cc.sign_request(secret, method, path, payload).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(payload)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = _raw(srv, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    head, _, rest = raw.partition(b"\r\n\r\n")
    code = int(head.split()[1])
    return code, (json.loads(rest) if rest.strip() else None)


def test_status_and_nodes(server):
    code, body = _req(server, "GET", "/")
    assert code == 200 and body["status"] == "ok" and body["known_head"] is None
    assert _req(server, "POST", "/register", {"hostname": "h1", "address": "10.0.0.2", "role": "head", "port": 6379})[0] == 200
    assert _req(server, "POST", "/heartbeat", {"hostname": "h1", "role": "head"})[0] == 200
    code, body = _req(server, "GET", "/nodes")
    node = body["nodes"][0]
    assert (node["hostname"], node["address"], node["role"], node["alive"]) == ("h1", "10.0.0.2", "head", True)
    assert "last_heartbeat" in node
    status = _req(server, "GET", "/")[1]
    assert (status["registered_head"], status["known_head"]) == ("h1:6379", None)  # only the agents make a head
    # Unsigned calls are refused, and counted in GET /.
    assert _req(server, "POST", "/heartbeat", {"hostname": "h1", "role": "worker"}, secret="")[0] == 401
    assert _req(server, "POST", "/heartbeat", {"hostname": "h1", "role": "worker"}, secret="x" * 20)[0] == 403
    assert _req(server, "GET", "/")[1]["refused"] == {"missing": 1, "bad_mac": 1}
    assert _req(server, "GET", "/nodes")[1]["nodes"][0]["role"] == "head"


@pytest.mark.parametrize(
    "method, path, body, headers, code",
    [
        ("GET", "/nope", None, None, 404),
        ("POST", "/nope", {}, None, 404),
        ("DELETE", "/", None, None, 405),
        ("POST", "/register", b"{not json", None, 400),
        ("POST", "/register", {"hostname": "x"}, None, 400),
        ("POST", "/heartbeat", {"hostname": "ghost"}, None, 404),
        ("POST", "/register", None, None, 411),
        ("POST", "/register", b"{}", {"Content-Length": "-3"}, 400),
        ("POST", "/register", b"", {"Transfer-Encoding": "chunked"}, 411),
    ],
)
def test_bad_requests_get_json_errors(server, method, path, body, headers, code):
    got, payload = _req(server, method, path, body, headers)
    assert got == code and "error" in payload


def test_body_size_is_bounded(server):
    # The refusal comes from Content-Length alone, before any of the body is read: the client
    # sends none of it (sending it would race the server's close into a reset on a busy machine).
    head = f"POST /register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {hs.MAX_BODY + 12}\r\n\r\n"
    raw = _raw(server, head.encode())
    assert raw.split(b"\r\n", 1)[0].split()[1] == b"413", raw[:200]


def test_malformed_request_lines_and_headers_do_not_hurt_the_service(server):
    for junk in [
        b"\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"\x00\xff\xfe" * 100,
        b"POST /register HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
    ]:
        _raw(server, junk)
    assert _req(server, "GET", "/")[0] == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    line=st.binary(max_size=200),
    headers=st.lists(st.binary(max_size=100), max_size=5),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_fuzzed_requests_never_kill_the_service(server, line, headers, body):
    request = line + b"\r\n" + b"".join(h.replace(b"\n", b"") + b"\r\n" for h in headers)
    request += b"Content-Length: %d\r\n\r\n" % len(body) + body
    reply = _raw(server, request)
    if reply:
        assert reply.startswith(b"HTTP/") or reply  # any answer is fine; a crash is not
    for path in ("/register", "/heartbeat"):
        got = _req(server, "POST", path, body)[0]
        assert got in (200, 400, 404)
    assert _req(server, "GET", "/")[0] == 200


def test_service_stays_up_while_a_client_stalls(server):
    # One half-sent request must not block others (threaded server, per-request timeout).
    stalled = socket.create_connection(server.server_address[:2])
    stalled.sendall(b"POST /register HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    try:
        assert _req(server, "GET", "/")[0] == 200
    finally:
        stalled.close()


# ----------------------------------------------------------------- process


def test_process_serves_checks_and_stops_on_sigterm():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "health.py")],
        env=dict(os.environ, HEALTH_BIND="127.0.0.1", HEALTH_PORT=str(port), HEAD_WHITELIST="127.0.0.1:9", CSLR_CONTROL_SECRET=CONTROL_SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        check = [sys.executable, str(SCRIPTS / "health.py"), "--check", f"http://127.0.0.1:{port}/"]
        end = time.monotonic() + 10
        while subprocess.run(check).returncode != 0 and time.monotonic() < end:
            time.sleep(0.1)
        assert subprocess.run(check).returncode == 0
        bad = check[:-1] + [f"http://127.0.0.1:{port}/missing"]
        assert subprocess.run(bad).returncode == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert len(err.decode().strip().splitlines()) == 2  # quiet: start and stop lines only


def test_check_fails_when_nothing_listens():
    assert hs.main(["--check", "http://127.0.0.1:9/"]) == 1


def test_bad_port_is_exit_2(capsys):
    assert hs.main([], environ={"HEALTH_PORT": "eighty", "CSLR_CONTROL_SECRET": CONTROL_SECRET}) == 2
    assert "HEALTH_PORT=eighty: expected an integer 0..65535" in capsys.readouterr().err


# ----------------------------------------------------------------- Ray client proxy


def _echo_server():
    """A TCP peer on loopback that answers each message with a tag and the message. The proxy
    is protocol-agnostic, so any byte stream stands for Ray's client server here; the tag says
    which "head" answered."""
    srv = socket.create_server(("127.0.0.1", 0))
    tag = f"{srv.getsockname()[1]}:".encode()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return

            def one(c=conn):
                with c:
                    while True:
                        data = c.recv(4096)
                        if not data:
                            return
                        c.sendall(tag + data)

            threading.Thread(target=one, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _ask(port, message=b"ping"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        try:
            c.sendall(message)
            return c.recv(4096)
        except ConnectionResetError:  # closed by the proxy before reading what we sent
            return b""


def test_client_port_is_validated():
    assert hs.validate_node({"hostname": "a", "client_port": 10001}, False)[0]["client_port"] == 10001
    assert hs.validate_node({"hostname": "a", "client_port": "10001"}, False)[0] is None


def test_client_proxy_follows_the_elected_head():
    head1, port1 = _echo_server()
    head2, port2 = _echo_server()
    reg = hs.Registry(ttl=15, whitelist=[("127.0.0.1", 6379)])
    listener = socket.create_server(("127.0.0.1", 0))
    proxy_port = listener.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=hs.ClientProxy(listener, reg.head_client).loop, args=(stop,), daemon=True).start()
    try:
        # No head known: the connection is closed at once instead of hanging.
        assert _ask(proxy_port) == b""
        # A registration (even an authentic one) does not move the proxy; the election does.
        reg.register({"hostname": "127.0.0.1", "address": "127.0.0.1", "role": "head", "client_port": port1})
        assert _ask(proxy_port) == b""
        reg.elected = ("127.0.0.1", 6379, port1)
        assert _ask(proxy_port, b"hello") == f"{port1}:hello".encode()
        # The head fails over: the same proxy address now reaches the new head.
        reg.elected = ("127.0.0.1", 6379, port2)
        assert _ask(proxy_port, b"again") == f"{port2}:again".encode()
    finally:
        stop.set()
        head1.close()
        head2.close()


def test_relay_passes_half_close_and_ends_idle_connections():
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    t = threading.Thread(target=hs.relay, args=(a2, b1, 0.3), daemon=True)
    t.start()
    a1.sendall(b"req")
    a1.shutdown(socket.SHUT_WR)  # half-closed client: the request still arrives, EOF follows
    assert b2.recv(10) == b"req" and b2.recv(10) == b""
    b2.sendall(b"answer")
    assert a1.recv(10) == b"answer"
    t.join(10)  # nothing moves any more: the idle limit ends the relay and closes both sides
    assert not t.is_alive()
    assert a1.recv(10) == b""
    for s in (a1, b2):
        s.close()


# ----------------------------------------------------------------- Ray dashboard proxy


def _run_health(**env):
    """The real health.py `main` on loopback in a thread; returns (its registry, stop)."""
    got: list = []
    ready = threading.Event()

    def on_ready(srv):
        got.append(srv)
        ready.set()

    base = {"HEALTH_BIND": "127.0.0.1", "HEALTH_PORT": "0", "CSLR_CONTROL_SECRET": CONTROL_SECRET}
    t = threading.Thread(target=hs.main, kwargs={"argv": [], "environ": {**base, **env}, "ready": on_ready}, daemon=True)
    t.start()
    assert ready.wait(10), "health.main did not start"
    srv = got[0]

    def stop():
        srv.shutdown()
        t.join(10)

    return srv.RequestHandlerClass.registry, stop


def test_dashboard_proxy_reaches_only_the_elected_heads_dashboard_and_follows_a_new_head():
    # Two "nodes" on two loopback addresses; each has a dashboard listener and a client-server
    # listener (echo servers standing for Ray's dashboard HTTP server and client server: the relay
    # is protocol-agnostic). The tag in each answer says which listener answered.
    dash1, dport1 = _echo_server()
    dash2, dport2 = _echo_server()
    client1, cport1 = _echo_server()
    proxy_port, dash_proxy_port, nothing = _free_port(), _free_port(), _free_port()
    reg, stop = _run_health(
        RAY_CLIENT_PROXY_PORT=str(proxy_port),
        RAY_DASHBOARD_PROXY_PORT=str(dash_proxy_port),
        RAY_DASHBOARD_PORTS=f"127.0.0.1={dport1},localhost={dport2}",
        RAY_DASHBOARD_PORT=str(nothing),
    )
    try:
        # No head known: closed at once, nothing reached.
        assert _ask(dash_proxy_port) == b""
        # A registration does not move it; only the election does.
        reg.register({"hostname": "127.0.0.1", "address": "127.0.0.1", "role": "head"})
        assert _ask(dash_proxy_port) == b""
        # Head 127.0.0.1 (its client server on cport1): the dashboard relay goes to that node's
        # dashboard port, the client relay to its client port - each to its own, never the other.
        reg.elected = ("127.0.0.1", 6379, cport1)
        assert _ask(dash_proxy_port, b"GET /api/jobs/") == f"{dport1}:GET /api/jobs/".encode()
        assert _ask(proxy_port, b"ray") == f"{cport1}:ray".encode()
        # Failover to the other node: the same dashboard address now reaches the new head's.
        reg.elected = ("localhost", 6379, cport1)
        assert _ask(dash_proxy_port, b"again") == f"{dport2}:again".encode()
        # A head not in RAY_DASHBOARD_PORTS gets RAY_DASHBOARD_PORT, where nothing listens here:
        # the connection is closed, never sent to another node's dashboard.
        reg.elected = ("127.0.0.2", 6379, cport1)
        assert _ask(dash_proxy_port, b"lost") == b""
        reg.elected = None
        assert _ask(dash_proxy_port) == b""
    finally:
        stop()
        for s in (dash1, dash2, client1):
            s.close()


def test_dashboard_port_defaults_to_ray_dashboard_port_for_unlisted_nodes():
    reg = hs.Registry(dashboard_ports={"Ray-CPU-A": 18265}, default_dashboard_port=8265)
    assert reg.head_dashboard() is None
    reg.elected = ("ray-cpu-a", 6379, 10011)
    assert reg.head_dashboard() == ("ray-cpu-a", 18265)
    reg.elected = ("ray-cpu", 6379, 10001)
    assert reg.head_dashboard() == ("ray-cpu", 8265)
    cfg = hs.Settings({"CSLR_CONTROL_SECRET": CONTROL_SECRET, "RAY_DASHBOARD_PROXY_PORT": "8265", "RAY_DASHBOARD_PORTS": "ray-cpu-a=8265,ray-gpu-a=8266"})
    assert (cfg.dashboard_proxy_port, cfg.dashboard_port, cfg.dashboard_ports) == (8265, 8265, {"ray-cpu-a": 8265, "ray-gpu-a": 8266})
    with pytest.raises(hs.cc.EnvError, match="RAY_DASHBOARD_PORTS"):
        hs.Settings({"CSLR_CONTROL_SECRET": CONTROL_SECRET, "RAY_DASHBOARD_PORTS": "ray-cpu-a=99999"})


def test_busy_dashboard_proxy_port_is_exit_2(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {"HEALTH_BIND": "127.0.0.1", "HEALTH_PORT": "0", "CSLR_CONTROL_SECRET": CONTROL_SECRET, "RAY_DASHBOARD_PROXY_PORT": str(port)}
        assert hs.main([], environ=env) == 2
    assert f"cannot listen on 127.0.0.1:{port} (RAY_DASHBOARD_PROXY_PORT)" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- /metrics


def _unescape_label(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_exposition(text: str) -> dict:
    """An independent reading of the text format: {(name, ((label, value), ...)): value}; HELP/TYPE checked."""
    import re

    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"')
    samples, typed = {}, set()
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            assert "\n" not in line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in typed
            typed.add(name)
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        name, labels_text, value = m.groups()
        assert name in typed, f"{name} has no TYPE line before it"
        labels = []
        rest = labels_text or ""
        while rest:
            lm = label.match(rest)
            assert lm, rest
            labels.append((lm.group(1), _unescape_label(lm.group(2))))
            rest = rest[lm.end() :]
            if rest:
                assert rest[0] == ",", rest
                rest = rest[1:]
        samples[(name, tuple(labels))] = float(value)
    return samples


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.text(max_size=20), min_size=1, max_size=5, unique=True), help_text=st.text(max_size=40))
def test_exposition_round_trips_any_label_value_and_help_text(values, help_text):
    text = hs.exposition([("cslr_x_total", "counter", help_text, [({"reason": v}, i) for i, v in enumerate(values)])])
    assert text.count("\n") == 2 + len(values)  # no value or help text can add a line
    assert _parse_exposition(text) == {("cslr_x_total", (("reason", v),)): float(i) for i, v in enumerate(values)}


def test_format_value():
    assert [hs.format_value(v) for v in (3, 2.5, float("inf"), float("nan"), 0.0)] == ["3", "2.5", "+Inf", "NaN", "0"]


def test_head_changes_count_new_heads_only():
    reg = hs.Registry()
    for value in [None, ("a", 1, 2), ("a", 1, 2), ("a", 1, 3), None, ("a", 1, 2), ("b", 1, 2), None]:
        reg.elected = value
    assert reg.head_changes == 3 and reg.elected is None  # a (first), a again after none, b


def _metrics(srv) -> tuple:
    raw = _raw(srv, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200" and b"text/plain; version=0.0.4" in head
    return _parse_exposition(body.decode())


def test_metrics_count_a_forged_post_and_show_the_elected_head(server):
    before = _metrics(server)
    assert before[("cslr_health_refused_total", (("reason", "bad_mac"),))] == 0
    assert before[("cslr_health_head_elected", ())] == 0 and before[("cslr_health_head_changes_total", ())] == 0
    assert not any(name == "cslr_health_head_info" for name, _ in before)
    # A POST signed with the wrong secret is refused (403) and counted under its reason.
    assert _req(server, "POST", "/register", {"hostname": "evil", "address": "10.0.0.9", "role": "head"}, secret="y" * 32)[0] == 403
    server.RequestHandlerClass.registry.elected = ("ray-cpu", 6379, 10001)
    after = _metrics(server)
    assert after[("cslr_health_refused_total", (("reason", "bad_mac"),))] == 1
    assert after[("cslr_health_refused_total", (("reason", "missing"),))] == 0
    assert after[("cslr_health_head_elected", ())] == 1 and after[("cslr_health_head_changes_total", ())] == 1
    assert after[("cslr_health_head_info", (("host", "ray-cpu"), ("port", "6379")))] == 1
    assert after[("cslr_health_up", ())] == 1 and after[("cslr_health_nodes_alive", ())] == 0


def test_metrics_show_relay_connections():
    class FakeProxy:
        def counters(self):
            return {"open": 2, "accepted": 5, "refused_over_cap": 1}

    samples = _parse_exposition(hs.exposition(hs.health_metrics({"known_head": None, "refused": {}}, 0, {"client": FakeProxy().counters()})))
    assert samples[("cslr_health_relay_connections", (("relay", "client"),))] == 2
    assert samples[("cslr_health_relay_accepted_total", (("relay", "client"),))] == 5
    assert samples[("cslr_health_relay_refused_total", (("relay", "client"),))] == 1

#!/usr/bin/env python3
"""Health / registry service of the CSLR Ray stack (standard library only, Python >= 3.9).

Purpose
    A small threaded HTTP JSON service that every Ray node of one host can reach.
    It answers whether the stack is up, keeps a registry of the Ray nodes
    (registration + heartbeat, written by ``scripts/ray_node.py``) and reports the
    head it knows about.  It is *not* the arbiter of the head election: on a
    multi-host deployment every host runs its own health service, so the election
    (see ``ray_node.py``) never depends on it for safety.

Caller
    The ``health`` container: ``python3 /opt/cslr/scripts/health.py``.
    Its healthcheck: ``python3 /opt/cslr/scripts/health.py --check http://127.0.0.1:8080/``.

HTTP interface (all bodies are JSON, ``Content-Type: application/json``)
    GET  /            200 {"status": "ok", "uptime_s", "known_head", "registered_head",
                           "nodes_alive", "refused": {reason: count}, "time"}
    GET  /nodes       200 {"nodes": [{"hostname", "address", "role", "head_address",
                                       "last_heartbeat", "age_s", "alive", ...}]}
    GET  /metrics     200 Prometheus text format 0.0.4 (``text/plain; version=0.0.4``): the
                      election state (cslr_health_head_elected, cslr_health_head_info), head
                      changes, nodes alive, relay connections (open, accepted, refused over the
                      cap) and refusals by reason - what GET / already tells anyone who can
                      reach this port, nothing more (docs/monitoring.md, docs/security.md).
    POST /register    body {"hostname", "address", "role", ["head_address", "port", "state"]}
                      -> 200 {"ok": true}; 503 when the table is full (MAX_NODES in total,
                      MAX_NODES_PER_SOURCE per source address)
    POST /heartbeat   body {"hostname", ["role", "head_address", "state", "address"]}
                      -> 200 {"ok": true}; 404 if the hostname is not registered
                      (the node then registers again, e.g. after a restart of this service)
    Every POST must carry X-CSLR-Time, X-CSLR-Nonce and X-CSLR-MAC (cslr_control.sign_request,
    HMAC-SHA256 with CSLR_CONTROL_SECRET over method, path, time, nonce and body): missing ->
    401; a bad MAC, a time more than 30 s off, or a nonce already used -> 403.  Refusals are
    counted (GET / "refused") and logged once per source address per minute.
    anything else     404 (unknown path) / 405 (unknown method); malformed JSON or
                      fields -> 400; body larger than MAX_BODY -> 413; missing length -> 411.
    One request per connection.  Connections are bounded as a whole (cslr_control.ConnectionGuard):
    each must be read and answered within HTTP_DEADLINE_S, its request line and headers within
    MAX_HEAD bytes (else 431 / closed); at most MAX_HTTP_PER_SOURCE per source address and
    MAX_HTTP_CONNECTIONS in all are open, a new one over a cap evicting the oldest.  Evictions,
    expiries and oversized heads are counted in GET / "refused" like forged POSTs.
    A node is alive while its last heartbeat is younger than HEALTH_NODE_TTL seconds.
    ``known_head`` is the head the election made: a background thread asks the whitelisted
    nodes' election agents (authenticated both ways, every HEALTH_ELECTION_POLL_S) and takes
    the first in whitelist order that says "head".  ``registered_head`` is what the TTL'd
    registrations say (informational; it lags a crash by up to HEALTH_NODE_TTL).

Ray client proxy
    With RAY_CLIENT_PROXY_PORT set, every TCP connection to that port is relayed to the Ray
    client server of the elected head - a whitelisted address, never anything else; its port
    is the one the head's agent reports, else RAY_CLIENT_PORTS, else RAY_CLIENT_SERVER_PORT -
    so clients that are not Ray nodes (the notebook, the test runner, a laptop through the
    published port) keep one stable address across head failovers.  A connection made while
    no head is known, or over RAY_CLIENT_PROXY_MAX_CONNECTIONS, is closed at once; a relay
    with no traffic for RAY_CLIENT_PROXY_IDLE_S ends.

Ray dashboard proxy
    With RAY_DASHBOARD_PROXY_PORT set, the same relay (same cap, same idle limit) goes to the
    elected head's Ray dashboard - its Jobs API included - at RAY_DASHBOARD_PORTS' port for
    that node, else RAY_DASHBOARD_PORT: one stable dashboard / Jobs address across failovers.

Environment (each through cslr_control.EnvReader; see docs/runtime.md)
    CSLR_CONTROL_SECRET (required), HEALTH_BIND (0.0.0.0), HEALTH_PORT (8080),
    HEALTH_NODE_TTL (15), HEAD_WHITELIST (""), RAY_HEAD_PORT (6379),
    RAY_CLIENT_PROXY_PORT (off), RAY_CLIENT_SERVER_PORT (10001), RAY_CLIENT_PORTS
    ("name=port,..."), RAY_CLIENT_PROXY_MAX_CONNECTIONS (256), RAY_CLIENT_PROXY_IDLE_S (600),
    RAY_DASHBOARD_PROXY_PORT (off), RAY_DASHBOARD_PORT (8265), RAY_DASHBOARD_PORTS
    ("name=port,..."), HEALTH_ELECTION_POLL_S (0.25).

Outputs
    One start line and one stop line on stderr; per-request logs are suppressed.

Exit codes
    0  normal stop (SIGTERM / SIGINT), or ``--check`` got HTTP 200
    1  ``--check`` failed (no answer, or not 200)
    2  bad command line / environment (``VAR=value: expected ...``; a secret's value is never
       shown), or a port that cannot be bound
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import cslr_control as cc  # the scripts' shared helpers (this script's own directory)
from cslr_control import tcp_open  # noqa: F401  (re-exported for callers of this module)

MAX_BODY = 64 * 1024
MAX_NODES = 256
MAX_NODES_PER_SOURCE = 8
MAX_HTTP_CONNECTIONS = 64  # open connections in all; a new one over the cap evicts the oldest
MAX_HTTP_PER_SOURCE = 16  # open connections per source address (IPv6: per /64)
HTTP_DEADLINE_S = 5.0  # one request per connection, read and answered within this, however slow the sender
MAX_HEAD = 16 * 1024  # request line + headers, in bytes (the stdlib alone allows ~6.5 MiB)
MAX_FIELD = 256
ROLES = ("head", "worker", "unknown")
DEFAULT_TTL = 15.0
REQUEST_TIMEOUT = 10.0


# --------------------------------------------------------------------------- pure


def parse_whitelist(text: str, default_port: int) -> List[Tuple[str, int]]:
    """``"a, b:6380"`` -> ``[("a", default_port), ("b", 6380)]``; EnvError on a bad entry."""
    return cc.EnvReader({"HEAD_WHITELIST": text or ""}).host_ports("HEAD_WHITELIST", default_port)


def validate_node(payload: object, require_full: bool) -> Tuple[Optional[dict], str]:
    """Check a register/heartbeat body; returns (clean record, "") or (None, error)."""
    if not isinstance(payload, dict):
        return None, "body must be a JSON object"
    clean: dict = {}
    hostname = payload.get("hostname")
    if not isinstance(hostname, str) or not hostname.strip() or len(hostname) > MAX_FIELD:
        return None, "hostname must be a non-empty string"
    clean["hostname"] = hostname.strip()
    for key in ("address", "head_address", "state"):
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            return None, f"{key} must be a string"
        clean[key] = value
    role = payload.get("role")
    if role is not None:
        if role not in ROLES:
            return None, f"role must be one of {', '.join(ROLES)}"
        clean["role"] = role
    for key in ("port", "client_port"):
        port = payload.get(key)
        if port is not None:
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
                return None, f"{key} must be an integer 0..65535"
            clean[key] = port
    if require_full:
        if "address" not in clean:
            return None, "address is required"
        if "role" not in clean:
            return None, "role is required"
    return clean, ""


def pick_known_head(
    nodes: Mapping[str, dict],
    now: float,
    ttl: float,
    whitelist: List[Tuple[str, int]],
    default_port: int,
) -> Optional[str]:
    """The ``host:port`` of the alive registered head; whitelist order breaks ties."""
    rank = {host.lower(): i for i, (host, _) in enumerate(whitelist)}
    heads = []
    for node in nodes.values():
        if node.get("role") != "head" or now - node["last_seen"] > ttl:
            continue
        port = node.get("port") or dict(whitelist).get(node["hostname"], default_port)
        heads.append((rank.get(node["hostname"].lower(), len(rank)), node["hostname"], port))
    if not heads:
        return None
    heads.sort()
    return f"{heads[0][1]}:{heads[0][2]}"


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The refusal reasons this service counts (cslr_control), each shown from 0 so rate() works at once.
HEALTH_REFUSALS = (cc.MISSING, cc.BAD_MAC, cc.STALE, cc.REPLAY, cc.EVICTED, cc.DEADLINE, cc.TOO_LARGE)

# One metric: (name, type, help, [(labels, value)]).
Metric = Tuple[str, str, str, List[Tuple[Mapping[str, str], float]]]


def escape_label(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text as the text format writes it: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def exposition(metrics: List[Metric]) -> str:
    """The Prometheus text format (0.0.4) of ``metrics``; label names must match [a-zA-Z_][a-zA-Z0-9_]*."""
    out = []
    for name, kind, help_text, samples in metrics:
        out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {format_value(value)}" if text else f"{name} {format_value(value)}")
    return "\n".join(out) + "\n"


def health_metrics(status: Mapping[str, object], head_changes: int, relays: Mapping[str, Mapping[str, int]]) -> List[Metric]:
    """The health service's metrics from GET /'s ``status``, the head change count and, per relay
    ("client", "dashboard"), its counters {"open", "accepted", "refused_over_cap"}."""
    head = status.get("known_head")
    host, _, port = str(head).rpartition(":") if head else ("", "", "")
    refused = {reason: 0 for reason in HEALTH_REFUSALS}
    refused.update(status.get("refused") or {})  # type: ignore[call-overload]
    return [
        ("cslr_health_up", "gauge", "1 while the health service answers.", [({}, 1)]),
        ("cslr_health_uptime_seconds", "gauge", "Seconds since the health service started.", [({}, float(status.get("uptime_s") or 0))]),  # type: ignore[arg-type]
        ("cslr_health_head_elected", "gauge", "1 while a whitelisted node's election agent says it is head, else 0.", [({}, 1 if head else 0)]),
        ("cslr_health_head_info", "gauge", "The elected head (host, GCS port); no sample while none is.", [({"host": host, "port": port}, 1)] if head else []),
        (
            "cslr_health_head_changes_total",
            "counter",
            "Times the relays turned to a head other than the one before (first election, failover, a head again after none).",
            [({}, head_changes)],
        ),
        (
            "cslr_health_nodes_alive",
            "gauge",
            "Registered Ray nodes whose last heartbeat is younger than HEALTH_NODE_TTL.",
            [({}, int(status.get("nodes_alive") or 0))],
        ),  # type: ignore[call-overload]
        (
            "cslr_health_relay_connections",
            "gauge",
            "Relay connections open now, per relay (client: ray://, dashboard).",
            [({"relay": r}, c.get("open", 0)) for r, c in sorted(relays.items())],
        ),
        (
            "cslr_health_relay_accepted_total",
            "counter",
            "Relay connections accepted, per relay.",
            [({"relay": r}, c.get("accepted", 0)) for r, c in sorted(relays.items())],
        ),
        (
            "cslr_health_relay_refused_total",
            "counter",
            "Relay connections closed at once because the relay was at its cap.",
            [({"relay": r}, c.get("refused_over_cap", 0)) for r, c in sorted(relays.items())],
        ),
        (
            "cslr_health_refused_total",
            "counter",
            "Refused requests and connections by reason (forged or unsigned POSTs, stale times, replays, evictions, oversized heads).",
            [({"reason": k}, v) for k, v in sorted(refused.items())],
        ),
    ]


# --------------------------------------------------------------------------- state


class Registry:
    """Thread-safe node table with an injectable clock (monotonic for ages, wall for output)."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        whitelist: Optional[List[Tuple[str, int]]] = None,
        default_port: int = 6379,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        dashboard_ports: Optional[Mapping[str, int]] = None,
        default_dashboard_port: int = 8265,
    ) -> None:
        self.ttl = ttl
        self.dashboard_ports = {k.lower(): v for k, v in (dashboard_ports or {}).items()}
        self.default_dashboard_port = default_dashboard_port
        self.whitelist = list(whitelist or [])
        self.default_port = default_port
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self._elected: Optional[Tuple[str, int, int]] = None  # (host, GCS port, client port) per the agents
        self.head_changes = 0  # times `elected` became a head other than the one before (None included)
        self._nodes: Dict[str, dict] = {}
        self._lock = threading.Lock()

    @property
    def elected(self) -> Optional[Tuple[str, int, int]]:
        return self._elected

    @elected.setter
    def elected(self, value: Optional[Tuple[str, int, int]]) -> None:
        # One writer (watch_election); a change to a head (the first election, a failover, a head
        # again after none) is counted for /metrics.
        if value is not None and (self._elected is None or self._elected[0] != value[0]):
            self.head_changes += 1
        self._elected = value

    def _prune(self, now: float) -> None:
        # Dead entries are kept for a while so GET /nodes can show them, but the
        # table stays bounded whatever clients send.
        horizon = max(self.ttl * 20, 300.0)
        for key in [k for k, v in self._nodes.items() if now - v["last_seen"] > horizon]:
            del self._nodes[key]

    def register(self, record: dict, source: str = "") -> bool:
        """False when the table is full, in total or for this source address."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            key = record["hostname"].lower()
            if key not in self._nodes:
                if len(self._nodes) >= MAX_NODES:
                    return False
                if sum(1 for n in self._nodes.values() if n.get("source") == source) >= MAX_NODES_PER_SOURCE:
                    return False
            node = dict(self._nodes.get(key, {}))
            node.update(record)
            node["source"] = source
            node["last_seen"] = now
            node["last_heartbeat"] = self.wall()
            node.setdefault("registered", node["last_heartbeat"])
            self._nodes[key] = node
            return True

    def heartbeat(self, record: dict) -> bool:
        now = self.clock()
        with self._lock:
            key = record["hostname"].lower()
            node = self._nodes.get(key)
            if node is None:
                return False
            node.update(record)
            node["last_seen"] = now
            node["last_heartbeat"] = self.wall()
            return True

    def nodes(self) -> List[dict]:
        now = self.clock()
        with self._lock:
            self._prune(now)
            out = []
            for node in self._nodes.values():
                item = {k: v for k, v in node.items() if k not in ("last_seen", "source")}
                item["age_s"] = round(now - node["last_seen"], 3)
                item["alive"] = now - node["last_seen"] <= self.ttl
                out.append(item)
        out.sort(key=lambda n: n["hostname"])
        return out

    def registered_head(self) -> Optional[str]:
        """The ``host:port`` of the alive registered head (informational only)."""
        now = self.clock()
        with self._lock:
            return pick_known_head(self._nodes, now, self.ttl, self.whitelist, self.default_port)

    def known_head(self) -> Optional[str]:
        """The head the election made, as its agents say (watch_election); never the registry's word."""
        elected = self.elected
        return f"{elected[0]}:{elected[1]}" if elected else None

    def head_client(self) -> Optional[Tuple[str, int]]:
        """(whitelisted host, Ray client port) of the elected head, or None."""
        elected = self.elected
        return (elected[0], elected[2]) if elected else None

    def head_dashboard(self) -> Optional[Tuple[str, int]]:
        """(whitelisted host, Ray dashboard port) of the elected head, or None."""
        elected = self.elected
        if not elected:
            return None
        return elected[0], self.dashboard_ports.get(elected[0].lower()) or self.default_dashboard_port

    def status(self, refused: Optional[Mapping[str, int]] = None) -> dict:
        nodes = self.nodes()
        return {
            "status": "ok",
            "uptime_s": round(self.clock() - self.started, 3),
            "known_head": self.known_head(),
            "registered_head": self.registered_head(),
            "nodes_alive": sum(1 for n in nodes if n["alive"]),
            "refused": dict(refused or {}),
            "time": self.wall(),
        }


# --------------------------------------------------------------------------- HTTP


class BoundedReader:
    """A request's input with a byte budget: MAX_HEAD for the request line and headers, then the
    announced body length.  Past the budget it raises http.client.LineTooLong (the stdlib answers
    431 while parsing headers; on the request line the connection is closed) and reports once."""

    def __init__(self, raw, budget: int, on_exceed: Callable[[], None]) -> None:
        self.raw, self.budget, self.on_exceed = raw, budget, on_exceed

    def _exceeded(self) -> None:
        self.on_exceed()
        raise http.client.LineTooLong(f"request head larger than {MAX_HEAD} bytes")

    def readline(self, size: int = -1) -> bytes:
        if self.budget <= 0:
            self._exceeded()
        line = self.raw.readline(self.budget if size is None or size < 0 else min(size, self.budget))
        self.budget -= len(line)
        if self.budget <= 0 and not line.endswith(b"\n"):
            self._exceeded()
        return line

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(self.budget if size is None or size < 0 else min(size, self.budget))
        self.budget -= len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class HealthHandler(BaseHTTPRequestHandler):
    server_version = "cslr-health/1"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT  # slow or stalled clients cannot pin a thread forever
    registry: Registry  # set on the subclass made by make_server
    verifier: "cc.Verifier"
    refusals: "cc.Refusals"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: a healthcheck every few seconds would flood the container log

    def setup(self) -> None:
        super().setup()
        source = str(self.client_address[0]) if isinstance(self.client_address, tuple) else "?"
        self.rfile = BoundedReader(self.rfile, MAX_HEAD, lambda: self.refusals.refuse(source, cc.TOO_LARGE, "request head"))

    def _send(self, code: int, payload: dict) -> None:
        self._send_text(code, json.dumps(payload, sort_keys=True) + "\n", "application/json")

    def _send_text(self, code: int, text: str, content_type: str) -> None:
        body = text.encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # One request per connection: the whole exchange fits one deadline (HTTP_DEADLINE_S).
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        # The stdlib error page is HTML; clients of this service expect JSON.
        self.close_connection = True
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        try:
            path = self._path()
            if path == "/":
                self._send(200, self.registry.status(self.refusals.snapshot()))
            elif path == "/nodes":
                self._send(200, {"nodes": self.registry.nodes()})
            elif path == "/metrics":
                relays = {name: proxy.counters() for name, proxy in getattr(self.server, "proxies", {}).items()}
                text = exposition(health_metrics(self.registry.status(self.refusals.snapshot()), self.registry.head_changes, relays))
                self._send_text(200, text, METRICS_CONTENT_TYPE)
            else:
                self._send(404, {"error": "not found"})
        except Exception as exc:  # never let one request kill the service
            self._send(500, {"error": type(exc).__name__})

    do_HEAD = do_GET

    def _read_body(self) -> Tuple[Optional[bytes], Optional[Tuple[int, str]]]:
        if self.headers.get("Transfer-Encoding"):
            return None, (411, "chunked bodies are not accepted; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return None, (411, "Content-Length required")
        try:
            length = int(length_text)
        except ValueError:
            return None, (400, "bad Content-Length")
        if length < 0:
            return None, (400, "bad Content-Length")
        if length > MAX_BODY:
            return None, (413, f"body larger than {MAX_BODY} bytes")
        self.rfile.budget = length
        raw = self.rfile.read(length)
        if len(raw) != length:
            return None, (400, "truncated body")
        return raw, None

    def do_POST(self) -> None:
        try:
            path = self._path()
            if path not in ("/register", "/heartbeat"):
                self._send(404, {"error": "not found"})
                return
            raw, error = self._read_body()
            if error:
                self._send(error[0], {"error": error[1]})
                return
            reason = self.verifier.verify("POST", self.path, self.headers.get(cc.HDR_TIME), self.headers.get(cc.HDR_NONCE), self.headers.get(cc.HDR_MAC), raw)
            if reason:
                self.refusals.refuse(self.client_address[0], reason, f"POST {path}")
                self._send(cc.STATUS[reason], {"error": f"not authenticated ({reason}): sign with {cc.SECRET_VAR}"})
                return
            try:
                payload = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                self._send(400, {"error": "body is not valid JSON"})
                return
            record, problem = validate_node(payload, require_full=(path == "/register"))
            if record is None:
                self._send(400, {"error": problem})
                return
            if path == "/register":
                if not self.registry.register(record, self.client_address[0]):
                    self._send(503, {"error": "node table full (in total or for this address)"})
                    return
            elif not self.registry.heartbeat(record):
                self._send(404, {"error": "unknown node; register first"})
                return
            self._send(200, {"ok": True})
        except Exception as exc:
            self.close_connection = True
            self._send(500, {"error": type(exc).__name__})

    def _no_method(self) -> None:
        self._send(405, {"error": "method not allowed"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _no_method


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = MAX_HTTP_CONNECTIONS
    guard: "cc.ConnectionGuard"  # set by make_server

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that vanishes mid-request is not worth a traceback

    def server_close(self) -> None:
        stop = getattr(self, "reaper_stop", None)
        if stop is not None:
            stop.set()
        super().server_close()

    def process_request(self, request: socket.socket, client_address: object) -> None:
        # Every connection is admitted; over a cap the oldest (of its source, else of all) is
        # evicted, and the reaper ends any connection past HTTP_DEADLINE_S (cslr_control.ConnectionGuard).
        self.guard.admit(request, str(client_address[0]) if isinstance(client_address, tuple) else "?")
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # cannot start a thread
            self.guard.release(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.guard.release(request)


def make_server(bind: str, port: int, registry: Registry, secret: str, clock: Callable[[], float] = time.time) -> QuietServer:
    refusals = cc.Refusals(lambda m: print(f"health: {m}", file=sys.stderr, flush=True))
    handler = type("BoundHealthHandler", (HealthHandler,), {"registry": registry, "verifier": cc.Verifier(secret, clock=clock), "refusals": refusals})
    server = QuietServer((bind, port), handler, bind_and_activate=False)
    server.guard = cc.ConnectionGuard(
        server.max_connections, MAX_HTTP_PER_SOURCE, HTTP_DEADLINE_S, lambda src, why: refusals.refuse(src, why, "HTTP connection")
    )
    server.refusals = refusals
    server.proxies = {}  # relay name -> ClientProxy, for /metrics (main adds them)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    server.reaper_stop = threading.Event()
    threading.Thread(target=server.guard.run, args=(server.reaper_stop, 0.1), name="health-reaper", daemon=True).start()
    return server


def elected_head(views: List[Tuple[str, int, str, dict]], client_ports: Mapping[str, int], default_client_port: int) -> Optional[Tuple[str, int, int]]:
    """(host, GCS port, client port) of the first whitelisted node whose agent - authenticated -
    says it is head; ``views`` are (host, port, state, reply fields) in whitelist order."""
    for host, port, state, fields in views:
        if state == cc.HEAD:
            cp = fields.get("client_port")
            if not (isinstance(cp, int) and not isinstance(cp, bool) and 0 < cp < 65536):
                cp = client_ports.get(host.lower()) or default_client_port
            return host, port, cp
    return None


def watch_election(
    registry: Registry,
    secret: str,
    stop: threading.Event,
    interval: float = 0.25,
    client_ports: Optional[Mapping[str, int]] = None,
    default_client_port: int = 10001,
    read: Optional[Callable[[str, int], Tuple[str, dict]]] = None,
) -> None:
    """Keep ``registry.elected`` = the head the whitelisted nodes' agents report (see elected_head).

    Only whitelisted addresses are ever asked, so the proxy never relays anywhere else.
    """
    read = read or (lambda h, p: cc.read_agent(h, p, secret))
    while not stop.is_set():
        views = []
        previous = registry.elected
        for host, port in registry.whitelist:
            if stop.is_set():
                return
            state, fields = read(host, port + cc.AGENT_PORT_OFFSET)
            if state == cc.UNKNOWN and previous is not None and (host, port) == previous[:2]:
                # The head we relay to cannot be read right now (e.g. strangers keep its agent
                # busy): keep it until its agent says otherwise or is gone - never drop the relays
                # because of an unreadable agent.
                state, fields = cc.HEAD, {"client_port": previous[2]}
            views.append((host, port, state, fields))
            if state == cc.HEAD:
                break  # whitelist order: the first head wins
        registry.elected = elected_head(views, client_ports or {}, default_client_port)
        stop.wait(interval)


def relay(a: socket.socket, b: socket.socket, idle: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Copy bytes both ways until both sides closed, or nothing moved for ``idle`` seconds.

    One thread per connection (poll: no extra fd); a half-closed side is shut down on the
    other and the rest keeps flowing until the idle limit.  Closes both sockets.
    """
    pairs = {a.fileno(): (a, b), b.fileno(): (b, a)}
    poller = select.poll()
    for fd in pairs:
        poller.register(fd, select.POLLIN)
    open_fds = set(pairs)
    last = clock()
    for sock in (a, b):
        sock.settimeout(max(idle, 0.1))  # bounds a blocked sendall as well
    try:
        while open_fds:
            left = idle - (clock() - last)
            if left <= 0:
                return
            events = poller.poll(int(min(left, 1.0) * 1000) + 1)
            for fd, _ in events:
                if fd not in open_fds:
                    continue
                src, dst = pairs[fd]
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if data:
                    last = clock()
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                    continue
                poller.unregister(fd)
                open_fds.discard(fd)
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
    finally:
        for sock in (a, b):
            try:
                sock.close()
            except OSError:
                pass


def forward_connection(client: socket.socket, target: Optional[Tuple[str, int]], connect_timeout: float = 3.0, idle: float = 600.0) -> bool:
    """Relay one accepted connection to ``target`` both ways (see relay)."""
    if target is None:
        client.close()
        return False
    try:
        upstream = socket.create_connection(target, timeout=connect_timeout)
    except (OSError, ValueError, OverflowError):
        client.close()
        return False
    relay(client, upstream, idle)
    return True


class ClientProxy:
    """Relay to the elected head: each connection goes to ``target()`` at accept time - the
    head's Ray client server (a notebook's ray://health:PORT survives a head failover) or its
    dashboard (one stable dashboard / Jobs address).  At most
    ``max_connections`` relays at once (one thread and two fds each); a connection over the
    cap, or made while no head is known, is closed at once; idle relays end after ``idle`` s."""

    def __init__(self, listener: socket.socket, target: Callable[[], Optional[Tuple[str, int]]], max_connections: int = 256, idle: float = 600.0) -> None:
        self.listener, self.target, self.idle = listener, target, idle
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused_over_cap = 0
        self.accepted = 0  # relays started (for /metrics)
        self.open = 0  # relays running now
        self._count = threading.Lock()

    def counters(self) -> Dict[str, int]:
        with self._count:
            return {"open": self.open, "accepted": self.accepted, "refused_over_cap": self.refused_over_cap}

    def _one(self, client: socket.socket, target: Optional[Tuple[str, int]]) -> None:
        with self._count:
            self.open += 1
            self.accepted += 1
        try:
            forward_connection(client, target, idle=self.idle)
        finally:
            with self._count:
                self.open -= 1
            self.slots.release()

    def loop(self, stop: threading.Event) -> None:
        self.listener.settimeout(0.5)
        while not stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.slots.acquire(blocking=False):
                self.refused_over_cap += 1
                client.close()
                continue
            try:
                client.settimeout(None)
                threading.Thread(target=self._one, args=(client, self.target()), daemon=True).start()
            except RuntimeError:  # cannot start a thread: drop this one connection
                self.slots.release()
                client.close()
        self.listener.close()


def check(url: str, timeout: float = 3.0) -> int:
    """Exit code 0 iff GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError):
        return 1


class Settings:
    """The validated environment (docs/runtime.md); every variable through cslr_control.EnvReader."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = cc.EnvReader(environ)
        self.port = env.integer("HEALTH_PORT", 8080, 0, 65535)
        self.ttl = env.number("HEALTH_NODE_TTL", DEFAULT_TTL, 0.1, 86400)
        self.head_port = env.port("RAY_HEAD_PORT", 6379)
        self.bind = env.host("HEALTH_BIND", "0.0.0.0")
        self.proxy_port = env.integer("RAY_CLIENT_PROXY_PORT", 0, 0, 65535)
        self.client_port = env.port("RAY_CLIENT_SERVER_PORT", 10001)
        self.client_ports = env.name_ports("RAY_CLIENT_PORTS")
        self.whitelist = env.host_ports("HEAD_WHITELIST", self.head_port)
        self.proxy_max = env.integer("RAY_CLIENT_PROXY_MAX_CONNECTIONS", 256, 1, 10000)
        self.proxy_idle = env.number("RAY_CLIENT_PROXY_IDLE_S", 600.0, 0.1, 86400)
        self.dashboard_proxy_port = env.integer("RAY_DASHBOARD_PROXY_PORT", 0, 0, 65535)
        self.dashboard_port = env.port("RAY_DASHBOARD_PORT", 8265)
        self.dashboard_ports = env.name_ports("RAY_DASHBOARD_PORTS")
        self.watch_interval = env.number("HEALTH_ELECTION_POLL_S", 0.25, 0.01, 60)
        self.secret = env.secret(cc.SECRET_VAR)


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None, ready: Optional[Callable[[QuietServer], None]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", metavar="URL", help="exit 0 iff GET URL answers 200")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    try:
        cfg = Settings(os.environ if environ is None else environ)
    except cc.EnvError as exc:
        print(f"health: configuration error: {exc}", file=sys.stderr)
        return 2
    bind = cfg.bind
    registry = Registry(
        ttl=cfg.ttl, whitelist=cfg.whitelist, default_port=cfg.head_port, dashboard_ports=cfg.dashboard_ports, default_dashboard_port=cfg.dashboard_port
    )
    try:
        server = make_server(bind, cfg.port, registry, cfg.secret)
    except (OSError, OverflowError) as exc:
        print(f"health: cannot listen on {bind}:{cfg.port} (HEALTH_BIND/HEALTH_PORT): {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if registry.whitelist:
        threading.Thread(target=watch_election, args=(registry, cfg.secret, stop, cfg.watch_interval, cfg.client_ports, cfg.client_port), daemon=True).start()
    relays = [
        ("Ray client", "RAY_CLIENT_PROXY_PORT", cfg.proxy_port, registry.head_client),
        ("Ray dashboard", "RAY_DASHBOARD_PROXY_PORT", cfg.dashboard_proxy_port, registry.head_dashboard),
    ]
    metric_name = {"Ray client": "client", "Ray dashboard": "dashboard"}
    listeners = []
    for label, var, port, target in relays:
        if not port:
            continue
        try:
            listeners.append((label, socket.create_server((bind, port)), target))
        except (OSError, OverflowError) as exc:
            print(f"health: cannot listen on {bind}:{port} ({var}): {exc}", file=sys.stderr)
            for _, sock, _ in listeners:
                sock.close()
            server.server_close()
            return 2
    for label, listener, target in listeners:
        proxy = ClientProxy(listener, target, cfg.proxy_max, cfg.proxy_idle)
        server.proxies[metric_name[label]] = proxy
        threading.Thread(target=proxy.loop, args=(stop,), daemon=True).start()
        print(f"health: {label} proxy on {bind}:{listener.getsockname()[1]} -> the elected head", file=sys.stderr, flush=True)
    print(f"health: listening on {bind}:{server.server_address[1]}", file=sys.stderr, flush=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
    print("health: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

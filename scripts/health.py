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
    GET  /            200 {"status": "ok", "uptime_s", "known_head", "nodes_alive", "time"}
    GET  /nodes       200 {"nodes": [{"hostname", "address", "role", "head_address",
                                       "last_heartbeat", "age_s", "alive", ...}]}
    POST /register    body {"hostname", "address", "role", ["head_address", "port", "state"]}
                      -> 200 {"ok": true}
    POST /heartbeat   body {"hostname", ["role", "head_address", "state", "address"]}
                      -> 200 {"ok": true}; 404 if the hostname is not registered
                      (the node then registers again, e.g. after a restart of this service)
    anything else     404 (unknown path) / 405 (unknown method); malformed JSON or
                      fields -> 400; body larger than MAX_BODY -> 413; missing length -> 411.
    A node is alive while its last heartbeat is younger than HEALTH_NODE_TTL seconds.
    ``known_head`` is the alive registered node with role "head" (whitelist order
    breaks ties); when none is registered, a background TCP probe of the whitelist's
    head ports supplies it (the document's rule: a head is a whitelisted node whose
    head port accepts TCP).

Ray client proxy
    With RAY_CLIENT_PROXY_PORT set, every TCP connection to that port is relayed to the
    Ray client server of the known head (its registered ``client_port``, else
    RAY_CLIENT_SERVER_PORT), so clients that are not Ray nodes (the notebook, the test
    runner, a laptop through the published port) keep one stable address across head
    failovers. A connection made while no head is known is closed at once.

Environment
    HEALTH_BIND (0.0.0.0), HEALTH_PORT (8080), HEALTH_NODE_TTL (15),
    HEAD_WHITELIST (""), RAY_HEAD_PORT (6379), RAY_CLIENT_PROXY_PORT (off),
    RAY_CLIENT_SERVER_PORT (10001), RAY_CLIENT_PORTS ("name=port,...").  See docs/runtime.md.

Outputs
    One start line and one stop line on stderr; per-request logs are suppressed.

Exit codes
    0  normal stop (SIGTERM / SIGINT), or ``--check`` got HTTP 200
    1  ``--check`` failed (no answer, or not 200)
    2  bad command line / environment (e.g. a non-numeric HEALTH_PORT), or the port
       cannot be bound
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Mapping, Optional, Tuple

MAX_BODY = 64 * 1024
MAX_NODES = 1024
MAX_FIELD = 256
ROLES = ("head", "worker", "unknown")
DEFAULT_TTL = 15.0
REQUEST_TIMEOUT = 10.0


# --------------------------------------------------------------------------- pure


def parse_whitelist(text: str, default_port: int) -> List[Tuple[str, int]]:
    """``"a, b:6380"`` -> ``[("a", default_port), ("b", 6380)]``; bad entries are skipped."""
    out: List[Tuple[str, int]] = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        host, port = item, default_port
        if item.count(":") == 1:
            host, _, port_text = item.partition(":")
            try:
                port = int(port_text)
            except ValueError:
                continue
            if not 0 < port < 65536:
                continue
        host = host.strip()
        if host:
            out.append((host, port))
    return out


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
    ) -> None:
        self.ttl = ttl
        self.whitelist = list(whitelist or [])
        self.default_port = default_port
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self.probed_head: Optional[str] = None
        self._nodes: Dict[str, dict] = {}
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        # Dead entries are kept for a while so GET /nodes can show them, but the
        # table stays bounded whatever clients send.
        horizon = max(self.ttl * 20, 300.0)
        for key in [k for k, v in self._nodes.items() if now - v["last_seen"] > horizon]:
            del self._nodes[key]

    def register(self, record: dict) -> bool:
        now = self.clock()
        with self._lock:
            self._prune(now)
            key = record["hostname"].lower()
            if key not in self._nodes and len(self._nodes) >= MAX_NODES:
                return False
            node = dict(self._nodes.get(key, {}))
            node.update(record)
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
                item = {k: v for k, v in node.items() if k != "last_seen"}
                item["age_s"] = round(now - node["last_seen"], 3)
                item["alive"] = now - node["last_seen"] <= self.ttl
                out.append(item)
        out.sort(key=lambda n: n["hostname"])
        return out

    def known_head(self) -> Optional[str]:
        now = self.clock()
        with self._lock:
            head = pick_known_head(self._nodes, now, self.ttl, self.whitelist, self.default_port)
        return head or self.probed_head

    def head_client(self, default_port: int, ports: Optional[Mapping[str, int]] = None) -> Optional[Tuple[str, int]]:
        """(host, Ray client port) of the known head: its registered client_port, else the
        RAY_CLIENT_PORTS entry for its name, else ``default_port``."""
        head = self.known_head()
        if not head:
            return None
        host = head.rsplit(":", 1)[0]
        with self._lock:
            node = self._nodes.get(host.lower(), {})
        return host, int(node.get("client_port") or (ports or {}).get(host.lower()) or default_port)

    def status(self) -> dict:
        nodes = self.nodes()
        return {
            "status": "ok",
            "uptime_s": round(self.clock() - self.started, 3),
            "known_head": self.known_head(),
            "nodes_alive": sum(1 for n in nodes if n["alive"]),
            "time": self.wall(),
        }


# --------------------------------------------------------------------------- HTTP


class HealthHandler(BaseHTTPRequestHandler):
    server_version = "cslr-health/1"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT  # slow or stalled clients cannot pin a thread forever
    registry: Registry  # set on the subclass made by make_server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: a healthcheck every few seconds would flood the container log

    def _send(self, code: int, payload: dict) -> None:
        body = (json.dumps(payload, sort_keys=True) + "\n").encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code >= 400:
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
                self._send(200, self.registry.status())
            elif path == "/nodes":
                self._send(200, {"nodes": self.registry.nodes()})
            else:
                self._send(404, {"error": "not found"})
        except Exception as exc:  # never let one request kill the service
            self._send(500, {"error": type(exc).__name__})

    do_HEAD = do_GET

    def _read_json(self) -> Tuple[Optional[object], Optional[Tuple[int, str]]]:
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
        raw = self.rfile.read(length)
        if len(raw) != length:
            return None, (400, "truncated body")
        try:
            return json.loads(raw.decode("utf-8")), None
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, (400, "body is not valid JSON")

    def do_POST(self) -> None:
        try:
            path = self._path()
            if path not in ("/register", "/heartbeat"):
                self._send(404, {"error": "not found"})
                return
            payload, error = self._read_json()
            if error:
                self._send(error[0], {"error": error[1]})
                return
            record, problem = validate_node(payload, require_full=(path == "/register"))
            if record is None:
                self._send(400, {"error": problem})
                return
            if path == "/register":
                if not self.registry.register(record):
                    self._send(503, {"error": "node table full"})
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

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that vanishes mid-request is not worth a traceback


def make_server(bind: str, port: int, registry: Registry) -> QuietServer:
    handler = type("BoundHealthHandler", (HealthHandler,), {"registry": registry})
    return QuietServer((bind, port), handler)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def probe_loop(registry: Registry, stop: threading.Event, interval: float = 2.0,
               probe: Callable[[str, int], bool] = tcp_open) -> None:
    """Keep ``registry.probed_head`` = first whitelisted entry whose head port accepts TCP."""
    while not stop.is_set():
        found = None
        for host, port in registry.whitelist:
            if stop.is_set():
                return
            if probe(host, port):
                found = f"{host}:{port}"
                break
        registry.probed_head = found
        stop.wait(interval)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def forward_connection(client: socket.socket, target: Optional[Tuple[str, int]], connect_timeout: float = 3.0) -> bool:
    """Relay one accepted connection to ``target`` both ways until either side closes."""
    if target is None:
        client.close()
        return False
    try:
        upstream = socket.create_connection(target, timeout=connect_timeout)
    except (OSError, ValueError):
        client.close()
        return False
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()
    return True


def parse_client_ports(text: str) -> Dict[str, int]:
    """``"ray-cpu-a=10011, ray-gpu-a=10012"`` -> {name: port}; bad entries are skipped."""
    out: Dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, port = item.strip().partition("=")
        if name and port.isdigit() and 0 < int(port) < 65536:
            out[name.strip().lower()] = int(port)
    return out


def client_proxy_loop(listener: socket.socket, registry: Registry, default_port: int, stop: threading.Event,
                      ports: Optional[Mapping[str, int]] = None) -> None:
    """Ray client proxy: every connection goes to the current head's Ray client server, so a
    notebook's RAY_ADDRESS (ray://health:PORT) survives a head failover."""
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        client.settimeout(None)
        target = registry.head_client(default_port, ports)
        threading.Thread(target=forward_connection, args=(client, target), daemon=True).start()
    listener.close()


def check(url: str, timeout: float = 3.0) -> int:
    """Exit code 0 iff GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError):
        return 1


def _env_number(environ: Mapping[str, str], name: str, default: float, kind: type) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise SystemExit(f"health: {name}={text!r} is not a number") from None


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None,
         ready: Optional[Callable[[QuietServer], None]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", metavar="URL", help="exit 0 iff GET URL answers 200")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    env = os.environ if environ is None else environ
    try:
        port = int(_env_number(env, "HEALTH_PORT", 8080, int))
        ttl = float(_env_number(env, "HEALTH_NODE_TTL", DEFAULT_TTL, float))
        head_port = int(_env_number(env, "RAY_HEAD_PORT", 6379, int))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    bind = env.get("HEALTH_BIND", "").strip() or "0.0.0.0"
    try:
        proxy_port = int(_env_number(env, "RAY_CLIENT_PROXY_PORT", 0, int))
        client_port = int(_env_number(env, "RAY_CLIENT_SERVER_PORT", 10001, int))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    registry = Registry(ttl=ttl, whitelist=parse_whitelist(env.get("HEAD_WHITELIST", ""), head_port),
                        default_port=head_port)
    try:
        server = make_server(bind, port, registry)
    except OSError as exc:
        print(f"health: cannot listen on {bind}:{port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if registry.whitelist:
        threading.Thread(target=probe_loop, args=(registry, stop), daemon=True).start()
    if proxy_port:
        try:
            listener = socket.create_server((bind, proxy_port))
        except OSError as exc:
            print(f"health: cannot listen on {bind}:{proxy_port} (RAY_CLIENT_PROXY_PORT): {exc}", file=sys.stderr)
            server.server_close()
            return 2
        ports = parse_client_ports(env.get("RAY_CLIENT_PORTS", ""))
        threading.Thread(target=client_proxy_loop, args=(listener, registry, client_port, stop, ports), daemon=True).start()
        print(f"health: Ray client proxy on {bind}:{listener.getsockname()[1]} -> the known head", file=sys.stderr, flush=True)
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

"""Shared control-plane helpers of scripts/health.py and scripts/ray_node.py (stdlib only, Python >= 3.9).

Purpose
    One place for what both scripts need: the environment gate (every variable parsed by
    ``EnvReader``; a bad value is an ``EnvError`` naming the variable, the value - never a
    secret's value - and what was expected), ``host[:port]`` parsing, TCP probing, and the
    authentication of the control plane with the stack control secret (CSLR_CONTROL_SECRET):

    * HTTP: a state-changing call carries X-CSLR-Time, X-CSLR-Nonce and X-CSLR-MAC =
      HMAC-SHA256(secret, method, path, time, nonce, body).  ``Verifier`` refuses a missing
      proof (401), a bad MAC, a time outside +-WINDOW_S, or a nonce seen before (403).
    * Election agents: the reader sends one JSON line {"v": 3, "ts", "nonce", "target", "mac"}
      (MAC over "AGENT", "/state", ts, nonce, target), where ``target`` is the agent's
      ``host:port`` as the reader dialled it (``node_id``); the agent refuses a request meant
      for another node (``wrong_target``) and answers one JSON line whose "mac" covers the
      request's nonce, the target and the reply's fields (which name the node again).  So only
      a holder of the secret can answer, an old answer cannot be replayed to a new question, and
      a genuine answer relayed from another node's agent reads as FORGED ("not a node of this
      stack"), never as the node that was asked.
    * Bounded exchanges (``ConnectionGuard``): each accepted connection gets one deadline for
      the whole exchange (not per read), at most ``max_per_source`` connections per source
      address and ``max_total`` in all; a new connection over a cap evicts the oldest one
      (of that source, else of all), so slow strangers cannot keep a genuine exchange out.
      Every eviction, expiry and malformed MAC is a counted refusal, never a traceback.

Caller
    Imported by health.py and ray_node.py (Python puts a script's own directory on sys.path;
    the scripts directory is mounted whole).  Not run on its own.

Outputs / exit codes
    None: a library.  No work at import time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import shlex
import socket
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Tuple

SECRET_VAR = "CSLR_CONTROL_SECRET"
MIN_SECRET_LEN = 16
WINDOW_S = 30.0  # accepted clock difference for a signed request
MAX_NONCES = 65536  # replay cache bound (only authenticated nonces are stored)
AGENT_PORT_OFFSET = 1000  # election agent port = GCS port + this
HDR_TIME, HDR_NONCE, HDR_MAC = "X-CSLR-Time", "X-CSLR-Nonce", "X-CSLR-MAC"

# election states an agent publishes, and what a reader concludes otherwise
DECIDING, CLAIMING, HEAD, WORKER = "deciding", "claiming", "head", "worker"
ABSENT, UNKNOWN, FORGED = "absent", "unknown", "forged"
STATES = (DECIDING, CLAIMING, HEAD, WORKER)

_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


# =========================================================================== environment gate


class EnvError(ValueError):
    """A bad environment value; str() is the whole message, e.g. ``RAY_HEAD_PORT=x: expected ...``."""


def show(value: str, limit: int = 60) -> str:
    """A value as it may appear in a message: printable, bounded."""
    text = value if value.isprintable() else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def valid_host(host: str) -> bool:
    """A DNS name (labels of letters, digits, '-', '_'), an IPv4 address or a bare IPv6 address."""
    if not host:
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    return bool(_HOST_RE.match(host)) and ".." not in host


def parse_host_port(text: str, default_port: int) -> Tuple[str, int]:
    """``h`` / ``h:p`` / ``[v6]:p`` -> (host, port); ValueError saying what was expected."""
    item = (text or "").strip()
    expected = "host or host:port with a port 1..65535"
    host, port_text = item, ""
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ValueError(expected)
        host, rest = item[1:end], item[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(expected)
            port_text = rest[1:]
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    elif item.count(":") > 1:
        raise ValueError(expected + " (found more than one ':')")
    host = host.strip()
    if not valid_host(host):
        raise ValueError(expected + " (bad host name)")
    port = default_port
    if port_text or item.endswith(":"):
        if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
            raise ValueError(expected)
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(expected)
    return host, port


class EnvReader:
    """Every environment variable of a script goes through one of these methods."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str:
        value = self.environ.get(name, "")
        return value if isinstance(value, str) else str(value)

    def _fail(self, name: str, value: str, expected: str) -> EnvError:
        return EnvError(f"{name}={show(value)}: expected {expected}")

    def text(self, name: str, default: str = "") -> str:
        value = self.raw(name).strip()
        if "\x00" in value:
            raise self._fail(name, value, "text without NUL bytes")
        return value or default

    def integer(self, name: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
        value = self.raw(name).strip()
        if not value:
            return default
        if not (value.isascii() and value.lstrip("-").isdigit() and len(value) <= 12) or not lo <= int(value) <= hi:
            raise self._fail(name, value, f"an integer {lo}..{hi}")
        return int(value)

    def port(self, name: str, default: Optional[int]) -> Optional[int]:
        return self.integer(name, default, 1, 65535)

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self.raw(name).strip()
        if not value:
            return default
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not lo <= number <= hi:
            raise self._fail(name, value, f"a number {lo:g}..{hi:g}")
        return number

    def flag(self, name: str) -> bool:
        value = self.raw(name).strip().lower()
        if value in ("", "0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise self._fail(name, value, "one of 0, 1, true, false, yes, no, on, off")

    def host(self, name: str, default: str = "") -> str:
        value = self.raw(name).strip()
        if not value:
            return default
        if not valid_host(value):
            raise self._fail(name, value, "a host name or IP address")
        return value

    def host_port(self, name: str, default_port: int) -> Optional[Tuple[str, int]]:
        value = self.raw(name).strip()
        if not value:
            return None
        try:
            return parse_host_port(value, default_port)
        except ValueError as exc:
            raise self._fail(name, value, str(exc)) from None

    def host_ports(self, name: str, default_port: int) -> List[Tuple[str, int]]:
        """Comma-separated ``host[:port]`` list (a whitelist), in order."""
        value = self.raw(name)
        out = []
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                out.append(parse_host_port(item, default_port))
            except ValueError as exc:
                raise self._fail(name, value, f"comma-separated entries, each a {exc} - bad entry {show(item.strip())!s}") from None
        return out

    def name_ports(self, name: str) -> Dict[str, int]:
        """``name=port,...`` -> {name (lower case): port}."""
        value = self.raw(name)
        out: Dict[str, int] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, port = item.strip().partition("=")
            if (
                not sep
                or not valid_host(key.strip())
                or not (port.strip().isdigit() and port.strip().isascii() and len(port.strip()) <= 5 and 0 < int(port) < 65536)
            ):
                raise self._fail(name, value, "comma-separated name=port entries with ports 1..65535")
            out[key.strip().lower()] = int(port)
        return out

    def url(self, name: str) -> str:
        value = self.raw(name).strip()
        if not value:
            return ""
        m = re.match(r"^https?://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+)(?::(\d{1,5}))?(/[^\s]*)?$", value)
        host = m.group(1).strip("[]") if m else ""
        if not m or not valid_host(host) or (m.group(2) and not 0 < int(m.group(2)) < 65536):
            raise self._fail(name, value, "an http:// or https:// URL such as http://health:8080")
        return value

    def words(self, name: str, default: Optional[List[str]] = None) -> List[str]:
        value = self.raw(name)
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise self._fail(name, value, f"shell words ({exc})") from None
        return words or list(default or [])

    def secret(self, name: str, min_len: int = MIN_SECRET_LEN) -> str:
        value = self.raw(name).strip()
        if not value:
            raise EnvError(f"{name} is not set: expected the stack's secret (run `inv init`; compose passes it from .env)")
        if len(value) < min_len or not value.isprintable():
            raise EnvError(f"{name}: expected a printable secret of at least {min_len} characters (value not shown)")
        return value


# =========================================================================== TCP


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError, OverflowError):
        return False


# =========================================================================== HMAC


def mac(secret: str, *parts: object) -> str:
    """HMAC-SHA256 over length-prefixed parts (no two part lists give the same input)."""
    h = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_request(secret: str, method: str, path: str, body: bytes, now: Optional[float] = None, nonce: Optional[str] = None) -> Dict[str, str]:
    """Headers that authenticate one HTTP request."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = nonce or new_nonce()
    return {HDR_TIME: ts, HDR_NONCE: nonce, HDR_MAC: mac(secret, method.upper(), path, ts, nonce, body)}


# refusal reasons -> HTTP status
MISSING, BAD_MAC, STALE, REPLAY, BUSY = "missing", "bad_mac", "stale", "replay", "busy"
WRONG_TARGET, EVICTED, DEADLINE, TOO_LARGE = "wrong_target", "evicted", "deadline", "too_large"
STATUS = {MISSING: 401, BAD_MAC: 403, STALE: 403, REPLAY: 403, BUSY: 503, WRONG_TARGET: 403}


def digest_equal(expected: str, given: object) -> bool:
    """Constant-time comparison of a hex MAC with whatever a peer sent: any object, any
    characters (``hmac.compare_digest`` raises on non-ASCII text; that is a refusal here)."""
    if not isinstance(given, str) or not given.isascii():
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))


def node_id(host: str, port: int) -> str:
    """The canonical ``host:port`` naming one agent (``[v6]:port`` for IPv6; host in lower case)."""
    host = host.strip().lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def source_key(address: str) -> str:
    """What per-source caps count by: the IPv4 address, or the /64 of an IPv6 address (one
    host usually holds a whole /64, so counting single v6 addresses would be no cap at all)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        return str(mapped) if mapped is not None else str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Verifier:
    """Checks signed requests: MAC, time window, single use of each nonce (bounded cache)."""

    def __init__(self, secret: str, window: float = WINDOW_S, clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES) -> None:
        self.secret, self.window, self.clock, self.max_nonces = secret, window, clock, max_nonces
        self._seen: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, method: str, path: str, ts: Optional[str], nonce: Optional[str], given: Optional[str], body: bytes) -> str:
        """ "" when authentic and fresh, else one of MISSING, BAD_MAC, STALE, REPLAY, BUSY."""
        if not ts or not nonce or not given:
            return MISSING
        if not all(isinstance(x, str) for x in (ts, nonce, given)) or len(ts) > 32 or len(nonce) > 128 or len(given) > 128:
            return BAD_MAC
        if not digest_equal(mac(self.secret, method.upper(), path, ts, nonce, body), given):
            return BAD_MAC
        try:
            when = float(ts) if ts.isascii() else math.nan
        except ValueError:
            return BAD_MAC
        now = self.clock()
        if not math.isfinite(when) or abs(now - when) > self.window:
            return STALE
        with self._lock:
            while self._seen:  # drop nonces whose request would be stale anyway
                oldest, expiry = next(iter(self._seen.items()))
                if expiry >= now:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                return REPLAY
            if len(self._seen) >= self.max_nonces:
                return BUSY
            self._seen[nonce] = max(now, when) + self.window
            self._seen.move_to_end(nonce)
        return ""


class Refusals:
    """Counts refused requests per reason; logs one line per source at most every ``every`` s."""

    def __init__(self, log: Callable[[str], None], every: float = 60.0, clock: Callable[[], float] = time.monotonic, max_sources: int = 1024) -> None:
        self.log, self.every, self.clock, self.max_sources = log, every, clock, max_sources
        self.counts: Dict[str, int] = {}
        self._last: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def refuse(self, source: str, reason: str, what: str) -> None:
        now = self.clock()
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            last = self._last.get(source)
            if last is not None and now - last < self.every:
                return
            self._last[source] = now
            self._last.move_to_end(source)
            while len(self._last) > self.max_sources:
                self._last.popitem(last=False)
        self.log(f"refused {what} from {source}: {reason} (further refusals from it are counted, logged at most every {self.every:g} s)")

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.counts)


# =========================================================================== bounded connections


class ConnectionGuard:
    """Admission of accepted connections for a server with one thread per connection.

    ``admit`` registers a connection with a deadline for its whole exchange; when its source
    already holds ``max_per_source`` connections, that source's oldest one is evicted, else when
    ``max_total`` are open, the oldest of all is (shut down: its thread's read returns at once).
    ``reap`` shuts down the connections past their deadline.  Evictions and expiries are
    reported to ``refuse(source, reason)``.  Genuine exchanges take milliseconds, so evicting the
    oldest keeps them in and lets slow or idle strangers out; refusing the newest would do the
    opposite.  Pure bookkeeping plus ``shutdown``: the clock is injectable.
    """

    def __init__(
        self,
        max_total: int,
        max_per_source: int,
        deadline: float,
        refuse: Callable[[str, str], None] = lambda source, reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_total, self.max_per_source, self.deadline = max_total, max_per_source, deadline
        self.refuse, self.clock = refuse, clock
        self._open: "OrderedDict[int, Tuple[socket.socket, str, float]]" = OrderedDict()  # id -> (sock, source key, deadline)
        self._lock = threading.Lock()

    def admit(self, sock: socket.socket, source: str) -> None:
        key = source_key(source)
        evict: List[Tuple[socket.socket, str]] = []
        with self._lock:
            mine = [k for k, (_, src, _) in self._open.items() if src == key]
            if len(mine) >= self.max_per_source:
                victim = self._open.pop(mine[0])
                evict.append((victim[0], victim[1]))
            elif len(self._open) >= self.max_total:
                _, victim = self._open.popitem(last=False)
                evict.append((victim[0], victim[1]))
            self._open[id(sock)] = (sock, key, self.clock() + self.deadline)
        for victim_sock, victim_src in evict:
            _shut(victim_sock)
            self.refuse(victim_src, EVICTED)

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(id(sock), None)

    def reap(self) -> int:
        """Shut down every connection past its deadline; how many."""
        now = self.clock()
        with self._lock:
            late = [k for k, (_, _, dl) in self._open.items() if dl <= now]
            victims = [self._open.pop(k) for k in late]
        for sock, src, _ in victims:
            _shut(sock)
            self.refuse(src, DEADLINE)
        return len(victims)

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def run(self, stop: threading.Event, every: float = 0.1) -> None:
        """Reap until ``stop`` is set (the server's reaper thread)."""
        while not stop.wait(every):
            self.reap()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# =========================================================================== agent wire protocol

AGENT_EXCHANGE_S = 1.0  # a reader's whole exchange with one agent (connect, ask, answer)


def recv_line(sock: socket.socket, limit: int, deadline: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> bytes:
    """Bytes up to and including the first newline, at most about `limit` of them, or what came
    before the peer closed (the agent protocol is one line each way).  With ``deadline`` (a
    ``clock()`` time) the whole read ends by then: socket.timeout past it, however slowly the
    peer trickles bytes; without, the socket's own timeout holds per read."""
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                raise socket.timeout("exchange deadline")
            sock.settimeout(left)
        chunk = sock.recv(limit)
        if not chunk:
            break
        data += chunk
    return data


def agent_request(secret: str, target: str, now: Optional[float] = None, nonce: Optional[str] = None) -> Tuple[bytes, str]:
    """(request line, its nonce) for reading the election agent ``target`` (``node_id``)."""
    h = sign_request(secret, "AGENT", "/state", target.encode(), now, nonce)
    line = json.dumps({"v": 3, "ts": h[HDR_TIME], "nonce": h[HDR_NONCE], "target": target, "mac": h[HDR_MAC]}) + "\n"
    return line.encode(), h[HDR_NONCE]


def check_agent_request(verifier: Verifier, line: bytes, own: str) -> Tuple[str, str]:
    """(refusal reason or "", nonce) for one request line read by the agent whose ``node_id`` is
    ``own``.  The MAC is checked first (a stranger learns nothing), then the target: a genuine
    request meant for another node - one relayed here by whoever sits on that node's address -
    is refused as WRONG_TARGET."""
    try:
        req = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return MISSING, ""
    if not isinstance(req, dict):
        return MISSING, ""
    ts, nonce, given, target = req.get("ts"), req.get("nonce"), req.get("mac"), req.get("target")
    if not all(isinstance(x, str) for x in (ts, nonce, given, target)):
        return MISSING, ""
    reason = verifier.verify("AGENT", "/state", ts, nonce, given, target.encode("utf-8", "surrogatepass"))
    if reason:
        return reason, nonce
    if target != own:
        return WRONG_TARGET, nonce
    return "", nonce


def agent_reply(secret: str, nonce: str, target: str, fields: Mapping[str, object]) -> bytes:
    """One reply line: the fields (with ``node`` = target) plus a MAC over the request's nonce,
    the target and the fields."""
    body = json.dumps({**dict(fields), "node": target}, sort_keys=True)
    return (json.dumps({"body": body, "mac": mac(secret, "AGENT-REPLY", nonce, target, body)}) + "\n").encode()


def check_agent_reply(secret: str, nonce: str, target: str, data: bytes) -> Optional[dict]:
    """The reply's fields if its MAC is right for our nonce and the node we asked, else None."""
    try:
        outer = json.loads(data.decode("utf-8").strip() or "null")
        body, given = outer["body"], outer["mac"]
        if not isinstance(body, str) or not digest_equal(mac(secret, "AGENT-REPLY", nonce, target, body), given):
            return None
        fields = json.loads(body)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(fields, dict) or fields.get("node") != target:
        return None
    return fields


def read_agent(host: str, port: int, secret: str, timeout: float = AGENT_EXCHANGE_S, clock: Callable[[], float] = time.monotonic) -> Tuple[str, dict]:
    """(state, reply fields) of the agent at ``host:port``; the whole exchange ends within ``timeout``.

    ABSENT when nothing listens or the name is gone; UNKNOWN on a timeout or a connection
    closed without a word; FORGED when something answers without proof of the secret for this
    very node (not a node of this stack - or one with another secret, a clock more than
    WINDOW_S off, or a genuine answer of another node relayed from this address).
    """
    target = node_id(host, port)
    line, nonce = agent_request(secret, target)
    deadline = clock() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(max(0.01, deadline - clock()))
            s.sendall(line)
            data = recv_line(s, 4096, deadline, clock)
    except ConnectionRefusedError:
        return ABSENT, {}
    except socket.gaierror as exc:
        # A stopped container's name is gone from Docker's DNS; a DNS hiccup is not proof.
        return (UNKNOWN if exc.errno == socket.EAI_AGAIN else ABSENT), {}
    except (OSError, ValueError, OverflowError):
        return UNKNOWN, {}  # timeout / unreachable: maybe alive, maybe claiming
    if not data.strip():
        return UNKNOWN, {}  # accepted and closed without a word (e.g. an agent evicting a connection)
    fields = check_agent_reply(secret, nonce, target, data)
    if fields is None:
        return FORGED, {}
    state = fields.get("state")
    return (state if state in STATES else UNKNOWN), fields

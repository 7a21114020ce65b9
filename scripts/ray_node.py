#!/usr/bin/env python3
"""Ray node entrypoint of the CSLR stack: head/worker election, Ray start, head-loss recovery.

Standard library only, Python >= 3.9 (it runs inside the Ray image).

Caller
    Every Ray container: ``python3 /opt/cslr/scripts/ray_node.py`` (foreground, PID 1 or
    its child).  Its healthcheck: ``python3 /opt/cslr/scripts/ray_node.py --healthcheck``.
    Diagnostics: ``--decide`` prints the decision without starting Ray.
    The environment contract (every variable, default and meaning) is docs/runtime.md.

Decision rules (docs/runtime.md, "Decision"; docs/architecture.md, "The control plane"):
    * own hostname = NODE_HOSTNAME, else the container hostname;
    * not in HEAD_WHITELIST -> worker, joining HEAD_ADDRESS (env), else CFG_HEAD_ADDRESS
      (config ``nodes.head_address``), else the first whitelisted node with its head port
      (the first in whitelist order that is the live head, else whitelist[0]);
    * whitelisted -> ask the health service (HEALTH_URL); unreachable -> head (failsafe)
      unless a live head is found on the whitelist; reachable -> look for a live head on
      the whitelist; found -> worker; none -> head.
    "Live head" = a whitelisted peer whose head (GCS) port accepts TCP and whose agent says,
    with proof of the control secret, that it is the head.  (The document's plain TCP scan
    would also join an open GCS port with no agent; every node of this stack runs an agent, so
    such a port belongs to whoever bound it - joining it would hand them the worker's Ray
    token - and it is not joined.)

No split brain: priority deference plus a two-phase claim
    Every whitelisted node runs a tiny TCP "node agent" (bound to NODE_IP, port = its
    whitelist port + 1000, or NODE_AGENT_PORT) that answers each authenticated request with
    one JSON line holding its current election state: deciding, claiming, head, worker.
    Both directions carry an HMAC with CSLR_CONTROL_SECRET (cslr_control.py): the request
    proves the reader holds the secret and is fresh (30 s window, single-use nonce); the
    answer is MACed over the request's nonce, so nothing without the secret can answer
    ``deciding``/``claiming``/``head`` - an answer without that proof reads as FORGED, which
    neither blocks a candidate nor counts as a head - and an old answer cannot be replayed.
    A peer unreadable for PEER_DEAD_AFTER_S counts as gone - unless its GCS port still accepts
    connections (a head whose agent strangers keep busy is not gone) - and is never joined as a
    head.  The request names the agent it is meant for (host:port as dialled) and the answer's
    MAC covers that name, so a genuine answer relayed from another node's agent reads as FORGED.
    Every exchange has one deadline as a whole, and an agent evicts its oldest connection when a
    source (or all) are at the cap: strangers who can only open connections may delay an
    election, never make a second head or steer a relay.
    A candidate
      1. publishes ``deciding`` and reads its peers in whitelist order;
      2. joins a live head if there is one; waits while a peer is ``claiming`` or a
         starting ``head``, or while a higher-priority peer is ``deciding`` (or cannot be
         read yet); otherwise
      3. publishes ``claiming`` and then reads *every* peer again; it commits to head
         only if no peer is claiming/head and no higher-priority peer is deciding;
         otherwise it drops back to ``deciding`` (randomised back-off, longer for lower
         priority) and starts over.
    Why at most one head: a committed candidate stays ``claiming``/``head`` from before
    its second read until its Ray stops.  Take two candidates that both commit; order
    their writes of ``claiming`` so A wrote first.  B's second read of A started after B's
    own write, hence after A's write, and the agent answers with the state current when
    it accepts the connection - so B saw A claiming and could not commit.  The whitelist
    order only decides *who* wins among simultaneous starters (and so liveness): an
    incumbent head always wins over a newcomer of higher priority, which joins it.
    Assumptions: (a) crash-stop nodes - a node's agent dies with its container;
    (b) no network partition between whitelisted nodes: "connection refused" or an
    unresolvable name means "not running", and a peer that cannot be read (timeout) is
    treated as possibly claiming until it has been unreadable for PEER_DEAD_AFTER_S with its
    GCS port closed, after which it counts as gone (a partition longer than that can split the
    brain - no protocol can avoid that with two nodes and no quorum);
    (c) whitelist entries name distinct nodes and all nodes share one HEAD_WHITELIST.
    The health service is never needed for safety (each host of a multi-host
    deployment runs its own), which is why "health unreachable" only changes the
    reason (failsafe), never the protocol.

Running
    A whitelisted head also reads its higher-priority peers every SPLIT_CHECK_INTERVAL_S:
    a live higher-priority head can only exist after a partition healed (each side elected
    its own); the lower-priority head then yields - stops its Ray and re-elects, which joins
    it to the higher-priority head, and its workers follow (head loss).
    Starts ``ray start --block`` (head or worker) in its own process group, registers
    and heartbeats with the health service, and watches: a head whose Ray exits
    re-elects; a worker whose head's GCS stops accepting TCP (HEAD_LOSS_PROBES probes
    in a row) stops its own Ray and re-elects - immediately without GCS fault
    tolerance, after HEAD_LOSS_GRACE_S with it (RAY_GCS_FT=1), so that a restarted head
    keeps its workers and their actors.  Only this node's Ray is ever stopped: its own
    process group, plus processes whose command line names this node's RAY_TEMP_DIR
    session directory (never ``ray stop``, which stops every node on the machine).
    Every probe is a bounded TCP connect or read; no Ray client call is made.

Outputs
    Log lines on stderr; ``--decide`` prints one JSON line
    {"role": "head"|"worker", "head_address": "host:port", "reason": "..."} on stdout.
    A state file (RAY_TEMP_DIR/cslr-node.json) for ``--healthcheck``.

Exit codes
    0  stopped by SIGTERM/SIGINT (Ray stopped), ``--decide`` printed a decision,
       ``--healthcheck`` found this node's Ray up
    1  ``--healthcheck``: Ray not up; or the election could not finish (``--decide``
       timed out)
    2  bad configuration: ``configuration error: VAR=value: expected ...`` (a secret's value
       is never shown; e.g. an empty whitelist for a node without HEAD_ADDRESS, a whitelist
       entry ``host:port:junk``, a port outside 1..65535), or the agent's address:port is busy
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import cslr_control as cc  # the scripts' shared helpers (this script's own directory)
from cslr_control import (
    ABSENT,
    AGENT_PORT_OFFSET,
    CLAIMING,
    DECIDING,
    FORGED,
    HEAD,  # noqa: F401
    UNKNOWN,
    WORKER,
    tcp_open,
)

DEFAULT_HEAD_PORT = 6379
STATE_FILE_NAME = "cslr-node.json"
AGENT_MAX_CONNECTIONS = 64  # open agent exchanges; a new one over the cap evicts the oldest
AGENT_MAX_PER_SOURCE = 8  # open exchanges per source address (IPv6: per /64); over it, that source's oldest goes
LOST_HEAD_STOP_S = 1.0  # SIGTERM -> SIGKILL when a worker stops its Ray after head loss

# election step actions
JOIN, WAIT, CLAIM, COMMIT, BACKOFF = "join", "wait", "claim", "commit", "backoff"


# =========================================================================== pure


@dataclass(frozen=True)
class Entry:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str, default_port: int) -> Entry:
    """``"h"`` / ``"h:p"`` / ``"[v6]:p"`` -> Entry; ValueError on a bad host, port or extra ':'."""
    try:
        return Entry(*cc.parse_host_port(text, default_port))
    except ValueError as exc:
        raise ValueError(f"bad address {cc.show(text or '')}: expected {exc}") from None


def parse_whitelist(text: str, default_port: int) -> List[Entry]:
    """Comma-separated ``host[:port]`` in priority order; raises ValueError on a bad entry."""
    return [parse_address(item, default_port) for item in (text or "").split(",") if item.strip()]


def whitelist_index(whitelist: List[Entry], hostname: str, head_port: int) -> Optional[int]:
    """Index of this node in the whitelist (hostname match, case-insensitive), else None.

    If the hostname is listed more than once, the entry with this node's RAY_HEAD_PORT wins.
    """
    matches = [i for i, e in enumerate(whitelist) if e.host.lower() == hostname.lower()]
    for i in matches:
        if whitelist[i].port == head_port:
            return i
    return matches[0] if matches else None


def worker_target(env_head: str, cfg_head: str, whitelist: List[Entry], head_port: int, live_head: Optional[Entry] = None) -> Tuple[Entry, str]:
    """Head address for a node that is not whitelisted, in the document's priority order.

    1. HEAD_ADDRESS (env) 2. nodes.head_address (config) 3. the first whitelisted node with
    RAY_HEAD_PORT - the first in whitelist order that is the live head if one is known
    (so workers follow a fail-over), else whitelist[0].
    """
    if env_head and env_head.strip():
        return parse_address(env_head, head_port), "not whitelisted: HEAD_ADDRESS (environment)"
    if cfg_head and cfg_head.strip():
        return parse_address(cfg_head, head_port), "not whitelisted: nodes.head_address (config)"
    if not whitelist:
        raise ValueError("not whitelisted and no HEAD_ADDRESS, nodes.head_address or whitelist")
    if live_head is not None:
        return live_head, "not whitelisted: live head on the whitelist"
    return whitelist[0], "not whitelisted: first whitelisted node"


@dataclass(frozen=True)
class Decision:
    role: str
    head_address: str
    reason: str

    def to_json(self) -> str:
        return json.dumps({"role": self.role, "head_address": self.head_address, "reason": self.reason}, sort_keys=True)


def decide(
    whitelisted: bool,
    health_ok: bool,
    live_head: Optional[Entry],
    self_entry: Optional[Entry],
    env_head: str = "",
    cfg_head: str = "",
    whitelist: Optional[List[Entry]] = None,
    head_port: int = DEFAULT_HEAD_PORT,
) -> Decision:
    """The document's head/worker table (the election supplies ``live_head``)."""
    if not whitelisted:
        target, reason = worker_target(env_head, cfg_head, whitelist or [], head_port, live_head)
        return Decision(WORKER, target.address, reason)
    assert self_entry is not None
    if live_head is not None:
        return Decision(WORKER, live_head.address, "whitelisted: existing head found, join cluster")
    if not health_ok:
        return Decision(HEAD, self_entry.address, "whitelisted: health service unavailable, head (failsafe)")
    return Decision(HEAD, self_entry.address, "whitelisted: no existing head, first node")


@dataclass(frozen=True)
class PeerView:
    """What one read of a peer showed. ``state``: deciding/claiming/head/worker/absent/unknown."""

    index: int
    entry: Entry
    state: str
    gcs_open: bool = False


@dataclass(frozen=True)
class Step:
    action: str
    target: Optional[Entry] = None
    reason: str = ""


def election_step(my_index: int, my_state: str, views: Iterable[PeerView]) -> Step:
    """One round of the election for a whitelisted candidate (see the module docstring).

    ``views`` are the peers (self excluded) in whitelist order; it may be a lazy iterator -
    the function stops reading at the first view that settles the round.
    ``my_state`` is DECIDING (phase 1) or CLAIMING (phase 2).
    """
    blocked = WAIT if my_state == DECIDING else BACKOFF
    for v in views:
        if v.gcs_open and v.state == HEAD:
            return Step(JOIN, v.entry, f"live head {v.entry.address}")
        if v.state in (CLAIMING, HEAD):
            return Step(blocked, v.entry, f"{v.entry.address} is {v.state}")
        if v.index < my_index and v.state in (DECIDING, UNKNOWN):
            return Step(blocked, v.entry, f"higher-priority {v.entry.address} is {v.state}")
        if v.state == UNKNOWN and my_state == CLAIMING:
            return Step(BACKOFF, v.entry, f"{v.entry.address} cannot be read")
    if my_state == DECIDING:
        return Step(CLAIM, None, "no live head and no competing candidate")
    return Step(COMMIT, None, "claim uncontested")


def backoff_delay(my_index: int, rng: random.Random, base: float = 0.05) -> float:
    """Back-off after a contested claim: lower priority waits longer, jitter breaks symmetry."""
    return base * (1 + min(my_index, 20)) * (0.5 + rng.random())


def agent_port_for(entry: Entry, fixed: Optional[int]) -> int:
    return fixed if fixed else entry.port + AGENT_PORT_OFFSET


@dataclass
class Config:
    hostname: str
    node_ip: str
    whitelist: List[Entry]
    head_port: int
    env_head: str = ""
    cfg_head: str = ""
    health_url: str = ""
    num_cpus: str = ""
    num_gpus: str = ""
    memory: str = ""
    object_store_memory: str = ""
    dashboard_host: str = "0.0.0.0"
    dashboard_port: int = 8265
    client_server_port: int = 10001
    ports: Dict[str, Optional[int]] = field(default_factory=dict)
    temp_dir: str = "/tmp/ray"
    gcs_ft: bool = False
    usage_stats: bool = False  # Ray's usage stats: only when RAY_USAGE_STATS_ENABLED says so (config `telemetry.enabled`)
    redis_address: str = "redis:6379"
    redis_password: str = ""
    cluster_name: str = ""
    auth_token: str = ""
    extra_args: List[str] = field(default_factory=list)
    agent_port: Optional[int] = None
    agent_bind: str = ""
    control_secret: str = field(default="", repr=False)
    ray_bin: List[str] = field(default_factory=lambda: ["ray"])
    heartbeat_interval: float = 5.0
    monitor_interval: float = 1.0
    head_loss_probes: int = 3
    head_loss_grace: float = 45.0
    peer_dead_after: float = 10.0
    split_check_interval: float = 5.0
    election_settle: float = 0.5
    stop_timeout: float = 8.0
    poll_interval: float = 0.1

    @property
    def index(self) -> Optional[int]:
        return whitelist_index(self.whitelist, self.hostname, self.head_port)

    @property
    def self_entry(self) -> Entry:
        i = self.index
        return self.whitelist[i] if i is not None else Entry(self.hostname, self.head_port)

    @property
    def own_port(self) -> int:
        """The GCS port when head: this node's whitelist port (peers probe that one)."""
        return self.self_entry.port

    @property
    def state_file(self) -> str:
        return os.path.join(self.temp_dir, STATE_FILE_NAME)


PORT_FLAGS = {  # env variable -> ray start flag (optional pinned ports)
    "RAY_MIN_WORKER_PORT": "--min-worker-port",
    "RAY_MAX_WORKER_PORT": "--max-worker-port",
    "RAY_NODE_MANAGER_PORT": "--node-manager-port",
    "RAY_OBJECT_MANAGER_PORT": "--object-manager-port",
    "RAY_METRICS_EXPORT_PORT": "--metrics-export-port",
    "RAY_DASHBOARD_AGENT_LISTEN_PORT": "--dashboard-agent-listen-port",
    "RAY_DASHBOARD_AGENT_GRPC_PORT": "--dashboard-agent-grpc-port",
    "RAY_RUNTIME_ENV_AGENT_PORT": "--runtime-env-agent-port",
}


def load_config(environ: Mapping[str, str], resolve: Callable[[str], str] = None) -> Config:
    """Build the Config from the environment contract (docs/runtime.md).

    Every variable goes through one ``cslr_control.EnvReader`` method; a bad value raises
    ``EnvError`` (a ValueError) naming the variable, the value and what was expected.
    """
    env = cc.EnvReader(environ)
    hostname = env.host("NODE_HOSTNAME") or socket.gethostname()
    head_port = env.port("RAY_HEAD_PORT", DEFAULT_HEAD_PORT)
    node_ip = env.host("NODE_IP") or (resolve or default_node_ip)(hostname)
    whitelist = [Entry(h, p) for h, p in env.host_ports("HEAD_WHITELIST", head_port)]
    env_head, cfg_head = env.host_port("HEAD_ADDRESS", head_port), env.host_port("CFG_HEAD_ADDRESS", head_port)
    cfg = Config(
        hostname=hostname,
        node_ip=node_ip,
        whitelist=whitelist,
        head_port=head_port,
        env_head=env.text("HEAD_ADDRESS") if env_head else "",
        cfg_head=env.text("CFG_HEAD_ADDRESS") if cfg_head else "",
        health_url=env.url("HEALTH_URL"),
        num_cpus=_count(env, "RAY_NUM_CPUS"),
        num_gpus=_count(env, "RAY_NUM_GPUS"),
        memory=_count(env, "RAY_MEMORY"),
        object_store_memory=_count(env, "RAY_OBJECT_STORE_MEMORY"),
        dashboard_host=env.host("RAY_DASHBOARD_HOST", "0.0.0.0"),
        dashboard_port=env.port("RAY_DASHBOARD_PORT", 8265),
        client_server_port=env.port("RAY_CLIENT_SERVER_PORT", 10001),
        ports={name: env.port(name, None) for name in PORT_FLAGS},
        temp_dir=env.text("RAY_TEMP_DIR", "/tmp/ray"),
        gcs_ft=env.flag("RAY_GCS_FT"),
        usage_stats=env.flag("RAY_USAGE_STATS_ENABLED"),
        redis_address=env.text("RAY_REDIS_ADDRESS", "redis:6379"),
        redis_password=env.raw("REDIS_PASSWORD"),
        cluster_name=env.text("RAY_CLUSTER_NAME"),
        auth_token=env.raw("RAY_AUTH_TOKEN").strip(),
        extra_args=env.words("RAY_START_EXTRA_ARGS"),
        agent_port=env.port("NODE_AGENT_PORT", None),
        agent_bind=env.host("NODE_AGENT_BIND") or node_ip,
        control_secret=env.secret(cc.SECRET_VAR),
        ray_bin=env.words("RAY_BIN", ["ray"]),
        heartbeat_interval=env.number("HEARTBEAT_INTERVAL_S", 5.0, 0.05, 3600),
        monitor_interval=env.number("HEAD_MONITOR_INTERVAL_S", 1.0, 0.05, 3600),
        head_loss_probes=int(env.integer("HEAD_LOSS_PROBES", 3, 1, 1000)),
        head_loss_grace=env.number("HEAD_LOSS_GRACE_S", 45.0, 0, 86400),
        peer_dead_after=env.number("PEER_DEAD_AFTER_S", 10.0, 0, 86400),
        split_check_interval=env.number("SPLIT_CHECK_INTERVAL_S", 5.0, 0, 86400),
        election_settle=env.number("ELECTION_SETTLE_S", 0.5, 0, 3600),
        stop_timeout=env.number("RAY_STOP_TIMEOUT_S", 8.0, 0, 3600),
    )
    if cfg.gcs_ft and cfg.redis_address:
        env.host_port("RAY_REDIS_ADDRESS", 6379)  # validated only where it is used
    if cfg.index is None:
        worker_target(cfg.env_head, cfg.cfg_head, cfg.whitelist, head_port)  # raises if impossible
    return cfg


def _count(env: "cc.EnvReader", name: str) -> str:
    """A resource amount for ``ray start`` (a whole number; empty = Ray detects)."""
    value = env.integer(name, None, 0, 2**62)
    return "" if value is None else str(value)


def build_ray_command(cfg: Config, decision: Decision) -> List[str]:
    """The ``ray start ... --block`` command line for this node's role."""
    cmd = (
        list(cfg.ray_bin)
        + ["start", "--block"]
        + ([] if cfg.usage_stats else ["--disable-usage-stats"])
        + [f"--node-ip-address={cfg.node_ip}", f"--temp-dir={cfg.temp_dir}"]
    )
    if decision.role == HEAD:
        cmd += [
            "--head",
            f"--port={cfg.own_port}",
            f"--dashboard-host={cfg.dashboard_host}",
            f"--dashboard-port={cfg.dashboard_port}",
            f"--ray-client-server-port={cfg.client_server_port}",
        ]
        if cfg.gcs_ft and cfg.redis_password:
            # Stays in argv: Ray 2.60 offers no env/file for it. `ray start --redis-password` is a
            # plain click option (no envvar), and Ray itself passes the password on the command
            # lines of gcs_server (--redis_password=, ray/_private/services.py) and of the
            # workers (--redis-password=); only its client server reads RAY_REDIS_PASSWORD.
            # Hiding it from `ray start` alone would change nothing; see docs/security.md.
            cmd.append(f"--redis-password={cfg.redis_password}")
    else:
        cmd.append(f"--address={decision.head_address}")
    for flag, value in (
        ("--num-cpus", cfg.num_cpus),
        ("--num-gpus", cfg.num_gpus),
        ("--memory", cfg.memory),
        ("--object-store-memory", cfg.object_store_memory),
    ):
        if value:
            cmd.append(f"{flag}={value}")
    for name, flag in PORT_FLAGS.items():
        if cfg.ports.get(name):
            cmd.append(f"{flag}={cfg.ports[name]}")
    return cmd + list(cfg.extra_args)


def ray_child_env(cfg: Config, environ: Mapping[str, str], role: str) -> Dict[str, str]:
    """Environment for ``ray start``: usage stats off (unless switched on), GCS FT and token auth switched on/off."""
    env = dict(environ)
    env["RAY_USAGE_STATS_ENABLED"] = "1" if cfg.usage_stats else "0"  # Ray accepts only 0 and 1
    if cfg.gcs_ft:
        env["RAY_REDIS_ADDRESS"] = cfg.redis_address
        env["RAY_external_storage_namespace"] = cfg.cluster_name or "cslr"
        if cfg.redis_password:
            env["REDIS_PASSWORD"] = cfg.redis_password
        # Keep the raylet waiting for a restarted GCS at least as long as we do.
        env.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(int(cfg.head_loss_grace) + 30))
    else:
        # Ray turns GCS FT on whenever RAY_REDIS_ADDRESS is set; the switch is RAY_GCS_FT.
        env.pop("RAY_REDIS_ADDRESS", None)
        env.pop("RAY_external_storage_namespace", None)
    if cfg.auth_token:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = cfg.auth_token
    else:
        env.pop("RAY_AUTH_TOKEN", None)
        # Without this Ray enables token auth on its own if ~/.ray/auth_token exists.
        env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def agent_fields(hostname: str, state: str, head: str, index: Optional[int], client_port: int) -> dict:
    """What an agent answers (authenticated by cslr_control.agent_reply)."""
    return {"v": 2, "hostname": hostname, "state": state, "head": head, "index": index, "client_port": client_port}


def matches_own_ray(cmdline: str, temp_dir: str) -> bool:
    """True if a process command line belongs to the Ray node using ``temp_dir``."""
    root = temp_dir.rstrip("/") or "/"
    return f"{root}/session_" in cmdline or f"--temp-dir={root} " in cmdline + " "


# =========================================================================== I/O helpers


PROM_SD_FILE = "prom_metrics_service_discovery.json"  # Ray's (ray_constants): the head's list of every node's metrics address
PROM_SD_EXPORT = "cslr-prometheus-sd.json"  # this node's copy while head (docs/monitoring.md)


def export_prometheus_targets(temp_dir: str, is_head: bool) -> bool:
    """Keep ``temp_dir/PROM_SD_EXPORT`` = Ray's service-discovery file while this node is head,
    and no such file otherwise; True when the file changed.

    Ray writes its file into the session folder and links it from ``temp_dir`` by an absolute
    path, which only resolves inside this container; the copy is a plain file that Prometheus
    reads from this node's volume (compose.yaml mounts every node's /tmp/ray there), and a node
    that is not head - or an ex-head that restarted - leaves no stale list behind.
    """
    target = os.path.join(temp_dir, PROM_SD_EXPORT)
    try:
        if not is_head:
            os.remove(target)
            return True
        with open(os.path.join(temp_dir, PROM_SD_FILE), "rb") as f:
            data = f.read(1 << 20)
        json.loads(data.decode("utf-8"))  # never hand Prometheus a half-written list
        try:
            with open(target, "rb") as f:
                if f.read(1 << 20) == data:
                    return False
        except OSError:
            pass
        tmp = target + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # Prometheus runs as another user (nobody)
        os.replace(tmp, target)
        return True
    except (OSError, ValueError):
        return False


def default_node_ip(hostname: str) -> str:
    try:
        ip = socket.gethostbyname(hostname)
        if not ip.startswith("127."):
            return ip
    except OSError:
        pass
    # Route lookup only: connect() on a UDP socket sends no packet.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def http_json(url: str, payload: Optional[dict] = None, timeout: float = 2.0, secret: str = "") -> Tuple[int, Optional[dict]]:
    """(status, body) of a GET (payload None) or POST; status 0 when unreachable.

    A POST carries the control-secret proof (cslr_control.sign_request) when ``secret`` is set.
    """
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if data is not None and secret:
        path = urllib.parse.urlsplit(url).path or "/"
        headers.update(cc.sign_request(secret, "POST", path, data))
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(65536)
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(body.decode() or "null")
    except ValueError:
        return status, None


def log(msg: str) -> None:
    print(f"ray_node: {msg}", file=sys.stderr, flush=True)


class AgentBindError(Exception):
    """The agent's address:port cannot be bound (exit 2 with this message)."""


class Agent:
    """The node agent: answers each authenticated request with this node's current state.

    A request must carry proof of the control secret and name this agent
    (cslr_control.check_agent_request); the answer is MACed over the request's nonce and this
    agent's ``node_id``.  A refused request gets one unauthenticated error line and is counted.
    Connections are bounded by a cslr_control.ConnectionGuard: one deadline for the whole
    exchange (AGENT_EXCHANGE_S), at most AGENT_MAX_PER_SOURCE per source and
    AGENT_MAX_CONNECTIONS in all, the oldest evicted first - so strangers who only open slow
    connections delay nobody's genuine exchange by more than one deadline.
    """

    def __init__(
        self,
        hostname: str,
        index: Optional[int],
        bind: str,
        port: int,
        secret: str,
        client_port: int = 10001,
        clock: Callable[[], float] = time.time,
        ident_host: Optional[str] = None,
        exchange_s: float = cc.AGENT_EXCHANGE_S,
    ) -> None:
        self.hostname, self.index, self.client_port, self.secret = hostname, index, client_port, secret
        self.verifier = cc.Verifier(secret, clock=clock)
        self.refusals = cc.Refusals(log)
        self.exchange_s = exchange_s
        self.guard = cc.ConnectionGuard(
            AGENT_MAX_CONNECTIONS, AGENT_MAX_PER_SOURCE, exchange_s, lambda src, why: self.refusals.refuse(src, why, "agent connection")
        )
        self._pair: Tuple[str, str] = (DECIDING, "")
        self._sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((bind, port))
            self._sock.listen(256)
        except (OSError, OverflowError) as exc:
            self._sock.close()
            raise AgentBindError(
                f"cannot open the election agent on {bind}:{port} (NODE_AGENT_BIND / NODE_AGENT_PORT): {getattr(exc, 'strerror', None) or exc}"
            ) from None
        self.port = self._sock.getsockname()[1]
        # What readers dial: this node's whitelist host and the agent port (cslr_control.node_id).
        self.node = cc.node_id(ident_host or hostname, self.port)
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="node-agent", daemon=True)
        self._thread.start()
        threading.Thread(target=self.guard.run, args=(self._stop, 0.05), name="node-agent-reaper", daemon=True).start()

    @property
    def state(self) -> str:
        return self._pair[0]

    def set(self, state: str, head: str = "") -> None:
        # One tuple assignment: a reader never sees a new state with an old head.
        self._pair = (state, head)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            source = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            self.guard.admit(conn, source)
            try:
                threading.Thread(target=self._answer, args=(conn, source), daemon=True).start()
            except RuntimeError:  # cannot start a thread: drop this one connection
                self.guard.release(conn)
                conn.close()

    def _answer(self, conn: socket.socket, source: str) -> None:
        try:
            deadline = time.monotonic() + self.exchange_s
            line = cc.recv_line(conn, 1024, deadline)
            reason, nonce = cc.check_agent_request(self.verifier, line, self.node)
            if reason:
                self.refusals.refuse(source, reason, "agent request")
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sendall(b'{"error": "unauthorized"}\n')
                return
            # The state is read after the request arrived, hence after the reader's write of its
            # own state: the safety argument of the module docstring holds.
            state, head = self._pair
            fields = agent_fields(self.hostname, state, head, self.index, self.client_port)
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sendall(cc.agent_reply(self.secret, nonce, self.node, fields))
        except OSError:
            pass  # evicted, past the deadline, or the reader went away: the guard counted it
        except Exception as exc:  # never a traceback per request; counted like every refusal
            self.refusals.refuse(source, f"error:{type(exc).__name__}", "agent request")
        finally:
            self.guard.release(conn)
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


# =========================================================================== Ray processes


def _own_lineage() -> set:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def own_ray_pids(temp_dir: str, proc: str = "/proc") -> List[int]:
    """PIDs whose command line names this node's Ray temp dir (never ours or our parents)."""
    skip = _own_lineage()
    found = []
    try:
        names = os.listdir(proc)
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(os.path.join(proc, name, "cmdline"), "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if matches_own_ray(cmdline, temp_dir):
            found.append(int(name))
    return found


def raylet_running(temp_dir: str, proc: str = "/proc") -> bool:
    for pid in own_ray_pids(temp_dir, proc):
        try:
            with open(os.path.join(proc, str(pid), "comm")) as f:
                if f.read().strip() == "raylet":
                    return True
        except OSError:
            continue
    return False


def kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class RayLauncher:
    """Runs ``ray start --block`` as a child in its own process group; stops only that node."""

    def __init__(self, cfg: Config, environ: Mapping[str, str]) -> None:
        self.cfg, self.environ = cfg, environ
        self.proc: Optional[subprocess.Popen] = None

    def start(self, decision: Decision) -> None:
        cmd = build_ray_command(self.cfg, decision)
        log("starting: " + " ".join(shlex.quote(c) for c in cmd if "password" not in c))
        self.proc = subprocess.Popen(cmd, env=ray_child_env(self.cfg, self.environ, decision.role), stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: Optional[float] = None) -> None:
        """SIGTERM this node's Ray, SIGKILL after ``timeout`` (default RAY_STOP_TIMEOUT_S)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                proc.wait(self.cfg.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.sweep()

    def sweep(self) -> None:
        """Kill leftovers of this node's Ray (e.g. from a previous run) by its temp dir."""
        pids = own_ray_pids(self.cfg.temp_dir)
        if pids:
            kill_pids(pids, signal.SIGKILL)


# =========================================================================== node runner
# Four small parts: PeerReader (what the peers' agents say), Election (the protocol loop
# around the pure election_step), RegistryClient (registration + heartbeats) and NodeRunner
# (supervision: start Ray, watch it, re-elect), which wires the other three together.


class PeerReader:
    """Reads the whitelisted peers' agents; remembers how long each has been unreadable."""

    def __init__(
        self, cfg: Config, clock: Callable[[], float], read_agent_fn: Optional[Callable[[str, int], str]] = None, tcp_open_fn: Callable[..., bool] = tcp_open
    ) -> None:
        self.cfg, self.clock, self.tcp_open = cfg, clock, tcp_open_fn
        self.read_agent = read_agent_fn or (lambda h, p: cc.read_agent(h, p, cfg.control_secret)[0])
        self._unknown_since: Dict[int, float] = {}
        self._forged_logged: set = set()
        self._busy_logged: set = set()

    def view(self, i: int, entry: Entry) -> PeerView:
        cfg = self.cfg
        state = self.read_agent(entry.host, agent_port_for(entry, cfg.agent_port))
        now = self.clock()
        if state == UNKNOWN:
            since = self._unknown_since.setdefault(i, now)
            if now - since > cfg.peer_dead_after and not self.tcp_open(entry.host, entry.port):
                # Unreadable for long and its GCS port closed: gone (see assumptions) - but never
                # an agentless head to join. While its GCS port still accepts connections the
                # peer may be a head whose agent strangers keep busy: it stays UNKNOWN (an
                # election waits; it never elects a second head beside it).
                return PeerView(i, entry, ABSENT, False)
            if now - since > cfg.peer_dead_after and i not in self._busy_logged:
                self._busy_logged.add(i)
                log(f"{entry.address}: its agent has not answered for {cfg.peer_dead_after:g} s but its GCS port is open; not counted as gone")
            return PeerView(i, entry, UNKNOWN, False)
        self._busy_logged.discard(i)
        self._unknown_since.pop(i, None)
        if state == FORGED:
            if i not in self._forged_logged:
                self._forged_logged.add(i)
                log(
                    f"{entry.address}: its agent answers without proof of {cc.SECRET_VAR} (another "
                    f"secret, a clock more than {cc.WINDOW_S:g} s off, or not a node of this stack); ignored"
                )
            return PeerView(i, entry, FORGED, False)
        # Only an agent that proved the secret and says "head" is a head to join: an open GCS
        # port with no agent is whoever bound it (joining would hand it this node's Ray token).
        gcs = state == HEAD and self.tcp_open(entry.host, entry.port)
        return PeerView(i, entry, state, gcs)

    def views(self) -> Iterator[PeerView]:
        me = self.cfg.index
        for i, entry in enumerate(self.cfg.whitelist):
            if i != me:
                yield self.view(i, entry)

    def first_live_head(self) -> Optional[Entry]:
        for v in self.views():
            if v.gcs_open and v.state == HEAD:
                return v.entry
        return None

    def higher_priority_head(self) -> Optional[Entry]:
        """A live head of higher whitelist priority than this node: only possible after a
        partition healed (each side elected its own head)."""
        me = self.cfg.index
        if me is None:
            return None
        for i, entry in enumerate(self.cfg.whitelist[:me]):
            v = self.view(i, entry)
            if v.state == HEAD and v.gcs_open:
                return entry
        return None


class Election:
    """The election loop of one node around the pure ``election_step``."""

    def __init__(
        self,
        cfg: Config,
        peers: PeerReader,
        publish: Callable[..., None],
        health: Callable[[], bool],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rng: random.Random,
        stop: threading.Event,
        tcp_open_fn: Callable[..., bool],
    ) -> None:
        self.cfg, self.peers, self.publish, self.health = cfg, peers, publish, health
        self.clock, self.sleep, self.rng, self.stop, self.tcp_open = clock, sleep, rng, stop, tcp_open_fn

    def run(self, deadline: Optional[float] = None) -> Optional[Decision]:
        """Run the election until decided; None if stopped or past ``deadline``."""
        cfg = self.cfg
        me = cfg.index
        health_ok = self.health()
        health_checked = self.clock()
        if me is None:
            while not self.stop.is_set():
                live = None if (cfg.env_head or cfg.cfg_head) else self.peers.first_live_head()
                d = decide(False, health_ok, live, None, cfg.env_head, cfg.cfg_head, cfg.whitelist, cfg.head_port)
                target = parse_address(d.head_address, cfg.head_port)
                if deadline is not None or self.tcp_open(target.host, target.port):
                    return d
                self.sleep(cfg.poll_interval * 5)
            return None
        my_state = DECIDING
        self.publish(DECIDING)
        if me > 0:
            # Give higher-priority candidates started at about the same moment time to open
            # their agents: an agent not listening yet reads as "not running", which would
            # let priority be decided by start-up jitter. (Safety never depends on this.)
            self.sleep(cfg.election_settle)
        while not self.stop.is_set():
            if deadline is not None and self.clock() > deadline:
                self.publish(DECIDING)
                return None
            if self.clock() - health_checked > 2.0:
                health_ok, health_checked = self.health(), self.clock()
            step = election_step(me, my_state, self.peers.views())
            if step.action == JOIN:
                self.publish(WORKER, step.target.address)
                return decide(True, health_ok, step.target, cfg.self_entry)
            if step.action == CLAIM:
                my_state = CLAIMING
                self.publish(CLAIMING)
                continue
            if step.action == COMMIT:
                d = decide(True, health_ok, None, cfg.self_entry)
                self.publish(HEAD, d.head_address)
                return d
            if step.action == BACKOFF:
                my_state = DECIDING
                self.publish(DECIDING)
                self.sleep(backoff_delay(me, self.rng, cfg.poll_interval))
            else:
                self.sleep(cfg.poll_interval * (0.5 + self.rng.random()))
        return None


class RegistryClient:
    """Registers this node with the health service and heartbeats (best effort, signed)."""

    def __init__(
        self, cfg: Config, record: Callable[[], dict], http_fn: Callable[..., Tuple[int, Optional[dict]]], sleep: Callable[[float], None], stop: threading.Event
    ) -> None:
        self.cfg, self.record, self.http, self.sleep, self.stop = cfg, record, http_fn, sleep, stop
        self.thread: Optional[threading.Thread] = None

    def post(self, path: str, payload: dict) -> int:
        return self.http(self.cfg.health_url.rstrip("/") + path, payload, secret=self.cfg.control_secret)[0]

    def loop(self) -> None:
        registered = False
        while not self.stop.is_set():
            rec = self.record()
            if not registered:
                registered = self.post("/register", rec) == 200
            else:
                status = self.post("/heartbeat", rec)
                registered = status == 200 or status == 0  # 404: service restarted, register again
            self.sleep(self.cfg.heartbeat_interval)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name="heartbeat", daemon=True)
        self.thread.start()


class NodeRunner:
    """Supervision of one node: elect, start Ray, watch it, re-elect. Clock, sleep, launcher
    and probes are injectable; the parts above do the reading, electing and registering."""

    def __init__(
        self,
        cfg: Config,
        launcher,
        stop: Optional[threading.Event] = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        read_agent_fn: Optional[Callable[[str, int], str]] = None,
        tcp_open_fn: Callable[..., bool] = tcp_open,
        http_fn: Callable[..., Tuple[int, Optional[dict]]] = http_json,
        with_agent: bool = True,
        on_decision: Optional[Callable[[Decision], None]] = None,
    ) -> None:
        self.cfg, self.launcher = cfg, launcher
        self.stop = stop or threading.Event()
        self.clock = clock
        self.rng = rng or random.Random()
        self.tcp_open, self.http = tcp_open_fn, http_fn
        self.with_agent = with_agent
        self.on_decision = on_decision
        self.agent: Optional[Agent] = None
        self.decision: Optional[Decision] = None
        self.peers = PeerReader(cfg, clock, read_agent_fn, tcp_open_fn)
        self.election = Election(cfg, self.peers, self.publish, self.health, clock, lambda s: self.sleep(s), self.rng, self.stop, tcp_open_fn)
        self.registry = RegistryClient(cfg, self._node_record, http_fn, lambda s: self.sleep(s), self.stop)

    # ---------------------------------------------------------------- helpers
    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, seconds))

    def publish(self, state: str, head: str = "") -> None:
        if self.agent is not None:
            self.agent.set(state, head)

    def health(self) -> bool:
        if not self.cfg.health_url:
            return False
        status, _ = self.http(self.cfg.health_url.rstrip("/") + "/")
        return status == 200

    def view(self, i: int, entry: Entry) -> PeerView:
        return self.peers.view(i, entry)

    def open_agent(self) -> Agent:
        cfg = self.cfg
        return Agent(
            cfg.hostname,
            cfg.index,
            cfg.agent_bind,
            agent_port_for(cfg.self_entry, cfg.agent_port),
            cfg.control_secret,
            cfg.client_server_port,
            ident_host=cfg.self_entry.host,
        )

    def elect(self, deadline: Optional[float] = None) -> Optional[Decision]:
        return self.election.run(deadline)

    def _node_record(self) -> dict:
        d = self.decision
        return {
            "hostname": self.cfg.hostname,
            "address": self.cfg.node_ip,
            "role": d.role if d else "unknown",
            "head_address": d.head_address if d else "",
            "port": self.cfg.own_port,
            "client_port": self.cfg.client_server_port,
            "state": self.agent.state if self.agent else "",
        }

    def write_state(self) -> None:
        d = self.decision
        data = {
            "role": d.role if d else "",
            "head_address": d.head_address if d else "",
            "node_ip": self.cfg.node_ip,
            "port": self.cfg.own_port,
            "pid": os.getpid(),
            "temp_dir": self.cfg.temp_dir,
        }
        try:
            os.makedirs(self.cfg.temp_dir, exist_ok=True)
            tmp = self.cfg.state_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.cfg.state_file)
        except OSError as exc:
            log(f"cannot write {self.cfg.state_file}: {exc}")

    # ---------------------------------------------------------------- lifecycle
    def watch_head(self, target: Entry) -> str:
        """Block while this worker's Ray runs; returns why it stopped: 'stop', 'exit', 'lost'."""
        cfg = self.cfg
        misses, lost_at = 0, None
        while not self.stop.is_set():
            self.sleep(cfg.monitor_interval)
            if self.stop.is_set():
                return "stop"
            if not self.launcher.alive():
                return "exit"
            if self.tcp_open(target.host, target.port, min(1.0, cfg.monitor_interval)):
                misses, lost_at = 0, None
                continue
            misses += 1
            if misses < cfg.head_loss_probes:
                continue
            if not cfg.gcs_ft:
                return "lost"
            lost_at = lost_at if lost_at is not None else self.clock()
            if self.clock() - lost_at >= cfg.head_loss_grace:
                return "lost"
        return "stop"

    def watch_self(self) -> str:
        """Block while this head's Ray runs; 'exit' if it died, 'split' if a higher-priority
        head is alive (two clusters after a healed partition: this one yields and rejoins)."""
        last_split_check = self.clock()
        while not self.stop.is_set():
            self.sleep(self.cfg.monitor_interval)
            if self.stop.is_set():
                return "stop"
            if not self.launcher.alive():
                return "exit"
            export_prometheus_targets(self.cfg.temp_dir, True)
            if self.cfg.split_check_interval > 0 and self.clock() - last_split_check >= self.cfg.split_check_interval:
                last_split_check = self.clock()
                other = self.peers.higher_priority_head()
                if other is not None:
                    log(f"head {other.address} of higher priority is alive: a partition has healed; yielding")
                    return "split"
        return "stop"

    def run(self) -> int:
        cfg = self.cfg
        if cfg.index is not None and self.with_agent:
            self.agent = self.open_agent()  # AgentBindError before anything else starts
        self.launcher.sweep()
        if cfg.health_url:
            self.registry.start()
        try:
            while not self.stop.is_set():
                self.decision = None
                export_prometheus_targets(cfg.temp_dir, False)
                self.write_state()
                decision = self.elect()
                if decision is None:
                    break
                self.decision = decision
                log(f"decision: {decision.to_json()}")
                if self.on_decision:
                    self.on_decision(decision)
                self.write_state()
                self.launcher.start(decision)
                if decision.role == HEAD:
                    why = self.watch_self()
                else:
                    why = self.watch_head(parse_address(decision.head_address, cfg.head_port))
                if why == "stop":
                    break
                log(f"{decision.role} ended ({why}); stopping this node's Ray and re-electing")
                self.publish(DECIDING)
                # A worker whose head is gone has nothing to stop gracefully (its raylet cannot
                # reach the GCS and would sit out the whole RAY_STOP_TIMEOUT_S): be quick.
                self.launcher.stop(min(LOST_HEAD_STOP_S, cfg.stop_timeout) if why == "lost" else None)
                self.sleep(0.5 + self.rng.random() * 0.5)
        finally:
            export_prometheus_targets(cfg.temp_dir, False)  # first: a stop that runs out of time still removes it
            self.launcher.stop()
            if self.agent is not None:
                self.agent.close()
        return 0


# =========================================================================== modes


def healthcheck(cfg: Config, timeout: float = 2.0) -> int:
    """0 iff this node's Ray is up: head -> own GCS port accepts TCP; worker -> raylet + head GCS."""
    try:
        with open(cfg.state_file) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return 1
    role = state.get("role")
    if role == HEAD:
        return 0 if tcp_open(cfg.node_ip, int(state.get("port") or cfg.own_port), timeout) else 1
    if role == WORKER:
        try:
            head = parse_address(state.get("head_address", ""), cfg.head_port)
        except ValueError:
            return 1
        ok = raylet_running(cfg.temp_dir) and tcp_open(head.host, head.port, timeout)
        return 0 if ok else 1
    return 1


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    parser = argparse.ArgumentParser(description="CSLR Ray node entrypoint (see module docstring)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--decide", action="store_true", help="print the decision as JSON and exit")
    mode.add_argument("--healthcheck", action="store_true", help="exit 0 iff this node's Ray is up")
    parser.add_argument("--decide-timeout", type=float, default=30.0, help="seconds --decide may wait")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        cfg = load_config(env)
    except ValueError as exc:  # EnvError, or a whitelist/address rule
        log(f"configuration error: {exc}")
        return 2
    if args.healthcheck:
        return healthcheck(cfg)
    if args.decide:
        runner = NodeRunner(cfg, launcher=None)
        if cfg.index is not None:
            try:  # take part in the election if the real entrypoint is not running here
                runner.agent = runner.open_agent()
            except AgentBindError:
                runner.agent = None
        try:
            d = runner.elect(deadline=time.monotonic() + args.decide_timeout)
        finally:
            if runner.agent is not None:
                runner.agent.close()
        if d is None:
            log("no decision within --decide-timeout")
            return 1
        print(d.to_json(), flush=True)
        return 0
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        log(f"signal {signum}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    log(f"node {cfg.hostname} ip={cfg.node_ip} whitelist index={cfg.index}")
    try:
        return NodeRunner(cfg, RayLauncher(cfg, env), stop=stop).run()
    except AgentBindError as exc:
        log(f"configuration error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`inv doctor`: the troubleshooting flow as checks, one line each.

The flow (logs -> connection refused / GCS health / validation error -> name resolution, port
reachability, firewall, node IP, head state, config check) becomes a list of checks. Each check
is a small function that returns `Check`s (ok / warn / fail, what was found, the fix); they are
collected apart from how they are reported (text or JSON), as check-jsonschema does. Nothing
here changes anything; every probe of the engine, the network or the host is injectable.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import preflight, topology
from .errors import PlatformError

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
MEM_WARN_GIB = 4  # two Ray nodes, Postgres, MLflow, Redis and Marimo start in about this much
DISK_WARN_GIB, DISK_FAIL_GIB = 10, 2  # images, volumes, Ray's spill and logs


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Probes:
    """What the checks look at; each is replaced in tests (the real engine, network and host by default)."""

    run: Callable[..., subprocess.CompletedProcess] = subprocess.run
    meminfo: Callable[[], str] = lambda: Path("/proc/meminfo").read_text()
    disk_free: Callable[[str], int] = lambda path: shutil.disk_usage(path).free
    resolve: Callable[[str], str] = lambda name: socket.getaddrinfo(name, None)[0][4][0]
    tcp_open: Callable[[str, int], bool] = field(default=lambda host, port: _tcp_open(host, port))
    http_json: Callable[[str], object] = field(default=lambda url: _http_json(url))
    port_free: Callable[[str, int], bool] = preflight.port_free


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError, OverflowError):
        return False


def _http_json(url: str, timeout: float = 3.0) -> object:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read(1 << 20).decode())


# ------------------------------------------------------------------------------ pure checks


def memory(meminfo: str) -> Check:
    values = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * 1024
    available = values.get("MemAvailable")
    if available is None:
        return Check("memory", WARN, "MemAvailable not found in /proc/meminfo", "")
    text = f"{available / GIB:.1f} GiB available"
    if available < MEM_WARN_GIB * GIB:
        return Check("memory", WARN, text + f" (the stack starts in about {MEM_WARN_GIB} GiB)", "close other programs, or lower ray.*.memory in config.yaml")
    return Check("memory", OK, text)


def disk(label: str, free: int) -> Check:
    text = f"{label}: {free / GIB:.1f} GiB free"
    if free < DISK_FAIL_GIB * GIB:
        return Check("disk", FAIL, text, "free disk space (docker system prune removes unused images; back up first)")
    if free < DISK_WARN_GIB * GIB:
        return Check("disk", WARN, text, "images, volumes and Ray's spilled objects need room: free some disk")
    return Check("disk", OK, text)


def last_error_line(log: str) -> str:
    """The last log line that looks like an error (else the last line), shortened."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    marked = [line for line in lines if any(w in line.lower() for w in ("error", "fatal", "failed", "exception", "refused"))]
    line = (marked or lines or [""])[-1]
    return line if len(line) <= 200 else line[:200] + "…"


def services(expected: Iterable[str], rows: Iterable[dict], healthchecked: set[str], logs: Callable[[str], str]) -> list[Check]:
    """One check per service `up` starts: running (and healthy where it has a healthcheck)."""
    by_name = {r.get("Service"): r for r in rows}
    out = []
    for name in expected:
        row = by_name.get(name)
        if row is None:
            out.append(Check(f"service {name}", FAIL, "not created", "inv up"))
            continue
        state, health = row.get("State", ""), row.get("Health") or ""
        if state == "running" and (health == "healthy" or name not in healthchecked):
            out.append(Check(f"service {name}", OK, "running" + (", healthy" if health else "")))
            continue
        detail = f"{state or 'unknown'}" + (f" (exit {row.get('ExitCode')})" if state == "exited" else "") + (f", {health}" if health else "")
        err = last_error_line(logs(name))
        out.append(Check(f"service {name}", FAIL, detail + (f"; last log line: {err}" if err else ""), f"inv logs {name}; then inv up"))
    return out


def ports(bind: str, published: Iterable[tuple[tuple, int]], running: set[str], port_free: Callable[[str, int], bool]) -> list[Check]:
    """A published port of a service that is not running must be free, else another program holds it."""
    out = []
    for path, port in published:
        owner = topology.owner(path)
        if owner in running:
            continue
        if not port_free(bind, port):
            setting = ".".join(map(str, path))
            out.append(
                Check(
                    f"port {port}",
                    FAIL,
                    f"{bind}:{port} ({setting}, for {owner}) is taken by another program",
                    f"stop that program, or change {setting} in config.yaml",
                )
            )
    return out or [Check("ports", OK, "every published port is free or held by its own service")]


def head_agreement(status: object, nodes: object) -> Check:
    """The health service's elected head, and whether every alive registered node names it."""
    if not isinstance(status, dict):
        return Check("head", FAIL, "the health service did not answer", "inv logs health")
    head = status.get("known_head")
    if not head:
        return Check("head", FAIL, "no elected head (no whitelisted node's agent says head)", "inv logs ray-cpu; inv logs ray-gpu")
    rows = nodes.get("nodes", []) if isinstance(nodes, dict) else []
    disagree = [
        f"{n.get('hostname')} follows {n.get('head_address')}"
        for n in rows
        if isinstance(n, dict) and n.get("alive") and n.get("role") == "worker" and n.get("head_address") and n.get("head_address") != head
    ]
    if disagree:
        return Check("head", FAIL, f"head {head}, but " + "; ".join(disagree), "restart the nodes that follow another head (inv up)")
    alive = sum(1 for n in rows if isinstance(n, dict) and n.get("alive"))
    return Check("head", OK, f"{head}; {alive} registered node(s) alive agree")


def resolution(names: Iterable[str], resolve: Callable[[str], str]) -> list[Check]:
    out = []
    for name in names:
        try:
            out.append(Check(f"resolve {name}", OK, resolve(name)))
        except (OSError, UnicodeError) as exc:
            out.append(Check(f"resolve {name}", FAIL, f"cannot resolve ({exc})", "add it to DNS or /etc/hosts on every host, or use its IP in hosts:"))
    return out


def reachability(targets: Iterable[tuple[str, str, int]], tcp_open: Callable[[str, int], bool]) -> list[Check]:
    """(label, host, port) that should accept TCP from here."""
    out = []
    for label, host, port in targets:
        if tcp_open(host, port):
            out.append(Check(f"reach {label}", OK, f"{host}:{port} accepts connections"))
        else:
            out.append(Check(f"reach {label}", WARN, f"{host}:{port} does not accept connections from here", "is that host's stack up? a firewall in between?"))
    return out


# ------------------------------------------------------------------------------ report


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_text(checks: Iterable[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<4}  {c.name:<22} {c.detail}" + (f"\n      fix: {c.fix}" if c.fix and c.status != OK else ""))
    return "\n".join(lines)


def format_json(checks: Iterable[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2)


# ------------------------------------------------------------------------------ the flow


def config_check(load: Callable[[], object]) -> tuple[Check, object | None]:
    try:
        loaded = load()
    except PlatformError as exc:
        first = str(exc).strip().splitlines()[:3]
        return Check("config", FAIL, " | ".join(first), "inv validate (every problem with file, line and fix)"), None
    return Check("config", OK, "valid"), loaded


def firewall(cfg, check: Callable[..., tuple[list[str], list[str]]] = preflight.firewall_check) -> list[Check]:
    """Multi-host: the rules of `inv firewall` for this host are loaded (cslr/preflight.py)."""
    if not cfg.get("hosts"):
        return []
    try:
        findings, notes = check(cfg, None)
    except PlatformError as exc:
        return [Check("firewall", WARN, str(exc).splitlines()[0], "inv doctor on one of the hosts of config.yaml's hosts:")]
    if findings:
        return [Check("firewall", FAIL, findings[0].split(". Apply", 1)[0], "inv firewall --host NAME --persist | sudo sh (docs/multi-host.md)")]
    return [Check("firewall", OK, (notes or ["loaded"])[0])]


def data_secrets(check: Callable[[], list[str]]) -> Check:
    """This folder owns the stack and `.env` opens its data volumes (cslr/identity.py)."""
    try:
        notes = check()
    except PlatformError as exc:
        lines = str(exc).strip().splitlines()
        return Check(".env vs data", FAIL, lines[0], " ".join(line.strip() for line in lines[1:3]) or "docs/stacks.md")
    return Check(".env vs data", OK, notes[0] if notes else "this folder's stack; .env opens its data volumes (or there are none yet)")


def run(
    load: Callable[[], object],
    stack_for: Callable[[object], object | None],
    probes: Probes | None = None,
    here: str = ".",
    data_check: Callable[[object], list[str]] | None = None,
    firewall_check: Callable[..., tuple[list[str], list[str]]] = preflight.firewall_check,
) -> list[Check]:
    """Every check in the troubleshooting flow's order. `load` validates config.yaml (raises
    PlatformError); `stack_for(loaded)` gives the generated Stack or None; `data_check(loaded)`
    raises when another folder owns the stack or `.env` does not open its data volumes."""
    probes = probes or Probes()
    checks: list[Check] = []
    cfg_check, loaded = config_check(load)
    checks.append(cfg_check)
    engine = preflight.docker_available(probes.run)
    checks.append(Check("engine", FAIL, engine[0], "") if engine else Check("engine", OK, "Docker engine answers"))
    comp = preflight.compose_available(probes.run)
    checks.append(Check("compose", FAIL, comp[0], "") if comp else Check("compose", OK, "Docker Compose v2 found"))
    try:
        checks.append(memory(probes.meminfo()))
    except OSError:
        checks.append(Check("memory", WARN, "/proc/meminfo is not readable"))
    checks.append(disk(os.path.abspath(here), probes.disk_free(here)))
    if loaded is None:
        return checks
    cfg = loaded.cfg
    hosts = cfg.get("hosts") or []
    if hosts:
        names = [h.get("address") or h.get("name") for h in hosts if isinstance(h, dict)]
        checks += resolution([n for n in names if n], probes.resolve)
    checks += firewall(cfg, firewall_check)
    if engine:
        return checks
    if data_check is not None:
        checks.append(data_secrets(lambda: data_check(loaded)))
    stack = stack_for(loaded)
    if stack is None:
        checks.append(Check("stack", WARN, "no generated project", "inv up"))
        return checks
    try:
        rows = stack.services()
        expected = stack.expected_services()
        checked = stack.healthchecked_services()
    except (PlatformError, OSError, subprocess.SubprocessError) as exc:
        checks.append(Check("stack", FAIL, f"cannot read the stack's state: {str(exc).splitlines()[0]}", "inv up"))
        return checks
    checks += services(expected, rows, checked, lambda name: stack.logs_tail(name, 50))

    running = {r.get("Service") for r in rows if r.get("State") == "running"}
    checks += ports(cfg.get("network", "bind_address"), topology.published(cfg, "ray-gpu" in expected), running, probes.port_free)
    if "health" in running:
        host = topology.reachable_host(cfg.get("network", "bind_address"))
        base = f"http://{host}:{cfg.get('services', 'health', 'port')}"
        try:
            status, nodes = probes.http_json(base + "/"), probes.http_json(base + "/nodes")
        except (OSError, ValueError):
            status, nodes = None, None
        checks.append(head_agreement(status, nodes))
    return checks

"""What the stack tasks print: the service table with URLs (secrets masked), the status report,
and the parsing of `compose ps` rows they are made from."""

from __future__ import annotations

import json
import urllib.request
from typing import Iterable

from . import topology
from .config import Config


def parse_ps(text: str) -> list[dict]:
    """`compose ps --format json` prints one JSON object per line (older versions: one array)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def is_ready(row: dict, has_healthcheck: bool) -> bool:
    """Running, and healthy when the service has a healthcheck (an empty Health is not healthy)."""
    if row.get("State") != "running":
        return False
    return row.get("Health") == "healthy" if has_healthcheck else True


def mask(secret: str | None) -> str:
    """A secret as tables show it: enough to tell two apart, never enough to use."""
    if not secret:
        return ""
    return secret[:4] + "…" if len(secret) > 8 else "…"


def service_urls(cfg: Config, show_secrets: bool = False) -> dict[str, str]:
    host = topology.reachable_host(cfg.get("network", "bind_address"))
    token = cfg.get("secrets", "marimo_token") or ""
    shown = token if show_secrets else mask(token)
    where = "" if show_secrets else " (token: MARIMO_TOKEN in .env)"
    # Ray's dashboard opens on an "Authentication Token Required" dialog under token auth: say
    # which token it wants (its own hint, `ray get-auth-token`, cannot run on the host).
    ray_token = cfg.get("secrets", "ray_auth_token") or ""
    login = ""
    if cfg.get("ray", "auth") == "token":
        login = f"; dialog token: {ray_token}" if show_secrets else "; dialog token: RAY_AUTH_TOKEN in .env"
    return {
        "health": f"http://{host}:{cfg.get('services', 'health', 'port')}/ (Ray client: ray://{host}:{cfg.get('services', 'health', 'ray_client_port')}, dashboard / Jobs: http://{host}:{cfg.get('services', 'health', 'dashboard_port')}/{login})",
        "ray-cpu": f"http://{host}:{cfg.get('ray', 'cpu', 'ports', 'dashboard')}/ (dashboard, if head{login})",
        "ray-gpu": f"http://{host}:{cfg.get('ray', 'gpu', 'ports', 'dashboard')}/ (dashboard, if head{login})",
        "mlflow": f"http://{host}:{cfg.get('services', 'mlflow', 'port')}/",
        "marimo": f"http://{host}:{cfg.get('services', 'marimo', 'port')}/?access_token={shown}{where}",
        "redis": f"redis://{host}:{cfg.get('services', 'redis', 'port')}/0",
        "postgres": "(internal only)",
        **custom_urls(cfg, host),
    }


def custom_urls(cfg: Config, host: str) -> dict[str, str]:
    """Where each custom service answers: its published port, else its name on ray-network."""
    from . import topology

    out = {}
    for svc in topology.custom_services(cfg):
        inside = f"{svc.name}:{svc.container_port}" if svc.container_port else svc.name
        out[svc.name] = f"{host}:{svc.port} (custom; in the stack: {inside})" if svc.port else f"(custom; in the stack only: {inside})"
    return out


def table(rows: Iterable[dict], cfg: Config, show_secrets: bool = False) -> str:
    urls = service_urls(cfg, show_secrets)
    lines = [f"{'SERVICE':<12} {'STATE':<10} {'HEALTH':<10} URL"]
    for row in sorted(rows, key=lambda r: r["Service"]):
        lines.append(f"{row['Service']:<12} {row.get('State', ''):<10} {row.get('Health') or '-':<10} {urls.get(row['Service'], '')}")
    return "\n".join(lines)


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except Exception:
        return False


def status_failure(report: dict) -> str | None:
    """Why `inv status` exits 1 (None: it exits 0): no Ray node answered, or no single live head."""
    if not report["ray_nodes"] or report["head"] is None:
        return "no live Ray head"
    return None


def format_status(report: dict) -> str:
    lines = ["Ray nodes:"]
    if report["ray_nodes"]:
        lines.append(f"  {'HOSTNAME':<12} {'IP':<15} {'ROLE':<7} {'CPUS':>5} {'GPUS':>5} ALIVE")
        for n in sorted(report["ray_nodes"], key=lambda n: (n["role"] != "head", n["hostname"] or "")):
            lines.append(f"  {n['hostname'] or '?':<12} {n['ip'] or '?':<15} {n['role']:<7} {n['cpus']:>5g} {n['gpus']:>5g} {'yes' if n['alive'] else 'no'}")
    else:
        lines.append(f"  unavailable{': ' + report['ray_error'].splitlines()[0] if report.get('ray_error') else ''}")
    alive = [n for n in report["ray_nodes"] if n["alive"]]
    lines.append(f"head: {report['head'] or 'none'} ({len(alive)} alive node(s))")
    for name in ("mlflow", "redis"):
        value = report[name]
        lines.append(f"{name}: {'switched off' if value is None else ('reachable' if value else 'NOT reachable')}")
    for name, state in sorted((report.get("custom") or {}).items()):
        lines.append(f"custom {name}: {state}")
    return "\n".join(lines)


def custom_states(cfg: Config, rows: dict[str, dict]) -> dict[str, str]:
    """Each enabled custom service's state as `status` prints it: healthy, running (no
    healthcheck), or what Compose says instead (NOT running when it has no container)."""
    from . import topology

    out = {}
    for svc in topology.custom_services(cfg):
        row = rows.get(svc.name)
        if row is None or row.get("State") != "running":
            out[svc.name] = f"NOT running ({row.get('State')})" if row else "NOT running (no container)"
        else:
            out[svc.name] = row.get("Health") or "running"
    return out

"""One model of the stack's topology: its services, the profile that switches each on, and the
ports each publishes (the config setting of the host port, the port inside the container).

The settings and their defaults live in the schema: this module names the setting of each port
and reads its value (and environment name) from the loaded config and the schema; it holds only
what no setting decides - which container port a service listens on. A test holds
compose/compose.yaml and overlays/gpu.yaml to this model. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config, env_fields

# Inside a bridge-networked Ray node's container Ray always uses these (compose.yaml passes them
# as RAY_HEAD_PORT, RAY_DASHBOARD_PORT, RAY_CLIENT_SERVER_PORT); each node's own ports are the
# settings ray.<kind>.ports.*.
RAY_CONTAINER_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}


@dataclass(frozen=True)
class Port:
    name: str  # what it serves: http, ray-client-proxy, ray-dashboard-proxy, gcs, dashboard, redis
    setting: tuple  # config path of the host port
    container: int  # the port inside the container


@dataclass(frozen=True)
class Service:
    name: str  # the Compose service
    profile: str | None  # the Compose profile that switches it on (None: always on)
    enabled: tuple | None  # config path of its on/off switch
    ports: tuple[Port, ...]
    memory: tuple  # config path of its memory limit (Compose `mem_limit`)
    gpu_node: bool = False  # runs only when the GPU node does (overlays/gpu.yaml)


def _ray(kind: str) -> tuple[Port, ...]:
    return tuple(Port(key, ("ray", kind, "ports", key), RAY_CONTAINER_PORTS[key]) for key in ("gcs", "dashboard"))


SERVICES: tuple[Service, ...] = (
    Service(
        "health",
        None,
        None,
        (
            Port("http", ("services", "health", "port"), 8080),
            Port("ray-client-proxy", ("services", "health", "ray_client_port"), RAY_CONTAINER_PORTS["client"]),
            Port("ray-dashboard-proxy", ("services", "health", "dashboard_port"), RAY_CONTAINER_PORTS["dashboard"]),
        ),
        ("services", "health", "memory"),
    ),
    Service("ray-cpu", None, None, _ray("cpu"), ("ray", "cpu", "memory")),
    Service("ray-gpu", None, None, _ray("gpu"), ("ray", "gpu", "memory"), gpu_node=True),
    Service("redis", "redis", ("services", "redis", "enabled"), (Port("redis", ("services", "redis", "port"), 6379),), ("services", "redis", "memory")),
    Service("mlflow", "mlflow", ("services", "mlflow", "enabled"), (Port("http", ("services", "mlflow", "port"), 5000),), ("services", "mlflow", "memory")),
    Service("postgres", "mlflow", ("services", "mlflow", "enabled"), (), ("services", "postgres", "memory")),
    Service("marimo", "marimo", ("services", "marimo", "enabled"), (Port("http", ("services", "marimo", "port"), 8080),), ("services", "marimo", "memory")),
    # services.monitoring (docs/monitoring.md). Grafana's profile is switched on by cslr/compose.py
    # only with official images (no local source of Grafana exists).
    Service(
        "prometheus",
        "monitoring",
        ("services", "monitoring", "enabled"),
        (Port("http", ("services", "monitoring", "port"), 9090),),
        ("services", "monitoring", "memory"),
    ),
    Service(
        "grafana",
        "grafana",
        ("services", "monitoring", "enabled"),
        (Port("http", ("services", "monitoring", "grafana_port"), 3000),),
        ("services", "monitoring", "grafana_memory"),
    ),
)

# The port of every Ray node's metrics agent inside a bridge-networked container (compose.yaml
# passes it as RAY_METRICS_EXPORT_PORT; overlays/multihost*.yaml pin their own): what Ray's
# service-discovery list names, so what Prometheus scrapes.
RAY_METRICS_EXPORT_PORT = 8090
# Profiles of the services that run only with official images (cslr/compose.py).
PULL_ONLY_PROFILES = ("grafana",)

# The optional services, each a Compose profile of the same name, in the order above.
OPTIONAL_SERVICES: tuple[str, ...] = tuple(dict.fromkeys(s.profile for s in SERVICES if s.profile))


# What the stack's software would send to its vendors, and the variable that stops it: (variable,
# its value with `telemetry.enabled: false` (the default), its value with `true`; None: unset,
# the software's own default). Every container of the stack gets `telemetry_env` (the Compose
# project through a generated overlay, cslr/compose.py; the Kubernetes export, cslr/k8s.py).
TELEMETRY: tuple[tuple[str, str, str | None], ...] = (
    # MLflow >= 3.2, client and server: anonymous usage data (config.mlflow-telemetry.io) unless set.
    ("MLFLOW_DISABLE_TELEMETRY", "true", None),
    # The cross-tool opt-out (MLflow honours exactly `true`; others `1` or any value).
    ("DO_NOT_TRACK", "true", None),
    # Ray's usage stats (usage-stats.ray.io), on by default for `ray start`; only 0 and 1 are valid.
    # scripts/ray_node.py also passes --disable-usage-stats unless this is 1.
    ("RAY_USAGE_STATS_ENABLED", "0", "1"),
    # marimo's update check (marimo.io/api/oss/latest-version) at start and in each session.
    ("MARIMO_SKIP_UPDATE_CHECK", "1", None),
    # Grafana (services.monitoring): usage stats (stats.grafana.org), its update and plugin update
    # checks (grafana.com), the news feed, feedback links.
    ("GF_ANALYTICS_REPORTING_ENABLED", "false", None),
    ("GF_ANALYTICS_CHECK_FOR_UPDATES", "false", None),
    ("GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES", "false", None),
    ("GF_ANALYTICS_FEEDBACK_LINKS_ENABLED", "false", None),
    ("GF_NEWS_NEWS_FEED_ENABLED", "false", None),
)


def telemetry_env(enabled: bool) -> dict[str, str]:
    """The variables every container gets for the setting `telemetry.enabled`."""
    return {name: value for name, off, on in TELEMETRY if (value := on if enabled else off) is not None}


def service(name: str) -> Service:
    return next(s for s in SERVICES if s.name == name)


def env_name(setting: tuple) -> str:
    """The environment variable of a setting (from the schema's `x-env`)."""
    return next(f.env for f in env_fields() if f.path == tuple(setting))


def runs(svc: Service, cfg: Config, gpu_node: bool) -> bool:
    if svc.gpu_node and not gpu_node:
        return False
    return svc.enabled is None or bool(cfg.get(*svc.enabled))


def published(cfg: Config, gpu_node: bool) -> list[tuple[tuple, Any]]:
    """(setting, host port) of every port the running services publish on one host."""
    return [(port.setting, cfg.get(*port.setting)) for svc in SERVICES if runs(svc, cfg, gpu_node) for port in svc.ports]


def owner(setting: tuple) -> str:
    """The service that publishes the port of this setting."""
    return next(svc.name for svc in SERVICES for port in svc.ports if port.setting == tuple(setting))


def running(cfg: Config, gpu_node: bool) -> list[str]:
    """The services this config runs on one host, in model order."""
    return [svc.name for svc in SERVICES if runs(svc, cfg, gpu_node)]

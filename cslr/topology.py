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
    needs: tuple | None = None  # config path of a second switch that must also be on (an exporter's service)


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
    # The exporters of services.monitoring, each only where the service it reads runs (its own
    # profile, switched on by cslr/compose.py when both switches are on). Nothing published:
    # Prometheus reaches them on ray-network (EXPORTER_PORTS).
    Service(
        "redis-exporter",
        "redis-exporter",
        ("services", "monitoring", "enabled"),
        (),
        ("services", "monitoring", "redis_exporter_memory"),
        needs=("services", "redis", "enabled"),
    ),
    Service(
        "postgres-exporter",
        "postgres-exporter",
        ("services", "monitoring", "enabled"),
        (),
        ("services", "monitoring", "postgres_exporter_memory"),
        needs=("services", "mlflow", "enabled"),
    ),
)

# The port of every Ray node's metrics agent inside a bridge-networked container (compose.yaml
# passes it as RAY_METRICS_EXPORT_PORT; overlays/multihost*.yaml pin their own): what Ray's
# service-discovery list names, so what Prometheus scrapes.
RAY_METRICS_EXPORT_PORT = 8090
# Profiles of the services that run only with official images (cslr/compose.py).
PULL_ONLY_PROFILES = ("grafana",)
# The port each exporter listens on inside its container (the official images' defaults,
# docs/images.md): what Prometheus scrapes (compose/prometheus/prometheus.yml, cslr/k8s.py).
EXPORTER_PORTS = {"redis-exporter": 9121, "postgres-exporter": 9187}
# Profiles that cslr/compose.py switches on from two settings (Service.needs), not one.
EXPORTER_PROFILES = tuple(s.profile for s in SERVICES if s.needs is not None and s.profile)

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


def with_exporters(profiles: list[str]) -> list[str]:
    """Active profiles plus each exporter's (EXPORTER_PROFILES) whose two switches' profiles are
    both among them: monitoring, and the service it reads (`services.X.enabled` is profile X)."""
    extra = [s.profile for s in SERVICES if s.needs is not None and s.enabled and s.enabled[1] in profiles and s.needs[1] in profiles]
    return [*profiles, *(p for p in extra if p and p not in profiles)]


def service(name: str) -> Service:
    return next(s for s in SERVICES if s.name == name)


def env_name(setting: tuple) -> str:
    """The environment variable of a setting (from the schema's `x-env`)."""
    return next(f.env for f in env_fields() if f.path == tuple(setting))


def runs(svc: Service, cfg: Config, gpu_node: bool) -> bool:
    if svc.gpu_node and not gpu_node:
        return False
    if svc.needs is not None and not cfg.get(*svc.needs):
        return False
    return svc.enabled is None or bool(cfg.get(*svc.enabled))


def published(cfg: Config, gpu_node: bool) -> list[tuple[tuple, Any]]:
    """(setting, host port) of every port the running services publish on one host, the custom
    services' (services.custom.NAME.port) last."""
    return [(port.setting, cfg.get(*port.setting)) for svc in SERVICES if runs(svc, cfg, gpu_node) for port in svc.ports] + custom_published(cfg)


def owner(setting: tuple) -> str:
    """The service that publishes the port of this setting."""
    if tuple(setting[: len(CUSTOM)]) == CUSTOM:
        return setting[len(CUSTOM)]
    return next(svc.name for svc in SERVICES for port in svc.ports if port.setting == tuple(setting))


def running(cfg: Config, gpu_node: bool) -> list[str]:
    """The services this config runs on one host, in model order."""
    return [svc.name for svc in SERVICES if runs(svc, cfg, gpu_node)]


# ---------------------------------------------------------------------------------------------
# Custom services (`services.custom.NAME` in config.yaml): the lab's own containers beside the
# stack's. Their settings have no environment names (a mapping of the lab's choosing); the
# schema's defaults of one entry are applied here, since the loader fills in fixed keys only.

CUSTOM = ("services", "custom")
# The stack's own service names (and the test runner's, compose.TEST_SERVICE): no custom
# service may take one, nor one that reads the same with `_` as `-` (Kubernetes names).
RESERVED_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES) + ("test-cluster",)
CUSTOM_FIRST_HOST = 100  # automatic addresses: the subnet's host number 100 upwards, then 2 to 99


@dataclass(frozen=True)
class CustomService:
    name: str
    image: str
    port: int | None  # host port (published on network.bind_address), None: not published
    container_port: int | None
    address: str | None  # given, or None until `custom_addresses` assigns one
    command: tuple[str, ...] | None
    environment: tuple[tuple[str, str], ...]  # (name, raw value with ${NAME} references)
    volumes: tuple[tuple[str, str, bool], ...]  # (host source, container target, read_only)
    healthcheck: dict | None  # {"command": [...]} or {"http": "/path"}, with interval_seconds, retries, start_period_seconds
    memory: str | int

    @property
    def setting(self) -> tuple:
        """Config path of its host port (a Port's `setting`)."""
        return (*CUSTOM, self.name, "port")

    @property
    def k8s_name(self) -> str:
        return self.name.replace("_", "-")


def _custom_defaults() -> dict:
    from .config import schema

    item = schema()["properties"]["services"]["properties"]["custom"]["additionalProperties"]
    out = {key: sub.get("default") for key, sub in item["properties"].items() if key != "image"}
    out["healthcheck_defaults"] = {k: v["default"] for k, v in item["properties"]["healthcheck"]["properties"].items() if "default" in v}
    return out


def custom_services(cfg: Config, enabled_only: bool = True) -> list[CustomService]:
    """The custom services of a (schema-valid) config, in name order, defaults applied."""
    defaults = _custom_defaults()
    out = []
    for name, raw in sorted((cfg.get(*CUSTOM) or {}).items()):
        if not isinstance(raw, dict):
            continue
        entry = {**defaults, **raw}
        if enabled_only and not entry["enabled"]:
            continue
        health = entry.get("healthcheck")
        if isinstance(health, dict):
            health = {**defaults["healthcheck_defaults"], **health}
        out.append(
            CustomService(
                name=name,
                image=entry["image"],
                port=entry.get("port"),
                container_port=entry.get("container_port") or entry.get("port"),
                address=entry.get("address"),
                command=tuple(str(c) for c in entry["command"]) if entry.get("command") is not None else None,
                environment=tuple((str(k), _env_text(v)) for k, v in (entry.get("environment") or {}).items()),
                volumes=tuple((v["source"], v["target"], bool(v.get("read_only", True))) for v in entry.get("volumes") or []),
                healthcheck=health,
                memory=entry["memory"],
            )
        )
    return out


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# (network.addresses key, its environment name, host number in network.subnet when not given,
# how many addresses before the broadcast address in a subnet too small for that number).
MONITORING_ADDRESSES = (
    ("prometheus", "PROMETHEUS_IP", 60, 2),
    ("grafana", "GRAFANA_IP", 61, 1),
    ("redis_exporter", "REDIS_EXPORTER_IP", 62, 3),
    ("postgres_exporter", "POSTGRES_EXPORTER_IP", 63, 4),
)


def monitoring_addresses(cfg: Config) -> dict[str, str]:
    """network.addresses.prometheus / grafana / redis_exporter / postgres_exporter, or when not
    given (the default) the 60th / 61st / 62nd / 63rd address of network.subnet - so a config
    written before monitoring existed, with a subnet and addresses of its own, stays valid (a
    subnet too small for them: its last host addresses)."""
    import ipaddress

    try:
        net = ipaddress.IPv4Network(str(cfg.get("network", "subnet")))
    except ValueError:
        net = ipaddress.IPv4Network("172.28.0.0/16")
    out = {}
    for key, var, offset, from_end in MONITORING_ADDRESSES:
        given = cfg.get("network", "addresses", key)
        if given:
            out[var] = str(given)
            continue
        addr = net.network_address + offset
        if addr >= net.broadcast_address:
            addr = net.broadcast_address - from_end
        out[var] = str(addr)
    return out


def stack_addresses(cfg: Config) -> dict[str, str]:
    """Every address the stack's own services use on ray-network, by network.addresses key:
    the given ones, and the monitoring services' derived ones where not given: Prometheus' and
    Grafana's always (as before the exporters existed), an exporter's only while it runs - so a
    config whose own address sits where an exporter's would be stays valid until it runs."""
    out = {k: str(v) for k, v in (cfg.get("network", "addresses") or {}).items() if v}
    exporters = {s.name: s for s in SERVICES if s.needs is not None}
    for (key, *_), addr in zip(MONITORING_ADDRESSES, monitoring_addresses(cfg).values()):
        exporter = exporters.get(key.replace("_", "-"))
        if exporter is None or runs(exporter, cfg, False):
            out.setdefault(key, addr)
    return out


def custom_addresses(cfg: Config) -> dict[str, str]:
    """Service name -> its address on ray-network: the given one, or the first free host address
    from number CUSTOM_FIRST_HOST upwards (not the gateway, not a stack service's, not another
    custom service's), in name order. Deterministic: the same config, the same addresses."""
    import ipaddress

    net = ipaddress.IPv4Network(str(cfg.get("network", "subnet")), strict=False)
    taken = set(stack_addresses(cfg).values())
    taken.add(str(net.network_address + 1))  # Docker's bridge gateway
    services = custom_services(cfg, enabled_only=False)
    taken |= {s.address for s in services if s.address}
    out: dict[str, str] = {}
    last = net.num_addresses - 2  # the broadcast address is no host's
    first = min(CUSTOM_FIRST_HOST, last)
    order = iter([*range(first, last + 1), *range(2, first)])  # a small subnet: wrap to its low addresses
    for svc in services:
        if svc.address:
            out[svc.name] = svc.address
            continue
        for number in order:
            addr = str(net.network_address + number)
            if addr not in taken:
                taken.add(addr)
                out[svc.name] = addr
                break
        else:
            raise ValueError(f"network.subnet {net} has no free address left for services.custom.{svc.name}")
    return out


def custom_published(cfg: Config) -> list[tuple[tuple, Any]]:
    """(setting, host port) of every enabled custom service that publishes a port."""
    return [(svc.setting, svc.port) for svc in custom_services(cfg) if svc.port is not None]


# ------------------------------------------------------------------ internal ports and addresses

# Ports that no setting publishes: the database's, inside the stack's network only.
POSTGRES_PORT = 5432  # the postgres image's port (MLFLOW_BACKEND_STORE_URI, the Kubernetes Service)
# The health service's Ray client proxy, which follows the elected head (compose.yaml).
PROXY_SERVICE = "health"


def container_port(service_name: str, port_name: str) -> int:
    """The port a service listens on inside its container (model above)."""
    return next(p.container for p in service(service_name).ports if p.name == port_name)


def reachable_host(bind_address: str) -> str:
    """Where this machine reaches what the stack publishes on `network.bind_address`: loopback for
    the unspecified addresses (0.0.0.0, ::), the address itself otherwise (IPv6 in brackets, as
    a URL needs it)."""
    bind = str(bind_address)
    if bind in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def redis_url(password: str, address: str) -> str:
    """`REDIS_URL` of a Redis at `address` (host:port), database 0; empty without an address."""
    from urllib.parse import quote

    return f"redis://:{quote(password or '', safe='')}@{address}/0" if address else ""


def redis_address(host: str = "redis") -> str:
    """host:port of the Redis service inside the stack's network (or on `host`)."""
    return f"{host}:{container_port('redis', 'redis')}"


def head_host(head_address: str) -> str:
    """The host of `nodes.head_address` (`host` or `host:port`)."""
    return head_address.rsplit(":", 1)[0] if ":" in head_address else head_address


def ray_address(cfg: Config, client_port: int | None = None) -> str:
    """`RAY_ADDRESS` for processes that are not Ray nodes (notebook, test runner, jobs' drivers).

    A plain GCS address only works for a driver on a machine that runs a raylet; everything else
    goes through a Ray client server: normally the health service's proxy, which follows the
    elected head; a stack that joins an external head (`nodes.head_address`) talks to that head's
    client server directly, on `client_port` (default: the container port of Ray's client server).
    """
    port = RAY_CONTAINER_PORTS["client"] if client_port is None else client_port
    explicit = cfg.get("nodes", "head_address")
    if explicit:
        return f"ray://{head_host(str(explicit))}:{port}"
    return f"ray://{PROXY_SERVICE}:{container_port(PROXY_SERVICE, 'ray-client-proxy')}"


# ------------------------------------------------------------------ secrets


# Named volumes (without the `<project>_` prefix) whose contents were made with a secret: Postgres
# sets the password once, at initdb, from POSTGRES_PASSWORD; Redis's volume holds the data (and
# Ray's GCS state) of a stack whose every client was given the old REDIS_PASSWORD.
DATA_VOLUMES = {"postgres-data": "POSTGRES_PASSWORD", "redis-data": "REDIS_PASSWORD"}


def secret_fields() -> list:
    """The schema's secrets (`secrets.*`, `x-secret`), each with its path and environment name."""
    return [f for f in env_fields() if f.secret]


def secret_env() -> tuple[str, ...]:
    """The environment names of every secret, in schema order (what `inv init` generates)."""
    return tuple(f.env for f in secret_fields())


def secret_needed(cfg: Config, path: tuple) -> bool:
    """Whether the stack needs this secret: every one, but Ray's token only under token auth."""
    if tuple(path) == ("secrets", "ray_auth_token"):
        return cfg.get("ray", "auth") == "token"
    return True

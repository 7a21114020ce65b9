"""Validate a loaded Config: the JSON Schema first, then the rules a schema cannot express.

Every problem is collected (never stop at the first); each names the file, line and column
that set the value, the dotted path, what was found and what was expected.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Iterable

import jsonschema
import yaml

from . import yamlpos
from .config import Config, parse_size, schema
from .errors import ConfigError, Location, Problem

HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
SHM_WARN_RATIO = 0.30  # Ray's own rule of thumb: object store ~30 % of memory lives in /dev/shm


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _expected_types(types: Any) -> str:
    names = {"string": "a string", "integer": "an integer", "boolean": "a boolean (true/false)", "array": "a list", "object": "a mapping", "null": "null", "number": "a number"}
    types = types if isinstance(types, list) else [types]
    return " or ".join(names.get(t, t) for t in types)


def _describe_schema_error(err: jsonschema.ValidationError) -> list[tuple[tuple, str, bool]]:
    """(path, message, point_at_key) for one jsonschema error."""
    path = tuple(err.absolute_path)
    value = err.instance
    v = err.validator
    if v == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        out = []
        for key in sorted(set(value) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.append(((*path, key), f"unknown key {key!r}{did}; expected one of: {', '.join(allowed)}", True))
        return out
    if v == "type":
        return [(path, f"found {value!r} ({_type_name(value)}), expected {_expected_types(err.validator_value)}", False)]
    if v == "enum":
        return [(path, f"found {value!r}, expected one of: {', '.join(map(str, err.validator_value))}", False)]
    if v == "pattern":
        return [(path, f"found {value!r}, expected a value matching {err.validator_value}", False)]
    if v == "format":
        return [(path, f"found {value!r}, expected an {err.validator_value} address", False)]
    if v in ("minimum", "maximum"):
        op = "≥" if v == "minimum" else "≤"
        return [(path, f"found {value!r}, expected {op} {err.validator_value}", False)]
    if v == "required":
        missing = [k for k in err.validator_value if k not in value]
        return [(path, f"missing key {k!r}", False) for k in missing]
    if v == "uniqueItems":
        return [(path, f"found duplicate items in {value!r}, expected unique items", False)]
    return [(path, f"found {value!r}: {err.message}", False)]


def schema_problems(cfg: Config) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    problems = []
    for err in validator.iter_errors(cfg.data):
        if err.validator in ("oneOf", "anyOf") and err.context:
            err = min(err.context, key=lambda e: len(e.schema_path))
        for path, message, at_key in _describe_schema_error(err):
            loc = cfg.key_location(path) if at_key else cfg.location(path)
            problems.append(Problem(loc, cfg.display_name(path), message))
    return problems


# ---------------------------------------------------------------------------------------------
# Rules a schema cannot say. Each takes the Config and yields Problems.


def _p(cfg: Config, path: tuple, message: str, severity: str = "error") -> Problem:
    return Problem(cfg.location(path), cfg.display_name(path), message, severity)


def check_network(cfg: Config) -> Iterable[Problem]:
    subnet_path = ("network", "subnet")
    raw = cfg.get(*subnet_path)
    try:
        net = ipaddress.IPv4Network(str(raw), strict=True)
    except (ValueError, TypeError) as exc:
        yield _p(cfg, subnet_path, f"found {raw!r}, expected an IPv4 CIDR such as 172.28.0.0/16 ({exc})")
        return
    if net.prefixlen > 29:
        yield _p(cfg, subnet_path, f"found {raw!r}, expected a prefix of /29 or shorter (room for every service)")
        return
    gateway = net.network_address + 1
    seen: dict[ipaddress.IPv4Address, str] = {}
    for name, value in (cfg.get("network", "addresses") or {}).items():
        path = ("network", "addresses", name)
        try:
            addr = ipaddress.IPv4Address(str(value))
        except ValueError:
            continue  # the schema's format check already reported it
        if addr not in net:
            yield _p(cfg, path, f"found {value}, expected an address inside network.subnet {net}")
        elif addr == net.network_address:
            yield _p(cfg, path, f"found {value}, which is the network address of {net}; expected a host address")
        elif addr == net.broadcast_address:
            yield _p(cfg, path, f"found {value}, which is the broadcast address of {net}; expected a host address")
        elif addr == gateway:
            yield _p(cfg, path, f"found {value}, which Docker gives the bridge gateway of {net}; expected another host address")
        if addr in seen:
            yield _p(cfg, path, f"found {value}, already used by network.addresses.{seen[addr]}; expected a unique address")
        seen.setdefault(addr, name)
    bind = cfg.get("network", "bind_address")
    try:
        ipaddress.ip_address(str(bind))
    except ValueError:
        yield _p(cfg, ("network", "bind_address"), f"found {bind!r}, expected an IP address such as 127.0.0.1")


def check_sizes(cfg: Config) -> Iterable[Problem]:
    for kind in ("cpu", "gpu"):
        base = ("ray", kind)
        sizes: dict[str, int] = {}
        for key in ("memory", "shm_size", "object_store_memory"):
            value = cfg.get(*base, key)
            if value is None:
                continue
            try:
                sizes[key] = parse_size(value)
            except ValueError:
                yield _p(cfg, (*base, key), f"found {value!r}, expected a size such as 512m, 16g or 1.5g")
        mem, shm, obj = sizes.get("memory"), sizes.get("shm_size"), sizes.get("object_store_memory")
        if mem is not None and shm is not None:
            if shm > mem:
                yield _p(cfg, (*base, "shm_size"), f"found {cfg.get(*base, 'shm_size')} > memory {cfg.get(*base, 'memory')}, expected shm_size ≤ memory")
            elif shm < SHM_WARN_RATIO * mem:
                yield _p(cfg, (*base, "shm_size"), f"{cfg.get(*base, 'shm_size')} is below 30 % of memory {cfg.get(*base, 'memory')}; Ray's object store will be small (Ray sizes it at ~30 % of memory)", "warning")
        if obj is not None and shm is not None and obj > shm:
            yield _p(cfg, (*base, "object_store_memory"), f"found {cfg.get(*base, 'object_store_memory')} > shm_size {cfg.get(*base, 'shm_size')}, expected the object store to fit in /dev/shm")


def published_ports(cfg: Config, gpu_node: bool) -> list[tuple[tuple, int]]:
    """(config path, host port) of every port the enabled services publish."""
    out = [(("services", "health", "port"), cfg.get("services", "health", "port")),
           (("services", "health", "ray_client_port"), cfg.get("services", "health", "ray_client_port"))]
    kinds = ["cpu"] + (["gpu"] if gpu_node else [])
    for kind in kinds:
        for key in ("gcs", "dashboard"):
            out.append((("ray", kind, "ports", key), cfg.get("ray", kind, "ports", key)))
    for svc in ("redis", "mlflow", "marimo"):
        if cfg.get("services", svc, "enabled"):
            out.append((("services", svc, "port"), cfg.get("services", svc, "port")))
    return out


def check_ports(cfg: Config, gpu_node: bool) -> Iterable[Problem]:
    if cfg.get("hosts"):
        return  # multi-host: Ray nodes use host networking; checked per host in multihost rules
    groups: dict[int, list[tuple]] = {}
    for path, port in published_ports(cfg, gpu_node):
        if isinstance(port, int):
            groups.setdefault(port, []).append(path)
    for port, paths in groups.items():
        if len(paths) < 2:
            continue
        # Blame the values someone set over the ones left at their defaults.
        ordered = sorted(paths, key=lambda p: str(cfg.location(p)) != "schema default")
        keeper = ordered[0]
        for path in ordered[1:]:
            yield _p(cfg, path, f"found host port {port}, already published by {yamlpos.dotted(keeper)}; expected a unique port")


def _split_entry(entry: str) -> tuple[str, int | None]:
    host, _, port = entry.partition(":")
    return host, int(port) if port.isdigit() else (None if not port else -1)


def check_nodes(cfg: Config) -> Iterable[Problem]:
    wl_path = ("nodes", "head_whitelist")
    whitelist = cfg.get(*wl_path) or []
    seen: set[str] = set()
    for i, entry in enumerate(whitelist):
        if not isinstance(entry, str):
            continue
        host, port = _split_entry(entry)
        if not HOSTNAME.match(host) or port == -1 or (port is not None and not 1 <= port <= 65535):
            yield _p(cfg, (*wl_path, i), f"found {entry!r}, expected a hostname (letters, digits, '-', dots) optionally followed by :PORT")
            continue
        if host.lower() in seen:
            yield _p(cfg, (*wl_path, i), f"found {entry!r} twice, expected unique hostnames")
        seen.add(host.lower())
    if not whitelist and not cfg.get("nodes", "head_address"):
        yield _p(cfg, wl_path, "found an empty whitelist and no nodes.head_address: no node could ever become head or find one; expected at least one hostname")
    if not cfg.get("hosts") and whitelist:
        names = {cfg.get("ray", "cpu", "hostname"), cfg.get("ray", "gpu", "hostname")}
        for i, entry in enumerate(whitelist):
            host = str(entry).partition(":")[0]
            if host not in names:
                yield _p(cfg, (*wl_path, i), f"{host!r} is not a node of this host ({', '.join(sorted(n for n in names if n))}); it must be reachable from the containers", "warning")


SECRET_RULES = {
    "postgres_password": ("mlflow", "POSTGRES_PASSWORD"),
    "redis_password": ("redis", "REDIS_PASSWORD"),
    "marimo_token": ("marimo", "MARIMO_TOKEN"),
    "ray_auth_token": (None, "RAY_AUTH_TOKEN"),
    "control_secret": ("health", "CSLR_CONTROL_SECRET"),
}


def check_secrets(cfg: Config) -> Iterable[Problem]:
    in_yaml = (cfg.yaml_data or {}).get("secrets") or {}
    for key, (_, env) in SECRET_RULES.items():
        path = ("secrets", key)
        if isinstance(in_yaml, dict) and in_yaml.get(key):
            yield Problem(cfg.yaml_positions.get(path, cfg.location(path)), cfg.display_name(path), f"a secret is set in {cfg.config_path.name}, which git tracks; expected it in .env as {env}=... (move it there and delete it here)")
    for key, (service, env) in SECRET_RULES.items():
        path = ("secrets", key)
        needed = cfg.get("ray", "auth") == "token" if service is None else True
        if needed and not cfg.get(*path):
            yield Problem(Location(".env" if cfg.env_path is None else cfg.env_path.name), cfg.display_name(path), f"found no {env}, expected a secret: run `inv init` to generate .env")


def check_features(cfg: Config) -> Iterable[Problem]:
    if cfg.get("ray", "gcs_fault_tolerance") and not cfg.get("services", "redis", "enabled"):
        yield _p(cfg, ("ray", "gcs_fault_tolerance"), "found true with services.redis.enabled false; expected Redis on (GCS fault tolerance keeps its state there)")


def check_legacy(cfg: Config) -> Iterable[Problem]:
    legacy = cfg.config_path.parent / "nodes.yaml"
    if not legacy.exists():
        return
    try:
        content = yaml.safe_load(legacy.read_text()) or {}
    except yaml.YAMLError:
        content = {}
    nodes = content.get("nodes", content) if isinstance(content, dict) else {}
    snippet = yaml.safe_dump({"nodes": nodes if isinstance(nodes, dict) else {}}, sort_keys=False).strip()
    yield Problem(Location(legacy.name), "$.nodes", "found a legacy nodes.yaml; expected the node settings in config.yaml's `nodes:` section. "
                  f"Move them there and delete nodes.yaml:\n{snippet}")


def check_extra_overlays(cfg: Config) -> Iterable[Problem]:
    base = cfg.config_path.resolve().parent
    for i, rel in enumerate(cfg.get("extra_overlays") or []):
        if isinstance(rel, str) and not (base / rel).is_file():
            yield _p(cfg, ("extra_overlays", i), f"found {rel!r}, which is not a file (relative to {cfg.config_path.name}); expected a Compose file")


def validate(cfg: Config, gpu_node: bool = False, extra: Iterable[Problem] = ()) -> list[Problem]:
    """Return every problem (errors and warnings); raise ConfigError if any is an error."""
    problems = list(cfg.problems) + schema_problems(cfg)
    for rule in (check_network, check_sizes, check_nodes, check_secrets, check_features, check_legacy, check_extra_overlays):
        problems.extend(rule(cfg))
    problems.extend(check_ports(cfg, gpu_node))
    from . import multihost

    problems.extend(multihost.problems(cfg))
    problems.extend(extra)
    problems = _dedupe(problems)
    problems.sort(key=_order)
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return problems


def _order(p: Problem) -> tuple:
    loc = p.location
    return (loc.file != "schema default", loc.file, loc.line or 0, loc.column or 0, p.path)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (str(p.location), p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out

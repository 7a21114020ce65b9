"""Validate a loaded Config: the JSON Schema first, then every rule of RULES (the one list of the
rules a schema cannot express: topology and ports, secrets, host folders, multi-host, images).

Every problem is collected (never stop at the first); each names the file, line and column
that set the value, the dotted path, what was found and what was expected.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jsonschema
import yaml

from . import hostdirs, images, multihost, textfile, topology, yamlpos
from .config import Config, env_fields, parse_size, schema, shorten
from .config import display_path as config_display
from .errors import ConfigError, ConfigSyntaxError, Location, Problem

HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
SHM_WARN_RATIO = 0.30  # Ray's own rule of thumb: object store ~30 % of memory lives in /dev/shm


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _expected_types(types: Any) -> str:
    names = {
        "string": "a string",
        "integer": "an integer",
        "boolean": "a boolean (true/false)",
        "array": "a list",
        "object": "a mapping",
        "null": "null",
        "number": "a number",
    }
    types = types if isinstance(types, list) else [types]
    return " or ".join(names.get(t, t) for t in types)


def _describe_schema_error(err: jsonschema.ValidationError, shown: Callable[[tuple, Any], str]) -> list[tuple[tuple, str, bool]]:
    """(path, message, point_at_key) for one jsonschema error. `shown(path, value)` renders a
    found value (short; a secret's is never shown)."""
    path = tuple(err.absolute_path)
    value = err.instance
    v = err.validator
    found = shown(path, value)
    if v == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        out = []
        for key in sorted(set(value) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.append(((*path, key), f"unknown key {shorten(key)}{did}; expected one of: {', '.join(allowed)}", True))
        return out
    if v == "type":
        return [(path, f"found {found} ({_type_name(value)}), expected {_expected_types(err.validator_value)}", False)]
    if v == "enum":
        return [(path, f"found {found}, expected one of: {', '.join(map(str, err.validator_value))}", False)]
    if v == "pattern" and "propertyNames" in err.schema_path and isinstance(value, str):  # a mapping's key (data.NAME, services.custom.NAME)
        return [((*path, value), f"found the name {shorten(value)}, expected a name matching {err.validator_value}", True)]
    if v == "pattern":
        return [(path, f"found {found}, expected a value matching {err.validator_value}", False)]
    if v == "format":
        return [(path, f"found {found}, expected an {err.validator_value} address", False)]
    if v in ("minimum", "maximum"):
        op = "≥" if v == "minimum" else "≤"
        return [(path, f"found {found}, expected {op} {err.validator_value}", False)]
    if v == "required":
        missing = [k for k in err.validator_value if k not in value]
        return [(path, f"missing key {k!r}", False) for k in missing]
    if v == "uniqueItems":
        return [(path, f"found duplicate items in {found}, expected unique items", False)]
    return [(path, f"found {found}: {err.message[:120]}", False)]


def schema_check(cfg: Config) -> tuple[list[Problem], set[tuple]]:
    """The schema gate: its problems, and the paths whose values it refused (a rule that reads
    one of them, or anything inside or around it, does not run)."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    secret_paths = {f.path for f in env_fields() if f.secret}

    env_file = cfg.env_path.name if cfg.env_path is not None else None

    def shown(path: tuple, value: Any) -> str:
        if tuple(path) in secret_paths:
            return "a value (secret, not shown)"
        src = cfg.sources.get(tuple(path))
        if src is not None and env_file is not None and src.file == config_display(cfg.env_path):
            return "the value set there (not shown: .env may hold secrets)"
        return shorten(value)

    problems, invalid = [], set()
    for err in validator.iter_errors(cfg.data):
        if err.validator in ("oneOf", "anyOf") and err.context:
            err = min(err.context, key=lambda e: len(e.schema_path))
        for path, message, at_key in _describe_schema_error(err, shown):
            loc = cfg.key_location(path) if at_key else cfg.location(path)
            problems.append(Problem(loc, cfg.display_name(path), message))
            invalid.add(path)
    return problems, invalid


def schema_problems(cfg: Config) -> list[Problem]:
    return schema_check(cfg)[0]


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
    for name, value in topology.stack_addresses(cfg).items():
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
        if addr in seen and not (cfg.get("network", "addresses") or {}).get(name):
            yield _p(
                cfg,
                path,
                f"derived {value} (not set: the subnet's default address of {name}), already used by network.addresses.{seen[addr]}; expected a unique address: set network.addresses.{name}",
            )
        elif addr in seen:
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
                yield _p(
                    cfg,
                    (*base, "shm_size"),
                    f"{cfg.get(*base, 'shm_size')} is below 30 % of memory {cfg.get(*base, 'memory')}; Ray's object store will be small (Ray sizes it at ~30 % of memory)",
                    "warning",
                )
        if obj is not None and shm is not None and obj > shm:
            yield _p(
                cfg,
                (*base, "object_store_memory"),
                f"found {cfg.get(*base, 'object_store_memory')} > shm_size {cfg.get(*base, 'shm_size')}, expected the object store to fit in /dev/shm",
            )


# (config path, host port) of every port the enabled services publish: the model's own query.
published_ports = topology.published


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


def check_nodes(cfg: Config, gpu_node: bool = True) -> Iterable[Problem]:
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
    if not cfg.get("hosts") and whitelist and not cfg.get("nodes", "head_address"):
        # One host: the candidates are this stack's nodes; a whitelist naming none of them (e.g.
        # only the GPU node while it is off) leaves the cluster without a head, for ever.
        running = [cfg.get("ray", "cpu", "hostname")] + ([cfg.get("ray", "gpu", "hostname")] if gpu_node else [])
        listed = {str(e).partition(":")[0].lower() for e in whitelist}
        if not listed & {n.lower() for n in running}:
            gpu_name = cfg.get("ray", "gpu", "hostname")
            why = f" ({gpu_name} runs only with the GPU node, which is off)" if gpu_name.lower() in listed and not gpu_node else ""
            yield _p(
                cfg,
                wl_path,
                f"found {shorten(whitelist)}: no node of this stack can ever become head{why}; "
                f"expected at least one of: {', '.join(running)} (or nodes.head_address to join an external head)",
            )
    if not cfg.get("hosts") and whitelist:
        names = {cfg.get("ray", "cpu", "hostname"), cfg.get("ray", "gpu", "hostname")}
        for i, entry in enumerate(whitelist):
            host = str(entry).partition(":")[0]
            if host not in names:
                yield _p(
                    cfg,
                    (*wl_path, i),
                    f"{host!r} is not a node of this host ({', '.join(sorted(n for n in names if n))}); it must be reachable from the containers",
                    "warning",
                )


def check_secrets(cfg: Config) -> Iterable[Problem]:
    """The secrets (topology.secret_fields, from the schema) live in .env, and each needed one is set."""
    in_yaml = (cfg.yaml_data or {}).get("secrets") or {}
    for fld in topology.secret_fields():
        path, env = fld.path, fld.env
        if isinstance(in_yaml, dict) and in_yaml.get(path[-1]):
            yield Problem(
                cfg.yaml_positions.get(path, cfg.location(path)),
                cfg.display_name(path),
                f"a secret is set in {cfg.config_path.name}, which git tracks; expected it in .env as {env}=... (move it there and delete it here)",
            )
    for fld in topology.secret_fields():
        path, env = fld.path, fld.env
        if topology.secret_needed(cfg, path) and not cfg.get(*path):
            yield Problem(
                Location(config_display(cfg.env_path or cfg.config_path.parent / ".env")),
                cfg.display_name(path),
                f"found no {env}, expected a secret: run `inv init` to generate .env",
            )


def check_env_values(cfg: Config) -> Iterable[Problem]:
    """Every value reaches Compose through an env file line: no control characters (tab aside)."""
    import unicodedata

    for fld in env_fields():
        value = cfg.get(*fld.path)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if not isinstance(item, str):
                continue
            bad = next((c for c in item if unicodedata.category(c) == "Cc" and c != "\t"), None)
            if bad is not None:
                path = (*fld.path, i) if isinstance(value, list) else fld.path
                yield _p(cfg, path, f"found the control character U+{ord(bad):04X} in the value, expected printable text on one line")


def check_features(cfg: Config) -> Iterable[Problem]:
    if cfg.get("ray", "gcs_fault_tolerance") is True and not cfg.get("services", "redis", "enabled"):
        yield _p(
            cfg, ("ray", "gcs_fault_tolerance"), "found true with services.redis.enabled false; expected Redis on (GCS fault tolerance keeps its state there)"
        )


def gpu_workers_requested(cfg: Config) -> bool:
    """Whether the Kubernetes export has a GPU worker group: pods now, or autoscaling may start some."""
    group = cfg.get("kubernetes", "gpu_workers")
    return group["replicas"] > 0 or (bool(cfg.get("kubernetes", "autoscaling", "enabled")) and group["max_replicas"] > 0)


def check_kubernetes(cfg: Config) -> Iterable[Problem]:
    """The worker counts of each KubeRay group are consistent (KubeRay refuses min > max and
    clamps replicas into [min, max]), and GPU workers have a GPU image to run."""
    autoscaling = bool(cfg.get("kubernetes", "autoscaling", "enabled"))
    for kind in ("cpu_workers", "gpu_workers"):
        base = ("kubernetes", kind)
        group = cfg.get(*base)
        low, high, replicas = group["min_replicas"], group["max_replicas"], group["replicas"]
        if low > high:
            yield _p(cfg, (*base, "min_replicas"), f"found {low} > max_replicas {high}, expected min_replicas ≤ max_replicas")
        elif autoscaling and not low <= replicas <= high:
            yield _p(
                cfg,
                (*base, "replicas"),
                f"found {replicas} with autoscaling between min_replicas {low} and max_replicas {high}, expected a starting count inside that range",
            )
    if gpu_workers_requested(cfg) and cfg.get("images", "ray_gpu") == cfg.get("images", "ray"):
        yield _p(
            cfg,
            ("images", "ray_gpu"),
            f"found {cfg.get('images', 'ray_gpu')!r}, the same base as images.ray, while kubernetes.gpu_workers asks for GPU pods; "
            "expected a CUDA base for the GPU image (e.g. rayproject/ray:<version>-py311-gpu), or kubernetes.gpu_workers.replicas and max_replicas 0",
        )


def check_legacy(cfg: Config) -> Iterable[Problem]:
    legacy = cfg.config_path.parent / "nodes.yaml"
    if not legacy.exists():
        return
    try:
        content = yamlpos.load(textfile.read_text(legacy, legacy.name), legacy.name)[0] or {}
    except ConfigSyntaxError:
        content = {}
    nodes = content.get("nodes", content) if isinstance(content, dict) else {}
    snippet = yaml.safe_dump({"nodes": nodes if isinstance(nodes, dict) else {}}, sort_keys=False).strip()
    yield Problem(
        Location(legacy.name),
        "$.nodes",
        f"found a legacy nodes.yaml; expected the node settings in config.yaml's `nodes:` section. Move them there and delete nodes.yaml:\n{snippet}",
    )


def check_extra_overlays(cfg: Config) -> Iterable[Problem]:
    base = cfg.config_path.resolve().parent
    for i, rel in enumerate(cfg.get("extra_overlays") or []):
        if isinstance(rel, str) and not _is_file(base / rel):
            yield _p(cfg, ("extra_overlays", i), f"found {rel!r}, which is not a file (relative to {cfg.config_path.name}); expected a Compose file")


# Docker's image reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest].
# A first component is a registry host only with a dot, a port, or as `localhost` (Docker's rule).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:localhost(?::[0-9]{{1,5}})?|{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?|{_LABEL}:[0-9]{{1,5}})"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY", re.IGNORECASE)


def check_custom(cfg: Config) -> Iterable[Problem]:
    """services.custom: names, images, ports, addresses, environment references, volumes,
    healthchecks (the host-port collisions are check_ports', with every other service's)."""
    import unicodedata

    from . import topology
    from .config import split_references

    base = topology.CUSTOM
    services = topology.custom_services(cfg, enabled_only=False)
    reserved = {n.replace("_", "-") for n in topology.RESERVED_NAMES}
    seen: dict[str, str] = {}
    for svc in services:
        here = (*base, svc.name)
        k8s_name = svc.k8s_name
        if k8s_name in reserved:
            yield Problem(
                cfg.key_location(here),
                cfg.display_name(here),
                f"found the name {svc.name!r}, which is the stack's own service {k8s_name!r}; expected another name (not one of: {', '.join(topology.RESERVED_NAMES)})",
            )
        elif k8s_name in seen:
            yield Problem(
                cfg.key_location(here),
                cfg.display_name(here),
                f"found the name {svc.name!r}, which reads as services.custom.{seen[k8s_name]} with '_' as '-' (Kubernetes names); expected distinct names",
            )
        seen.setdefault(k8s_name, svc.name)
        if not IMAGE_REFERENCE.match(svc.image):
            yield _p(
                cfg,
                (*here, "image"),
                f"found {shorten(svc.image)}, expected an image reference such as my-org/my-service:latest or registry.lab.example:5000/tools/api:1.2 "
                "(lower-case repository path, optional registry host[:port]/, :tag and/or @sha256:digest)",
            )
        if svc.healthcheck is not None:
            given = [k for k in ("command", "http") if k in svc.healthcheck]
            if len(given) != 1:
                yield _p(cfg, (*here, "healthcheck"), f"found {'both command and http' if given else 'neither command nor http'}, expected exactly one of them")
            elif given == ["http"] and svc.container_port is None:
                yield _p(
                    cfg,
                    (*here, "healthcheck", "http"),
                    "found an HTTP healthcheck without a port, expected container_port (or port) to say where the service listens",
                )
        try:
            parse_size(svc.memory)
        except ValueError:
            yield _p(cfg, (*here, "memory"), f"found {svc.memory!r}, expected a size such as 512m, 16g or 1.5g")
        for name, value in svc.environment:
            path = (*here, "environment", name)
            bad = next((c for c in value if unicodedata.category(c) == "Cc" and c != "\t"), None)
            if bad is not None:
                yield _p(cfg, path, f"found the control character U+{ord(bad):04X} in the value, expected printable text on one line")
                continue
            parts = split_references(value)
            wrong = next((text for kind, text in parts if kind == "bad"), None)
            if wrong is not None:
                yield _p(
                    cfg,
                    path,
                    f"found {wrong!r}: a '$' that is no ${{NAME}} reference; expected ${{NAME}} (a variable of .env or the environment) or $$ for a literal dollar",
                )
                continue
            for kind, ref in parts:
                if kind == "ref" and ref not in cfg.variables:
                    where = config_display(cfg.env_path) if cfg.env_path else ".env"
                    yield _p(cfg, path, f"found ${{{ref}}}, which is set neither in {where} nor in the environment; expected {ref}=... in .env")
            literal = "".join(text for kind, text in parts if kind == "literal")
            if SECRET_NAME.search(name) and literal.strip() and not any(kind == "ref" for kind, _ in parts):
                yield _p(
                    cfg,
                    path,
                    f"a literal value for {name} in {cfg.config_path.name}, which git tracks; expected a secret in .env, named here as ${{VARIABLE}} (e.g. {name}: ${{{name}}})",
                )
        targets: set[str] = set()
        for i, (source, target, read_only) in enumerate(svc.volumes):
            vpath = (*here, "volumes", i)
            yield from _custom_folder_problems(cfg, (*vpath, "source"), source, read_only)
            if target.rstrip("/") == "" or target in targets:
                yield _p(cfg, (*vpath, "target"), f"found {target!r}, expected a distinct absolute folder inside the container other than '/'")
            targets.add(target)
    yield from _custom_address_problems(cfg, services)


def _custom_address_problems(cfg: Config, services: list) -> Iterable[Problem]:
    from . import topology

    try:
        net = ipaddress.IPv4Network(str(cfg.get("network", "subnet")), strict=True)
    except ValueError:
        return  # check_network says why
    stack = {v: k for k, v in topology.stack_addresses(cfg).items()}
    given: dict[str, str] = {}
    for svc in services:
        if not svc.address:
            continue
        path = (*topology.CUSTOM, svc.name, "address")
        addr = ipaddress.IPv4Address(svc.address)
        if addr not in net:
            yield _p(cfg, path, f"found {svc.address}, expected an address inside network.subnet {net}")
        elif addr in (net.network_address, net.broadcast_address, net.network_address + 1):
            yield _p(cfg, path, f"found {svc.address}, which is the network, broadcast or bridge gateway address of {net}; expected another host address")
        elif svc.address in stack:
            yield _p(cfg, path, f"found {svc.address}, already used by network.addresses.{stack[svc.address]}; expected a free address (or null: assigned)")
        elif svc.address in given:
            yield _p(cfg, path, f"found {svc.address}, already used by services.custom.{given[svc.address]}.address; expected a unique address")
        given.setdefault(svc.address, svc.name)
    try:
        topology.custom_addresses(cfg)
    except ValueError as exc:
        yield _p(cfg, ("network", "subnet"), f"{exc}; expected a larger subnet or explicit services.custom.*.address values")


def _custom_folder_problems(cfg: Config, path: tuple, raw: str, read_only: bool) -> Iterable[Problem]:
    from . import hostdirs

    return hostdirs.folder_problems(cfg, path, raw, read_only)


@dataclass(frozen=True)
class Rule:
    """One rule a schema cannot say: `check(cfg, gpu_node)` yields its Problems.

    A rule runs only on schema-valid data: `reads` names the subtrees it reads (or returns them),
    and it is skipped while the schema refuses anything in, above or below one of them (the
    schema's own message already says what to fix). A rule may then assume every type the schema
    states."""

    group: str  # topology, secrets, host folders, multi-host, images, files
    name: str
    reads: tuple[tuple, ...] | Callable[[], tuple[tuple, ...]]
    check: Callable[[Config, bool], Iterable[Problem]]

    def paths(self) -> tuple[tuple, ...]:
        return self.reads() if callable(self.reads) else self.reads


def _cfg_only(check: Callable[[Config], Iterable[Problem]]) -> Callable[[Config, bool], Iterable[Problem]]:
    return lambda cfg, gpu_node: check(cfg)


# Every rule after the schema gate, assembled here and nowhere else: the modules that own a part
# of the model (topology, hostdirs, multihost, images) hold their rules; this list runs them all
# and `validate` reports every problem of every rule in one run.
RULES: list[Rule] = [
    Rule("topology", "network", (("network",),), _cfg_only(check_network)),
    Rule("topology", "sizes", (("ray", "cpu"), ("ray", "gpu")), _cfg_only(check_sizes)),
    Rule("topology", "nodes", (("nodes",), ("hosts",), ("ray", "cpu", "hostname"), ("ray", "gpu", "hostname"), ("gpu",)), check_nodes),
    Rule("topology", "ports", (("services",), ("ray", "cpu", "ports"), ("ray", "gpu", "ports"), ("hosts",)), check_ports),
    Rule("topology", "custom services", (("services", "custom"), ("network",)), _cfg_only(check_custom)),
    Rule("topology", "features", (("ray", "gcs_fault_tolerance"), ("services", "redis", "enabled")), _cfg_only(check_features)),
    Rule("topology", "kubernetes", (("kubernetes",), ("images", "ray"), ("images", "ray_gpu")), _cfg_only(check_kubernetes)),
    Rule("secrets", "secrets", (("secrets",), ("ray", "auth")), _cfg_only(check_secrets)),
    Rule("secrets", "env values", lambda: tuple(f.path for f in env_fields()), _cfg_only(check_env_values)),
    Rule("files", "legacy nodes.yaml", (), _cfg_only(check_legacy)),
    Rule("files", "extra overlays", (("extra_overlays",),), _cfg_only(check_extra_overlays)),
    Rule("host folders", "host folders", (("data",), ("workspace",), ("services", "marimo", "notebooks")), _cfg_only(hostdirs.problems)),
    Rule(
        "multi-host",
        "hosts",
        (("hosts",), ("services",), ("network", "bind_address"), ("nodes", "head_whitelist"), ("ray", "cpu", "ports"), ("ray", "gpu", "ports"), ("secrets",)),
        _cfg_only(multihost.problems),
    ),
    Rule("images", "images", (("images",),), _cfg_only(images.problems)),
]


def _touches(paths: Iterable[tuple], invalid: set[tuple]) -> bool:
    return any(bad[: len(p)] == p or p[: len(bad)] == bad for p in paths for bad in invalid)


def _is_file(path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
        return False


def validate(cfg: Config, gpu_node: bool = False, extra: Iterable[Problem] = ()) -> list[Problem]:
    """Return every problem (errors and warnings); raise ConfigError if any is an error.

    The gates after loading: the schema, then the rules on the subtrees it accepted."""
    problems = list(cfg.problems)
    found, invalid = schema_check(cfg)
    problems += found
    for rule in RULES:
        if not _touches(rule.paths(), invalid):
            problems.extend(rule.check(cfg, gpu_node))
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

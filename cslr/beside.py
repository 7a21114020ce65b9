"""`inv init --project NAME`: a second stack on this machine in one step.

A clone's config.yaml is a copy of every other clone's, so two clones would share the Compose
project, the `ray-network` subnet (and its fixed addresses) and the host ports. This picks, for
this folder, a project name of its own, a subnet that no Docker network, host route or the
copied config uses (the service addresses keep their host part), and host ports shifted by one
step of 100 until every one is free; and writes them as per-machine overrides into `.env` (the
file `inv init` already owns, git-ignored: the tracked config.yaml stays the project's default;
`inv config` shows each value and the `.env` line it comes from). Preflight still checks ports
and subnet on every `inv up`: whatever collides later is caught there.

The choices are pure functions; what is in use is read by injectable probes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import identity, preflight, textfile, topology
from .config import env_fields, format_dotenv, load
from .errors import PlatformError
from .fsutil import write_atomic

Net = ipaddress.IPv4Network
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # the schema's pattern of project.name
# Where a second stack's subnet is looked for, in order (private ranges, Docker's own first).
POOLS = (Net("172.16.0.0/12"), Net("192.168.0.0/16"), Net("10.0.0.0/8"))
PORT_STEP = 100
HEADER = "A stack of its own on this machine: written by `inv init --project` (project, network, host ports); edit freely."

Runner = Callable[..., subprocess.CompletedProcess]


# ----------------------------------------------------------------------------- choices (pure)


def free_subnet(current: Net, taken: Iterable[Net], pools: Iterable[Net] = POOLS) -> Net | None:
    """The first subnet of `current`'s size in `pools` that overlaps neither `current` nor any of `taken`."""
    taken = [current, *taken]
    for pool in pools:
        if current.prefixlen < pool.prefixlen:
            continue
        for candidate in pool.subnets(new_prefix=current.prefixlen):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    return None


def move_address(address: str, new: Net) -> str:
    """The address with the same host part in `new` (e.g. 172.28.0.10 -> 172.29.0.10 for /16s)."""
    host = int(ipaddress.IPv4Address(address)) & int(new.hostmask)
    return str(ipaddress.IPv4Address(int(new.network_address) + host))


def shift_ports(ports: Mapping[tuple, int], taken: Iterable[int], free: Callable[[int], bool], step: int = PORT_STEP) -> tuple[int, dict[tuple, int]] | None:
    """(shift, setting -> new port): the smallest multiple of `step` that moves every port to one
    that is not in `ports` or `taken` and is `free`; None if no shift fits below 65536."""
    avoid = set(ports.values()) | set(taken)
    values = [p for p in ports.values() if isinstance(p, int)]
    if not values:
        return 0, {}
    shift = step
    while max(values) + shift <= 65535:
        moved = {setting: port + shift for setting, port in ports.items()}
        if not avoid & set(moved.values()) and len(set(moved.values())) == len(moved) and all(free(p) for p in moved.values()):
            return shift, moved
        shift += step
    return None


def published_host_ports(inspected: Iterable[Mapping]) -> set[int]:
    """Host ports that containers publish (running or not), from `docker container inspect`."""
    out = set()
    for container in inspected:
        config = container.get("HostConfig") if isinstance(container, Mapping) else None
        bindings = config.get("PortBindings") if isinstance(config, Mapping) else None
        for entries in bindings.values() if isinstance(bindings, Mapping) else ():
            for entry in entries if isinstance(entries, list) else ():
                port = entry.get("HostPort") if isinstance(entry, Mapping) else None
                if isinstance(port, int) and not isinstance(port, bool):
                    port = str(port)
                if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536:
                    out.add(int(port))
    return out


@dataclass(frozen=True)
class Choice:
    project: str
    subnet: Net
    addresses: dict[str, str]  # env name -> address
    ports: dict[str, int]  # env name -> host port
    shift: int

    def values(self) -> dict[str, str]:
        return {"CSLR_PROJECT": self.project, "CSLR_SUBNET": str(self.subnet), **self.addresses, **{k: str(v) for k, v in self.ports.items()}}


def choose(cfg, project: str, taken_subnets: Iterable[Net], taken_ports: Iterable[int], free: Callable[[int], bool]) -> Choice:
    """What `inv init --project` writes, for the loaded config `cfg`. PlatformError if nothing fits."""
    if not NAME.match(project) or len(project) > 63:
        raise PlatformError(
            f"--project {project!r}: expected a Compose project name (lower-case letters, digits, '-' and '_', starting with a letter or digit)"
        )
    current = Net(cfg.get("network", "subnet"), strict=False)
    subnet = free_subnet(current, taken_subnets)
    if subnet is None:
        raise PlatformError(f"no free /{current.prefixlen} subnet left in {', '.join(map(str, POOLS))}; set network.subnet (CSLR_SUBNET) by hand")
    addresses = {f.env: move_address(cfg.get(*f.path), subnet) for f in env_fields() if f.path[:2] == ("network", "addresses") and cfg.get(*f.path)}
    ports = {setting: port for setting, port in topology.published(cfg, gpu_node=True) if isinstance(port, int)}
    shifted = shift_ports(ports, taken_ports, free)
    if shifted is None:
        raise PlatformError("no free set of host ports found by shifting the configured ones; set them in .env by hand (docs/config-reference.md)")
    shift, moved = shifted
    return Choice(project, subnet, addresses, {topology.env_name(setting): port for setting, port in moved.items()}, shift)


# ----------------------------------------------------------------------------- probes and the file


def docker_in_use(run: Runner = subprocess.run) -> tuple[list[Net], set[int]]:
    """Subnets of every Docker network and host ports of every container; nothing without an engine."""
    try:
        subnets = [net for _, net in preflight.docker_subnets("\0", run)]
        ids = run(["docker", "ps", "-aq"], capture_output=True, text=True, timeout=60)
        listed = ids.stdout.split() if ids.returncode == 0 else []
        proc = run(["docker", "container", "inspect", *listed], capture_output=True, text=True, timeout=60) if listed else None
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return [], set()
    try:
        inspected = json.loads(proc.stdout) if proc is not None and proc.stdout else []
    except json.JSONDecodeError:
        inspected = []
    return subnets, published_host_ports(x for x in inspected if isinstance(x, dict)) if isinstance(inspected, list) else set()


def write_env(env_path: Path, values: Mapping[str, str], clock=None) -> list[str]:
    """Set `values` in `.env` (after a backup): existing lines of those keys are replaced in
    place, the others appended under a comment; every other line kept."""
    from .init import backup, set_values

    text = textfile.read_text(env_path, str(env_path))
    present = {k: v for k, v in values.items() if re.search(rf"^\s*(?:export\s+)?{re.escape(k)}\s*=", text, re.M)}
    new = {k: v for k, v in values.items() if k not in present}
    saved = backup(env_path, clock) if clock else backup(env_path)
    text = set_values(text, present)
    if new:
        text += ("" if text.endswith("\n\n") or not text else "\n") + format_dotenv(new, HEADER)
    write_atomic(env_path, text, 0o600)
    return [f"backed up {env_path} to {saved.name} (mode 0600)"]


def config_alone(config_path: Path):
    """config.yaml with the schema's defaults, without this folder's .env or the environment."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / ".env"
        empty.write_text("")
        return load(config_path, empty, environ={})


def make(config_path: Path, env_path: Path, project: str, run: Runner = subprocess.run, free: Callable[[str, int], bool] = preflight.port_free) -> list[str]:
    """`inv init --project NAME` after the usual `inv init`: choose and write; return what was done."""
    cfg = load(config_path, env_path)
    bind = cfg.get("network", "bind_address")
    folder = str(config_path.resolve().parent)
    engine = identity.Engine(run)
    items = (engine.containers(project) or []) + (engine.volumes(project, []) or [])
    verdict = identity.decide(items, folder, str(folder), identity.folder_gone)
    if verdict.foreign:
        owner = sorted(verdict.foreign)[0]
        raise identity.IdentityError(f"--project {project}: that Compose project belongs to {identity.shown(owner)} on this engine; choose another name")
    subnets, ports = docker_in_use(run)
    # What config.yaml alone says (every clone's copy: the other stack's, even while it is down).
    base = config_alone(config_path)
    subnets.append(Net(base.get("network", "subnet"), strict=False))
    ports |= {port for _, port in topology.published(base, gpu_node=True) if isinstance(port, int)}
    choice = choose(cfg, project, [*subnets, *preflight.host_routes()], ports, lambda port: free(bind, port))
    done = write_env(env_path, choice.values())
    done.append(
        f"set in {env_path}: project {choice.project}, network {choice.subnet} (addresses moved with it), "
        f"host ports +{choice.shift} ({', '.join(f'{k}={v}' for k, v in choice.ports.items())})"
    )
    done.append("`inv config` shows them; `inv up` starts this folder's own stack beside the others")
    return done

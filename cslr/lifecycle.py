"""`inv up` as an ordered list of phases, each a small step with one job.

    1. preflight (no impact yet): engine, Compose; the stack is this folder's and its .env opens
       the data volumes (cslr/identity.py, exit 2 otherwise); ports, subnet, NVIDIA runtime;
       multi-host: the rules of `inv firewall` are loaded (or `--firewall-elsewhere` says so, loudly)
    2. images: resolve images.source, then pull or build the bases, build the project's images
    3. Ray versions: every Ray image and the notebook carry ray.version; upgrades: a Postgres
       volume of another major version is refused, MLflow's schema is migrated once when a newer
       MLflow wants it (after a database dump into backups/; cslr/upgrade.py)
    4. start (impacting things): the volumes (labelled with their owner folder and secret
       fingerprint), `compose up -d`, one line per service state change, until every service is
       healthy; a failure names the service, its last log lines and healthcheck output

Modelled on getsentry/self-hosted's install/. What changes, and when: the caller has already
written the generated project (`_build/`, after the ownership claim of `claim_before_generate`);
phase 1 changes nothing; phase 2 changes images (and `wheelhouse/` when offline); phase 3 changes
something only when MLflow's schema must move (a dump into `backups/`, Postgres started alone for
the migration); phase 4 first creates the notebooks folder and copies an older stack's notebooks
into it (`host_folders`), then creates the data volumes and starts the stack. Phase 1 failing
leaves images, folders, volumes and containers as they were (tests/test_lifecycle.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import compose, identity, images, preflight, topology, upgrade
from .report import is_ready
from .stack import Stack, StackError, docker_text


@dataclass
class UpOptions:
    timeout: float = 600.0
    build: bool = False
    firewall_elsewhere: bool = False  # multi-host: do not check for the rules of `inv firewall`
    claimed: bool = False  # the caller ran claim_before_generate and printed its notes


def check_preflight(stack: Stack, run=subprocess.run, routes: Callable[[], list] = preflight.host_routes) -> list[str]:
    """Every finding of phase 1 (engine and Compose first: without them the rest cannot run)."""
    findings = preflight.docker_available(run) + preflight.compose_available(run)
    if findings:
        return findings
    cfg = stack.cfg
    services = stack.expected_services()
    running = {r["Service"] for r in stack.services() if r.get("State") == "running"}
    findings += preflight.busy_ports(
        cfg.get("network", "bind_address"), topology.published(cfg, "ray-gpu" in services), lambda setting: topology.owner(setting) in running
    )
    import ipaddress

    findings += preflight.subnet_overlaps(ipaddress.IPv4Network(cfg.get("network", "subnet")), preflight.docker_subnets(stack.project, run), routes())
    if preflight.wants_nvidia_devices(stack.doc(), services):
        findings += preflight.gpu_runtime(run)
    uid = stack.env().get("CSLR_UID", "")
    if uid.isdigit() and uid != "0":
        findings += preflight.remapped_ids(preflight.security_options(run), int(uid))
    return findings


def ensure_images(stack: Stack, build: bool = False, docker: images.Docker | None = None) -> list[str]:
    """Phase 2 on a generated project: bases, wheelhouse when offline, the project's images."""
    from . import wheelhouse

    env = stack.env()
    docker = docker or images.Docker(stack.run)
    return images.ensure(
        env,
        stack.expected_services() + (["test-cluster"] if "test-cluster" in stack.doc().get("services", {}) else []),
        build=stack.build,
        out=stack.out,
        docker=docker,
        build_local_bases=lambda names, _env: images.run_local_bases_script(names, _env, images.versions(stack.cfg)),
        wheelhouse=lambda: stack.out(wheelhouse.ensure(stack.cfg)),
        force_build=build,
    )


def custom_image_findings(stack: Stack, docker: images.Docker) -> list[str]:
    """Phase 2 for the custom services (`up` itself pulls nothing): each image present, or pulled
    now unless images.source is local (no registry: the lab builds or loads it itself)."""
    source = stack.env().get("CSLR_IMAGE_SOURCE", "pull")
    defined = set(stack.doc().get("services") or {})
    findings = []
    for svc in topology.custom_services(stack.cfg):
        if svc.name not in defined or docker.present(svc.image):
            continue
        where = f"services.custom.{svc.name}.image {svc.image}"
        if source == "local":
            findings.append(f"{where} is not on this engine and images.source local pulls nothing; build or load it first (docker build -t / docker load)")
            continue
        stack.out(f"pulling {svc.image} (services.custom.{svc.name})")
        proc = docker.pull(svc.image)
        if proc.returncode != 0:
            findings.append(f"{where}: `docker pull` failed (exit {proc.returncode}); check the name, or build or load the image first")
    return findings


def ray_image_findings(stack: Stack, run=subprocess.run) -> list[str]:
    """Phase 3: the project's Ray images (and the notebook's) carry ray.version."""
    env, services = stack.env(), stack.expected_services()
    wanted = {"images.ray (project image)": env.get("RAY_IMAGE", "")}
    if "ray-gpu" in services:
        wanted["images.ray_gpu (project image)"] = env.get("RAY_GPU_IMAGE", "")
    if "marimo" in services:
        wanted["the notebook image"] = env.get("MARIMO_IMAGE", "")
    return preflight.ray_versions({k: v for k, v in wanted.items() if v}, stack.cfg.get("ray", "version"), run)


def base_ray_findings(stack: Stack, run=subprocess.run) -> list[str]:
    """Before building: a pulled Ray base that carries another Ray version is refused early."""
    env, services = stack.env(), stack.expected_services()
    wanted = {"images.ray": env.get("RAY_BASE_IMAGE", "")}
    if "ray-gpu" in services:
        wanted["images.ray_gpu"] = env.get("RAY_GPU_BASE_IMAGE", "")
    return preflight.ray_versions({k: v for k, v in wanted.items() if v}, stack.cfg.get("ray", "version"), run)


def fail(findings: list[str]) -> None:
    if findings:
        raise StackError("preflight failed:\n  " + "\n  ".join(findings))


def bring_up(stack: Stack, options: UpOptions | None = None) -> list[dict]:
    """Phases 1–4 on a generated project, in PHASES order. Raises StackError / PlatformError."""
    options = options or UpOptions()
    stack.out(f"compose: {compose.compose_binary()}")
    rows: list[dict] = []
    for _, phase in PHASES:
        rows = phase(stack, options) or rows
    return rows


def phase_preflight(stack: Stack, options: UpOptions) -> None:
    """1. Reads only: engine, Compose, ownership and secrets of the volumes, firewall, ports."""
    fail(preflight.docker_available(stack.run) + preflight.compose_available(stack.run))
    for line in claim_for_up(stack, identity.Engine(stack.run)):  # again on the generated project: every volume
        if not options.claimed:
            stack.out(line)
    firewall, notes = preflight.firewall_check(stack.cfg, stack.env().get("HOST_NAME"), options.firewall_elsewhere)
    for line in notes:
        stack.out(line)
    fail(check_preflight(stack, stack.run) + firewall)


def phase_images(stack: Stack, options: UpOptions) -> None:
    """2. Pulls or builds images (and may fill wheelhouse/ when offline)."""
    source = stack.env().get("CSLR_IMAGE_SOURCE", "pull")
    stack.out(f"images: {source} bases")
    fail(base_ray_findings(stack, stack.run))
    for line in ensure_images(stack, build=options.build):
        stack.out(line)
    fail(custom_image_findings(stack, images.Docker(stack.run)))


def phase_versions(stack: Stack, options: UpOptions) -> None:
    """3. Ray versions and upgrades; only a due MLflow migration changes anything (see above)."""
    fail(ray_image_findings(stack, stack.run))
    fail(upgrade.postgres_findings(stack))
    for line in upgrade.mlflow_schema(stack, Path(stack.cfg.config_path).resolve().parent / "backups"):
        stack.out(line)


def phase_start(stack: Stack, options: UpOptions) -> list[dict]:
    """4. Host folders, the data volumes, `compose up -d` and the watch until healthy."""
    for line in host_folders(stack):
        stack.out(line)
    scope = identity.scope_of(stack)
    for line in identity.create_volumes(scope, identity.Engine(stack.run), fingerprinted(stack), stack.env()):
        stack.out(line)
    stack.out(f"starting {stack.project}; waiting up to {options.timeout:.0f} s for health:")
    return watch_up(stack, timeout=options.timeout)


# The phases of `inv up`, in order (the module docstring says what each may change); looked up
# when called, so a test may replace one.
PHASES: tuple[tuple[str, Callable[[Stack, UpOptions], list[dict] | None]], ...] = (
    ("preflight", lambda stack, options: phase_preflight(stack, options)),
    ("images", lambda stack, options: phase_images(stack, options)),
    ("versions", lambda stack, options: phase_versions(stack, options)),
    ("start", lambda stack, options: phase_start(stack, options)),
)


def data_secrets(stack: Stack) -> dict[str, str]:
    """Data volume (Compose key) -> the .env variable of the secret it is made with, for the
    data volumes that the services this `up` starts mount."""
    services = stack.doc().get("services") or {}
    used = set()
    for name in stack.expected_services():
        for mount in (services.get(name) or {}).get("volumes") or []:
            if isinstance(mount, dict) and mount.get("type") == "volume":
                used.add(mount.get("source"))
    return {key: env for key, env in topology.DATA_VOLUMES.items() if key in used}


def fingerprinted(stack: Stack) -> dict[str, str]:
    """The data volumes `inv up` creates with their secret's fingerprint: those of the services it
    starts, and a switched-off service's too when .env holds its secret (that volume is created
    all the same; unlabelled, the next `inv up` could not tell whether .env opens it)."""
    env = stack.env()
    return {**{key: name for key, name in topology.DATA_VOLUMES.items() if env.get(name)}, **data_secrets(stack)}


def claim_for_up(stack: Stack, engine: identity.Engine) -> list[str]:
    """Phase 1, before anything else looks at the project: its containers and volumes are this
    folder's, and this .env opens its data volumes. IdentityError (exit 2) otherwise."""
    scope = identity.scope_of(stack)
    lines = identity.claim(scope, engine, "up")
    env_path = str(stack.cfg.env_path) if stack.cfg.env_path else ".env"
    return lines + identity.check_data(scope, engine, data_secrets(stack), stack.env(), env_path)


def claim_before_generate(cfg, build_dir, run=subprocess.run) -> list[str]:
    """`inv up`, before it regenerates the project: the same claims on the data volumes, so that
    a refused run leaves the generated env file (which may hold the secrets that made the data)
    as it was. Every existing data volume is checked, as `inv init --rotate-secrets` does."""
    from pathlib import Path

    from .config import env_fields

    project = cfg.get("project", "name")
    scope = identity.Scope(
        project, str(Path(cfg.config_path).resolve().parent), str(Path(build_dir).resolve()), {k: f"{project}_{k}" for k in topology.DATA_VOLUMES}
    )
    engine = identity.Engine(run)
    env = {f.env: str(cfg.get(*f.path) or "") for f in env_fields() if f.env in topology.DATA_VOLUMES.values()}
    generated = Path(build_dir) / ".env"
    env_path = str(cfg.env_path) if cfg.env_path else ".env"
    lines = identity.claim(scope, engine, "up")
    return lines + identity.check_data(scope, engine, topology.DATA_VOLUMES, env, env_path, str(generated) if generated.exists() else None)


def host_folders(stack: Stack) -> list[str]:
    """Before start: the notebooks folder exists (owned by the user, not by a root-run Docker),
    the notebooks of an older stack's volume are copied into it once, and files there (or in the
    workspace) that the stack's user cannot save over are pointed out."""
    from . import hostdirs, notebooks

    folder = hostdirs.notebooks_dir(stack.cfg)
    lines = notebooks.ensure_folder(folder)
    if "marimo" in stack.expected_services():
        lines += notebooks.migrate(stack.project, folder, stack.env().get("RAY_IMAGE", ""), stack.build_dir, stack.run)
    env = stack.env()
    uid, gid = (env.get(name, "") for name in hostdirs.USER_VARS)
    if uid.isdigit() and gid.isdigit():
        lines += hostdirs.ownership_notes(stack.cfg, int(uid), int(gid))
    return lines


STOPPED = ("exited", "dead")


def this_up(rows: list[dict], stale: dict[str, str], finished_at: Callable[[str], str]) -> list[dict]:
    """Pure but for `finished_at` (container id -> its State.FinishedAt): the rows of the
    containers this `up` runs. A container that was already stopped before `up` began (`stale`:
    id -> FinishedAt then) and has not run since is left out: Compose is about to start or
    replace it (a service stopped by `docker stop`, or by the MLflow migration, whose old
    container `compose ps -a` lists next to its replacement while Compose recreates it)."""
    return [row for row in rows if not (row.get("State") in STOPPED and row.get("ID") in stale and finished_at(row["ID"]) == stale[row["ID"]])]


def failed_rows(rows: list[dict]) -> list[dict]:
    """Pure: the rows that say a service failed (stopped, restarting or unhealthy)."""
    return [row for row in rows if row.get("State") in (*STOPPED, "restarting") or row.get("Health") == "unhealthy"]


def stopped_before(stack: Stack, rows: list[dict]) -> dict[str, str]:
    """Container id -> State.FinishedAt of the project's stopped containers (see this_up)."""
    return {row["ID"]: finished_at(stack, row["ID"]) for row in rows if row.get("State") in STOPPED and row.get("ID")}


def finished_at(stack: Stack, container: str) -> str:
    return docker_text(stack, ["inspect", "--format", "{{.State.FinishedAt}}", container])


def watch_up(stack: Stack, timeout: float = 600.0, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """`compose up -d` in the background while printing one line per service state change;
    returns when every service is running and healthy, raises with the failing service's
    last log lines otherwise."""
    # The images are built by phase 2; `up` must not build or pull anything else behind our back.
    args = ["up", "-d", "--remove-orphans", "--no-build", "--pull", "never"]
    expected = set(stack.expected_services())
    stale = stopped_before(stack, stack.services())
    # `up -d` itself blocks on `depends_on: service_healthy`; watch while it does.
    proc = subprocess.Popen(stack.command(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=compose.subprocess_env())
    checked = stack.healthchecked_services()
    seen: dict[str, tuple] = {}
    deadline = clock() + timeout
    try:
        while True:
            rows = [r for r in stack.services() if r["Service"] in expected]
            # Only the containers of this `up` are shown and judged (not one stopped before it).
            current = this_up(rows, stale, lambda container: finished_at(stack, container))
            for row in current:
                key = (row.get("State"), row.get("Health") or "")
                if seen.get(row["Service"]) != key:
                    seen[row["Service"]] = key
                    stack.out(f"  {row['Service']:<10} {key[0]}{' (' + key[1] + ')' if key[1] else ''}")
            failed = failed_rows(current)
            if failed:
                bad = failed[0]
                raise StackError(failure(stack, bad["Service"], f"is {bad.get('State')} {bad.get('Health') or ''}".strip(), bad.get("Name")))
            done = proc.poll()
            if done not in (None, 0):
                output = proc.stdout.read() if proc.stdout else ""
                raise StackError(f"docker compose up failed (exit {done}):\n{output.strip()[-3000:]}")
            ready = {r["Service"] for r in current if is_ready(r, r["Service"] in checked)}
            if done == 0 and ready >= expected:
                return rows
            if clock() > deadline:
                late = sorted(expected - ready) or sorted(expected)
                raise StackError(failure(stack, late[0], f"did not become healthy within {timeout:.0f} s (also waiting: {', '.join(late[1:]) or 'none'})"))
            sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if proc.stdout:
            proc.stdout.close()


# Log lines that say what is wrong better than the lines themselves (a volume older than the
# secret fingerprints, docs/stacks.md, made with another password than .env's).
DIAGNOSES = {
    "password authentication failed": "Postgres refuses the POSTGRES_PASSWORD of .env: its data volume was created with another one "
    "(a new or lost .env over an older stack's data). See docs/stacks.md#a-lost-env.",
    "WRONGPASS": "Redis refuses the REDIS_PASSWORD of .env: see docs/stacks.md#a-lost-env.",
}


def diagnose(logs: str) -> list[str]:
    """Pure: the DIAGNOSES whose marker is in `logs`."""
    return [text for marker, text in DIAGNOSES.items() if marker in logs]


def state_lines(state: dict) -> list[str]:
    """Pure: what a container's `docker inspect` State says beyond its logs - how it ended
    (exit code, killed for memory, the engine's own error) and its last healthcheck."""
    lines = []
    if state.get("Status") in STOPPED:
        how = f"exit code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            how += ", killed for memory (raise its memory: in config.yaml, or free the host's)"
        lines.append(f"It ended with {how}{': ' + str(state['Error']) if state.get('Error') else ''}")
    log = (state.get("Health") or {}).get("Log") or []
    if log:
        last = log[-1]
        lines.append(f"Its last healthcheck (exit {last.get('ExitCode')}): {(last.get('Output') or '').strip()[-500:]}")
    return lines


def failure(stack: Stack, service: str, what: str, container: str | None = None) -> str:
    logs = stack.logs_tail(service)
    text = f"{service} {what}. Its last log lines:\n{logs.rstrip() or '(none)'}"
    for line in diagnose(logs):
        text += f"\nDiagnosis: {line}"
    if container:
        probe = stack.run(["docker", "inspect", "--format", "{{json .State}}", container], capture_output=True, text=True)
        try:
            state = json.loads(probe.stdout or "null") or {}
        except json.JSONDecodeError:
            state = {}
        for line in state_lines(state if isinstance(state, dict) else {}):
            text += f"\n{line}"
    return text

"""Ray jobs from the host: submit (with the working dir uploaded), list, logs, stop, wait.

Ray is not in `inv`'s venv, so this speaks the Ray Jobs REST API of the head's dashboard with
urllib, exactly as Ray's own job SDK does (ray/dashboard/modules/dashboard_sdk.py and
job/sdk.py, ray/_private/runtime_env/packaging.py):

- the working dir becomes a zip of its files (paths relative to it), content-addressed as
  `gcs://_ray_pkg_<hash>.zip`; `GET /api/packages/gcs/<name>` says whether the cluster has it,
  `PUT /api/packages/gcs/<name>` uploads it; the job's `runtime_env.working_dir` names it;
- `POST /api/jobs/` submits, `GET /api/jobs/` lists, `GET /api/jobs/<id>` and
  `GET /api/jobs/<id>/logs` read, `POST /api/jobs/<id>/stop` stops;
- token auth: `Authorization: Bearer <RAY_AUTH_TOKEN>` (Ray's AUTHORIZATION_HEADER_NAME and
  AUTHORIZATION_BEARER_PREFIX), the token from `.env`.

What is uploaded: in a git work tree, the files git would track (`git ls-files --cached
--others --exclude-standard`: .gitignore honoured as Ray does), minus `.rayignore` patterns;
elsewhere every file except `.git`, `.venv` and `__pycache__`. Ray's own size limit applies.
Never, git or not: `.env`, its backups (`.env.bak-*`) and their folder `.env.backups/`, at any
depth, and `inv backup`'s archives in `backups/` (`never_uploaded`). And before anything leaves the machine, every byte of every file to be
uploaded is searched for every secret value (`secret_values`: the secrets of the config, from
`.env` or the environment, and every other value of `.env` of SECRET_MIN characters or more);
one found refuses the upload (exit 2), naming the file and the variable, never the value.

The dashboard address: `dashboard_url` is the one place that decides it: the health service's
dashboard proxy (`services.health.dashboard_port`), which relays to the elected head's
dashboard, so one address holds across failovers - once the health service knows a head.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import textfile, topology
from .config import Config, display_path, env_fields, parse_dotenv
from .errors import PlatformError
from .init import ENV_BACKUPS

PKG_PREFIX = "_ray_pkg_"
MAX_PACKAGE = 500 * 1024 * 1024  # Ray's GCS limit is the gRPC message size (512 MiB by default)
ALWAYS_SKIP = {".git", ".venv", "__pycache__", "_build", "wheelhouse"}
TERMINAL = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}  # the exit code of `inv submit --wait`


SECRET_MIN = 8  # shorter values (a flag, a port, `off`) would match everywhere and are no secret
SCAN_CHUNK = 1 << 20  # the secret scan reads files in blocks of this size (overlapping), never whole


class JobError(PlatformError):
    exit_code = 1


class SecretInUploadError(PlatformError):
    """A file to be uploaded holds a secret of `.env`: nothing is uploaded."""

    exit_code = 2


# --------------------------------------------------------------------------- the address


def _host(cfg: Config) -> str:
    return topology.reachable_host(cfg.get("network", "bind_address"))


def health_url(cfg: Config) -> str:
    return f"http://{_host(cfg)}:{cfg.get('services', 'health', 'port')}/"


def proxy_dashboard(cfg: Config) -> str:
    """The stable dashboard / Jobs API address: the health service's dashboard proxy. Pure."""
    return f"http://{_host(cfg)}:{cfg.get('services', 'health', 'dashboard_port')}"


def dashboard_url(cfg: Config, fetch: Callable[[str], dict] | None = None) -> str:
    """The Jobs API address of the cluster. The one place that decides it: the health service's
    dashboard proxy, once that service knows a head (else a clear error, not a closed socket)."""
    fetch = fetch or (lambda url: json.loads(urllib.request.urlopen(url, timeout=10).read()))
    url = health_url(cfg)
    try:
        state = fetch(url)
    except (OSError, ValueError) as exc:
        raise JobError(f"the health service at {url} does not answer ({exc}); is the stack up? (`inv up`)") from None
    head = state.get("known_head")
    if not head:
        raise JobError(f"the health service at {url} knows no head yet; wait for `inv status` to show one")
    return proxy_dashboard(cfg)


# --------------------------------------------------------------------------- the package


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if "/" in pat.lstrip("/"):
            if fnmatch.fnmatch(rel, pat.lstrip("/")) or fnmatch.fnmatch(rel, pat.lstrip("/") + "/*"):
                return True
        elif any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False


def rayignore(folder: Path) -> list[str]:
    path = folder / ".rayignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def package_files(folder: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Relative POSIX paths of the files to upload, sorted."""
    folder = folder.resolve()
    proc = run(["git", "-C", str(folder), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."], capture_output=True)
    if proc.returncode == 0:
        names = [n for n in proc.stdout.decode().split("\0") if n]
        found = [n for n in names if (folder / n).is_file()]
    else:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_SKIP)
            for name in filenames:
                found.append((Path(dirpath) / name).relative_to(folder).as_posix())
    patterns = rayignore(folder)
    return sorted(n for n in found if not any(p in ALWAYS_SKIP for p in n.split("/")[:-1]) and not never_uploaded(n) and not _ignored(n, patterns))


def never_uploaded(rel: str) -> bool:
    """`.env`, a backup of it (`.env.bak-*`, the name older `inv init`s gave them) or anything in
    the backups folder `.env.backups/`, at any depth, and the archives of `inv backup` in
    `backups/`: never uploaded, git-ignored or not. Pure."""
    parts = rel.split("/")
    if parts[-1] == ".env" or parts[-1].startswith(".env.bak-") or ENV_BACKUPS in parts[:-1]:
        return True
    # `inv backup` archives (backups/cslr-*.tar, pre-upgrade dumps): the lab's whole database.
    return parts[0] == "backups" and len(parts) > 1 and parts[-1].startswith("cslr-") and parts[-1].endswith((".tar", ".tar.part", ".pgdump"))


# --------------------------------------------------------------------------- secrets


def secret_values(cfg: Config) -> dict[str, str]:
    """Variable name -> value of every secret a job upload must not carry: each secret setting
    (`x-secret` in the schema) wherever it was set (`.env` or the environment), and every other
    value of `.env` except the non-secret settings (addresses, paths, sizes: config, not secrets),
    so a lab's own `HF_TOKEN=...` in `.env` counts too. Values shorter than SECRET_MIN are left out."""
    fields = env_fields()
    found = {f.env: cfg.get(*f.path) for f in fields if f.secret}
    if cfg.env_path is not None and os.path.isfile(cfg.env_path):
        settings = {f.env for f in fields if not f.secret}
        dotenv = parse_dotenv(textfile.read_text(cfg.env_path, display_path(cfg.env_path)), display_path(cfg.env_path))
        found.update({key: value for key, (value, _) in dotenv.items() if key not in settings and key not in found})
    return {key: value for key, value in found.items() if isinstance(value, str) and len(value) >= SECRET_MIN}


def find_secrets(folder: Path, files: Iterable[str], secrets: dict[str, str], chunk: int = SCAN_CHUNK) -> list[tuple[str, list[str]]]:
    """(file, names of the secrets it holds) for each file under `folder` that holds one, byte for
    byte (the UTF-8 of the value) anywhere in it. Every byte is read, in blocks of `chunk` bytes
    that overlap by the longest secret less one, so a value across two blocks is found and memory
    stays bounded whatever the file's size. Cost: one pass over the upload per secret (see
    docs/security.md for the measured rate)."""
    needles = {name: value.encode() for name, value in secrets.items() if value}
    if not needles:
        return []
    keep = max(map(len, needles.values())) - 1
    hits = []
    for rel in files:
        found: set[str] = set()
        tail = b""
        with open(folder / rel, "rb") as handle:
            while len(found) < len(needles):
                block = handle.read(chunk)
                if not block:
                    break
                window = tail + block
                found.update(name for name, needle in needles.items() if name not in found and needle in window)
                tail = window[-keep:] if keep else b""
        if found:
            hits.append((rel, sorted(found)))
    return hits


def refusal(working_dir: Path, hits: list[tuple[str, list[str]]], secrets: dict[str, str], source: str) -> str:
    """The message of a refused upload: the files and the variables, never a value (a value in a
    file's name is masked too). Pure."""

    def mask(text: str) -> str:
        for value in sorted(secrets.values(), key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    shown = [f"  {mask(rel)}: the value of {', '.join(names)}" for rel, names in hits[:20]]
    if len(hits) > 20:
        shown.append(f"  ... and {len(hits) - 20} more file(s)")
    return (
        f"refusing to upload the working dir {mask(str(working_dir))}: {len(hits)} file(s) hold the value of a secret ({source}):\n"
        + "\n".join(shown)
        + "\nNothing was uploaded. Take the value out of the file (a job reads what it needs from its environment), "
        "or keep the file out of the upload (.gitignore, .rayignore)."
    )


def build_package(folder: Path, files: Iterable[str]) -> tuple[str, bytes]:
    """(package name, zip bytes): files at their paths relative to `folder`, as Ray's
    create_package(include_parent_dir=False) lays them out; the name is content-addressed."""
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False) as zf:
        for rel in files:
            data = (folder / rel).read_bytes()
            digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = ((folder / rel).stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return f"{PKG_PREFIX}{digest.hexdigest()[:16]}.zip", buf.getvalue()


# --------------------------------------------------------------------------- the API


@dataclass
class Client:
    """The Ray Jobs REST API at `base` (http://HOST:PORT), with the cluster's token."""

    base: str
    token: str | None = None
    opener: Callable = urllib.request.urlopen

    def request(self, method: str, path: str, body: bytes | dict | None = None, ok404: bool = False):
        data, headers = None, {}
        if isinstance(body, dict):
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif body is not None:
            data = body
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            with self.opener(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if ok404 and exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace").strip()[-600:]
            if exc.code in (401, 403):
                raise JobError(f"the Ray dashboard at {self.base} refused the token (HTTP {exc.code}); RAY_AUTH_TOKEN in .env must be the cluster's") from None
            raise JobError(f"{method} {path} at {self.base} failed: HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise JobError(f"the Ray dashboard at {self.base} does not answer ({exc})") from None
        text = raw.decode(errors="replace")
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError:
            return text

    def upload(self, name: str, data: bytes) -> bool:
        """Upload unless the cluster has it; True when it was uploaded."""
        if self.request("GET", f"/api/packages/gcs/{name}", ok404=True) is not None:
            return False
        self.request("PUT", f"/api/packages/gcs/{name}", data)
        return True

    def submit(
        self,
        entrypoint: str,
        working_dir: str | None = None,
        submission_id: str | None = None,
        metadata: dict | None = None,
        off_head: bool = False,
        env_vars: dict | None = None,
    ) -> str:
        """Submit; `off_head` keeps the job's driver off the current head (see `off_head_selector`);
        `env_vars` go into the job's runtime_env (its driver, tasks and actors)."""
        runtime_env: dict = {"working_dir": working_dir} if working_dir else {}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        body: dict = {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata or {}}
        if submission_id:
            body["submission_id"] = submission_id
        if off_head:
            body["entrypoint_label_selector"] = off_head_selector(self.nodes())
        return self.request("POST", "/api/jobs/", body)["submission_id"]

    def nodes(self) -> list[dict]:
        """Ray's node table (state API `GET /api/v0/nodes`): node_id, node_ip, is_head_node, state."""
        reply = self.request("GET", "/api/v0/nodes?limit=10000&detail=false")
        try:
            table = reply["data"]["result"]["result"]
        except (KeyError, TypeError):
            table = None
        if not isinstance(table, list) or not all(isinstance(n, dict) for n in table):
            raise JobError(f"GET /api/v0/nodes at {self.base} gave no node table: {str(reply)[:300]}")
        return table

    def info(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}")

    def list(self) -> list[dict]:
        return self.request("GET", "/api/jobs/")

    def logs(self, job_id: str) -> str:
        return self.request("GET", f"/api/jobs/{job_id}/logs").get("logs", "")

    def stop(self, job_id: str) -> bool:
        return bool(self.request("POST", f"/api/jobs/{job_id}/stop").get("stopped"))


NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node (ray._raylet.RAY_NODE_ID_KEY)


def off_head_selector(nodes: list[dict]) -> dict:
    """The job's `entrypoint_label_selector` that keeps its driver off the head: "any node but
    the current head". Pure. A driver on the head dies with it, and so does its job, even with
    GCS fault tolerance (docs/multi-host.md, "A running job when the head fails"); a driver on a
    worker keeps running while a GCS-FT head restarts. Ray's default puts it on the head."""
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    heads = [n for n in alive if n.get("is_head_node")]
    if len(heads) != 1:
        raise JobError(f"cannot keep the driver off the head: the cluster reports {len(heads)} live head node(s)")
    if len(alive) < 2:
        raise JobError("cannot keep the driver off the head: the head is the only live Ray node (no worker to run it); submit without --off-head")
    return {NODE_ID_LABEL: "!" + heads[0]["node_id"]}


def exit_code(status: str) -> int:
    return TERMINAL.get(status, 1)


def wait(client: Client, job_id: str, out: Callable[[str], None] = print, poll: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> str:
    """Follow a job's logs until it ends; return its final status."""
    shown = 0
    while True:
        status = client.info(job_id).get("status", "")
        logs = client.logs(job_id)
        if len(logs) > shown:
            out(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status
        sleep(poll)


LOST_NOTE = (
    "* its driver's Ray node is gone (the head failed and the driver ran there): the job is lost although Ray "
    "still says RUNNING; Ray marks it FAILED once a job request reaches the head's job agent "
    "(`inv jobs --stop ID` does). `inv submit` keeps the driver off the head whenever another node is alive "
    "(unless --on-head), and while it follows the job (not --no-wait) submits a lost job again (--retries; docs/runtime.md)."
)


def lost_drivers(jobs: list[dict], nodes: list[dict]) -> set[str]:
    """Submission ids of jobs Ray reports as RUNNING whose driver's node is no longer alive. Pure.
    With GCS fault tolerance a restarted head still lists a job whose driver died with the old
    head as RUNNING, until a job request reaches a job agent (measured: bench/job_failover.py)."""
    alive = {n.get("node_id") for n in nodes if n.get("state") == "ALIVE"}
    return {
        j.get("submission_id") or j.get("job_id") or ""
        for j in jobs
        if j.get("status") == "RUNNING" and j.get("driver_node_id") and j["driver_node_id"] not in alive
    }


def attempt_of(job: dict) -> int | None:
    """The attempt number `inv submit` recorded in a job's metadata (None: not submitted by it). Pure."""
    value = (job.get("metadata") or {}).get("cslr_attempt", "")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def format_jobs(jobs: list[dict], lost: Iterable[str] = (), resumed: dict[str, str] | None = None) -> str:
    """The table of `inv jobs`: one row per submission; ATTEMPT is its number within its run
    (`inv submit` retries: RUN, RUN-retry1, ...), RESUMED FROM the checkpoint a retry started from
    (`resumed`: submission id -> what its logs said; "-" when it started afresh). Pure."""
    lost, resumed = set(lost), resumed or {}
    width = max([28, *(len(j.get("submission_id") or j.get("job_id") or "-") for j in jobs)])
    lines = [f"{'SUBMISSION ID':<{width}} {'STATUS':<10} {'START (UTC)':<20} {'ATTEMPT':<8} {'RESUMED FROM':<24} ENTRYPOINT"]
    for job in sorted(jobs, key=lambda j: j.get("start_time") or 0):
        start = job.get("start_time")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start / 1000)) if start else "-"
        ident = job.get("submission_id") or job.get("job_id") or "-"
        status = job.get("status", "") + ("*" if ident in lost else "")
        number = attempt_of(job)
        origin = resumed.get(ident) or "-"
        origin = origin.split(" (MLflow")[0]  # "epoch 3/6 at /workspace/checkpoints/RUN"
        origin = origin if len(origin) <= 24 else origin[:21] + "..."
        lines.append(f"{ident:<{width}} {status:<10} {when:<20} {number or '-'!s:<8} {origin:<24} {job.get('entrypoint', '')}")
    if lost & {line.split()[0] for line in lines[1:]}:
        lines.append(LOST_NOTE)
    return "\n".join(lines)


def resumed_checkpoints(client: Client, jobs: list[dict]) -> dict[str, str]:
    """Submission id -> the checkpoint each retry (attempt > 1) resumed from, read from its logs."""
    found = {}
    for job in jobs:
        ident = job.get("submission_id") or ""
        if ident and (attempt_of(job) or 1) > 1:
            try:
                where = resumed_from(client.logs(ident))
            except JobError:
                where = None
            found[ident] = where or "(none)"
    return found


def _listed(client: Client) -> tuple[list[dict], set[str]]:
    """Ray's job records and the ids of those whose driver's node is gone (when readable)."""
    listed = client.list()
    try:
        lost = lost_drivers(listed, client.nodes()) if any(j.get("status") == "RUNNING" for j in listed) else set()
    except JobError:
        lost = set()  # the state API is optional for the table
    return listed, lost


def list_jobs(client: Client) -> str:
    """`inv jobs`: the table, with jobs lost at a head failure marked (when the node table can
    be read) and each retry's attempt and the checkpoint it resumed from."""
    listed, lost = _listed(client)
    return format_jobs(listed, lost, resumed_checkpoints(client, listed))


def list_json(client: Client) -> list[dict]:
    """`inv jobs --json`: Ray's job records, each with `driver_lost` (as the table's RUNNING*),
    `attempt` and `resumed_from` (for retries)."""
    listed, lost = _listed(client)
    resumed = resumed_checkpoints(client, listed)
    return [
        {
            **job,
            "driver_lost": (job.get("submission_id") or job.get("job_id") or "") in lost,
            "attempt": attempt_of(job),
            "resumed_from": resumed.get(job.get("submission_id") or ""),
        }
        for job in listed
    ]


def client_for(cfg: Config) -> Client:
    return Client(dashboard_url(cfg), cfg.get("secrets", "ray_auth_token") if cfg.get("ray", "auth") == "token" else None)


# --------------------------------------------------------------------------- survival


DEFAULT_RETRIES = 2  # `inv submit --retries`: re-submissions after a node loss (0 turns them off)
MAX_RETRIES = 100
RETRY_EXIT = 75  # a job that exits with this (EX_TEMPFAIL) says "a node I used died": retry me
RUN_ENV = "CSLR_RUN_ID"  # every attempt of one run carries the run's id (the first submission id)
ATTEMPT_ENV = "CSLR_ATTEMPT"
UNREACHABLE_S = 300.0  # how long `inv submit --wait` keeps asking a dashboard that does not answer (a failover)
RESUMED_MARK = "resumed from checkpoint "  # the line a resuming job prints (examples/cslr/train.py)

# What Ray 2.60 says when a job ended because a node died rather than because its code failed:
# the supervisor actor (on the driver's node) is gone, or the node itself was reported dead.
NODE_LOSS_MESSAGES = (
    "failed to get job supervisor",
    "job supervisor actor died",
    "job supervisor actor could not be scheduled",
    "the actor died unexpectedly",
    "node died",
    "raylet died",
    "node has been marked dead",
    "unexpected error occurred",
)


def parse_retries(text: str | int | None) -> int:
    """`--retries N`: a whole number 0..MAX_RETRIES (None: DEFAULT_RETRIES). Pure; ValueError
    with what was found and what is expected."""
    if text is None:
        return DEFAULT_RETRIES
    value = str(text).strip()
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_RETRIES:
        raise ValueError(f"--retries: found {str(text)!r}, expected a whole number from 0 to {MAX_RETRIES}")
    return int(value)


def retry_reason(status: str, message: str = "", lost: bool = False) -> str | None:
    """Why a job that ended with `status` (and Ray's `message`) should run again - a node it
    needed died - or None: it succeeded, was stopped, or its own code failed (a bug, bad input:
    running it again would fail again). `lost`: the job vanished or Ray lists it RUNNING with its
    driver's node gone (a head failure). Pure."""
    if lost:
        return "its driver's node is gone"
    if status != "FAILED":
        return None
    text = (message or "").lower()
    code = _entrypoint_exit(text)
    if code is not None:
        if code == RETRY_EXIT:
            return f"it exited {RETRY_EXIT}: a Ray node it used died"
        if code in (-9, 137):
            return "its driver was killed (SIGKILL): its node died"
        return None
    hit = next((m for m in NODE_LOSS_MESSAGES if m in text), None)
    return f"Ray: {hit}" if hit else None


def _entrypoint_exit(text: str) -> int | None:
    import re

    found = re.search(r"entrypoint command failed with exit code (-?\d+)", text)
    return int(found.group(1)) if found else None


def should_retry(reason: str | None, attempt: int, retries: int) -> bool:
    """Whether attempt number `attempt` (1 = the first submission) that ended for `reason` is
    followed by another: only a node loss, and at most `retries` times in all. Pure."""
    return reason is not None and attempt <= retries


def attempt_id(run_id: str, attempt: int) -> str:
    """The submission id of attempt `attempt` of run `run_id`: the run's own id first, then
    RUN-retry1, RUN-retry2, ... (Ray refuses a submission id twice). Pure."""
    return run_id if attempt == 1 else f"{run_id}-retry{attempt - 1}"


def new_run_id(clock: Callable[[], float] = time.time) -> str:
    return "cslr-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock())) + "-" + os.urandom(3).hex()


def choose_driver(placement: str, nodes: list[dict] | None) -> tuple[bool, str]:
    """(off_head, why) for `placement`: "auto" (the default) keeps the driver off the head
    whenever another node is alive (a driver on the head dies with it, even with GCS fault
    tolerance: docs/runtime.md); "off-head" insists (JobError when no worker is alive); "head"
    leaves it where Ray puts it. `nodes`: the node table (None: unreadable). Pure."""
    if placement == "head":
        return False, "driver on the head (--on-head)"
    alive = [n for n in (nodes or []) if n.get("state") == "ALIVE"]
    workers = [n for n in alive if not n.get("is_head_node")]
    if placement == "off-head":
        return True, "driver off the head (--off-head)"
    if nodes is None:
        return False, "driver where Ray puts it (the node table was unreadable)"
    if not workers:
        return False, "driver on the head: it is the only live node"
    return True, "driver off the head, on one of the other live nodes (--on-head: Ray's default)"


def survival_line(cfg: Config, driver_why: str, retries: int, follow: bool) -> str:
    """What `inv submit` chose for surviving a node's death, and how to turn each off. Pure."""
    ft = "on" if cfg.gcs_fault_tolerance() else "off"
    how = "off: ray.gcs_fault_tolerance: false" if ft == "on" else "on: ray.gcs_fault_tolerance auto or true, with Redis"
    if not follow:
        again = "no retries (--no-wait: nothing follows the job)"
    elif retries:
        again = f"up to {retries} retr{'y' if retries == 1 else 'ies'} after a node loss (--retries 0: none)"
    else:
        again = "no retries (--retries 0)"
    return f"survival: GCS fault tolerance {ft} ({how}); {driver_why}; {again}"


@dataclass
class Attempt:
    """One submission of a run: its id, how it ended, why it was retried, where it resumed."""

    job_id: str
    status: str = ""
    reason: str | None = None
    resumed: str | None = None


def resumed_from(logs: str) -> str | None:
    """The checkpoint a job's logs say it resumed from (the RESUMED_MARK line), or None. Pure."""
    for line in logs.splitlines():
        at = line.find(RESUMED_MARK)
        if at >= 0:
            return line[at + len(RESUMED_MARK) :].strip()
    return None


def follow_job(
    client: Client,
    job_id: str,
    out: Callable[[str], None] = print,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    unreachable_s: float = UNREACHABLE_S,
) -> tuple[str, str, bool]:
    """Follow a job's logs until it ends, through a head failover: (status, message, lost).
    A dashboard that does not answer is asked again for `unreachable_s`; a job the (new) head
    does not know, or lists RUNNING while its driver's node is gone, is `lost` (the latter is
    stopped first, so Ray marks it FAILED)."""
    shown, since = 0, None
    while True:
        try:
            info = client.request("GET", f"/api/jobs/{job_id}", ok404=True)
            if info is None:
                return "", "the cluster no longer knows the job", True
            status = info.get("status", "")
            logs = client.logs(job_id)
            since = None
        except JobError as exc:
            since = since if since is not None else clock()
            if clock() - since > unreachable_s:
                raise JobError(f"{exc} for {unreachable_s:.0f} s while following {job_id}") from None
            sleep(poll)
            continue
        if len(logs) > shown:
            out(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status, info.get("message") or "", False
        if status == "RUNNING" and info.get("driver_node_id"):
            try:
                gone = bool(lost_drivers([{**info, "submission_id": job_id}], client.nodes()))
            except JobError:
                gone = False
            if gone:
                try:
                    client.stop(job_id)
                except JobError:
                    pass
                return "FAILED", "its driver's node is gone", True
        sleep(poll)


def _submit_attempt(client: Client, pkg: str, data: bytes, number: int, sleep, clock) -> Callable[..., str]:
    """`client.submit`, for a retry (attempt > 1) asked again while a failover makes the dashboard
    refuse for up to UNREACHABLE_S, with the package uploaded again first (a cluster that re-formed
    without GCS fault tolerance no longer has it)."""

    def go(*args, **kw) -> str:
        since = clock()
        while True:
            try:
                if number > 1:
                    client.upload(pkg, data)
                return client.submit(*args, **kw)
            except JobError:
                if number == 1 or clock() - since > UNREACHABLE_S:
                    raise
                sleep(5.0)

    return go


def submit(
    cfg: Config,
    command: str,
    working_dir: Path,
    name: str | None = None,
    follow: bool = False,
    out: Callable[[str], None] = print,
    run=subprocess.run,
    off_head: bool = False,
    placement: str = "auto",
    retries: int = DEFAULT_RETRIES,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """`inv submit`: package and upload the working dir, submit, optionally follow. Exit code.
    `command` is the job's entrypoint, a shell command line (as `ray job submit -- …` gives).
    `placement` ("auto", "off-head", "head"; `off_head` = "off-head"): where the driver runs
    (`choose_driver`). Following, a job that ends for a node loss (`retry_reason`) is submitted
    again, up to `retries` times, as RUN-retryN with the same working dir and entrypoint; every
    attempt gets the run's id in CSLR_RUN_ID, which the example keys its checkpoints by, so a
    retry resumes where the last checkpoint left off."""
    if not command.strip():
        raise JobError("nothing to run: give the command after `--`, e.g. inv submit -- python train.py")
    if not working_dir.is_dir():
        raise JobError(f"the working dir {working_dir} is not a folder")
    placement = "off-head" if off_head else placement
    files = package_files(working_dir, run)
    secrets = secret_values(cfg)
    hits = find_secrets(working_dir.resolve(), files, secrets)
    if hits:
        source = f"{display_path(cfg.env_path)} or the environment" if cfg.env_path else "the environment"
        raise SecretInUploadError(refusal(working_dir, hits, secrets, source))
    client = client_for(cfg)
    pkg, data = build_package(working_dir.resolve(), files)
    if len(data) > MAX_PACKAGE:
        raise JobError(f"the working dir {working_dir} packs to {len(data) / 2**20:.0f} MiB, over Ray's limit; add a .rayignore")
    uploaded = client.upload(pkg, data)
    out(f"working dir {working_dir}: {len(files)} file(s), {len(data) / 1024:.0f} KiB -> gcs://{pkg} ({'uploaded' if uploaded else 'already on the cluster'})")
    run_id = name or new_run_id()
    attempts: list[Attempt] = []
    while True:
        number = len(attempts) + 1
        nodes = None
        if placement != "head":
            try:
                nodes = client.nodes()
            except JobError:
                nodes = None
        off, why = choose_driver(placement, nodes)
        if number == 1:
            out(survival_line(cfg, why, retries, follow))
        meta = {"cslr_run": run_id, "cslr_attempt": str(number)}
        if attempts:
            meta["cslr_retry_of"] = attempts[-1].job_id
            meta["cslr_retry_reason"] = attempts[-1].reason or ""
        job_id = _submit_attempt(client, pkg, data, number, sleep, clock)(
            command.strip(),
            f"gcs://{pkg}",
            submission_id=attempt_id(run_id, number),
            metadata=meta,
            off_head=off,
            env_vars={RUN_ENV: run_id, ATTEMPT_ENV: str(number)},
        )
        attempts.append(Attempt(job_id))
        out(f"submitted {job_id} to {client.base}" + (f" (attempt {number} of run {run_id})" if number > 1 else "") + (" (driver off the head)" if off else ""))
        if not follow:
            out(f"follow it: inv jobs --logs {job_id}   stop it: inv jobs --stop {job_id}")
            return 0
        status, message, lost = follow_job(client, job_id, out, sleep=sleep, clock=clock)
        message = message.split(", last available logs")[0].strip()  # the logs were shown already
        attempts[-1].status, attempts[-1].reason = status or "LOST", retry_reason(status, message, lost)
        out(f"job {job_id} {status or 'LOST'}" + (f": {message}" if message and status != "SUCCEEDED" else ""))
        if not should_retry(attempts[-1].reason, number, retries):
            if attempts[-1].reason and retries:
                out(f"not retried: {number - 1} retr{'y' if number == 2 else 'ies'} used of {retries} (--retries)")
            return exit_code(status) if status else 1
        out(f"retrying ({number} of {retries}): {attempts[-1].reason}")
        sleep(5.0)

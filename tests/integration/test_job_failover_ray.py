"""What a running Ray job does when the head fails: real Ray, two scripts/ray_node.py nodes
(127.0.0.2 head, 127.0.0.3 worker; tests/integration/test_ray_node_ray.py's RayNodes: own PID
namespaces, temp dirs and port blocks, token auth), a job submitted through `cslr.jobs` (the
Jobs REST API of the head's dashboard, working dir uploaded as `inv submit` does), the head
crashed (SIGKILL of the whole node, as a container dying) while the job runs Ray tasks.

The cases (docs/multi-host.md, "A running job when the head fails"; measured, with timings, by
bench/job_failover.py, which runs ``run_case`` below):

* ``off``         - no GCS fault tolerance: the worker stops its Ray and becomes the head of a
                    new cluster; the job is gone from the Jobs API (never listed), its driver died.
* ``off-off-head`` - the same with the driver on the worker (bench only): lost the same way.
* ``ft-head``     - GCS FT, the driver where Ray puts it by default (the head): the restarted
                    head lists the job as RUNNING although its driver died (`inv jobs` marks it),
                    until a stop request reaches the head's job agent; then FAILED.
* ``ft-off-head`` - GCS FT, the driver placed off the head (`cslr.jobs.Client.submit(...,
                    off_head=True)`, `inv submit --off-head`): the job keeps running on the worker
                    through the head's restart and SUCCEEDS; its logs are readable.

Slow tier (marker ``integration``); needs redis-server (tools/ci-deps.sh) and unshare.
Heavy: run it alone, under ``flock /tmp/cslr-heavy.lock``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from cslr import jobs  # noqa: E402
from tests.integration.test_ray_node_ray import RayNodes, _free_block  # noqa: E402

pytestmark = pytest.mark.integration

TOKEN = "integration-jobfailover-token-0123456789"
CASES = ("off", "off-off-head", "ft-head", "ft-off-head")

# The job: Ray tasks (one CPU each, so both nodes work) for `seconds`, a progress line per
# round on stdout and in `<mark>.progress`, and `<mark>.done` at the end - the work's outcome
# is known even where the job's logs are not.
JOB = r"""
import sys, time, ray
mark, seconds = sys.argv[1], float(sys.argv[2])
ray.init()

@ray.remote(num_cpus=1)
def step(i):
    time.sleep(0.5)
    return ray.util.get_node_ip_address()

start, n = time.time(), 0
print("driver on", ray.util.get_node_ip_address(), flush=True)
while time.time() - start < seconds:
    ips = ray.get([step.remote(n), step.remote(n + 1)])
    n += 2
    print(f"progress {n} {' '.join(ips)}", flush=True)
    with open(mark + ".progress", "a") as f:
        f.write(f"{time.time()} {n}\n")
with open(mark + ".done", "w") as f:
    f.write(str(n))
print("JOB DONE", n, flush=True)
"""


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = _free_block("127.0.0.1")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def make_nodes(tmp: Path, ft: bool, redis_port: int | None) -> RayNodes:
    extra = {"RAY_AUTH_TOKEN": TOKEN, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ.get('PATH', '')}"}
    if ft:
        extra.update(RAY_GCS_FT="1", RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}", RAY_CLUSTER_NAME=f"jobft-{redis_port}", HEAD_LOSS_GRACE_S="90")
    return RayNodes(tmp, extra, pidns=True)


def dashboard(c: RayNodes, ip: str) -> jobs.Client:
    return jobs.Client(f"http://{ip}:{c.base[ip] + 1}", TOKEN)


def poll(fn, timeout: float, every: float = 1.0):
    """fn() until it returns something truthy (JobError counts as not yet); None at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = fn()
        except jobs.JobError:
            got = None
        if got:
            return got
        time.sleep(every)
    return None


def progress(mark: Path) -> list[float]:
    try:
        return [float(line.split()[0]) for line in Path(str(mark) + ".progress").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def run_case(c: RayNodes, case: str, workdir: Path, seconds: float = 60.0, timeout: float = 300.0) -> dict:
    """Start the two nodes, submit the job, crash the head mid-job, watch. The observations
    (times in s from the crash, wall clock): see bench/job_failover.py for their meaning."""
    a, b = c.ips
    c.start(a)
    c.wait_role(a, "head", c.addr(a), timeout=180)
    c.start(b)
    c.wait_role(b, "worker", c.addr(a), timeout=180)
    client = dashboard(c, a)
    assert poll(lambda: client.list() is not None, 180), "the head's Jobs API never answered\n" + c.logs()
    table = poll(lambda: (lambda t: t if sum(n.get("state") == "ALIVE" for n in t) == 2 else None)(client.nodes()), 180)
    assert table, "the head never saw both nodes alive\n" + c.logs()
    head_id = next(n["node_id"] for n in table if n["is_head_node"] and n["state"] == "ALIVE")

    folder = workdir / "job"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(JOB)
    mark = workdir / "mark"
    pkg, data = jobs.build_package(folder, ["job.py"])
    client.upload(pkg, data)
    job_id = client.submit(f"python job.py {mark} {seconds}", f"gcs://{pkg}", submission_id=f"jobft-{case}", off_head=case.endswith("off-head"))
    # mid-job: the driver has run a few rounds of tasks
    assert poll(lambda: len(progress(mark)) >= 3, 240, 0.5), f"the job never made progress: {client.info(job_id)}\n{c.logs()}"
    before = client.info(job_id)
    driver_ip = next((line.split()[-1] for line in client.logs(job_id).splitlines() if line.startswith("driver on")), "")

    t0 = time.time()
    c.crash(a)
    if not case.startswith("ft"):
        c.wait_role(b, "head", c.addr(b), timeout=180)
        new = dashboard(c, b)
    else:
        c.start(a)  # a container restart policy brings it back; with FT it is the head again
        new = client
    got: dict = {"case": case, "status_before": before.get("status"), "driver_ip": driver_ip, "head_ip": a, "head_id": head_id}
    if poll(lambda: new.list() is not None, timeout, 0.25):
        got["api_s"] = time.time() - t0
    if not case.startswith("ft"):
        c.start(a)  # the old head comes back and joins the new one
    info = None
    if "api_s" in got:
        # Only the Jobs API's own reads (GET /api/jobs/<id>, answered by the dashboard from the
        # GCS) until the job could have finished: nothing that reaches a node's job agent.
        info = _terminal_or_missing(new, job_id, t0, t0 + seconds + 60, got)
    got["listed"] = info is not None
    if info is not None and info.get("status") not in jobs.TERMINAL:
        got["stuck_s"] = time.time() - t0  # still RUNNING this long after the crash
        table = new.nodes()
        alive = {n["node_id"] for n in table if n.get("state") == "ALIVE"}
        got["driver_node_alive"] = info.get("driver_node_id") in alive
        got["marked_lost"] = job_id in jobs.lost_drivers(new.list(), table)  # `inv jobs` shows RUNNING*
    # A stop request goes to the head's job agent; the first request that reaches an agent makes
    # it create its JobManager (lazily, in Ray 2.60), which reconciles every job not terminal.
    if "stuck_s" in got:
        nudged = time.time()
        got["stop_answer"] = new.stop(job_id)
        info = _terminal_or_missing(new, job_id, nudged, time.time() + timeout, got, key="nudge_terminal_s")
    try:  # from the job agent of the driver's node (its address as recorded when it started)
        text = new.logs(job_id)
        got["logs"] = "readable" if "progress" in text else "empty"
        got["logs_done"] = "JOB DONE" in text
    except jobs.JobError as exc:
        got["logs"] = f"unreadable ({str(exc)[-120:]})"
        got["logs_done"] = False
    if info is not None:
        got["status"] = info.get("status")
        got["message"] = (info.get("message") or "").split(", last available logs")[0].strip()
    # the driver's own evidence: did it keep running after the crash, did it finish?
    end = t0 + seconds + 60
    while time.time() < end and not Path(str(mark) + ".done").exists():
        if not any(t > time.time() - 20 for t in progress(mark)) and time.time() > t0 + 30:
            break  # no progress for 20 s: the driver is gone
        time.sleep(1)
    got["work_done"] = Path(str(mark) + ".done").exists()
    got["rounds_after_crash"] = sum(1 for t in progress(mark) if t > t0)
    return got


def _terminal_or_missing(client: jobs.Client, job_id: str, t0: float, until: float, got: dict, key: str = "terminal_s"):
    """Poll the job (GET /api/jobs/<id> only) until it is terminal (its info; got[key] = seconds
    since t0), has stayed unlisted for 30 s (None), or wall-clock `until` (its last info)."""
    missing_since = None
    info = None
    while time.time() < until:
        try:
            info = client.request("GET", f"/api/jobs/{job_id}", ok404=True)
        except jobs.JobError:
            time.sleep(1)
            continue
        if info is None:
            missing_since = missing_since or time.monotonic()
            if time.monotonic() - missing_since > 30:
                return None
        else:
            missing_since = None
            if info.get("status") in jobs.TERMINAL:
                got[key] = time.time() - t0
                return info
        time.sleep(0.5)
    return info


needs = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("unshare") is None, reason="redis-server or unshare missing")


@pytest.fixture
def cluster():
    made = []

    def make(ft: bool):
        # A short path: Ray's socket paths (<temp>/session_<date>_<pid>/sockets/dash_MetricsHead)
        # must stay < 108 bytes; under pytest's tmp dirs a new head's dashboard failed to start.
        tmp = Path(tempfile.mkdtemp(prefix="jf", dir="/tmp"))
        dirs.append(tmp)
        redis = port = None
        if ft:
            redis, port = start_redis(tmp)
        nodes = make_nodes(tmp, ft, port)
        made.append((nodes, redis))
        return nodes, tmp

    dirs: list = []
    yield make
    for nodes, redis in made:
        nodes.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
    for tmp in dirs:
        shutil.rmtree(tmp, ignore_errors=True)


@needs
def test_without_gcs_ft_a_running_job_is_gone_after_the_failover(cluster):
    c, tmp = cluster(ft=False)
    got = run_case(c, "off", tmp)
    assert got["status_before"] == "RUNNING" and got["driver_ip"] == c.ips[0], got  # Ray's default: the driver on the head
    assert "api_s" in got, got  # the new head (the old worker) answers on the Jobs API ...
    assert got["listed"] is False and got["logs"].startswith("unreadable"), got  # ... but knows nothing of the job
    assert got["work_done"] is False, got


@needs
def test_with_gcs_ft_a_driver_on_the_head_dies_and_the_job_stays_running_until_stopped(cluster):
    c, tmp = cluster(ft=True)
    got = run_case(c, "ft-head", tmp)
    assert got["status_before"] == "RUNNING" and got["driver_ip"] == c.ips[0], got
    assert "api_s" in got and got["listed"] is True, got  # the restarted head keeps the job table (redis)
    assert "stuck_s" in got and got["driver_node_alive"] is False, got  # still RUNNING, its driver's node dead
    assert got["marked_lost"] is True, got  # `inv jobs` marks it RUNNING*
    assert got["stop_answer"] is False, got  # nothing to stop: the supervisor actor is gone ...
    assert got["status"] == "FAILED" and "supervisor" in got["message"], got  # ... but the request makes Ray mark it FAILED
    assert got["logs"] == "readable" and not got["logs_done"] and got["work_done"] is False, got


@needs
def test_with_gcs_ft_a_driver_off_the_head_survives_the_head_restart(cluster):
    c, tmp = cluster(ft=True)
    got = run_case(c, "ft-off-head", tmp)
    assert got["status_before"] == "RUNNING" and got["driver_ip"] == c.ips[1], got  # the worker runs the driver
    assert "api_s" in got and got["listed"] is True, got
    assert got["status"] == "SUCCEEDED" and "stuck_s" not in got, got
    assert got["logs"] == "readable" and got["logs_done"] and got["work_done"] is True, got
    assert got["rounds_after_crash"] > 0, got

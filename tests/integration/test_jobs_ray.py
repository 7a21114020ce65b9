"""Integration: `cslr.jobs` against a real Ray head's dashboard with token auth — the Jobs REST
API that `inv submit` and `inv jobs` speak without Ray installed: the working dir is packaged
and uploaded once, the CSLR example runs as a job across the node, logs are followed, stop and
the exit codes, and a wrong token is refused. The head runs with its own temp dir and ports
outside the ephemeral range, and only its own processes are stopped."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cslr import jobs
from tests._scripts import load_script
from tests.integration.test_ray_node_ray import RAY, _free_block

pytestmark = pytest.mark.integration
rn = load_script("ray_node")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-jobs-token-0123456789"


@contextlib.contextmanager
def ray_head(*extra: str, prefix: str = "rj"):
    """A Ray head with its dashboard (token auth) in its own temp dir and port block: the Jobs
    client for it. `extra`: more `ray start` arguments (e.g. `--num-gpus 1`). Stops only its own
    processes."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    base = _free_block("127.0.0.1")
    ports = [
        "--port",
        base,
        "--dashboard-port",
        base + 1,
        "--ray-client-server-port",
        base + 2,
        "--node-manager-port",
        base + 3,
        "--object-manager-port",
        base + 4,
        "--dashboard-agent-listen-port",
        base + 5,
        "--dashboard-agent-grpc-port",
        base + 6,
        "--runtime-env-agent-port",
        base + 7,
        "--metrics-export-port",
        base + 8,
        "--min-worker-port",
        base + 20,
        "--max-worker-port",
        base + 60,
    ]
    # `python` in a job's entrypoint is this interpreter (the raylet's PATH).
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--temp-dir",
        tmp,
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--include-dashboard",
        "true",
        *map(str, ports),
        *extra,
    ]
    log = open(Path(tmp) / "start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = jobs.Client(f"http://127.0.0.1:{base + 1}", TOKEN)
    try:
        import time

        deadline = time.monotonic() + 120
        while True:
            try:
                client.list()
                break
            except jobs.JobError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the Ray head's dashboard did not come up:\n" + (Path(tmp) / "start.log").read_text()[-3000:]) from exc
                time.sleep(1)
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        rn.kill_pids(rn.own_ray_pids(tmp), signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def dashboard():
    with ray_head() as client:
        yield client


def test_the_example_runs_as_a_job_from_an_uploaded_working_dir(dashboard):
    folder = ROOT / "examples" / "cslr"
    files = jobs.package_files(folder)
    assert {"train.py", "cslr_core.py", "cslr_backend.py", "cslr_torch.py"} <= set(files)
    name, data = jobs.build_package(folder, files)
    assert dashboard.upload(name, data) is True and dashboard.upload(name, data) is False  # content-addressed: once
    job = dashboard.submit("python train.py --epochs 2 --train 200 --test 50", f"gcs://{name}", submission_id="integration-cslr")
    lines = []
    status = jobs.wait(dashboard, job, out=lines.append, poll=1.0)
    text = "\n".join(lines)
    assert status == "SUCCEEDED" and jobs.exit_code(status) == 0, text
    assert "epoch  2/2" in text and "final test WER" in text
    assert any(j["submission_id"] == "integration-cslr" and j["status"] == "SUCCEEDED" for j in dashboard.list())


def test_the_example_trains_on_its_shipped_sample_data_set_as_a_job(dashboard):
    """`train.py --data sample`: the data set in the uploaded working dir, read by each worker
    (its share of train, dev and test); dev WER selects the epoch, test WER is computed once."""
    folder = ROOT / "examples" / "cslr"
    files = jobs.package_files(folder)
    assert "sample/annotations.csv" in files and sum(f.startswith("sample/keypoints/") for f in files) == 120
    name, data = jobs.build_package(folder, files)
    dashboard.upload(name, data)
    job = dashboard.submit(
        "python train.py --data sample --epochs 3 --batch 8 --workers 2 --backend python", f"gcs://{name}", submission_id="integration-cslr-data"
    )
    lines = []
    status = jobs.wait(dashboard, job, out=lines.append, poll=1.0)
    text = "\n".join(lines)
    assert status == "SUCCEEDED", text
    assert "data: sample: sentences train 60, dev 30, test 30; vocabulary 8 glosses (train split); 12 features per frame" in text
    assert "2 gradient worker(s): " in text and text.count("(30 sentences)") >= 2 and "dev_wer" in text and "test_wer" not in text.split("best dev WER")[0]
    dev = [float(m) for m in re.findall(r"dev_wer ([\d.]+)", text)]
    best = re.search(r"best dev WER ([\d.]+) at epoch (\d)/3; with that checkpoint, test WER ([\d.]+) \(30 sentences\)", text)
    assert len(dev) == 3 and best, text
    assert float(best.group(1)) == min(dev) and int(best.group(2)) == dev.index(min(dev)) + 1


def test_a_malformed_data_set_fails_the_job_with_exit_2_and_the_line(dashboard, tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "cslr", folder, ignore=shutil.ignore_patterns("__pycache__"))
    table = folder / "sample" / "annotations.csv"
    table.write_text(table.read_text().replace("synth00061|dev|", "synth00061|valid|"))
    name, data = jobs.build_package(folder, jobs.package_files(folder))
    dashboard.upload(name, data)
    job = dashboard.submit("python train.py --data sample --backend python", f"gcs://{name}", submission_id="integration-cslr-bad-data")
    lines = []
    status = jobs.wait(dashboard, job, out=lines.append, poll=1.0)
    text = "\n".join(lines)
    assert status == "FAILED" and "train.py: sample/annotations.csv, line 63: split: expected one of train, dev, test, found 'valid'" in text, text
    assert "Traceback" not in text


def test_failure_and_stop_give_their_exit_codes(dashboard):
    failed = dashboard.submit("python -c 'raise SystemExit(3)'")
    assert jobs.exit_code(jobs.wait(dashboard, failed, out=lambda s: None, poll=1.0)) == 1
    long = dashboard.submit("python -c 'import time; print(\"started\", flush=True); time.sleep(300)'")
    import time

    deadline = time.monotonic() + 60
    while "started" not in dashboard.logs(long) and time.monotonic() < deadline:
        time.sleep(1)
    assert dashboard.stop(long) is True
    assert jobs.exit_code(jobs.wait(dashboard, long, out=lambda s: None, poll=1.0)) == 130


def test_a_wrong_token_is_refused_with_a_clear_message(dashboard):
    with pytest.raises(jobs.JobError, match="refused the token"):
        jobs.Client(dashboard.base, "not-the-token").list()

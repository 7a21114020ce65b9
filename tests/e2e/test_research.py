"""End to end, a researcher's first day: the CSLR example submitted with `inv submit --wait` and
its MLflow run read back; `inv jobs`; the starter notebook run headless inside the Marimo
container against the cluster, MLflow and a /data folder; and real headless-browser screenshots
of the Marimo and MLflow pages.

Figures this module measures are printed (pytest -s, or the captured output of a failure):
`inv up` (warm: images present) and the time from submitting the example to its first metric.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import E2E_USER, clean_env, compose_cmd, invoking_uid

MLFLOW = "http://127.0.0.1:15000"
MARIMO = "http://127.0.0.1:18080"

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("dump_on_failure")]


def mlflow(method: str, path: str, **kw) -> dict:
    resp = requests.request(method, f"{MLFLOW}/api/2.0/mlflow/{path}", timeout=30, **kw)
    resp.raise_for_status()
    return resp.json()


def dotenv(inv) -> dict:
    return dict(line.split("=", 1) for line in (inv.workdir / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))


def test_submit_the_cslr_example_and_read_its_run_back_from_mlflow(inv):
    submitted = time.time()
    proc = inv(
        "submit", "--wait", "--name", "e2e-cslr", "--working-dir", str(inv.repo / "examples" / "cslr"), "--", "python", "train.py", "--epochs", "4", timeout=900
    )
    wall = time.time() - submitted
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gradient worker(s)" in proc.stdout and "final test WER" in proc.stdout and "job e2e-cslr SUCCEEDED" in proc.stdout
    # Data parallel across the cluster: one worker on each node.
    workers = next(line for line in proc.stdout.splitlines() if "gradient worker(s)" in line)
    assert "2 gradient worker(s)" in workers and "ray-cpu" in workers and "ray-gpu" in workers, workers

    exp = mlflow("GET", "experiments/get-by-name", params={"experiment_name": "cslr-example"})["experiment"]["experiment_id"]
    runs = mlflow("POST", "runs/search", json={"experiment_ids": [exp], "max_results": 5})["runs"]
    run = runs[0]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert 0.0 <= metrics["final_test_wer"] <= 1.0 and "test_wer" in metrics and params["workers"] == "2"
    # The default images carry no torch: `--backend auto` takes the pure-Python backend, which asks
    # Ray for no GPU even on ray-gpu; each worker's backend and device are params.
    assert params["backend_requested"] == "auto" and params["backend"] == "python", params
    assert [params[f"worker{i}_{k}"] for i in (0, 1) for k in ("backend", "device", "gpu_share")] == ["python", "cpu", "0.0"] * 2, params
    history = mlflow("GET", "metrics/get-history", params={"run_id": run["info"]["run_id"], "metric_key": "test_wer"})["metrics"]
    assert [m["step"] for m in history] == [1, 2, 3, 4]
    artifacts = mlflow("GET", "artifacts/list", params={"run_id": run["info"]["run_id"], "path": "model"})
    assert [f["path"] for f in artifacts.get("files", [])] == ["model/cslr_linear_ctc.json"]
    first_metric = min(m["timestamp"] for m in history) / 1000
    print(
        f"\nMEASURED warm `inv up`: {inv.up_seconds:.1f} s; submit -> first metric: {first_metric - submitted:.1f} s; "
        f"example wall (submit --wait): {wall:.1f} s; final test WER {metrics['final_test_wer']:.3f} after 4 epochs"
    )

    listed = inv("jobs", check=True).stdout
    assert any(line.split()[:2] == ["e2e-cslr", "SUCCEEDED"] for line in listed.splitlines()), listed
    logs = inv("jobs", "--logs", "e2e-cslr", check=True).stdout
    assert "final test WER" in logs


def test_the_cslr_example_trains_on_a_data_set_mounted_at_data_name(inv):
    """config.yaml `data: {cslr: ...}` holds the example's sample in its on-disk format; the job
    reads it at /data/cslr on both nodes (the default images: no NumPy, the stdlib .npy reader)."""
    proc = inv(
        "submit", "--wait", "--name", "e2e-cslr-data", "--working-dir", str(inv.repo / "examples" / "cslr"), "--",
        "python", "train.py", "--data", "/data/cslr", "--epochs", "3", "--batch", "8", "--run-name", "e2e-cslr-data", timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data: /data/cslr: sentences train 60, dev 30, test 30; vocabulary 8 glosses (train split); 12 features per frame" in proc.stdout, proc.stdout
    assert "2 gradient worker(s)" in proc.stdout and "(30 sentences)" in proc.stdout
    printed = re.search(r"best dev WER ([\d.]+) at epoch (\d)/3; with that checkpoint, test WER ([\d.]+) \(30 sentences\)", proc.stdout)
    assert printed, proc.stdout[-3000:]
    exp = mlflow("GET", "experiments/get-by-name", params={"experiment_name": "cslr-example"})["experiment"]["experiment_id"]
    [run] = mlflow("POST", "runs/search", json={"experiment_ids": [exp], "filter": "tags.mlflow.runName = 'e2e-cslr-data'"})["runs"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert f"{metrics['best_dev_wer']:.3f}" == printed.group(1) and metrics["best_epoch"] == int(printed.group(2))
    assert f"{metrics['test_wer']:.3f}" == printed.group(3) and "final_test_wer" not in metrics
    assert params["data"] == "/data/cslr" and params["data_train_sentences"] == "60" and params["vocabulary"] == "8", params
    history = mlflow("GET", "metrics/get-history", params={"run_id": run["info"]["run_id"], "metric_key": "dev_wer"})["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2, 3] and min(m["value"] for m in history) == metrics["best_dev_wer"]
    artifacts = mlflow("GET", "artifacts/list", params={"run_id": run["info"]["run_id"], "path": "model"})
    assert sorted(f["path"] for f in artifacts.get("files", [])) == ["model/cslr_linear_ctc.json", "model/vocabulary.json"]
    print(f"\nMEASURED the example on /data/cslr, 3 epochs: best dev WER {printed.group(1)} (epoch {printed.group(2)}), test WER {printed.group(3)}")


def test_a_failing_job_gives_its_exit_code(inv):
    proc = inv("submit", "--wait", "--working-dir", str(inv.repo / "examples" / "cslr"), "--", "python", "-c", "raise SystemExit(3)", timeout=300)
    assert proc.returncode == 1 and "FAILED" in proc.stdout, proc.stdout + proc.stderr


def test_the_starter_notebook_runs_headless_in_the_marimo_container(inv):
    folder = inv.workdir / "notebooks"
    assert folder.is_dir()  # created by `inv up`, as the user
    shutil.copy(inv.repo / "notebooks" / "start.py", folder / "start.py")
    compose = compose_cmd(inv.workdir / "_build")
    # Headless as a script: every cell runs, the process ends with 0.
    script = subprocess.run(compose + ["exec", "-T", "marimo", "python3", "/notebooks/start.py"], capture_output=True, text=True, env=clean_env(), timeout=300)
    assert script.returncode == 0, script.stdout[-3000:] + script.stderr[-3000:]
    # Headless export to HTML. Known limit (marimo 0.25.2 with a Ray client session): the export
    # writes the complete HTML but its kernel process does not exit (a kernel executor thread
    # stays blocked at shutdown), so it runs under a kill timeout and the HTML is what is checked.
    subprocess.run(compose + ["exec", "-T", "marimo", "rm", "-f", "/tmp/start.html"], capture_output=True, env=clean_env())
    subprocess.run(
        compose + ["exec", "-T", "marimo", "timeout", "-s", "KILL", "150", "marimo", "export", "html", "/notebooks/start.py", "-o", "/tmp/start.html"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
    )
    html = subprocess.run(compose + ["exec", "-T", "marimo", "cat", "/tmp/start.html"], capture_output=True, text=True, env=clean_env(), check=True).stdout
    assert "2 alive node(s)" in html and "2 task(s) ran" in html
    assert "Logged run" in html and "starter-notebook" in html
    assert "/data/sample" in html and "glosses.txt" in html  # the data folder of the e2e config, read-only
    assert mlflow("GET", "experiments/get-by-name", params={"experiment_name": "starter-notebook"})["experiment"]["experiment_id"]
    # Read-only: the notebook container cannot write into the data folder.
    touch = subprocess.run(compose + ["exec", "-T", "marimo", "touch", "/data/sample/x"], capture_output=True, text=True, env=clean_env())
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


# ------------------------------------------------------------------------------ whose files


def process_uids(inv, service: str, word: str) -> dict[int, int]:
    """Host pid -> real uid of the service's processes whose command line has `word`."""
    container = subprocess.run(
        compose_cmd(inv.workdir / "_build") + ["ps", "-q", service], capture_output=True, text=True, env=clean_env(), check=True
    ).stdout.strip()
    top = subprocess.run(["docker", "top", container, "-eo", "pid,uid,args"], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in top.splitlines()[1:]:
        pid, uid, args = line.split(None, 2)
        # Not docker-init (Compose's `init: true`, the container's own user) nor a healthcheck
        # that happens to run (Docker starts those as the container's user).
        if word in args and "docker-init" not in args and "--healthcheck" not in args:
            out[int(pid)] = int(uid)
    return out


def user_removes(inv, path: Path) -> None:
    gone = subprocess.run([*inv.prefix, "rm", "-r", str(path)], capture_output=True, text=True, env=inv.env)
    assert gone.returncode == 0 and not path.exists(), gone.stderr


def test_a_notebook_the_server_creates_and_a_jobs_workspace_files_belong_to_the_user(inv):
    uid = invoking_uid(inv)
    # The notebook server itself runs as the user who ran `inv`, not root.
    server = process_uids(inv, "marimo", "marimo edit")
    assert server and set(server.values()) == {uid}, server
    # A notebook created through the server's own API (the file explorer's "new notebook").
    session = requests.Session()
    page = session.get(f"{MARIMO}/?access_token={dotenv(inv)['MARIMO_TOKEN'].strip(chr(39))}", timeout=60)
    server_token = re.search(r'"serverToken"\s*:\s*"([^"]+)"', page.text).group(1)
    made = session.post(
        f"{MARIMO}/api/files/create",
        headers={"Marimo-Server-Token": server_token},
        files={"path": (None, "/notebooks"), "type": (None, "notebook"), "name": (None, "owned-by-you.py")},
        timeout=60,
    )
    assert made.status_code == 200 and made.json()["success"], made.text
    notebook = inv.workdir / "notebooks" / "owned-by-you.py"
    assert notebook.stat().st_uid == uid and "marimo.App" in notebook.read_text()
    user_removes(inv, notebook)

    # A Ray job: its driver (on the head) and its tasks (on both nodes) write into /workspace.
    job = inv.workdir / "owner-job"  # the user's own folder: `inv submit` reads it as them
    job.mkdir()
    (job / "write.py").write_text(
        "import os, socket, ray\n"
        "ray.init()\n"
        "out = '/workspace/e2e-owner'\n"
        "os.makedirs(out, exist_ok=True)\n"
        "@ray.remote(num_cpus=0.5, scheduling_strategy='SPREAD')\n"
        "def write(i):\n"
        "    with open(f'{out}/task-{i}-{socket.gethostname()}.txt', 'w') as f:\n"
        "        f.write('x')\n"
        "    return os.getuid()\n"
        "print('task uids', sorted(set(ray.get([write.remote(i) for i in range(4)]))))\n"
        "open(f'{out}/driver.txt', 'w').write(str(os.getuid()))\n"
    )
    if inv.prefix:
        subprocess.run(["chown", "-R", f"{E2E_USER}:", str(job)], check=True)
    proc = inv("submit", "--wait", "--working-dir", str(job), "--", "python", "write.py", timeout=600)
    assert proc.returncode == 0 and f"task uids [{uid}]" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = inv.workdir / "workspace" / "e2e-owner"
    files = sorted(p.name for p in out.iterdir())
    assert "driver.txt" in files and len(files) >= 2, files
    assert {p.stat().st_uid for p in [out, *out.iterdir()]} == {uid}
    user_removes(inv, out)
    # And Ray itself (raylet, GCS, the node entrypoint) runs as the user, on every node.
    for node in ("ray-cpu", "ray-gpu"):
        for word in ("ray_node.py", "raylet"):
            ray = process_uids(inv, node, word)
            assert ray and set(ray.values()) == {uid}, (node, word, ray)


# ------------------------------------------------------------------------------ screenshots


def png_colours(data: bytes) -> int:
    """Distinct colours of an 8-bit RGB/RGBA PNG (a small decoder: zlib + the five filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"), body[8], body[9]
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours = bytearray(stride), set()
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp * 4))  # every 4th pixel
        prev = line
    return len(colours)


def screenshot(url: str, out: Path) -> bytes:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is missing: tools/ci-deps.sh installs it")
    profile = tempfile.mkdtemp(prefix="cslr-chromium-")
    try:
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                "--virtual-time-budget=15000",
                f"--screenshot={out}",
                "--window-size=1280,900",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return out.read_bytes()


@pytest.mark.parametrize("page", ["mlflow", "marimo"])
def test_pages_render_in_a_headless_browser(inv, page, tmp_path):
    url = f"{MLFLOW}/" if page == "mlflow" else f"{MARIMO}/?access_token={dotenv(inv)['MARIMO_TOKEN'].strip(chr(39))}"
    data = screenshot(url, tmp_path / f"{page}.png")
    colours = png_colours(data)
    keep = Path(tempfile.gettempdir()) / f"cslr-e2e-{page}.png"
    keep.write_bytes(data)
    print(f"\n{page}: {len(data)} bytes, {colours} distinct colours (sampled); kept at {keep}")
    # A blank or error page has a handful of colours; a rendered UI (text anti-aliasing, icons,
    # tables) has many more.
    assert len(data) > 20_000 and colours >= 50, (len(data), colours)

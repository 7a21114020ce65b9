"""End to end, a researcher's first day: the CSLR example submitted with `inv submit --wait` and
its MLflow run read back; `inv jobs`; the starter notebook run headless inside the Marimo
container against the cluster, MLflow and a /data folder; and the three UIs in headless Chromium
driven as a person uses them (Selenium): the Ray dashboard through the health service's proxy
past its token dialog to both nodes, the example's run and its metric chart in MLflow, the
starter notebook in Marimo. Screenshots are kept at /tmp/cslr-e2e-*.png (paths printed).

Figures this module measures are printed (pytest -s, or the captured output of a failure):
`inv up` (warm: images present) and the time from submitting the example to its first metric.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.conftest import E2E_USER, clean_env, compose_cmd, invoking_uid

MLFLOW = "http://127.0.0.1:15000"
MARIMO = "http://127.0.0.1:18080"

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("dump_on_failure")]


def mlflow(method: str, path: str, base: str = MLFLOW, **kw) -> dict:
    resp = requests.request(method, f"{base}/api/2.0/mlflow/{path}", timeout=30, **kw)
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


# ------------------------------------------------------------------------------ in a real browser
#
# Headless Chromium driven through Selenium as a person would use the pages: from the addresses
# the `inv up` summary prints, typing the token into Ray's dialog, clicking through MLflow and
# Marimo. The assertions are on what the pages show (DOM text); screenshots are kept under
# /tmp/cslr-e2e-*.png (paths printed) for a person to look at. The dashboards are React apps that
# render late and re-render on their own (auto refresh): every step waits for its element
# (WebDriverWait, generous limits for a loaded 2-core machine), never for a fixed time.

BROWSER_WAIT_S = 180
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
    "--hide-scrollbars",
)


def summary_url(inv, service: str, after: str = "") -> str:
    """The address `inv up` printed for a service (its row of the summary table), as a user reads it.
    `after`: the label before the address when the row has several (the health row's dashboard)."""
    # The table's row (the lines before it follow the services' states while they start).
    rows = [line for line in inv.up_output.splitlines() if line.startswith(f"{service} ") and "://" in line]
    row = rows[-1] if rows else None
    assert row is not None, f"no {service} row in the `inv up` summary:\n{inv.up_output[-3000:]}"
    found = re.search(re.escape(after) + r"\s*(http://[^\s;,)]+)", row[row.index(after) :] if after else row)
    assert found, row
    return found.group(1)


def kept(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"cslr-e2e-{name}.png"


class Page:
    """One headless Chromium (fresh profile) with the waits and screenshots the tests share."""

    def __init__(self, name: str):
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            pytest.fail("selenium is missing: `make venv-test` installs requirements-test.lock")
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        if browser is None or not Path(driver).is_file():
            pytest.fail("chromium or chromedriver is missing: tools/ci-deps.sh installs both (chromium, chromium-driver)")
        self.name, self.profile = name, tempfile.mkdtemp(prefix="cslr-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*BROWSER_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(driver))
        self.driver.set_page_load_timeout(BROWSER_WAIT_S)
        self.shots: list[Path] = []
        kept(f"{name}-failed").unlink(missing_ok=True)  # an earlier run's

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is not None:  # the page as it was when the test failed
                self.shot("failed")
                print(f"\npage text at the failure ({self.driver.current_url}):\n{self.text()[:3000]}")
        finally:
            self.driver.quit()
            shutil.rmtree(self.profile, ignore_errors=True)

    def wait(self, condition, what: str, timeout: float = BROWSER_WAIT_S):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"{self.name}: waited {timeout:.0f} s for {what} at {self.driver.current_url}; the page shows:\n{self.text()[:3000]}"
            ) from None

    def clickable(self, xpath: str, what: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait(EC.element_to_be_clickable((By.XPATH, xpath)), what)

    def click(self, element) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except Exception as exc:  # the page is gone or in the middle of a navigation
            return f"(no page text: {exc.__class__.__name__})"

    def shot(self, step: str) -> Path:
        out = kept(f"{self.name}-{step}")
        self.driver.save_screenshot(str(out))
        self.shots.append(out)
        print(f"\nscreenshot: {out}")
        return out


def ray_dashboard_node_rows(url: str, token: str, nodes: dict[str, str]) -> dict[str, str]:
    """Open the Ray dashboard at `url`, type `token` into its dialog, open the Cluster tab and
    return each node's row text once every node of `nodes` (host name -> IP) shows ALIVE."""
    from selenium.webdriver.common.by import By

    with Page("ray-dashboard") as page:
        page.driver.get(url)
        # Token auth: the dashboard opens on Ray's own dialog and shows no cluster data.
        dialog = page.wait(
            lambda d: next(
                (e for e in d.find_elements(By.CSS_SELECTOR, "[role=dialog]") if e.is_displayed() and "Authentication Token Required" in e.text), None
            ),
            "the 'Authentication Token Required' dialog",
        )
        field = dialog.find_element(By.CSS_SELECTOR, "input[type=password]")
        submit = dialog.find_element(By.XPATH, ".//button[normalize-space()='Submit']")
        assert not submit.is_enabled()  # nothing typed yet
        page.shot("dialog")
        field.send_keys(token)  # typed as a person types it (a password field: the screenshot masks it)
        page.wait(lambda _: submit.is_enabled(), "the dialog's Submit button")
        page.click(submit)
        page.wait(lambda d: not [e for e in d.find_elements(By.ID, "token-auth-dialog-title") if e.is_displayed()], "the dialog to accept the token")
        # The dialog keeps the token in Ray's cookie for this address (README, "Then open Marimo").
        cookie = page.driver.get_cookie("ray-authentication-token")
        assert cookie is not None and cookie["value"] == token and cookie["httpOnly"], "the dashboard kept no ray-authentication-token cookie"

        page.click(page.clickable("//a[normalize-space()='Cluster']", "the Cluster tab"))

        def node_rows(d):
            rows = {host: row.text for host in nodes for row in d.find_elements(By.XPATH, f"//tr[td[normalize-space()='{host}']]")}
            return rows if len(rows) == len(nodes) and all("ALIVE" in text and nodes[h] in text for h, text in rows.items()) else None

        rows = page.wait(node_rows, f"the nodes ({', '.join(f'{h} {ip}' for h, ip in nodes.items())}) ALIVE in the node list")
        page.shot("cluster")
    return rows


def test_the_ray_dashboard_through_the_health_proxy_takes_the_token_and_lists_both_nodes(inv):
    url = summary_url(inv, "health", "dashboard / Jobs:")
    cfg = yaml.safe_load((inv.workdir / "config.yaml").read_text())
    nodes = {"ray-cpu": cfg["network"]["addresses"]["ray_cpu"], "ray-gpu": cfg["network"]["addresses"]["ray_gpu"]}
    rows = ray_dashboard_node_rows(url, dotenv(inv)["RAY_AUTH_TOKEN"].strip("'\""), nodes)
    # One of the two is the head (the health service's election), the dashboard marks it.
    assert sum(f"{ip} (Head)" in rows[host] for host, ip in nodes.items()) == 1, rows
    print(f"\nRay dashboard at {url}: " + "; ".join(f"{host}: {' '.join(rows[host].split()[:6])}" for host in nodes))


def latest_example_run(inv) -> dict:
    """The CSLR example's newest MLflow run; submitted here if this test runs on its own."""
    found = requests.get(f"{MLFLOW}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "cslr-example"}, timeout=30)
    if found.status_code != 200:
        proc = inv("submit", "--wait", "--working-dir", str(inv.repo / "examples" / "cslr"), "--", "python", "train.py", "--epochs", "4", timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = mlflow("GET", "experiments/get-by-name", params={"experiment_name": "cslr-example"})["experiment"]["experiment_id"]
    # The newest run of the example on its synthetic data (the run on /data/cslr logs other metrics).
    query = {"experiment_ids": [exp], "max_results": 1, "order_by": ["attributes.start_time DESC"], "filter": "tags.mlflow.runName != 'e2e-cslr-data'"}
    runs = mlflow("POST", "runs/search", json=query)["runs"]
    assert runs, "the cslr-example experiment has no run"
    return runs[0]


def mlflow_metric_chart(url: str, experiment: str, name: str, run_id: str, metric: str = "test_wer") -> tuple[int, str]:
    """Click from MLflow's home page at `url` to the run's metric charts; (the number of points of
    `metric`'s chart, that chart's text)."""
    from selenium.webdriver.common.by import By

    with Page("mlflow") as page:
        page.driver.get(url)
        # MLflow 3 opens on its GenAI view: a person training models switches to "Model training",
        # then opens the experiment from the home page's list and the run from its runs table.
        page.click(page.clickable("//*[@role='button'][normalize-space()='Model training']", "the 'Model training' switch"))
        page.click(page.clickable(f"//a[normalize-space()='{experiment}']", f"the {experiment} experiment in the list"))
        page.click(page.clickable(f"//a[normalize-space()='{name}']", f"the run {name} in the runs table"))
        page.wait(lambda d: run_id in d.current_url, "the run's page")
        # The Overview tab's metrics table: the example's metrics by name.
        metrics = ("train_loss", "test_wer", "epoch_seconds", "final_test_wer", "wall_seconds")
        page.wait(lambda d: all(d.find_elements(By.XPATH, f"//a[normalize-space()='{m}']") for m in metrics), f"the metrics {metrics} in the run's table")
        page.shot("run")
        # The metric history: the Model metrics tab charts the metric over the steps, a point each.
        page.click(page.clickable("//*[@role='tab'][normalize-space()='Model metrics']", "the 'Model metrics' tab"))
        card = f"//h4[@title='{metric}']/ancestor::*[.//*[contains(@class, 'scatterlayer')]][1]"
        chart = page.wait(lambda d: next(iter(d.find_elements(By.XPATH, card)), None), f"the {metric} chart")
        page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
        points = page.wait(lambda _: chart.find_elements(By.CSS_SELECTOR, ".scatterlayer .point") or None, f"the {metric} chart's points")
        text = chart.text
        page.shot("metrics")
    return len(points), text


def test_mlflow_shows_the_examples_run_with_its_metric_history(inv):
    url = summary_url(inv, "mlflow")
    run = latest_example_run(inv)
    name, run_id = run["info"]["run_name"], run["info"]["run_id"]
    steps = len(mlflow("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "test_wer"})["metrics"])
    points, text = mlflow_metric_chart(url, "cslr-example", name, run_id)
    assert points == steps == 4, (points, steps)
    assert f"{name} (test_wer)" in text and "Step" in text, text
    print(f"\nMLflow at {url}: run {name} with {points} test_wer points charted")


def marimo_first_cell(url: str, notebook: str) -> tuple[str, str]:
    """Open `notebook` from Marimo's file explorer at `url` (token included) and run its first
    cell: (the cell's code as the editor shows it, the text of the h1 it renders)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with Page("marimo") as page:
        page.driver.get(url)
        # The file explorer of the notebook folder; the notebook opens in a new tab.
        page.click(page.clickable(f"//a[.//*[normalize-space()='{notebook}']]", f"{notebook} in the file explorer"))
        page.wait(lambda d: len(d.window_handles) == 2, "the notebook's tab")
        page.driver.switch_to.window(page.driver.window_handles[-1])
        cell = page.wait(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, ".marimo-cell")), None), "the notebook's first cell")
        code = page.wait(lambda _: cell.text.strip(), "the first cell's code")
        assert f"file={notebook}" in page.driver.current_url and page.driver.title == notebook, (page.driver.current_url, page.driver.title)
        # Run the first cell (imports and the title) as from the keyboard: click into its code,
        # Ctrl+Enter (the cell's run button sits under the sticky title bar at the page's top).
        page.click(page.wait(lambda _: next(iter(cell.find_elements(By.CSS_SELECTOR, ".cm-content")), None), "the first cell's editor"))
        ActionChains(page.driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        heading = page.wait(lambda _: next((h for h in cell.find_elements(By.TAG_NAME, "h1") if h.is_displayed() and h.text), None), "the rendered title")
        title = heading.text
        page.shot("notebook")
    return code, title


def test_marimo_opens_the_starter_notebook(inv):
    shutil.copy(inv.repo / "notebooks" / "start.py", inv.workdir / "notebooks" / "start.py")
    # The summary masks the token; the user takes MARIMO_TOKEN from .env, as the table says.
    base = summary_url(inv, "marimo").split("?")[0]
    assert summary_url(inv, "marimo").startswith(base + "?access_token=")
    code, title = marimo_first_cell(base + f"?access_token={dotenv(inv)['MARIMO_TOKEN'].strip(chr(39))}", "start.py")
    assert 'mo.md(r"""' in code and "# Start here" in code, code
    assert title == "Start here", title
    print(f"\nMarimo at {base}: start.py open, its first cell ran and shows its title")

"""Day two on the real engine (issue 17): `inv backup` -> `inv down --volumes` -> `inv up` ->
`inv restore` gives back every MLflow run, its params, tags, metric histories and artifacts,
compared value by value through MLflow's own REST API (not counted), and the notebooks.

Runs first in the tier (file order) and leaves the stack up, restored, for the modules after it.
"""

from __future__ import annotations

import re
import stat
import tarfile
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.test_research import MLFLOW, mlflow

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("dump_on_failure")]


def seed(name: str, runs: int = 3, metrics: int = 3, steps: int = 20, base: str = MLFLOW) -> None:
    exp = mlflow("POST", "experiments/create", base=base, json={"name": name})["experiment_id"]
    for r in range(runs):
        run = mlflow("POST", "runs/create", base=base, json={"experiment_id": exp, "run_name": f"run-{r}", "start_time": 1_700_000_000_000 + r})["run"]["info"]
        run_id = run["run_id"]
        batch = {
            "run_id": run_id,
            "params": [{"key": "lr", "value": str(0.001 * (r + 1))}, {"key": "glosses", "value": "HELLO THANK-YOU"}],
            "tags": [{"key": "stage", "value": f"s{r}"}],
            "metrics": [
                {"key": f"m{k}", "value": (r + 1) * 0.5 + k * 0.25 - s / (s + 1), "timestamp": 1_700_000_000_000 + s, "step": s}
                for k in range(metrics)
                for s in range(steps)
            ],
        }
        mlflow("POST", "runs/log-batch", base=base, json=batch)
        # Through the server's artifact proxy (--serve-artifacts), as mlflow.log_artifact does.
        path = run["artifact_uri"].split("mlflow-artifacts:/", 1)[1]
        resp = requests.put(f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}/model-{r}.txt", data=f"weights of run {r}\n".encode() * 50, timeout=30)
        resp.raise_for_status()
        mlflow("POST", "runs/update", base=base, json={"run_id": run_id, "status": "FINISHED", "end_time": 1_700_000_100_000 + r})


def snapshot(base: str = MLFLOW) -> dict:
    """Everything a researcher reads back through the MLflow at `base`, keyed by experiment and run name."""
    out = {}
    exps = mlflow("POST", "experiments/search", base=base, json={"max_results": 1000}).get("experiments", [])
    for exp in exps:
        runs = mlflow("POST", "runs/search", base=base, json={"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])
        for run in runs:
            info, data = run["info"], run["data"]
            histories = {}
            for m in data.get("metrics", []):
                hist = mlflow("GET", "metrics/get-history", base=base, params={"run_id": info["run_id"], "metric_key": m["key"], "max_results": 25000})[
                    "metrics"
                ]
                histories[m["key"]] = sorted((h["step"], h["timestamp"], h["value"]) for h in hist)
            files = {}
            path = info["artifact_uri"].split("mlflow-artifacts:/", 1)[-1]
            listing = requests.get(f"{base}/api/2.0/mlflow-artifacts/artifacts", params={"path": path}, timeout=30).json()
            for f in listing.get("files", []):
                if not f.get("is_dir"):
                    files[f["path"]] = requests.get(f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}/{f['path']}", timeout=30).content
            key = (exp["name"], info.get("run_name") or info["run_id"])
            out[key] = {
                "run_id": info["run_id"],
                "status": info["status"],
                "params": sorted((p["key"], p["value"]) for p in data.get("params", [])),
                "tags": sorted((t["key"], t["value"]) for t in data.get("tags", []) if not t["key"].startswith("mlflow.log-model")),
                "metrics": histories,
                "artifacts": files,
            }
    return out


def test_backup_down_volumes_up_restore_gives_everything_back(inv):
    seed("backup-e2e")
    notebooks = inv.workdir / "notebooks"
    before = snapshot()
    assert sum(1 for k in before if k[0] == "backup-e2e") == 3
    assert all(v["artifacts"] for k, v in before.items() if k[0] == "backup-e2e")

    out = inv("backup", timeout=600)
    assert out.returncode == 0, out.stderr
    archive = Path(re.search(r"backup: wrote (\S+)", out.stdout).group(1))
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "env" not in names and {"manifest.json", "mlflow.pgdump", "artifacts.tar.gz", "notebooks.tar.gz", "config.yaml"} <= set(names)

    refused = inv("restore", str(archive))  # onto the same, non-empty stack: refused without --yes
    assert refused.returncode == 1 and "not empty" in refused.stderr and "--yes" in refused.stderr

    assert inv("down", "--volumes", "--yes", timeout=600).returncode == 0
    started = time.monotonic()
    assert inv("up", "--timeout", "600", timeout=900).returncode == 0
    empty = snapshot()
    assert not any(k[0] == "backup-e2e" for k in empty)

    t0 = time.monotonic()
    restored = inv("restore", str(archive), timeout=900)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(f"\nbackup: {archive.stat().st_size} bytes; up after down --volumes {t0 - started:.1f} s; restore {time.monotonic() - t0:.1f} s")
    assert "restore: verified" in restored.stdout
    after = snapshot()
    assert after == before  # every run, param, tag, metric value (step, timestamp) and artifact byte
    # A warm `inv up` over the restored volume: the upgrade phase reads the volume's Postgres
    # version and asks the MLflow image for its schema (no migration: same version), then starts.
    again = inv("up", "--timeout", "600", timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "upgrade:" not in again.stdout
    assert snapshot() == before
    if notebooks.is_dir() and any(notebooks.iterdir()):
        # The notebooks folder was not empty (down --volumes keeps host folders): restored beside it.
        assert "restore: notebooks ->" in restored.stdout

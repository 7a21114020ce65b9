#!/usr/bin/env python3
"""Benchmark: `inv backup` and `inv restore` of a lab-sized MLflow store (issue 17).

Purpose
    On the real engine, a stack of its own (project cslr-bench, its own subnet and ports, the
    default images or their local stand-ins): first the baseline - backup and restore of an
    empty stack (the fixed cost: pg_dump/pg_restore start-up, tar, MLflow restart, checks) -
    then RUNS runs with METRICS metrics x STEPS steps each, logged through MLflow's REST API
    (runs/log-batch, as mlflow.log_metrics does) plus one small artifact per 100 runs.  For each:
    archive size, `inv backup` time, `inv restore` time onto the stack after `inv down --volumes`
    and `inv up`, and the restore's own verification (row counts, artifact bytes).

Caller
    A developer, as root or a docker-group user, with the images built (make bases):
    ``.venv/bin/python bench/backup.py [--runs 1000] [--metrics 10] [--steps 100] [--write docs/benchmarks.md]``.
    Takes ~15-25 min on a 2-core machine (most of it logging the runs).

Outputs
    A Markdown section on stdout; with ``--write`` it replaces "## Backup and restore (bench/backup.py)".

Exit codes
    0  done;  1  a step failed (its output is printed);  2  usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._markdown import replace_section  # noqa: E402

HEADING = "## Backup and restore (bench/backup.py)"
# Its own subnet and host ports, apart from every e2e module's (tests/e2e: 172.29-172.31, 1xxxx,
# 2xxxx, 3xxxx): the bench runs beside the e2e tier without its lock.
MLFLOW_PORT = 24500
CONFIG = f"""project:
  name: cslr-bench
gpu: off
network:
  subnet: 172.26.0.0/16
  addresses: {{health: 172.26.0.2, ray_cpu: 172.26.0.10, ray_gpu: 172.26.0.11, redis: 172.26.0.20, mlflow: 172.26.0.30, postgres: 172.26.0.31, marimo: 172.26.0.40}}
images:
  source: auto
ray:
  cpu: {{cpus: 1, memory: 2g, shm_size: 1g, ports: {{gcs: 24379, dashboard: 24265, client: 24001}}}}
  gpu: {{ports: {{gcs: 24380, dashboard: 24266, client: 24002}}}}
services:
  health: {{port: 24888, ray_client_port: 24101, dashboard_port: 24260}}
  redis: {{enabled: false, port: 24381}}
  marimo: {{enabled: false, port: 24080}}
  mlflow: {{port: {MLFLOW_PORT}}}
"""


class Inv:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __call__(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
        if args[0] != "init":
            cmd += ["--config", str(self.workdir / "config.yaml"), "--out", str(self.workdir / "_build")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CSLR_", "HEAD_", "MLFLOW_", "REDIS_", "POSTGRES_", "MARIMO_", "COMPOSE_"))}
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout)
        proc.seconds = time.monotonic() - t0
        if proc.returncode != 0:
            print(f"$ inv {' '.join(args)} -> exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
            raise SystemExit(1)
        return proc


def api(method: str, path: str, body: Optional[dict] = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{MLFLOW_PORT}/api/2.0/{path}", data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:  # MLflow says why in the body
        raise SystemExit(f"MLflow {method} {path}: HTTP {err.code}: {err.read()[:500].decode(errors='replace')}") from None
    return json.loads(raw or b"{}")


def seed(runs: int, metrics: int, steps: int) -> float:
    exp = api("POST", "mlflow/experiments/create", {"name": "bench-backup"})["experiment_id"]

    def one(r: int) -> None:
        info = api("POST", "mlflow/runs/create", {"experiment_id": exp, "run_name": f"run-{r}", "start_time": 1_700_000_000_000 + r})["run"]["info"]
        values = [{"key": f"m{k}", "value": r + k / 10 + s / 1000, "timestamp": 1_700_000_000_000 + s, "step": s} for k in range(metrics) for s in range(steps)]
        api("POST", "mlflow/runs/log-batch", {"run_id": info["run_id"], "params": [{"key": "lr", "value": "0.001"}]})
        for i in range(0, len(values), 1000):  # MLflow takes at most 1000 entities (metrics + params + tags) per batch
            api("POST", "mlflow/runs/log-batch", {"run_id": info["run_id"], "metrics": values[i : i + 1000]})
        if r % 100 == 0:
            path = info["artifact_uri"].split("mlflow-artifacts:/", 1)[1]
            req = urllib.request.Request(
                f"http://127.0.0.1:{MLFLOW_PORT}/api/2.0/mlflow-artifacts/artifacts/{path}/model.bin", data=os.urandom(256 * 1024), method="PUT"
            )
            urllib.request.urlopen(req, timeout=120).read()

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(runs)))
    return time.monotonic() - t0


def cycle(inv: Inv) -> dict:
    """backup -> down --volumes -> up -> restore; the figures."""
    b = inv("backup")
    archive = Path(re.search(r"backup: wrote (\S+)", b.stdout).group(1))
    size = archive.stat().st_size
    inv("down", "--volumes", "--yes")
    u = inv("up", "--timeout", "900")
    r = inv("restore", str(archive))
    verified = re.search(r"restore: verified (.*)", r.stdout)
    archive.unlink()
    return {"backup_s": b.seconds, "size": size, "up_s": u.seconds, "restore_s": r.seconds, "verified": verified.group(1) if verified else "?"}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--write", type=Path, help="replace this bench's section of that Markdown file")
    args = ap.parse_args(argv)
    if min(args.runs, args.metrics, args.steps) < 1:
        ap.error("--runs, --metrics and --steps must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="cslr-bench-backup-"))
    (work / "config.yaml").write_text(CONFIG)
    (work / "notebooks").mkdir()
    inv = Inv(work)
    t_all = time.monotonic()
    try:
        inv("init", "--config", str(work / "config.yaml"))
        inv("down", "--volumes", "--yes")
        inv("up", "--timeout", "900")
        base = cycle(inv)
        seeded = seed(args.runs, args.metrics, args.steps)
        full = cycle(inv)
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "--search-root",
                str(ROOT),
                "down",
                "--volumes",
                "--yes",
                "--config",
                str(work / "config.yaml"),
                "--out",
                str(work / "_build"),
            ],
            capture_output=True,
            cwd=work,
        )
        shutil.rmtree(work, ignore_errors=True)
    values = args.runs * args.metrics * args.steps
    rows = [
        f"| empty stack (baseline) | {base['size'] / 2**20:.2f} | {base['backup_s']:.1f} | {base['restore_s']:.1f} | {base['up_s']:.1f} | {base['verified']} |",
        f"| {args.runs} runs x {args.metrics} metrics x {args.steps} steps ({values:,} values) | {full['size'] / 2**20:.2f} | {full['backup_s']:.1f} | "
        f"{full['restore_s']:.1f} | {full['up_s']:.1f} | {full['verified']} |",
    ]
    text = "\n".join(
        [
            HEADING,
            "",
            f"Measured on {platform.machine()} / {platform.system().lower()}, {os.cpu_count()} CPUs, the real engine with the local stand-in images; "
            f"whole run {time.monotonic() - t_all:.0f} s (logging the runs through MLflow's REST API, 4 at a time: {seeded:.0f} s). "
            "Times are whole `inv` commands; `inv up` is after `inv down --volumes` (images present).",
            "",
            "| store | archive (MiB) | `inv backup` (s) | `inv restore` (s) | `inv up` before the restore (s) | restore verified |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Ratio to the empty baseline: backup x{full['backup_s'] / base['backup_s']:.1f}, restore x{full['restore_s'] / base['restore_s']:.1f}.",
            "",
        ]
    )
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

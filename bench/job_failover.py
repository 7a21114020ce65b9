#!/usr/bin/env python3
"""Benchmark: what happens to a running Ray job when the head fails, with and without GCS FT.

Purpose
    Real Ray 2.60: two scripts/ray_node.py nodes (127.0.0.2 head, 127.0.0.3 worker) in their
    own PID namespaces with token auth - tests/integration/test_ray_node_ray.py's RayNodes -
    and, for the GCS-FT cases, a redis-server. A job is submitted through `cslr.jobs` (the Jobs
    REST API of the head's dashboard, working dir uploaded as `inv submit` does); it runs Ray
    tasks on both nodes for ~60 s. A few rounds in, the head is crashed (SIGKILL of the whole
    node, as a container dying); with GCS FT it is started again at once (a restart policy),
    without it the worker becomes the head of a new cluster and the old head joins it.
    The scenario itself is tests/integration/test_job_failover_ray.py's ``run_case``; cases:
      off           no GCS FT, the driver where Ray puts it (the head)
      off-off-head  no GCS FT, the driver kept off the head (`inv submit --off-head`)
      ft-head       GCS FT, the driver on the head (Ray's default)
      ft-off-head   GCS FT, the driver kept off the head
    Per trial: the job's status and message afterwards (from the new or restarted head's Jobs
    API), whether it is listed at all, whether its logs are readable, whether its work finished
    (a file the driver writes at the end), and the times from the crash until the Jobs API
    answers again and until the job is terminal. A job the Jobs API still shows RUNNING after the
    job could have ended is "stuck"; the bench then stops it (`inv jobs --stop`: the request
    reaches the head's job agent) and times how long Ray then takes to mark it terminal.

Caller
    A developer: ``flock /tmp/cslr-heavy.lock .venv/bin/python bench/job_failover.py
    [--trials 3] [--cases off,ft-head,...] [--seconds 60] [--write docs/benchmarks.md] [--json out.json]
    [--merge earlier.json]``.

Outputs
    A Markdown section on stdout; with ``--write`` it replaces the section
    "## A running job when the head fails (bench/job_failover.py)" of that file; with ``--json``
    every trial's observations.

Exit codes
    0  done;  1  a trial could not be run (setup failed);  2  usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._markdown import replace_section  # noqa: E402

HEADING = "## A running job when the head fails (bench/job_failover.py)"
CASES = ("off", "off-off-head", "ft-head", "ft-off-head")
LABEL = {
    "off": "no GCS FT, driver on the head",
    "off-off-head": "no GCS FT, driver off the head",
    "ft-head": "GCS FT, driver on the head (`--on-head`)",
    "ft-off-head": "GCS FT, driver off the head (the default since issue 18)",
}


def trial(case: str, workdir: Path, seconds: float) -> dict:
    from tests.integration.test_job_failover_ray import make_nodes, run_case, start_redis

    workdir.mkdir(parents=True)
    redis = port = None
    if case.startswith("ft"):
        redis, port = start_redis(workdir)
    nodes = make_nodes(workdir, case.startswith("ft"), port)
    try:
        return run_case(nodes, case, workdir, seconds=seconds)
    except BaseException as exc:  # RayNodes reports a setup timeout with pytest.fail (an OutcomeException)
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"{case}: trial failed: {type(exc).__name__}: {str(exc)[:2000]}", file=sys.stderr)
        return {"case": case, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    finally:
        try:
            nodes.stop()
        except BaseException as exc:  # noqa: BLE001 - a node that does not stop cleanly must not end the run
            print(f"{case}: stop: {exc!r}"[:300], file=sys.stderr)
        if redis is not None:
            redis.terminate()
            redis.wait(10)


def fmt_times(values: List[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return " / ".join(f"{v:.1f}" for v in values)


def outcome(rs: List[dict], key: str) -> str:
    seen: dict = {}
    for r in rs:
        v = r.get(key)
        v = "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))
        seen[v] = seen.get(v, 0) + 1
    return ", ".join(f"{v} ({n}/{len(rs)})" if len(seen) > 1 else v for v, n in seen.items())


def table(results: List[dict], cases: List[str]) -> List[str]:
    lines = [
        "| case | trials | listed afterwards | status afterwards | message | logs | work finished | crash -> Jobs API answers (s) | crash -> terminal (s) | still RUNNING at (s) | stop (or logs) request -> terminal (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        rs = [r for r in results if r.get("case") == case and "error" not in r]
        if not rs:
            continue
        lines.append(
            f"| {LABEL[case]} | {len(rs)} | {outcome(rs, 'listed')} | {outcome(rs, 'status')} | {outcome(rs, 'message')} | "
            f"{outcome([dict(r, logs=r.get('logs', '-').split(' (')[0]) for r in rs], 'logs')} | {outcome(rs, 'work_done')} | "
            f"{fmt_times([r['api_s'] for r in rs if 'api_s' in r])} | {fmt_times([r['terminal_s'] for r in rs if 'terminal_s' in r])} | "
            f"{fmt_times([r['stuck_s'] for r in rs if 'stuck_s' in r])} | {fmt_times([r['nudge_terminal_s'] for r in rs if 'nudge_terminal_s' in r])} |"
        )
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the job runs tasks (default 60)")
    ap.add_argument("--write", metavar="MARKDOWN", help="replace this benchmark's section of that file")
    ap.add_argument("--json", metavar="FILE", help="also write every trial's observations")
    ap.add_argument("--merge", metavar="FILE", action="append", default=[], help="add the trials of an earlier run's --json to the table")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad or args.trials < 1:
        print(f"usage: unknown case(s) {bad}; cases are {', '.join(CASES)}; --trials >= 1", file=sys.stderr)
        return 2
    if not shutil.which("redis-server") or not shutil.which("unshare"):
        print("needs redis-server and unshare (tools/ci-deps.sh)", file=sys.stderr)
        return 1
    started = time.monotonic()
    earlier: List[dict] = [r for f in args.merge for r in json.loads(Path(f).read_text())]
    results: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="jf", dir="/tmp") as tmp:  # Ray's socket paths must stay < 108 bytes
        for k in range(args.trials):
            for case in cases:
                got = trial(case, Path(tmp) / f"{case}-{k}", args.seconds)
                print(json.dumps(got), file=sys.stderr, flush=True)
                results.append(got)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r]
    merged = f" plus {len(earlier)} trials of earlier runs (--merge)" if earlier else ""
    lines = [
        HEADING,
        "",
        f"Measured on {platform.machine()} / {platform.system().lower()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"Ray {_ray_version()}; whole run {time.monotonic() - started:.0f} s, {len(results)} trials ({len(failed)} could not be run){merged}. "
        f"Two real scripts/ray_node.py nodes (head 127.0.0.2, worker 127.0.0.3, 1 CPU each, own PID namespaces, token auth); "
        f"a job submitted through `cslr.jobs` runs 2 one-CPU Ray tasks per round for {args.seconds:.0f} s; a few rounds in, the head "
        "is crashed (SIGKILL of the whole node). With GCS FT (redis, `HEAD_LOSS_GRACE_S` 90) the head is started again at once; "
        "without it the worker becomes the head and the old head rejoins as a worker. Times are per trial, sorted.",
        "",
        *table(earlier + results, cases),
        "",
        '"Still RUNNING at": the job was still RUNNING this long after the crash although its driver was gone (only '
        "`GET /api/jobs/<id>` was asked meanwhile; `inv jobs` marked it `RUNNING*`); the bench then stopped it "
        "(`POST /api/jobs/<id>/stop`, as `inv jobs --stop` does; trials merged from runs before that asked for its logs), "
        "which reaches a job agent and makes that agent's JobManager (created lazily by Ray 2.60 on the first such request) "
        "reconcile the job: the last column.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(Path(args.write), HEADING, text)
    return 1 if failed else 0


def _ray_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

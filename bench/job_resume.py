#!/usr/bin/env python3
"""Benchmark: the CSLR example through a node's death with the survival defaults, against the
undisturbed run.

Purpose
    Real Ray 2.60: two scripts/ray_node.py nodes (127.0.0.2 head, 127.0.0.3 worker, 2 CPUs each,
    own PID namespaces, token auth: tests/integration/test_ray_node_ray.py's RayNodes) with GCS
    fault tolerance on a redis-server (what `ray.gcs_fault_tolerance: auto` gives a stack with
    Redis). The example (examples/cslr/train.py, synthetic data, a checkpoint every epoch) is
    submitted as `inv submit --wait` does it - `cslr.jobs.submit`: the driver off the head, up to
    2 retries after a node loss - and, once its checkpoint reaches epoch KILL_AT, one node is
    crashed (SIGKILL of the whole node, as a container dying) and started again at once (a
    restart policy). Faults:
      none     the undisturbed run
      head     the head crashes (the driver, on the worker, carries on: GCS FT; Ray restarts the
               gradient worker that was on the head)
      worker   the worker crashes (the driver dies with it: the job is retried and resumes from
               the checkpoint)
      redis    the Redis that holds the GCS state is killed (SIGKILL) and started again at once
               on its append-only file, as the stack's Redis (`--appendonly yes`, a volume) is
    Per trial: attempts, the epoch the retry resumed from, epochs redone (epochs trained twice),
    seconds from the crash to training progressing again (the next epoch completed after the
    crash, minus the undisturbed run's median epoch time: the stall), the wall time and the final
    test WER, against the undisturbed run.

Caller
    A developer: ``flock /tmp/cslr-heavy.lock .venv/bin/python bench/job_resume.py
    [--faults none,head,worker] [--epochs 12] [--write docs/benchmarks.md] [--json out.json]``.
    Needs redis-server and unshare, as root (the integration tier's prerequisites).

Outputs
    A Markdown section on stdout; with ``--write`` it replaces the section
    "## A run through a node's death (bench/job_resume.py)" of that file.

Exit codes
    0  done;  1  a trial failed;  2  usage.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._markdown import replace_section  # noqa: E402

HEADING = "## A run through a node's death (bench/job_resume.py)"
FAULTS = ("none", "head", "worker", "redis")
KILL_AT = 3
EPOCH_LINE = re.compile(r"^epoch +(\d+)/(\d+) .*test_wer ([\d.]+) +\(([\d.]+) s\)", re.M)


def checkpoint_epoch(folder: Path) -> tuple[int, float]:
    path = folder / "checkpoint.json"
    try:
        return json.loads(path.read_text())["epoch"], path.stat().st_mtime
    except (OSError, ValueError, KeyError):
        return -1, 0.0


def start_redis_aof(workdir: Path, port: int):
    """redis-server on 127.0.0.1:`port` keeping its data in an append-only file in `workdir`."""
    import subprocess

    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def trial(fault: str, workdir: Path, epochs: int) -> dict:
    from cslr import config, jobs
    from tests.integration.test_job_failover_ray import TOKEN, dashboard, make_nodes, poll
    from tests.integration.test_ray_node_ray import _free_block

    workdir.mkdir(parents=True)
    port = _free_block("127.0.0.1")
    redis = start_redis_aof(workdir, port)
    nodes = make_nodes(workdir, True, port)
    nodes.extra["RAY_NUM_CPUS"] = "2"
    nodes.extra["HEAD_LOSS_GRACE_S"] = "45"
    a, b = nodes.ips
    got: dict = {"fault": fault}
    try:
        nodes.start(a)
        nodes.wait_role(a, "head", nodes.addr(a), timeout=180)
        nodes.start(b)
        nodes.wait_role(b, "worker", nodes.addr(a), timeout=180)
        client = dashboard(nodes, a)
        assert poll(lambda: sum(n.get("state") == "ALIVE" for n in client.nodes()) == 2, 180), "both nodes never alive"
        (workdir / "config.yaml").write_text("{}\n")
        cfg = config.load(workdir / "config.yaml", environ={"RAY_AUTH_TOKEN": TOKEN})
        jobs.client_for = lambda _cfg: client  # the head's dashboard (no health service here)
        ckpt = workdir / "checkpoints"
        command = f"python train.py --train 400 --test 100 --epochs {epochs} --checkpoint-every 1 --checkpoint-dir {ckpt}"
        lines: list[tuple[float, str]] = []
        result: dict = {}

        def run():
            result["code"] = jobs.submit(
                cfg, command, ROOT / "examples" / "cslr", name=f"resume-{fault}", follow=True, out=lambda t: lines.append((time.time(), t)), retries=2
            )

        started = time.time()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        crash_at = None
        if fault != "none":
            while thread.is_alive() and checkpoint_epoch(ckpt)[0] < KILL_AT:
                time.sleep(0.2)
            got["epoch_at_kill"] = checkpoint_epoch(ckpt)[0]
            crash_at = time.time()
            if fault == "redis":
                redis.kill()
                redis.wait(10)
                redis = start_redis_aof(workdir, port)
            else:
                victim = a if fault == "head" else b
                nodes.crash(victim)
                nodes.start(victim)  # the restart policy
            # Training stands still from the crash until epochs complete again: the longest gap
            # between consecutive checkpoints after the crash (the crash itself the first mark).
            marks, last = [crash_at], got["epoch_at_kill"]
            while thread.is_alive():
                epoch = checkpoint_epoch(ckpt)[0]
                if epoch != last:
                    marks.append(time.time())
                    last = epoch
                time.sleep(0.05)
            gaps = [b - a for a, b in zip(marks, marks[1:])]
            got["stall_s"] = max(gaps) if gaps else None
        thread.join(1800)
        got["wall_s"] = time.time() - started
        got["code"] = result.get("code")
        text = "\n".join(t for _, t in lines)
        got["attempts"] = len(re.findall(r"^submitted ", text, re.M))
        resumed = re.search(r"resumed from checkpoint epoch (\d+)/", text)
        got["resumed_from"] = int(resumed.group(1)) if resumed else None
        done = EPOCH_LINE.findall(text)
        got["epochs_trained"] = len(done)
        got["epochs_redone"] = len(done) - len({e for e, *_ in done})
        got["epoch_s"] = statistics.median(float(s) for *_, s in done) if done else None
        finals = re.findall(r"final test WER ([\d.]+)", text)
        got["final_wer"] = float(finals[-1]) if finals else None
        got["retry_reason"] = next((t.split(": ", 1)[1] for _, t in lines if t.startswith("retrying")), None)
        died = re.search(r"a Ray node this job used died \((\w+)", text)
        got["driver_saw"] = died.group(1) if died else None  # what the example's driver got from Ray, if it lived
        if got["code"] != 0:
            got["error"] = text[-1500:]
        return got
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        got["error"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
        return got
    finally:
        for ip in nodes.ips:
            try:
                nodes.crash(ip)
            except Exception:
                pass
        redis.kill()


def render(trials: list[dict], epochs: int, wall: float) -> str:
    base = next((t for t in trials if t["fault"] == "none" and not t.get("error")), None)
    out = [
        HEADING,
        "",
        f"Measured on {platform.machine()} / {platform.system().lower()}, Python {platform.python_version()}, Ray 2.60.0; whole run {wall:.0f} s. "
        f"Two real scripts/ray_node.py nodes (2 CPUs each, own PID namespaces, token auth) with GCS fault tolerance on a redis-server; "
        f"the CSLR example (synthetic data, 400 train sentences, {epochs} epochs, a checkpoint every epoch) submitted by `cslr.jobs.submit` "
        f"with the defaults (driver off the head, 2 retries); at checkpoint epoch {KILL_AT} one node (or Redis) is crashed (SIGKILL; of the whole node) and started again at once.",
        "",
        "| fault | exit | attempts | why retried | resumed from epoch | epochs redone | training stalled (s) | median epoch (s) | wall (s) | wall over undisturbed (s) | final test WER |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        if t.get("error") and t.get("code") is None:
            out.append(f"| {t['fault']} | error: {t['error'][:120]} | | | | | | | | | |")
            continue
        stall = t.get("stall_s")
        extra = t["wall_s"] - base["wall_s"] if base and t is not base else None
        cells = [
            t["fault"],
            str(t.get("code")),
            str(t.get("attempts")),
            (t.get("retry_reason") or "-") + (f" ({t['driver_saw']})" if t.get("driver_saw") else ""),
            "-" if t.get("resumed_from") is None else str(t["resumed_from"]),
            str(t.get("epochs_redone")),
            "-" if stall is None else f"{stall:.1f}",
            "-" if t.get("epoch_s") is None else f"{t['epoch_s']:.1f}",
            f"{t['wall_s']:.0f}",
            "-" if extra is None else f"{extra:+.0f}",
            "-" if t.get("final_wer") is None else f"{t['final_wer']:.3f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        '"Training stalled": the longest time without a completed epoch from the crash on (the crash the first mark; it includes one '
        "epoch's own work), i.e. from the kill to training progressing again. "
        "Epochs redone: epochs trained twice (at most one checkpoint interval). "
        "A resumed run ends with the undisturbed run's WER: the data order is seeded by the epoch and the checkpoint holds the optimizer's state "
        "(tests/test_cslr_checkpoint.py asserts it bit for bit).",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--write", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if any(f not in FAULTS for f in faults) or args.epochs <= KILL_AT:
        print(f"job_resume.py: --faults: expected some of {', '.join(FAULTS)}; --epochs > {KILL_AT}", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None or shutil.which("unshare") is None:
        print("job_resume.py: needs redis-server and unshare", file=sys.stderr)
        return 1
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="crb-", dir="/tmp"))  # short: Ray's AF_UNIX socket paths must fit 107 bytes
    trials = []
    try:
        for fault in faults:
            got = trial(fault, root / fault, args.epochs)
            print(json.dumps(got), file=sys.stderr, flush=True)
            trials.append(got)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = render(trials, args.epochs, time.monotonic() - started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(trials, indent=1))
    if args.write:
        replace_section(args.write, HEADING, text)
    return 1 if any(t.get("code") != 0 for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark of the head election in scripts/ray_node.py.

Purpose
    N whitelisted candidates start together, each on its own loopback address
    127.0.0.(2..N+1) with its real node agent (TCP); a plain TCP listener stands in for
    Ray's head port, since this measures the protocol, not Ray.  Candidates run as
    threads of this process (the protocol is I/O bound; separate interpreters would
    mostly measure Python start-up on 2 cores).  Per N it reports
      * split-brain trials (more than one node decided head; goal 0),
      * time until every node agrees on one head (p50 / p95; goal <= 2 s at N = 64),
      * time from head loss (the head's agent and port vanish, as in a crash) until
        every surviving node agrees on a new head, with the production defaults
        (probe every HEAD_MONITOR_INTERVAL_S = 1 s, HEAD_LOSS_PROBES = 3).

Caller
    A developer: ``.venv/bin/python bench/election.py [--sizes 4,16,64] [--trials 200]
    [--loss-trials 10] [--write docs/benchmarks.md]``.

Outputs
    A Markdown table on stdout; with ``--write`` it also replaces the section
    "## Election (bench/election.py)" of that file (other sections are kept).

Exit codes
    0  done, no split brain;  1  a split brain or a trial that never agreed;  2  usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Election (bench/election.py)"


def load_ray_node():
    if str(ROOT / "scripts") not in sys.path:  # ray_node imports its sibling cslr_control
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("cslr_script_ray_node", ROOT / "scripts" / "ray_node.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q * (len(ordered) - 1)))))
    return ordered[k]


class FakeLauncher:
    """Stands in for ``ray start``: a head opens a TCP listener on its GCS port."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.sock: Optional[socket.socket] = None
        self.running = False

    def sweep(self) -> None:
        pass

    def start(self, decision) -> None:
        self.running = True
        if decision.role == "head":
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.ip, self.port))
            s.listen(512)  # the kernel completes handshakes; nobody needs to accept
            self.sock = s

    def alive(self) -> bool:
        return self.running

    def stop(self, timeout=None) -> None:
        self.running = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Trial:
    def __init__(self, rn, n: int, port: int, seed: int) -> None:
        self.rn, self.n = rn, n
        ips = [f"127.0.0.{i + 2}" for i in range(n)]
        whitelist = ",".join(ips)
        self.decisions: dict = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.runners, self.threads, self.launchers = [], [], []
        self.go = threading.Event()
        for i, ip in enumerate(ips):
            env = {
                "NODE_HOSTNAME": ip,
                "NODE_IP": ip,
                "HEAD_WHITELIST": whitelist,
                "RAY_HEAD_PORT": str(port),
                "NODE_AGENT_BIND": ip,
                "RAY_TEMP_DIR": f"/nonexistent/{i}",
                "CSLR_CONTROL_SECRET": "bench-control-secret-0123456789",
            }
            cfg = rn.load_config(env)
            launcher = FakeLauncher(ip, port)
            runner = rn.NodeRunner(cfg, launcher, rng=random.Random(seed * 1000 + i), http_fn=lambda *a, **k: (0, None), on_decision=self._recorder(i))
            runner.write_state = lambda: None
            self.runners.append(runner)
            self.launchers.append(launcher)
            self.threads.append(threading.Thread(target=self._run, args=(runner,), daemon=True))

    def _recorder(self, i: int):
        def record(decision) -> None:
            with self.changed:
                self.decisions[i] = (time.monotonic(), decision.role, decision.head_address)
                self.changed.notify_all()

        return record

    def _run(self, runner) -> None:
        self.go.wait()
        runner.run()

    def start(self) -> float:
        for t in self.threads:
            t.start()
        t0 = time.monotonic()
        self.go.set()
        return t0

    def wait_agreement(self, members: List[int], since: float, timeout: float):
        """(time of agreement or None, number of distinct heads decided since ``since``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                recent = {i: d for i, d in self.decisions.items() if i in members and d[0] >= since}
                heads = {i for i, d in recent.items() if d[1] == "head"}
                targets = {d[2] for d in recent.values()}
                if len(recent) == len(members) and len(targets) == 1 and len(heads) == 1:
                    return max(d[0] for d in recent.values()), len(heads)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, len(heads)
                self.changed.wait(min(left, 0.5))

    def crash(self, i: int) -> float:
        runner, launcher = self.runners[i], self.launchers[i]
        t = time.monotonic()
        launcher.stop()
        if runner.agent is not None:
            runner.agent.close()
        runner.stop.set()
        return t

    def finish(self) -> None:
        for r in self.runners:
            r.stop.set()
        for t in self.threads:
            t.join(10)


def run_size(rn, n: int, trials: int, loss_trials: int, rng: random.Random) -> dict:
    agree, loss, split, failed = [], [], 0, 0
    for k in range(trials + loss_trials):
        port = rng.randrange(30000, 39000)
        trial = Trial(rn, n, port, seed=k)
        try:
            t0 = trial.start()
            t_agree, heads = trial.wait_agreement(list(range(n)), t0, timeout=30)
            if heads > 1:
                split += 1
            if t_agree is None:
                failed += 1
                continue
            if k < trials:
                agree.append(t_agree - t0)
                continue
            head = next(i for i, d in trial.decisions.items() if d[1] == "head")
            survivors = [i for i in range(n) if i != head]
            t_kill = trial.crash(head)
            t_new, heads = trial.wait_agreement(survivors, t_kill, timeout=60)
            if heads > 1:
                split += 1
            if t_new is None:
                failed += 1
            else:
                loss.append(t_new - t_kill)
        finally:
            trial.finish()
    return {
        "n": n,
        "trials": trials,
        "split": split,
        "failed": failed,
        "p50": percentile(agree, 0.5),
        "p95": percentile(agree, 0.95),
        "max": max(agree or [float("nan")]),
        "loss_trials": loss_trials,
        "loss_p50": percentile(loss, 0.5),
        "loss_p95": percentile(loss, 0.95),
    }


def render(results: List[dict], seconds: float) -> str:
    lines = [
        HEADING,
        "",
        f"Measured on {platform.machine()} / {sys.platform}, Python {platform.python_version()}, "
        f"{__import__('os').cpu_count()} CPUs; candidates are threads with real TCP node agents "
        "on 127.0.0.x, a TCP listener stands in for Ray's head port; whole run "
        f"{seconds:.0f} s.  Head loss uses the production defaults (probe every 1 s, "
        "3 misses), so it is dominated by the ~3 s detection.",
        "",
        "| N | trials | split-brain | no agreement | agree p50 (s) | agree p95 (s) | agree max (s) | head-loss trials | new head p50 (s) | new head p95 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']} | {r['trials']} | {r['split']} | {r['failed']} | {r['p50']:.3f} | {r['p95']:.3f} "
            f"| {r['max']:.3f} | {r['loss_trials']} | {r['loss_p50']:.2f} | {r['loss_p95']:.2f} |"
        )
    lines.append("")
    lines.append("Goals: 0 split-brain trials; every node agrees within 2 s (p95) at N = 64.")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace our section (up to the next "## " heading) or append it; keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADING), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.write_text(new)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="head-election benchmark")
    parser.add_argument("--sizes", default="4,16,64")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--loss-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", metavar="MARKDOWN", help="update this file's election section")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if any(not 1 <= n <= 250 for n in sizes):
        parser.error("sizes must be 1..250 (one 127.0.0.x address each)")
    rn = load_ray_node()
    rn.log = lambda msg: None  # thousands of decision lines would drown the table
    rng = random.Random(args.seed)
    started = time.monotonic()
    results = []
    for n in sizes:
        r = run_size(rn, n, args.trials, args.loss_trials, rng)
        print(f"N={n}: {r}", file=sys.stderr, flush=True)
        results.append(r)
    section = render(results, time.monotonic() - started)
    print(section)
    if args.write:
        write_section(Path(args.write), section)
    return 1 if any(r["split"] or r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

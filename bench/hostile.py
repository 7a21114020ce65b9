#!/usr/bin/env python3
"""Benchmark: the control plane while strangers hold slow connections open (issue 16).

Purpose
    Real processes on loopback: scripts/health.py and a whitelisted scripts/ray_node.py head
    (its ``ray`` is the stand-in of tests/_scripts.py: a GCS port that accepts TCP), with a
    second whitelisted address of higher priority for a candidate.  Two phases in one run:
      * quiet (the baseline),
      * flood: FLOOD connections to the head's election agent and FLOOD to the health service,
        from 50 loopback source addresses, each trickling one byte every 0.3 s and opened again
        whenever the server lets it go (what a stranger without the secret can do).
    Per phase: latency of ``GET /`` (a fresh connection each, as the container healthcheck
    does), the time a higher-priority candidate's ``ray_node.py --decide`` takes to join the
    head, how often ``known_head`` differed from the head, and how many heads there were.
    The figures are ratios flood / quiet, measured in the same run.

Caller
    A developer: ``.venv/bin/python bench/hostile.py [--flood 500] [--requests 40] [--decides 5]
    [--write docs/benchmarks.md]``.

Outputs
    A Markdown section on stdout; with ``--write`` it replaces the section
    "## Slow strangers (bench/hostile.py)" of that file.

Exit codes
    0  done;  1  a second head, or a phase in which GET / or the candidate never succeeded;  2  usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._markdown import replace_section  # noqa: E402
from tests._scripts import CONTROL_SECRET, fake_ray_bin, free_port  # noqa: E402

HEADING = "## Slow strangers (bench/hostile.py)"
PY = sys.executable
A, B = "127.0.8.2", "127.0.8.3"  # A: whitelist[0], the candidate; B: the running head
SOURCES = [f"127.0.9.{i}" for i in range(1, 51)]


class Trickle:
    """``n`` connections to ``target``, one byte each every ``every`` s; reopened when let go."""

    def __init__(self, target, n: int, prefix: bytes = b"", every: float = 0.3) -> None:
        self.target, self.prefix, self.every = target, prefix, every
        self.socks: List[Optional[socket.socket]] = [None] * n
        self.sent = [0] * n
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + 900  # bounded whatever happens to the caller
        while not self.stop.is_set() and time.monotonic() < end:
            for i, s in enumerate(self.socks):
                if s is None:
                    s = socket.socket()
                    s.settimeout(1.0)
                    try:
                        s.bind((SOURCES[i % len(SOURCES)], 0))
                        s.connect(self.target)
                    except OSError:
                        s.close()
                        continue
                    self.socks[i], self.sent[i] = s, 0
                    self.opened += 1
                try:
                    s.send(self.prefix[self.sent[i] : self.sent[i] + 1] or b"x")
                    self.sent[i] += 1
                except OSError:
                    s.close()
                    self.socks[i] = None
            self.stop.wait(self.every)
        for s in self.socks:
            if s is not None:
                s.close()


def free_pair(hosts) -> int:
    while True:
        port = free_port()
        if port > 64000:
            continue
        try:
            for h in hosts:
                for p in (port, port + 1000):
                    with socket.socket() as s:
                        s.bind((h, p))
            return port
        except OSError:
            continue


def get_status(port: int, timeout: float = 10.0):
    """(seconds, parsed GET / or None)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        body = json.loads(data.partition(b"\r\n\r\n")[2])
    except (OSError, ValueError):
        body = None
    return time.monotonic() - t0, body


def pct(values: List[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


def phase(name: str, env: dict, hport: int, head: str, requests: int, decides: int) -> dict:
    lat, wrong, failed = [], 0, 0
    for _ in range(requests):
        took, body = get_status(hport)
        if body is None:
            failed += 1
            continue
        lat.append(took)
        wrong += body.get("known_head") != head
        time.sleep(0.05)
    dec, heads = [], 0
    for _ in range(decides):
        t0 = time.monotonic()
        out = subprocess.run(
            [PY, str(ROOT / "scripts" / "ray_node.py"), "--decide", "--decide-timeout", "60"], env=env, capture_output=True, text=True, timeout=120
        )
        if out.returncode == 0:
            d = json.loads(out.stdout)
            heads += d["role"] == "head"
            dec.append(time.monotonic() - t0)
    return {"name": name, "lat": lat, "failed": failed, "wrong": wrong, "dec": dec, "heads": heads, "decides": decides}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=500, help="slow connections to the agent and to health, each")
    ap.add_argument("--requests", type=int, default=40, help="GET / per phase")
    ap.add_argument("--decides", type=int, default=5, help="candidate elections per phase")
    ap.add_argument("--write", type=Path, help="replace this bench's section of that Markdown file")
    args = ap.parse_args(argv)
    if args.flood < 1 or args.requests < 1 or args.decides < 1:
        ap.error("--flood, --requests and --decides must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="cslr-hostile-"))
    port, hport = free_pair([A, B]), free_port()
    base = dict(os.environ, CSLR_CONTROL_SECRET=CONTROL_SECRET, HEAD_WHITELIST=f"{A},{B}", RAY_HEAD_PORT=str(port))
    health = subprocess.Popen(
        [PY, str(ROOT / "scripts" / "health.py")],
        env=dict(base, HEALTH_BIND="127.0.0.1", HEALTH_PORT=str(hport)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node_env = dict(base, RAY_BIN=fake_ray_bin(), HEALTH_URL=f"http://127.0.0.1:{hport}", PEER_DEAD_AFTER_S="1")
    head = subprocess.Popen(
        [PY, str(ROOT / "scripts" / "ray_node.py")],
        env=dict(node_env, NODE_HOSTNAME=B, NODE_IP=B, NODE_AGENT_BIND=B, RAY_TEMP_DIR=str(tmp / "b")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cand_env = dict(node_env, NODE_HOSTNAME=A, NODE_IP=A, NODE_AGENT_BIND=A, RAY_TEMP_DIR=str(tmp / "a"))
    want = f"{B}:{port}"
    floods: List[Trickle] = []
    try:
        end = time.monotonic() + 60
        while (get_status(hport)[1] or {}).get("known_head") != want:
            if time.monotonic() > end:
                print("the head was never elected", file=sys.stderr)
                return 1
            time.sleep(0.2)
        t_start = time.monotonic()
        quiet = phase("quiet", cand_env, hport, want, args.requests, args.decides)
        floods = [Trickle((B, port + 1000), args.flood), Trickle(("127.0.0.1", hport), args.flood, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")]
        time.sleep(3.0)
        flood = phase("flood", cand_env, hport, want, args.requests, args.decides)
        opened = [f.opened for f in floods]
        took = time.monotonic() - t_start
    finally:
        for f in floods:
            f.stop.set()
        for p in (head, health):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    rows = []
    for r in (quiet, flood):
        rows.append(
            f"| {r['name']} | {len(r['lat'])}/{len(r['lat']) + r['failed']} | {pct(r['lat'], 0.5) * 1000:.1f} | {pct(r['lat'], 0.95) * 1000:.1f} | "
            f"{max(r['lat'], default=float('nan')) * 1000:.1f} | {r['wrong']} | {len(r['dec'])}/{r['decides']} | {pct(r['dec'], 0.5):.2f} | "
            f"{max(r['dec'], default=float('nan')):.2f} | {r['heads']} |"
        )
    ratio_get = pct(flood["lat"], 0.5) / pct(quiet["lat"], 0.5) if quiet["lat"] and flood["lat"] else float("nan")
    ratio_dec = pct(flood["dec"], 0.5) / pct(quiet["dec"], 0.5) if quiet["dec"] and flood["dec"] else float("nan")
    text = "\n".join(
        [
            HEADING,
            "",
            f"Measured on {platform.machine()} / {platform.system().lower()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; whole run {took:.0f} s. "
            f"Real scripts/health.py and scripts/ray_node.py on loopback (Ray's stand-in: a TCP port). Flood: {args.flood} connections to the head's "
            f"election agent and {args.flood} to health, from 50 source addresses, one byte each every 0.3 s, reopened when let go "
            f"({opened[0]} / {opened[1]} connections opened in all).",
            "",
            "| phase | GET / answered | GET / p50 (ms) | p95 (ms) | max (ms) | known_head wrong | candidate decided | decide p50 (s) | max (s) | candidate became head |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Flood / quiet: GET / p50 x{ratio_get:.2f}, candidate decision p50 x{ratio_dec:.2f}. Goal: every GET / answered, the candidate "
            "always joins the head (0 second heads), known_head never wrong.",
            "",
        ]
    )
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)
    bad = flood["heads"] or quiet["heads"] or not flood["lat"] or not flood["dec"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

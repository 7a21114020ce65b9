"""Benchmark: `inv up` until every service is healthy, against `docker compose up --wait` on the
same `_build/compose.yaml`, with warm images, alternating in one run. Also samples the stack's
memory (`docker stats`) and reports its peak.

Uses the e2e stack (tests/e2e/config.yaml; its images on the local bases: run `make bases` first).
Each start begins from the same state: containers removed, volumes kept.

    .venv/bin/python bench/up.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cslr import compose  # noqa: E402

UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_mem(text: str) -> int:
    match = re.match(r"([0-9.]+)\s*([A-Za-z]+)", text.strip())
    return int(float(match.group(1)) * UNITS.get(match.group(2).lower(), 1)) if match else 0


class MemorySampler(threading.Thread):
    """Sum of the project's container memory, sampled until stopped; keeps the peak."""

    def __init__(self, project: str):
        super().__init__(daemon=True)
        self.project, self.peak, self.stop = project, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ids = subprocess.run(
                ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"], capture_output=True, text=True
            ).stdout.split()
            if ids:
                out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *ids], capture_output=True, text=True).stdout
                total = sum(parse_mem(line.split("/")[0]) for line in out.splitlines() if line.strip())
                self.peak = max(self.peak, total)
            self.stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CSLR_", "HEAD_", "COMPOSE_"))}
    env["CSLR_PROJECT"] = "cslr-bench"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("config.yaml", "no-gpu-devices.yaml"):
            shutil.copy(ROOT / "tests" / "e2e" / name, work / name)
        inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
        where = ["--config", str(work / "config.yaml"), "--out", str(work / "_build")]
        subprocess.run([*inv, "init", "--config", str(work / "config.yaml")], env=env, check=True, capture_output=True)
        subprocess.run([*inv, "generate", *where], env=env, check=True, capture_output=True)
        plain = compose.compose_command([work / "_build" / "compose.yaml"], [], env_file=work / "_build" / ".env", binary=[compose.compose_binary()])
        down = plain + ["down"]
        sampler = MemorySampler("cslr-bench")
        sampler.start()
        t_inv, t_plain = [], []
        try:
            # Warm-up: builds the thin images and initialises the volumes once.
            subprocess.run([*inv, "up", *where], env=env, check=True, capture_output=True)
            subprocess.run(down, env=env, check=True, capture_output=True)
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run([*inv, "up", *where], env=env, check=True, capture_output=True)
                t_inv.append(time.perf_counter() - start)
                subprocess.run(down, env=env, check=True, capture_output=True)
                start = time.perf_counter()
                subprocess.run(plain + ["up", "-d", "--wait"], env=env, check=True, capture_output=True)
                t_plain.append(time.perf_counter() - start)
                subprocess.run(down, env=env, check=True, capture_output=True)
        finally:
            sampler.stop.set()
            sampler.join()
            subprocess.run(plain + ["down", "--volumes"], env=env, capture_output=True)
    m_inv, m_plain = statistics.median(t_inv), statistics.median(t_plain)
    print(f"inv up                    median {m_inv:6.1f} s  runs {', '.join(f'{t:.1f}' for t in t_inv)}")
    print(f"docker compose up --wait  median {m_plain:6.1f} s  runs {', '.join(f'{t:.1f}' for t in t_plain)}")
    print(f"ratio {m_inv / m_plain:.2f}x (target ≤ 1.1x); peak stack memory {sampler.peak / 1024**3:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

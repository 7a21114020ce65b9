"""Benchmark: cold `inv generate` against plain `docker compose config` on the same files.

Both run as fresh processes (cold: a new Python interpreter each time for `inv generate`), in
one run, alternating, repeated. Prints medians and the ratio; target ratio ≤ 1.5.

    .venv/bin/python bench/generate.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cslr import compose, config  # noqa: E402
from cslr.gpu import GpuState  # noqa: E402

SECRETS = "POSTGRES_PASSWORD=a\nREDIS_PASSWORD=b\nMARIMO_TOKEN=c\nRAY_AUTH_TOKEN=d\n"


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "config.yaml").write_text((ROOT / "config.yaml").read_text().replace("$schema=schema/", f"$schema={ROOT}/schema/"))
        (work / ".env").write_text(SECRETS)
        (work / "bin").mkdir()  # no nvidia-smi: the same detection cost every run
        env = compose.subprocess_env()
        env["PATH"] = f"{work / 'bin'}{os.pathsep}{env['PATH']}"
        # The same files, the same env file, as plain Compose sees them.
        cfg = config.load(work / "config.yaml", environ={})
        plan = compose.plan(cfg, GpuState("auto"))
        compose.generate(plan, work / "_build")
        plain = plan.command(["config"], env_file=work / "_build" / ".env", binary=[compose.compose_binary()])
        ours = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "generate", "--out", str(work / "_out")]
        t_ours, t_plain = [], []
        timed(ours, work, env), timed(plain, ROOT, env)  # warm the page cache, not the processes
        for _ in range(args.repeat):
            t_ours.append(timed(ours, work, env))
            t_plain.append(timed(plain, ROOT, env))
    m_ours, m_plain = statistics.median(t_ours), statistics.median(t_plain)
    print(f"inv generate          median {m_ours * 1000:7.1f} ms  (min {min(t_ours) * 1000:.1f}, max {max(t_ours) * 1000:.1f})")
    print(f"docker compose config median {m_plain * 1000:7.1f} ms  (min {min(t_plain) * 1000:.1f}, max {max(t_plain) * 1000:.1f})")
    ratio = m_ours / m_plain
    print(f"ratio {ratio:.2f}x (target ≤ 1.5x) over {args.repeat} runs each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

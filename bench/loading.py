"""Benchmark: load + validate of hostile config files against the shipped config.yaml.

Each case runs in a fresh child process (so peak RSS is its own), in one run, alternating with
the baseline, repeated. Prints, per case, the median wall time and the peak RSS, and both as a
ratio to the shipped config.yaml measured in the same run. What the gates promise: every
hostile case costs at most a small multiple of a normal load (no case grows with what an alias
or a nesting would expand to), and every one ends with exit code 2.

    .venv/bin/python bench/loading.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRETS = "POSTGRES_PASSWORD=a\nREDIS_PASSWORD=b\nMARIMO_TOKEN=c\nRAY_AUTH_TOKEN=d\n"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from cslr import config, validate
from cslr.errors import PlatformError
start = time.perf_counter()
code = 0
try:
    validate.validate(config.load(sys.argv[2], environ={}))
except PlatformError as exc:
    code = exc.exit_code
elapsed = time.perf_counter() - start
print(json.dumps({"code": code, "seconds": elapsed, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def bomb() -> str:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(levels) + "\n"


def cases(work: Path) -> dict[str, Path]:
    out = {}

    def text(name: str, body: str | bytes) -> None:
        d = work / name
        d.mkdir()
        (d / ".env").write_text(SECRETS)
        path = d / "config.yaml"
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        out[name] = path

    text("shipped", (ROOT / "config.yaml").read_text())
    text("alias-bomb", bomb())
    text("recursive-alias", "nodes:\n  head_whitelist: &a [*a]\n")
    text("deep-nesting", "a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    text("python-tag-key", "!!python/object/apply:os.system [id]: 1\n")
    text("latin-1", b"gpu: caf\xe9\n")
    text("wrong-types", "nodes: {head_whitelist: 42}\nnetwork: {addresses: 42}\nhosts: [{}]\n")
    text("1-MiB-comment", "# " + "x" * (1024 * 1024 - 4) + "\n")  # just under the cap: valid, read in full
    big = work / "20-MB-file"
    big.mkdir()
    (big / ".env").write_text(SECRETS)
    with open(big / "config.yaml", "wb") as handle:
        handle.truncate(20 * 1024 * 1024)
    out["20-MB-file"] = big / "config.yaml"
    fifo = work / "fifo"
    fifo.mkdir()
    (fifo / ".env").write_text(SECRETS)
    os.mkfifo(fifo / "config.yaml")
    out["fifo"] = fifo / "config.yaml"
    zero = work / "dev-zero"
    zero.mkdir()
    (zero / ".env").write_text(SECRETS)
    (zero / "config.yaml").symlink_to("/dev/zero")
    out["dev-zero"] = zero / "config.yaml"
    return out


VALID = {"shipped", "1-MiB-comment"}


def run(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path)], capture_output=True, text=True, timeout=120, cwd=path.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{path}: child failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        all_cases = cases(Path(tmp))
        results: dict[str, list[dict]] = {name: [] for name in all_cases}
        for _ in range(args.repeat):
            for name, path in all_cases.items():  # the baseline runs in every round, between cases
                results[name].append(run(path))
                results["shipped"].append(run(all_cases["shipped"]))
    base_t = statistics.median(r["seconds"] for r in results["shipped"])
    base_m = statistics.median(r["maxrss_kib"] for r in results["shipped"])
    print(f"{'case':<16} {'exit':>4} {'median ms':>10} {'x shipped':>9} {'peak RSS MiB':>12} {'x shipped':>9}")
    worst = 0.0
    for name, rs in results.items():
        t = statistics.median(r["seconds"] for r in rs)
        m = statistics.median(r["maxrss_kib"] for r in rs)
        codes = {r["code"] for r in rs}
        print(f"{name:<16} {','.join(map(str, codes)):>4} {t * 1000:>10.1f} {t / base_t:>9.2f} {m / 1024:>12.1f} {m / base_m:>9.2f}")
        expected = {0} if name in VALID else {2}
        if name not in VALID:
            worst = max(worst, t / base_t)
        if codes != expected:
            print(f"  {name}: expected exit code {expected}, got {codes}")
            return 1
    print(f"worst hostile-case time ratio {worst:.2f} (load + validate in-process; the interpreter start is not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

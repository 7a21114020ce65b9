"""Benchmark: one training epoch of the CSLR example on its two gradient backends, pure Python
(cslr_core) against PyTorch on the CPU (cslr_torch), in one process, alternating, repeated.

What is timed is one gradient worker's epoch at train.py's default sizes on the two-node stack
(1600 sentences over 2 workers: a shard of 800, 16 per worker per step, 50 steps; weights in and
gradient out as lists, as over Ray) plus the driver's Adam steps and held-out decode (300
sentences, pure Python in both). Torch gets one thread, as a Ray worker with num_cpus=1 does
(Ray sets OMP_NUM_THREADS=1). Ray's own messaging is the same for both and left out. Prints the
median seconds per backend and the ratio; both losses, to show they agree.

    .venv/bin/python bench/cslr_backends.py [--repeat 3] [--shard 800] [--per-worker 16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "cslr"))
import cslr_core as core  # noqa: E402
import cslr_torch  # noqa: E402


def epoch(backend: str, samples, test, shard, per_worker: int) -> tuple[float, float, float, float]:
    """(epoch seconds, of which gradient seconds, mean train loss, test WER) of one epoch from
    the same start."""
    model = core.Model.create(8, 12, 1, seed=0)
    opt = core.Adam((model.classes, model.inputs), lr=0.05)
    order = list(range(len(samples)))
    random.Random(0).shuffle(order)
    worker = core.Model.create(8, 12, 1)
    loss_sum, in_grad = 0.0, 0.0
    start = time.perf_counter()
    for step in range(len(samples) // per_worker):
        batch = order[step * per_worker : (step + 1) * per_worker]
        weights = [row[:] for row in model.weights]  # what crosses Ray: a copy
        t0 = time.perf_counter()
        if backend == "torch":
            loss, grad = shard.loss_and_grad(weights, batch)
        else:
            worker.weights = weights
            loss, grad = 0.0, [[0.0] * model.inputs for _ in range(model.classes)]
            for i in batch:
                sample_loss, g = worker.loss_and_grad(samples[i])
                loss += sample_loss
                core.add_into(grad, g)
        in_grad += time.perf_counter() - t0
        total = [[0.0] * model.inputs for _ in range(model.classes)]
        core.add_into(total, grad, 1.0 / len(batch))
        loss_sum += loss
        opt.step(model.weights, total)
    test_wer = core.wer([s.glosses for s in test], [model.decode(s.frames) for s in test])
    return time.perf_counter() - start, in_grad, loss_sum / len(samples), test_wer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--shard", type=int, default=800)
    p.add_argument("--per-worker", type=int, default=16)
    args = p.parse_args(argv)
    cslr_torch.torch.set_num_threads(1)
    samples = core.make_dataset(args.shard, seed=1)
    test = core.make_dataset(300, seed=10**6)
    setup = time.perf_counter()
    shard = cslr_torch.TorchShard(samples, 1)
    setup = time.perf_counter() - setup
    times: dict[str, list[float]] = {"python": [], "torch": []}
    grads: dict[str, list[float]] = {"python": [], "torch": []}
    results = {}
    for _ in range(args.repeat):
        for backend in times:
            seconds, in_grad, loss, test_wer = epoch(backend, samples, test, shard, args.per_worker)
            times[backend].append(seconds)
            grads[backend].append(in_grad)
            results[backend] = (loss, test_wer)
    py, th = statistics.median(times["python"]), statistics.median(times["torch"])
    py_grad, th_grad = statistics.median(grads["python"]), statistics.median(grads["torch"])
    print(f"torch {cslr_torch.torch.__version__}, 1 thread; shard {args.shard}, {args.per_worker} per step; TorchShard setup {setup:.2f} s")
    for backend in times:
        loss, test_wer = results[backend]
        runs = ", ".join(f"{t:.2f}" for t in times[backend])
        median, grad_median = statistics.median(times[backend]), statistics.median(grads[backend])
        print(f"{backend:>6}: epoch median {median:.2f} s ({runs}), of which gradients {grad_median:.2f} s; train loss {loss:.6f}, test WER {test_wer:.3f}")
    print(f"torch-cpu / python: epoch {th / py:.3f}x, gradients {th_grad / py_grad:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

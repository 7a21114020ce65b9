"""Train a small continuous sign-language recognizer with CTC, data-parallel across the Ray
cluster's nodes, and log it to MLflow.

Submit it as a Ray job from the repository root (the folder is uploaded as the job's working dir):

    .venv/bin/inv submit --wait --working-dir examples/cslr -- python train.py

Data: seeded synthetic keypoint sequences labelled with gloss sequences (cslr_core.make_dataset).
Each node runs one worker actor that generates and holds its own shard of the training set;
every step the driver sends the current weights, each worker returns the summed CTC gradient of
its part of the mini-batch, and the driver averages them and takes an Adam step (synchronous
data parallelism). After each epoch the driver decodes the held-out test set and logs its WER.

MLflow (MLFLOW_TRACKING_URI, set on every node by the stack): params, per-epoch `train_loss`,
`test_wer` and `epoch_seconds`, the final `final_test_wer`, and the model as an artifact.
Backends (`--backend auto|python|torch`, cslr_backend.choose_backend): the gradients are
computed by the pure-Python model (cslr_core, the default images: no torch) or by PyTorch
(cslr_torch, when torch imports: examples/cslr/requirements-gpu.txt). `auto` takes torch when it
imports. CPU by default; with the torch backend, a worker placed on a node with GPUs requests a
GPU share from Ray (cslr_backend.gpu_shares), Ray sets its CUDA_VISIBLE_DEVICES, and the worker
uses `cuda:0` when torch.cuda.is_available(), else the CPU, and says why
(cslr_backend.choose_device). Each worker's backend and device are logged as MLflow params
`worker<i>_backend`, `worker<i>_device` (and `worker<i>_device_reason`, `worker<i>_gpu_ids`).
Exit code 0 when training finished (whatever the WER), 1 on failure, 2 when the requested backend
cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import ray
from cslr_backend import BACKENDS, BackendError, choose_backend, choose_device, gpu_shares, torch_import_error
from cslr_core import Adam, Model, add_into, make_dataset, wer


@ray.remote(num_cpus=1)
class ShardWorker:
    """One shard of the training set, generated where it lives; computes gradients on it with the
    backend the driver chose, on the device `choose_device` picks from what Ray assigned it."""

    def __init__(self, shard: int, size: int, seed: int, vocab: int, keypoints: int, context: int, backend: str = "python"):
        import socket

        self.samples = make_dataset(size, seed=seed * 1000 + shard + 1, vocab=vocab, keypoints=keypoints)
        self.model = Model.create(vocab, 2 * keypoints, context)
        self.host = socket.gethostname()
        self.backend = backend
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.shard = None
        if backend == "torch":
            import cslr_torch

            self.device, self.reason = choose_device(backend, self.gpu_ids, cslr_torch.torch.cuda.is_available())
            self.shard = cslr_torch.TorchShard(self.samples, context, self.device)
        else:
            self.device, self.reason = choose_device(backend, self.gpu_ids, False)

    def info(self) -> dict:
        return {
            "host": self.host,
            "sentences": len(self.samples),
            "backend": self.backend,
            "device": self.device,
            "reason": self.reason,
            "gpu_ids": self.gpu_ids,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def grad(self, weights: list[list[float]], epoch: int, step: int, per_worker: int) -> tuple[list[list[float]], float, int]:
        order = list(range(len(self.samples)))
        random.Random(epoch).shuffle(order)
        batch = order[step * per_worker : (step + 1) * per_worker]
        if self.shard is not None:
            loss, total = self.shard.loss_and_grad(weights, batch)
            return total, loss, len(batch)
        self.model.weights = weights
        total = [[0.0] * self.model.inputs for _ in range(self.model.classes)]
        loss = 0.0
        for i in batch:
            sample_loss, g = self.model.loss_and_grad(self.samples[i])
            loss += sample_loss
            add_into(total, g)
        return total, loss, len(batch)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=1600, help="training sentences in total (split across the workers)")
    p.add_argument("--test", type=int, default=300, help="held-out sentences")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=32, help="global mini-batch size")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--vocab", type=int, default=8, help="glosses")
    p.add_argument("--keypoints", type=int, default=6)
    p.add_argument("--context", type=int, default=1, help="neighbouring frames on each side the model sees")
    p.add_argument("--workers", type=int, default=0, help="gradient workers (default: one per alive node)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="gradient backend: torch when it imports (auto), or force one")
    p.add_argument("--experiment", default="cslr-example")
    p.add_argument("--run-name", default=None)
    return p.parse_args(argv)


def worker_params(info: dict, share: float) -> dict:
    return {
        "backend": info["backend"],
        "device": info["device"],
        "device_reason": info["reason"],
        "gpu_share": share,
        "gpu_ids": ",".join(info["gpu_ids"]) or "none",
    }


def start_mlflow(args, params: dict):
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        print("MLFLOW_TRACKING_URI is not set: nothing is logged to MLflow")
        return None
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # no git in the image: MLflow need not say so thrice
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(args.experiment)
    run = mlflow.start_run(run_name=args.run_name)
    mlflow.log_params(params)
    print(f"MLflow: experiment {args.experiment!r}, run {run.info.run_id} at {uri}")
    return mlflow


def pick_backend(requested: str) -> tuple[str, str]:
    """(backend, reason) for this driver's interpreter; the workers run the same image."""
    error = torch_import_error() if requested != "python" else None
    version = ""
    if requested != "python" and error is None:
        import torch

        version = torch.__version__
    return choose_backend(requested, error, version)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    try:
        backend, backend_reason = pick_backend(args.backend)
    except BackendError as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 2
    print(f"backend: {backend} ({backend_reason})")
    ray.init(logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    gpus = ray.cluster_resources().get("GPU", 0)
    count = args.workers or len(nodes)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    per_shard = args.train // count
    placement = [i % len(nodes) for i in range(count)]
    shares = gpu_shares([n["Resources"].get("GPU", 0) for n in nodes], placement, use_gpus=backend == "torch")
    workers = []
    for i, (n, share) in enumerate(zip(placement, shares)):
        strategy = NodeAffinitySchedulingStrategy(nodes[n]["NodeID"], soft=True)
        options = {"scheduling_strategy": strategy, **({"num_gpus": share} if share else {})}
        workers.append(ShardWorker.options(**options).remote(i, per_shard, args.seed, args.vocab, args.keypoints, args.context, backend))
    placed = ray.get([w.info.remote() for w in workers])
    print(f"{count} gradient worker(s): " + ", ".join(f"{p['host']} ({p['sentences']} sentences)" for p in placed) + f"; cluster GPUs: {gpus:g}")
    for i, (p, share) in enumerate(zip(placed, shares)):
        if share:
            gpu = f"requested {share:g} GPU, Ray assigned {','.join(p['gpu_ids']) or 'none'} (CUDA_VISIBLE_DEVICES={p['cuda_visible_devices']})"
        else:
            gpu = "no GPU requested"
        print(f"worker {i} on {p['host']}: {p['backend']} on {p['device']}; {gpu}; {p['reason']}")

    test = make_dataset(args.test, seed=10**6 + args.seed, vocab=args.vocab, keypoints=args.keypoints)
    model = Model.create(args.vocab, 2 * args.keypoints, args.context, seed=args.seed)
    opt = Adam((model.classes, model.inputs), lr=args.lr)
    per_worker = max(1, args.batch // count)
    steps = max(1, per_shard // per_worker)
    params = {
        **{k: v for k, v in vars(args).items() if k not in ("experiment", "run_name", "backend")},
        "backend_requested": args.backend,
        "workers": count,
        "worker_hosts": ",".join(sorted({p["host"] for p in placed})),
        "cluster_gpus": gpus,
        "backend": backend,
        "backend_reason": backend_reason,
        **{f"worker{i}_{key}": value for i, (p, share) in enumerate(zip(placed, shares)) for key, value in worker_params(p, share).items()},
        "steps_per_epoch": steps,
        "model": "linear-window-ctc",
    }
    mlflow = start_mlflow(args, params)
    refs = [s.glosses for s in test]
    history = []
    try:
        for epoch in range(args.epochs):
            t0 = time.monotonic()
            loss_sum, seen = 0.0, 0
            for step in range(steps):
                weights = ray.put(model.weights)
                results = ray.get([w.grad.remote(weights, epoch, step, per_worker) for w in workers])
                total = [[0.0] * model.inputs for _ in range(model.classes)]
                n = sum(r[2] for r in results)
                for g, loss, _ in results:
                    add_into(total, g, 1.0 / n)
                    loss_sum += loss
                seen += n
                opt.step(model.weights, total)
            test_wer = wer(refs, [model.decode(s.frames) for s in test])
            seconds = time.monotonic() - t0
            history.append(test_wer)
            print(f"epoch {epoch + 1:>2}/{args.epochs}  train_loss {loss_sum / seen:7.3f}  test_wer {test_wer:.3f}  ({seconds:.1f} s)", flush=True)
            if mlflow:
                mlflow.log_metrics({"train_loss": loss_sum / seen, "test_wer": test_wer, "epoch_seconds": seconds}, step=epoch + 1)
        examples = [{"reference": r, "hypothesis": model.decode(s.frames)} for r, s in zip(refs[:10], test[:10])]
        wall = time.monotonic() - started
        print(f"final test WER {history[-1]:.3f} after {args.epochs} epochs; wall time {wall:.1f} s")
        if mlflow:
            mlflow.log_metrics({"final_test_wer": history[-1], "wall_seconds": wall})
            mlflow.log_dict(model.to_dict(), "model/cslr_linear_ctc.json")
            mlflow.log_dict({"examples": examples}, "decodes/test_examples.json")
            mlflow.end_run()
        else:
            print(json.dumps(examples[:3]))
    except BaseException:
        if mlflow:
            mlflow.end_run(status="FAILED")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

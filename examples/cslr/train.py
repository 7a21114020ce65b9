"""Train a small continuous sign-language recognizer with CTC, data-parallel across the Ray
cluster's nodes, and log it to MLflow.

Submit it as a Ray job from the repository root (the folder is uploaded as the job's working dir):

    .venv/bin/inv submit --wait --working-dir examples/cslr -- python train.py
    .venv/bin/inv submit --wait --working-dir examples/cslr -- python train.py --data /data/NAME

Data: seeded synthetic keypoint sequences labelled with gloss sequences (cslr_core.make_dataset),
or with `--data DIR` a data set on disk (cslr_data: annotations.csv with train/dev/test, one
keypoint file per sentence; on the stack a config.yaml `data:` entry, read-only at /data/NAME on
every node). Each node runs one worker actor that generates (or reads) and holds its own shard;
every step the driver sends the current weights, each worker returns the summed CTC gradient of
its part of the mini-batch, and the driver averages them and takes an Adam step (synchronous
data parallelism). After each epoch the driver decodes the held-out test set and logs its WER;
with --data the workers decode their shares of the dev set instead, the epoch with the lowest dev
WER is kept, and its test WER is computed once at the end (`best_epoch`, `best_dev_wer`, `test_wer`).

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
Checkpoints (cslr_checkpoint): every --checkpoint-every epochs to --checkpoint-dir (default
/workspace/checkpoints/$CSLR_RUN_ID, the run id `inv submit` gives every attempt); a retry
(CSLR_ATTEMPT >= 2) or a start with --checkpoint-dir resumes from the last one and continues the
same MLflow run. Ray restarts a worker actor
whose node died (max_restarts); when it cannot, the job exits 75 so that `inv submit --retries`
runs it again (docs/runtime.md, "Runs that survive a node's death").
Exit code 0 when training finished (whatever the WER), 1 on failure, 2 when the requested backend
cannot run here, the data set is malformed or the checkpoint was made with other settings (one
line naming the file and line, no traceback), 75 when a Ray node the job used died.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import cslr_checkpoint as ckpt
import ray
import ray.exceptions
from cslr_backend import BACKENDS, BackendError, choose_backend, choose_device, gpu_shares, torch_import_error
from cslr_core import Adam, Model, Sample, add_into, ctc_feasible, make_dataset, wer
from cslr_data import NORMALIZE, SPLITS, DataError, DataSet, load_frames, load_index, parse_points


class Shard:
    """One shard of the training set, generated where it lives (synthetic) or read there from the
    data set folder (`data`: /data/NAME is mounted on every node); computes gradients on it with the
    backend the driver chose, on the device `choose_device` picks from what Ray assigned it. With
    `data`, it also holds its share of the dev and test sentences and decodes them (`decode`).
    Runs as a Ray actor (`ShardWorker`) in train.py, in-process in tests."""

    def __init__(self, shard: int, size: int, seed: int, vocab: int, keypoints: int, context: int, backend: str = "python", data: dict | None = None):
        import socket

        self.host = socket.gethostname()
        self.backend = backend
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        self.shard = None
        self.error = None
        self.dropped = 0
        self.eval: dict[str, list] = {}
        dim = 2 * keypoints
        if data is None:
            self.samples = make_dataset(size, seed=seed * 1000 + shard + 1, vocab=vocab, keypoints=keypoints)
        else:
            dim = data["dim"]
            try:
                self.samples, self.dropped = self._read(data)
            except DataError as exc:
                self.samples, self.error = [], str(exc)
        self.model = Model.create(vocab, dim, context)
        if backend == "torch":
            import cslr_torch

            self.device, self.reason = choose_device(backend, self.gpu_ids, cslr_torch.torch.cuda.is_available())
            self.shard = cslr_torch.TorchShard(self.samples, context, self.device)
            self.eval = {k: cslr_torch.TorchShard([Sample(f, []) for f in v], context, self.device) for k, v in self.eval.items()}
        else:
            self.device, self.reason = choose_device(backend, self.gpu_ids, False)

    def _read(self, data: dict) -> tuple[list[Sample], int]:
        """This shard's train samples (those CTC cannot fit in their frames dropped, counted) and
        its dev/test frames, every file checked for the driver's features per frame."""
        opts = {"points": data["points"], "frame_step": data["frame_step"], "normalize": data["normalize"]}

        def frames(path: str) -> list[list[float]]:
            out = load_frames(data["root"], path, **opts)
            if len(out[0]) != data["dim"]:
                raise DataError(f"{data['root']}/{path}: {len(out[0])} features per frame, expected {data['dim']} as in {data['first']}")
            return out

        samples, dropped = [], 0
        for path, ids in data["train"]:
            f = frames(path)
            if ctc_feasible(len(f), ids):
                samples.append(Sample(f, ids))
            else:
                dropped += 1
        self.eval = {split: [frames(path) for path in data[split]] for split in ("dev", "test")}
        return samples, dropped

    def info(self) -> dict:
        return {
            "host": self.host,
            "sentences": len(self.samples),
            "dropped": self.dropped,
            "error": self.error,
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

    def decode(self, weights: list[list[float]], split: str) -> list[list[int]]:
        """Greedy decodes of this shard's `split` ("dev" or "test") sentences with `weights`."""
        if self.backend == "torch":
            return self.eval[split].decode(weights)
        self.model.weights = weights
        return [self.model.decode(f) for f in self.eval[split]]


# A worker whose node dies is started again by Ray (on a live node: the node affinity is soft) and
# its pending calls are sent again: Ray's own actor fault tolerance, which covers the loss of a
# node the driver does not run on. Its shard is generated (or read) again from the same seed.
ACTOR_RESTARTS = 3
ShardWorker = ray.remote(num_cpus=1, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(Shard)
RETRY_EXIT = 75  # "a Ray node this job used died": `inv submit --retries` runs the job again (cslr.jobs.RETRY_EXIT)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
    return value


def at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, found {text!r}")
    return value


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a data set folder (annotations.csv, keypoints/; on the stack /data/NAME); default: synthetic data")
    p.add_argument("--points", default="all", help="with --data: the keypoints the model reads, e.g. 0-24,95-136 (default: all)")
    p.add_argument("--frame-step", type=positive, default=1, help="with --data: read every Nth frame")
    p.add_argument("--normalize", choices=NORMALIZE, default="none", help="with --data: 'sentence' centres and scales each sentence's x, y")
    p.add_argument("--train", type=int, default=1600, help="synthetic training sentences in total (split across the workers)")
    p.add_argument("--test", type=int, default=300, help="synthetic held-out sentences")
    p.add_argument("--epochs", type=positive, default=15)
    p.add_argument("--batch", type=int, default=32, help="global mini-batch size")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--vocab", type=int, default=8, help="synthetic glosses")
    p.add_argument("--keypoints", type=int, default=6, help="synthetic keypoints")
    p.add_argument("--context", type=int, default=1, help="neighbouring frames on each side the model sees")
    p.add_argument("--workers", type=int, default=0, help="gradient workers (default: one per alive node)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="gradient backend: torch when it imports (auto), or force one")
    p.add_argument("--experiment", default="cslr-example")
    p.add_argument("--run-name", default=None)
    p.add_argument("--checkpoint-every", type=at_least_zero, default=1, help="write a checkpoint every N epochs (and after the last); 0: none")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where this run's checkpoint lives; a job started again resumes from it (default: /workspace/checkpoints/$CSLR_RUN_ID under inv submit)",
    )
    return p.parse_args(argv)


def worker_params(info: dict, share: float) -> dict:
    return {
        "backend": info["backend"],
        "device": info["device"],
        "device_reason": info["reason"],
        "gpu_share": share,
        "gpu_ids": ",".join(info["gpu_ids"]) or "none",
    }


def start_mlflow(args, params: dict, resume_id: str | None = None):
    """A new MLflow run with `params`, or with `resume_id` the run a checkpoint names, continued
    (its params stay as the first attempt logged them; the attempt number is a tag)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        print("MLFLOW_TRACKING_URI is not set: nothing is logged to MLflow")
        return None
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # no git in the image: MLflow need not say so thrice
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(args.experiment)
    # System metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) every 10 s into the run.
    system = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true") != "false"
    if resume_id:
        run = mlflow.start_run(run_id=resume_id, log_system_metrics=system)
    else:
        run = mlflow.start_run(run_name=args.run_name, log_system_metrics=system)
        mlflow.log_params(params)
    mlflow.set_tags({"cslr.run_id": os.environ.get("CSLR_RUN_ID", ""), "cslr.attempt": os.environ.get("CSLR_ATTEMPT", "1")})
    print(f"MLflow: experiment {args.experiment!r}, run {run.info.run_id} at {uri}" + (" (continued)" if resume_id else ""))
    return mlflow


def fetch_from_mlflow(folder: Path, experiment: str) -> str | None:
    """A retry that finds no checkpoint in `folder` - it runs on another host than the attempt
    that wrote it, and /workspace is each host's own - fetches the run's last checkpoint from
    MLflow, where every checkpoint is also logged (ARTIFACT_DIR/NAME). Returns the MLflow run id
    it came from, or None (no MLflow, no such run, nothing logged: the run starts afresh)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    query = ckpt.mlflow_filter(os.environ.get("CSLR_RUN_ID", ""))
    if not uri or query is None:
        return None
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import shutil
    import tempfile

    import mlflow

    try:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        runs = mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list", max_results=1) if exp else []
        if not runs:
            print(f"checkpoint: none at {folder} nor in MLflow: this attempt starts afresh", flush=True)
            return None
        run_id = runs[0].info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{ckpt.ARTIFACT_DIR}/{ckpt.NAME}", dst_path=tmp)
            folder.mkdir(parents=True, exist_ok=True)
            staged = folder / f".{ckpt.NAME}.fetched"
            shutil.copyfile(local, staged)
            os.replace(staged, folder / ckpt.NAME)
    except Exception as exc:  # MLflow unreachable, or no checkpoint logged to the run
        print(f"checkpoint: none at {folder}, and MLflow gave none ({type(exc).__name__}: {str(exc)[:200]}): this attempt starts afresh", flush=True)
        return None
    print(f"checkpoint: none at {folder} (another host's attempt wrote it); fetched MLflow run {run_id}'s last", flush=True)
    return run_id


def pick_backend(requested: str) -> tuple[str, str]:
    """(backend, reason) for this driver's interpreter; the workers run the same image."""
    error = torch_import_error() if requested != "python" else None
    version = ""
    if requested != "python" and error is None:
        import torch

        version = torch.__version__
    return choose_backend(requested, error, version)


def fit(
    model: Model, opt: Adam, grads, steps: int, epochs: int, score, report, start: int = 0, best=None, after_epoch=None
) -> tuple[int, float, list[list[float]]]:
    """Synchronous data-parallel training. Each step `grads(weights, epoch, step)` returns every
    worker's (summed gradient, summed loss, sentences); their mean takes one Adam step. After each
    epoch, `score(weights)` (a WER), `report(epoch, train_loss, wer, seconds)` and
    `after_epoch(epoch, best)` (the checkpoint). Returns the best epoch (1-based; the lowest score,
    the earliest of equal ones), its score and its weights. Resuming: `start` epochs were done
    (the model and optimizer hold their state) and `best` is what they found."""
    best = best or (0, math.inf, [row[:] for row in model.weights])
    for epoch in range(start, epochs):
        t0 = time.monotonic()
        loss_sum, seen = 0.0, 0
        for step in range(steps):
            results = grads(model.weights, epoch, step)
            total = [[0.0] * model.inputs for _ in range(model.classes)]
            n = sum(r[2] for r in results)
            for g, loss, _ in results:
                add_into(total, g, 1.0 / n)
                loss_sum += loss
            seen += n
            opt.step(model.weights, total)
        value = score(model.weights)
        report(epoch + 1, loss_sum / seen, value, time.monotonic() - t0)
        if value < best[1]:
            best = (epoch + 1, value, [row[:] for row in model.weights])
        if after_epoch:
            after_epoch(epoch + 1, best)
    return best


def open_data(args) -> dict:
    """The data set's index, vocabulary and features per frame (from its first train sentence),
    before Ray starts: a malformed table or file stops here (DataError, exit 2)."""
    data = load_index(args.data)
    points = parse_points(args.points)
    first = data.split("train")[0]
    dim = len(load_frames(data.root, first.path, points, args.frame_step, args.normalize)[0])
    return {"set": data, "points": points, "dim": dim, "first": first.path}


def shard_data(opened: dict, args, i: int, count: int) -> dict:
    """What worker `i` of `count` reads: every count-th train, dev and test sentence from i."""
    data: DataSet = opened["set"]
    return {
        "root": str(data.root),
        "dim": opened["dim"],
        "first": opened["first"],
        "points": opened["points"],
        "frame_step": args.frame_step,
        "normalize": args.normalize,
        "train": [(s.path, data.vocabulary.encode(s.glosses)) for s in data.split("train")[i::count]],
        "dev": [s.path for s in data.split("dev")[i::count]],
        "test": [s.path for s in data.split("test")[i::count]],
    }


def describe_data(opened: dict) -> tuple[str, dict]:
    """A summary line and the MLflow params of a data set."""
    data: DataSet = opened["set"]
    params = {"data_features": opened["dim"], "vocabulary": len(data.vocabulary)}
    parts = []
    for split in SPLITS:
        bad, tokens, types = data.unknown(split)
        params[f"data_{split}_sentences"] = len(data.split(split))
        if split != "train":
            params[f"data_{split}_unknown_tokens"] = bad
            parts.append(f"{split}: {bad} of {tokens} gloss tokens not in the vocabulary ({types} types; they count as errors)")
    counts = ", ".join(f"{split} {len(data.split(split))}" for split in SPLITS)
    line = f"data: {data.root}: sentences {counts}; vocabulary {len(data.vocabulary)} glosses (train split); {opened['dim']} features per frame; " + "; ".join(
        parts
    )
    return line, params


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    try:
        backend, backend_reason = pick_backend(args.backend)
        opened = open_data(args) if args.data else None
    except (BackendError, DataError) as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 2
    folder = ckpt.default_folder(args.checkpoint_dir, dict(os.environ)) if args.checkpoint_every else None
    fingerprint = ckpt.fingerprint({k: v for k, v in vars(args).items()})
    try:
        resuming = bool(folder) and ckpt.resumes(dict(os.environ), args.checkpoint_dir is not None)
        if resuming and not (folder / ckpt.NAME).exists():
            fetch_from_mlflow(folder, args.experiment)
        saved = ckpt.read(folder, fingerprint) if resuming else None
    except ckpt.CheckpointError as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 2
    print(f"backend: {backend} ({backend_reason})")
    data_params: dict = {}
    if opened:
        line, data_params = describe_data(opened)
        print(line)
    ray.init(logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    gpus = ray.cluster_resources().get("GPU", 0)
    count = args.workers or len(nodes)
    if opened:
        count = min(count, len(opened["set"].split("train")))
    if saved:
        count = saved["workers"]  # the same shards as before, on the nodes alive now
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    vocab = len(opened["set"].vocabulary) if opened else args.vocab
    dim = opened["dim"] if opened else 2 * args.keypoints
    per_shard = args.train // count
    placement = [i % len(nodes) for i in range(count)]
    shares = gpu_shares([n["Resources"].get("GPU", 0) for n in nodes], placement, use_gpus=backend == "torch")
    workers = []
    for i, (n, share) in enumerate(zip(placement, shares)):
        strategy = NodeAffinitySchedulingStrategy(nodes[n]["NodeID"], soft=True)
        options = {"scheduling_strategy": strategy, **({"num_gpus": share} if share else {})}
        data = shard_data(opened, args, i, count) if opened else None
        workers.append(ShardWorker.options(**options).remote(i, per_shard, args.seed, vocab, args.keypoints, args.context, backend, data))
    placed = ray.get([w.info.remote() for w in workers])
    errors = [p["error"] for p in placed if p["error"]]
    if errors:
        print(f"train.py: {errors[0]}", file=sys.stderr)
        return 2
    print(f"{count} gradient worker(s): " + ", ".join(f"{p['host']} ({p['sentences']} sentences)" for p in placed) + f"; cluster GPUs: {gpus:g}")
    dropped = sum(p["dropped"] for p in placed)
    if opened and dropped == len(opened["set"].split("train")):
        print(
            f"train.py: {opened['set'].root}: no train sentence has as many frames as CTC needs for its glosses (--frame-step {args.frame_step})",
            file=sys.stderr,
        )
        return 2
    if dropped:
        print(f"{dropped} train sentence(s) left out: fewer frames than CTC needs for their glosses (--frame-step too large?)")
    for i, (p, share) in enumerate(zip(placed, shares)):
        if share:
            gpu = f"requested {share:g} GPU, Ray assigned {','.join(p['gpu_ids']) or 'none'} (CUDA_VISIBLE_DEVICES={p['cuda_visible_devices']})"
        else:
            gpu = "no GPU requested"
        print(f"worker {i} on {p['host']}: {p['backend']} on {p['device']}; {gpu}; {p['reason']}")

    model = Model.create(vocab, dim, args.context, seed=args.seed)
    opt = Adam((model.classes, model.inputs), lr=args.lr)
    if saved:
        restore(saved, model, opt)
    per_worker = max(1, args.batch // count)
    steps = max(1, (min(p["sentences"] for p in placed) if opened else per_shard) // per_worker)
    skip = ("experiment", "run_name", "backend") + (("train", "test", "vocab", "keypoints") if opened else ("data", "points", "frame_step", "normalize"))
    params = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip},
        **data_params,
        "backend_requested": args.backend,
        "workers": count,
        "worker_hosts": ",".join(sorted({p["host"] for p in placed})),
        "cluster_gpus": gpus,
        "backend": backend,
        "backend_reason": backend_reason,
        **{f"worker{i}_{key}": value for i, (p, share) in enumerate(zip(placed, shares)) for key, value in worker_params(p, share).items()},
        "steps_per_epoch": steps,
        "train_sentences_left_out": dropped,
        "model": "linear-window-ctc",
    }
    mlflow = start_mlflow(args, params, saved.get("mlflow_run_id") if saved else None)
    run_id = mlflow.active_run().info.run_id if mlflow else None
    if saved:
        print(f"{RESUMED_MARK}epoch {saved['epoch']}/{args.epochs} at {folder} (MLflow run {saved.get('mlflow_run_id') or 'none'})", flush=True)
    elif folder:
        print(f"checkpoints: every {args.checkpoint_every} epoch(s) to {folder}; a job run again resumes from there")

    def grads(weights, epoch, step):
        ref = ray.put(weights)
        return patiently(lambda: ray.get([w.grad.remote(ref, epoch, step, per_worker) for w in workers]))

    def evaluate(weights, split: str) -> list[list[int]]:
        """Every `split` sentence's decode, in the data set's order (worker i holds i, i+count, ...)."""
        ref = ray.put(weights)
        parts = patiently(lambda: ray.get([w.decode.remote(ref, split) for w in workers]))
        hyps: list = [None] * sum(len(p) for p in parts)
        for i, part in enumerate(parts):
            hyps[i::count] = part
        return hyps

    metric = "dev_wer" if opened else "test_wer"
    history = list(saved["history"]) if saved else []
    start, best = (saved["epoch"], ckpt.best_of(saved)) if saved else (0, None)

    def checkpoint(epoch: int, best: tuple) -> None:
        if folder and (epoch == 0 or ckpt.due(epoch, args.checkpoint_every, args.epochs)):
            state = ckpt.state(epoch, model.weights, {"t": opt.t, "m": opt.m, "v": opt.v}, best, history, count, run_id, fingerprint)
            path = ckpt.write(folder, state)
            print(f"checkpoint: epoch {epoch} -> {path}", flush=True)
            if mlflow:  # a copy where a retry on another host finds it (fetch_from_mlflow)
                try:
                    mlflow.log_artifact(str(path), artifact_path=ckpt.ARTIFACT_DIR)
                except Exception as exc:  # MLflow down for a moment: the local checkpoint still holds
                    print(f"checkpoint: epoch {epoch} not copied to MLflow ({type(exc).__name__}: {str(exc)[:200]})", flush=True)

    if not saved:
        checkpoint(0, (0, math.inf, [row[:] for row in model.weights]))  # the MLflow run id, before any work

    def report(epoch: int, loss: float, value: float, seconds: float) -> None:
        history.append(value)
        print(f"epoch {epoch:>2}/{args.epochs}  train_loss {loss:7.3f}  {metric} {value:.3f}  ({seconds:.1f} s)", flush=True)
        if mlflow:
            mlflow.log_metrics({"train_loss": loss, metric: value, "epoch_seconds": seconds}, step=epoch)

    resume = {"start": start, "best": best, "after_epoch": checkpoint}
    try:
        if opened:
            finish_data(args, opened, model, opt, grads, evaluate, steps, report, mlflow, started, resume)
            return 0
        test = make_dataset(args.test, seed=10**6 + args.seed, vocab=args.vocab, keypoints=args.keypoints)
        refs = [s.glosses for s in test]
        fit(model, opt, grads, steps, args.epochs, lambda w: wer(refs, [model.decode(s.frames) for s in test]), report, **resume)
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
    except NODE_LOSS as exc:
        # Ray could not keep a worker (its node died past ACTOR_RESTARTS, or the cluster re-formed):
        # a retry of the whole job resumes from the last checkpoint.
        print(
            f"train.py: a Ray node this job used died ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); exit {RETRY_EXIT}: `inv submit --retries` runs it again from the last checkpoint",
            file=sys.stderr,
        )
        if mlflow:
            mlflow.end_run(status="FAILED")
        return RETRY_EXIT
    except BaseException:
        if mlflow:
            mlflow.end_run(status="FAILED")
        raise
    return 0


RESUMED_MARK = "resumed from checkpoint "  # what `inv jobs` reads from a retry's logs (cslr.jobs.RESUMED_MARK)
NODE_LOSS = (
    ray.exceptions.RayActorError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.RaySystemError,
    ray.exceptions.ActorUnschedulableError,
)


UNAVAILABLE_WAIT_S = 90.0  # how long a call to a worker that Ray reports unavailable is sent again


def patiently(call, wait_s: float = UNAVAILABLE_WAIT_S, sleep=time.sleep, clock=time.monotonic):
    """`call()`, sent again while Ray says a worker is only *unavailable* (ActorUnavailableError:
    its node is restarting, or the GCS is, as during a head's restart with GCS fault tolerance),
    for up to `wait_s`; the calls are pure (the same weights give the same gradients), so sending
    one twice is safe. A worker that is dead past its restarts raises at once (NODE_LOSS)."""
    since = clock()
    while True:
        try:
            return call()
        except ray.exceptions.ActorUnavailableError:
            if clock() - since > wait_s:
                raise
            sleep(2.0)


def restore(saved: dict, model: Model, opt: Adam) -> None:
    """Put a checkpoint's weights and Adam state into `model` and `opt`."""
    model.weights = [list(row) for row in saved["weights"]]
    opt.t = saved["adam"]["t"]
    opt.m = [list(row) for row in saved["adam"]["m"]]
    opt.v = [list(row) for row in saved["adam"]["v"]]


def finish_data(args, opened: dict, model: Model, opt: Adam, grads, evaluate, steps: int, report, mlflow, started: float, resume: dict | None = None) -> dict:
    """Train on a data set: dev WER after every epoch selects the checkpoint, whose test WER is
    computed once at the end. Returns the results (also printed and logged). `resume`: fit's
    start, best and after_epoch."""
    data: DataSet = opened["set"]
    vocab = data.vocabulary
    dev_refs = [vocab.encode(s.glosses) for s in data.split("dev")]
    best_epoch, best_dev, weights = fit(model, opt, grads, steps, args.epochs, lambda w: wer(dev_refs, evaluate(w, "dev")), report, **(resume or {}))
    model.weights = weights
    test = data.split("test")
    results = {"best_epoch": best_epoch, "best_dev_wer": best_dev}
    if test:
        hyps = evaluate(weights, "test")
        results["test_wer"] = wer([vocab.encode(s.glosses) for s in test], hyps)
        shown = [{"name": s.name, "reference": " ".join(s.glosses), "hypothesis": " ".join(vocab.decode(h))} for s, h in zip(test[:10], hyps[:10])]
        tested = f"test WER {results['test_wer']:.3f} ({len(test)} sentences)"
    else:
        shown, tested = [], "no test split: no test WER"
    wall = time.monotonic() - started
    results["wall_seconds"] = wall
    print(f"best dev WER {best_dev:.3f} at epoch {best_epoch}/{args.epochs}; with that checkpoint, {tested}; wall time {wall:.1f} s")
    if mlflow:
        mlflow.log_metrics(results)
        mlflow.log_dict(model.to_dict(), "model/cslr_linear_ctc.json")
        mlflow.log_dict({"glosses": ["<blank>", *vocab.glosses]}, "model/vocabulary.json")
        mlflow.log_dict({"examples": shown}, "decodes/test_examples.json")
        mlflow.end_run()
    else:
        print(json.dumps(shown[:3]))
    return results


if __name__ == "__main__":
    sys.exit(main())

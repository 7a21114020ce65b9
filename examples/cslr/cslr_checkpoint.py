"""Checkpoints of train.py, so that a job run again after a node died resumes instead of
restarting, and continues the same MLflow run.

A checkpoint is one JSON file, `checkpoint.json`, in the run's checkpoint folder (train.py:
`--checkpoint-dir`, by default /workspace/checkpoints/$CSLR_RUN_ID - the run id `inv submit`
gives every attempt of one run, so attempt 2 finds what attempt 1 wrote). It holds everything
the next epoch depends on: the epochs done, the weights, Adam's moments and step count, the best
epoch so far (its dev/test score and weights), the per-epoch scores, the number of gradient
workers (the shards follow from it), the MLflow run id, and a fingerprint of the settings that
shape the training. It is written whole to a temporary file and renamed over the old one (an
atomic replace on POSIX), so a driver killed while writing leaves the previous checkpoint.

Pure functions and plain file I/O; standard library only (the default Ray images have no NumPy).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

FORMAT = 1
NAME = "checkpoint.json"
# Every checkpoint is also logged to the run's MLflow artifacts under this folder: a retry that
# lands on another host (whose /workspace is its own) fetches it from there (train.py).
ARTIFACT_DIR = "checkpoint"
# Settings that do not change what is trained: a resumed run may differ in them.
NOT_FINGERPRINTED = ("experiment", "run_name", "checkpoint_dir", "checkpoint_every", "workers", "backend")


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed: unreadable, another format, other settings."""


def fingerprint(settings: dict) -> str:
    """A short hash of the settings that shape the training (all but NOT_FINGERPRINTED)."""
    kept = {k: (str(v) if v is not None else None) for k, v in sorted(settings.items()) if k not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def due(epoch: int, every: int, epochs: int) -> bool:
    """Whether a checkpoint is written after `epoch` (1-based): every `every` epochs and after
    the last; never when `every` is 0 (checkpoints off)."""
    return every > 0 and (epoch % every == 0 or epoch == epochs)


def state(
    epoch: int,
    weights: list,
    adam: dict,
    best: tuple,
    history: list,
    workers: int,
    run_id: str | None,
    fingerprint_: str,
) -> dict:
    """The checkpoint's content after `epoch` epochs (0: before the first)."""
    best_epoch, best_score, best_weights = best
    return {
        "format": FORMAT,
        "epoch": epoch,
        "weights": weights,
        "adam": adam,
        "best": {"epoch": best_epoch, "score": None if math.isinf(best_score) else best_score, "weights": best_weights},
        "history": history,
        "workers": workers,
        "mlflow_run_id": run_id,
        "fingerprint": fingerprint_,
    }


def best_of(saved: dict) -> tuple:
    """The (epoch, score, weights) triple train.fit keeps, from a checkpoint."""
    b = saved["best"]
    return b["epoch"], math.inf if b["score"] is None else b["score"], b["weights"]


def write(folder: Path, content: dict) -> Path:
    """Write the checkpoint atomically; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    tmp = folder / f".{NAME}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read(folder: Path, fingerprint_: str) -> dict | None:
    """The checkpoint in `folder`, or None when there is none. CheckpointError when it is
    unreadable or was made with other settings (resuming it would mix two trainings)."""
    path = folder / NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        saved = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a checkpoint ({exc})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {saved.get('format') if isinstance(saved, dict) else None!r}, expected {FORMAT}")
    if saved.get("fingerprint") != fingerprint_:
        raise CheckpointError(
            f"{path}: made with other training settings (fingerprint {saved.get('fingerprint')}, these give {fingerprint_}); "
            "give another --checkpoint-dir (or --name to inv submit), or remove it"
        )
    missing = [k for k in ("epoch", "weights", "adam", "best", "history", "workers") if k not in saved]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}")
    return saved


def default_folder(explicit: Path | None, environ: dict, workspace: Path = Path("/workspace")) -> Path | None:
    """Where this run's checkpoints go: `--checkpoint-dir`, else WORKSPACE/checkpoints/$CSLR_RUN_ID
    when `inv submit` named the run and the workspace exists; else None (no checkpoints)."""
    if explicit is not None:
        return explicit
    run = environ.get("CSLR_RUN_ID", "")
    if run and workspace.is_dir() and "/" not in run and run not in (".", ".."):
        return workspace / "checkpoints" / run
    return None


def resumes(environ: dict, explicit: bool) -> bool:
    """Whether this start reads the folder's checkpoint: a retry (`inv submit` sets CSLR_ATTEMPT
    to 2, 3, ... for them), or a folder the user named (`--checkpoint-dir`: continue it). A first
    attempt under a run id used before starts afresh and replaces the old checkpoint."""
    return explicit or environ.get("CSLR_ATTEMPT", "1").strip() not in ("", "1")


def mlflow_filter(run_key: str) -> str | None:
    """The MLflow search filter for the run `inv submit` named `run_key` (tag cslr.run_id); None
    for a key it cannot quote (a quote or a backslash: no such run is looked for)."""
    if not run_key or any(c in run_key for c in "'\\`"):
        return None
    return f"tags.`cslr.run_id` = '{run_key}'"

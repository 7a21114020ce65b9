"""Where the CSLR example computes its gradients: pure decisions, no torch or Ray imported here.

- `choose_backend`: `--backend auto|python|torch` and whether torch imports -> the backend and why.
- `choose_device`: inside a worker, the GPU ids Ray assigned it and whether torch sees CUDA ->
  `cuda` or `cpu` and why. A worker uses a GPU only when Ray scheduled one for it (so two jobs
  never share a GPU Ray thinks is free) and torch can reach it.
- `gpu_shares`: how much GPU each worker requests from Ray, given the GPUs of the node it is
  placed on and how many workers share that node; Ray then sets CUDA_VISIBLE_DEVICES for it.

train.py calls these; tests/test_cslr_example.py checks their tables.
"""

from __future__ import annotations

import math

BACKENDS = ("auto", "python", "torch")


class BackendError(Exception):
    """The requested backend cannot run here (e.g. --backend torch without torch installed)."""


def torch_import_error() -> str | None:
    """None when `import torch` works, else the reason it does not (one line)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without NumPy: not needed here
            import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (OSError from a missing .so)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def choose_backend(requested: str, torch_error: str | None, torch_version: str = "") -> tuple[str, str]:
    """(backend, reason). `torch_error` is None when torch imports (see `torch_import_error`)."""
    if requested not in BACKENDS:
        raise BackendError(f"--backend: expected one of {', '.join(BACKENDS)}, found {requested!r}")
    name = f"torch {torch_version}" if torch_version else "torch"
    if requested == "python":
        return "python", "--backend python requested"
    if requested == "torch":
        if torch_error is not None:
            raise BackendError(
                f"--backend torch: torch does not import here ({torch_error}); add examples/cslr/requirements-gpu.txt to images.requirements, or use --backend python"
            )
        return "torch", f"--backend torch requested ({name} imports)"
    if torch_error is None:
        return "torch", f"--backend auto: {name} imports"
    return "python", f"--backend auto: torch does not import ({torch_error}); using the pure-Python backend"


def choose_device(backend: str, gpu_ids: list, cuda_available: bool) -> tuple[str, str]:
    """(device, reason) for one worker. `gpu_ids` is ray.get_gpu_ids() in that worker; when it is
    non-empty Ray has set CUDA_VISIBLE_DEVICES to those ids, so the worker's first visible CUDA
    device (`cuda:0`) is the one Ray assigned."""
    ids = ",".join(str(g) for g in gpu_ids)
    noun = "GPU" if len(gpu_ids) == 1 else "GPUs"
    if backend == "python":
        if gpu_ids:
            return "cpu", f"{noun} {ids} assigned by Ray but the pure-Python backend runs on the CPU: using cpu"
        return "cpu", "pure-Python backend: using cpu"
    if not gpu_ids:
        if cuda_available:
            return "cpu", "torch sees CUDA but Ray assigned this worker no GPU: using cpu"
        return "cpu", "no GPU assigned by Ray: using cpu"
    if cuda_available:
        return "cuda:0", f"{noun} {ids} assigned by Ray and torch.cuda.is_available() is True: using cuda:0 (CUDA_VISIBLE_DEVICES={ids})"
    return "cpu", f"{noun} {ids} assigned by Ray but torch.cuda.is_available() is False: using cpu"


def gpu_shares(node_gpus: list[float], placement: list[int], use_gpus: bool = True) -> list[float]:
    """GPUs each worker requests. `node_gpus[n]`: GPUs node n has; `placement[w]`: the node worker w
    is placed on. A node with at least as many GPUs as workers gives each a whole GPU; otherwise
    its workers share, 1/ceil(workers/GPUs) each, so the shares pack onto whole GPUs (Ray places
    a fractional request on a single GPU). Nodes without GPUs, or `use_gpus` False (the
    pure-Python backend), request none."""
    counts = [0] * len(node_gpus)
    for n in placement:
        counts[n] += 1
    shares = []
    for n in placement:
        gpus = math.floor(node_gpus[n])
        if not use_gpus or gpus < 1:
            shares.append(0.0)
        elif counts[n] <= gpus:
            shares.append(1.0)
        else:
            # Ray keeps resources to 4 decimals: round down so k shares never exceed one GPU.
            shares.append(math.floor(10_000 / math.ceil(counts[n] / gpus)) / 10_000)
    return shares

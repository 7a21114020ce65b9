"""Integration: the CSLR example's GPU path on a real Ray head, as far as a machine without a GPU
can show it. The head is started with `--num-gpus 1`: Ray then has one GPU *resource* and no
hardware behind it — it stands for the GPU node's Ray resource (the ray-gpu node runs
`ray start --num-gpus N` with the count nvidia-smi found). With the torch backend, each of the
two gradient workers on that node requests half the GPU, Ray assigns GPU id 0 to both and sets
CUDA_VISIBLE_DEVICES=0 for them, and torch (a CPU build, no CUDA) makes them fall back to the CPU
and say why. Training still finishes, with the same losses and WER as the pure-Python backend,
which requests no GPU. That `cuda:0` is used, and how fast, only a GPU host can show
(examples/cslr/README.md)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from cslr import jobs
from tests.integration.test_jobs_ray import ray_head

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARGS = "--epochs 3 --train 240 --test 60 --workers 2"


@pytest.fixture(scope="module")
def gpu_head():
    with ray_head("--num-gpus", "1", prefix="rg") as client:
        name, data = jobs.build_package(ROOT / "examples" / "cslr", jobs.package_files(ROOT / "examples" / "cslr"))
        client.upload(name, data)
        yield client, f"gcs://{name}"


def run(gpu_head, backend: str) -> str:
    client, package = gpu_head
    job = client.submit(f"python train.py {ARGS} --backend {backend}", package, submission_id=f"integration-cslr-{backend}")
    lines: list[str] = []
    status = jobs.wait(client, job, out=lines.append, poll=1.0)
    text = "\n".join(lines)
    assert status == "SUCCEEDED", text
    return text


def losses_and_wer(text: str) -> tuple[list[float], float]:
    losses = [float(m) for m in re.findall(r"train_loss\s+([-\d.]+|inf|nan)", text)]
    wer = float(re.search(r"final test WER ([\d.]+)", text).group(1))
    return losses, wer


@pytest.fixture(scope="module")
def torch_run(gpu_head):
    return run(gpu_head, "torch")


def test_a_worker_on_a_gpu_node_gets_a_gpu_from_ray_and_falls_back_to_cpu_without_cuda(torch_run):
    assert "backend: torch (--backend torch requested (torch 2.13.0" in torch_run, torch_run
    assert "cluster GPUs: 1" in torch_run
    for worker in (0, 1):
        line = next(x for x in torch_run.splitlines() if x.startswith(f"worker {worker} on "))
        assert line.endswith(
            ": torch on cpu; requested 0.5 GPU, Ray assigned 0 (CUDA_VISIBLE_DEVICES=0); "
            "GPU 0 assigned by Ray but torch.cuda.is_available() is False: using cpu"
        ), line


def test_the_torch_backend_trains_like_the_pure_python_one(gpu_head, torch_run):
    python_run = run(gpu_head, "python")
    for worker in (0, 1):
        line = next(x for x in python_run.splitlines() if x.startswith(f"worker {worker} on "))
        assert line.endswith(": python on cpu; no GPU requested; pure-Python backend: using cpu"), line
    torch_losses, torch_wer = losses_and_wer(torch_run)
    python_losses, python_wer = losses_and_wer(python_run)
    assert len(torch_losses) == len(python_losses) == 3
    assert all(math.isfinite(x) for x in torch_losses) and torch_losses[-1] < torch_losses[0], torch_losses
    # The log prints 3 decimals; float64 on both sides agrees far closer than that.
    assert torch_losses == pytest.approx(python_losses, abs=2e-3)
    assert torch_wer == pytest.approx(python_wer, abs=0.02)

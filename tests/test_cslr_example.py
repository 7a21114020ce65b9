"""The CSLR example's pure parts (examples/cslr/cslr_core.py): CTC loss against a brute-force sum
over every alignment, its gradient against finite differences, greedy decoding, WER, and the
seeded data generator; and its backend, device and GPU-share decisions (cslr_backend.py).
The torch backend against these: tests/test_cslr_torch.py."""

from __future__ import annotations

import itertools
import math
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "cslr"))
import cslr_backend as backend_mod
import cslr_core as core


def brute_force_nll(logits, labels):
    """-log of the total probability of every frame path that CTC collapses to `labels`."""
    logp = [core.log_softmax(row) for row in logits]
    total = 0.0
    for path in itertools.product(range(len(logits[0])), repeat=len(logits)):
        if core.collapse(list(path)) == labels:
            total += math.exp(sum(lp[k] for lp, k in zip(logp, path)))
    return -math.log(total) if total else math.inf


def random_logits(rng, T, C):
    return [[rng.uniform(-2, 2) for _ in range(C)] for _ in range(T)]


@pytest.mark.parametrize("labels", [[1], [1, 2], [1, 1], [2, 1, 2], [1, 2, 2]])
@pytest.mark.parametrize("T", [3, 4, 5])
def test_ctc_loss_equals_brute_force_enumeration(labels, T):
    rng = random.Random(T * 31 + len(labels))
    logits = random_logits(rng, T, 3)
    loss, _ = core.ctc_loss_and_grad(logits, labels)
    expected = brute_force_nll(logits, labels)
    if math.isinf(expected):  # e.g. [1, 1] needs a blank between: 3 frames; [2,1,2] in 3 is fine
        assert math.isinf(loss)
    else:
        assert loss == pytest.approx(expected, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), T=st.integers(1, 5), labels=st.lists(st.integers(1, 2), max_size=3))
def test_ctc_loss_matches_brute_force_for_any_small_case(seed, T, labels):
    logits = random_logits(random.Random(seed), T, 3)
    loss, grad = core.ctc_loss_and_grad(logits, labels)
    expected = brute_force_nll(logits, labels)
    assert (math.isinf(loss) and math.isinf(expected)) or loss == pytest.approx(expected, rel=1e-9)
    if not math.isinf(loss):  # each frame's gradient sums to zero (softmax minus a distribution)
        assert all(abs(sum(row)) < 1e-9 for row in grad)


def test_ctc_gradient_matches_finite_differences():
    rng = random.Random(5)
    logits, labels, eps = random_logits(rng, 5, 4), [1, 3, 1], 1e-6
    _, grad = core.ctc_loss_and_grad(logits, labels)
    for t in range(5):
        for k in range(4):
            up = [row[:] for row in logits]
            down = [row[:] for row in logits]
            up[t][k] += eps
            down[t][k] -= eps
            numeric = (core.ctc_loss_and_grad(up, labels)[0] - core.ctc_loss_and_grad(down, labels)[0]) / (2 * eps)
            assert grad[t][k] == pytest.approx(numeric, abs=1e-6)


def test_model_weight_gradient_matches_finite_differences():
    sample = core.make_dataset(1, seed=3, vocab=3, keypoints=2)[0]
    model = core.Model.create(3, 4, context=1, seed=1)
    _, grad = model.loss_and_grad(sample)
    for k, i in [(0, 0), (1, 5), (3, 12)]:
        eps = 1e-6
        model.weights[k][i] += eps
        up = model.loss_and_grad(sample)[0]
        model.weights[k][i] -= 2 * eps
        down = model.loss_and_grad(sample)[0]
        model.weights[k][i] += eps
        assert grad[k][i] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6)


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    def one_hot(k):
        return [5.0 if j == k else 0.0 for j in range(4)]

    assert core.greedy_decode([one_hot(k) for k in [0, 1, 1, 0, 1, 2, 2, 0, 0, 3]]) == [1, 1, 2, 3]
    assert core.greedy_decode([one_hot(0)] * 3) == []


def test_wer_counts_substitutions_insertions_and_deletions():
    assert core.wer([[1, 2, 3]], [[1, 2, 3]]) == 0.0
    assert core.wer([[1, 2, 3]], [[1, 4, 3]]) == pytest.approx(1 / 3)  # a substitution
    assert core.wer([[1, 2, 3]], [[1, 3]]) == pytest.approx(1 / 3)  # a deletion
    assert core.wer([[1, 2]], [[1, 2, 2, 2]]) == pytest.approx(1.0)  # two insertions
    assert core.wer([[1, 2], [3, 4]], [[1, 2], []]) == pytest.approx(0.5)  # corpus-level
    with pytest.raises(ValueError):
        core.wer([[]], [[1]])


def test_dataset_is_seeded_and_labelled_with_gloss_sequences():
    a, b = core.make_dataset(20, seed=1), core.make_dataset(20, seed=1)
    assert a == b and a != core.make_dataset(20, seed=2)
    for s in a:
        assert 2 <= len(s.glosses) <= 5 and all(1 <= g <= 8 for g in s.glosses)
        assert len(s.frames) >= 3 * len(s.glosses) and all(len(f) == 12 for f in s.frames)


def test_a_few_epochs_of_training_lower_the_held_out_wer():
    train, test = core.make_dataset(150, seed=1), core.make_dataset(60, seed=2)
    model = core.Model.create(8, 12, seed=0)
    opt = core.Adam((model.classes, model.inputs), lr=0.05)
    before = core.wer([s.glosses for s in test], [model.decode(s.frames) for s in test])
    for _epoch in range(4):
        for b in range(0, len(train), 16):
            total = [[0.0] * model.inputs for _ in range(model.classes)]
            for s in train[b : b + 16]:
                add = model.loss_and_grad(s)[1]
                core.add_into(total, add, 1 / 16)
            opt.step(model.weights, total)
    after = core.wer([s.glosses for s in test], [model.decode(s.frames) for s in test])
    assert after < 0.6 * before, (before, after)


# ------------------------------------------------------ backend, device and GPU-share decisions
# (examples/cslr/cslr_backend.py: pure functions; train.py acts on them)


@pytest.mark.parametrize(
    "requested, torch_error, backend, reason",
    [
        ("python", None, "python", "--backend python requested"),
        ("python", "ModuleNotFoundError: No module named 'torch'", "python", "--backend python requested"),
        ("torch", None, "torch", "--backend torch requested (torch 2.13.0 imports)"),
        ("auto", None, "torch", "--backend auto: torch 2.13.0 imports"),
        ("auto", "ModuleNotFoundError: No module named 'torch'", "python", "torch does not import (ModuleNotFoundError: No module named 'torch')"),
    ],
)
def test_backend_choice_table(requested, torch_error, backend, reason):
    got, why = backend_mod.choose_backend(requested, torch_error, "2.13.0")
    assert got == backend and reason in why


def test_a_forced_torch_backend_without_torch_is_refused_with_what_to_install():
    with pytest.raises(backend_mod.BackendError, match=r"torch does not import here \(ImportError: libcudart.so.12: cannot open.*requirements-gpu\.txt"):
        backend_mod.choose_backend("torch", "ImportError: libcudart.so.12: cannot open shared object file", "")
    with pytest.raises(backend_mod.BackendError, match="expected one of auto, python, torch, found 'jax'"):
        backend_mod.choose_backend("jax", None)


def test_torch_import_error_names_the_import_failure(monkeypatch):
    assert backend_mod.torch_import_error() is None  # torch is in requirements-test.lock
    monkeypatch.setitem(sys.modules, "torch", None)  # what an interpreter without torch does on `import torch`
    assert backend_mod.torch_import_error().startswith("ModuleNotFoundError: ")


def test_train_py_exits_2_before_touching_ray_when_a_forced_torch_backend_cannot_import(monkeypatch, capsys):
    import train

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(train.ray, "init", lambda *a, **k: pytest.fail("ray.init called for a backend that cannot run"))
    assert train.main(["--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: --backend torch: torch does not import here (ModuleNotFoundError") and "requirements-gpu.txt" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "backend, gpu_ids, cuda, device, reason",
    [
        ("python", [], False, "cpu", "pure-Python backend: using cpu"),
        ("python", ["0"], True, "cpu", "GPU 0 assigned by Ray but the pure-Python backend runs on the CPU: using cpu"),
        ("torch", [], False, "cpu", "no GPU assigned by Ray: using cpu"),
        ("torch", [], True, "cpu", "torch sees CUDA but Ray assigned this worker no GPU: using cpu"),
        ("torch", ["0"], False, "cpu", "GPU 0 assigned by Ray but torch.cuda.is_available() is False: using cpu"),
        ("torch", ["1"], True, "cuda:0", "GPU 1 assigned by Ray and torch.cuda.is_available() is True: using cuda:0 (CUDA_VISIBLE_DEVICES=1)"),
        ("torch", ["0", "3"], True, "cuda:0", "GPUs 0,3 assigned by Ray and torch.cuda.is_available() is True: using cuda:0 (CUDA_VISIBLE_DEVICES=0,3)"),
    ],
)
def test_device_choice_table(backend, gpu_ids, cuda, device, reason):
    assert backend_mod.choose_device(backend, gpu_ids, cuda) == (device, reason)


@pytest.mark.parametrize(
    "node_gpus, placement, shares",
    [
        ([0], [0, 0], [0.0, 0.0]),  # a CPU node: no GPU requested
        ([1], [0], [1.0]),
        ([1], [0, 0], [0.5, 0.5]),  # two workers share the one GPU
        ([1], [0, 0, 0], [0.3333, 0.3333, 0.3333]),  # rounded down: three shares fit on one GPU
        ([2], [0, 0, 0], [0.5, 0.5, 0.5]),  # not 2/3 each: 2/3 + 2/3 would not fit on one GPU
        ([4], [0, 0], [1.0, 1.0]),
        ([0, 1], [0, 1, 0, 1], [0.0, 0.5, 0.0, 0.5]),  # mixed cluster: only the GPU node's workers ask
        ([0.5], [0], [0.0]),  # less than one whole GPU advertised: not requested
    ],
)
def test_gpu_share_table(node_gpus, placement, shares):
    assert backend_mod.gpu_shares(node_gpus, placement) == shares


def test_the_pure_python_backend_requests_no_gpu():
    assert backend_mod.gpu_shares([2, 1], [0, 1, 0], use_gpus=False) == [0.0, 0.0, 0.0]


def ray_packs(node_gpus, placement, shares):
    """Whether every request fits, placed as Ray does: a whole-number request takes whole free
    GPUs, a fractional one must fit on a single GPU (first fit; Ray counts in 1/10000)."""
    free = [[10_000] * int(g) for g in node_gpus]
    for n, share in zip(placement, shares):
        units = round(share * 10_000)
        if units == 0:
            continue
        if units >= 10_000:
            whole = [i for i, f in enumerate(free[n]) if f == 10_000][: units // 10_000]
            if len(whole) < units // 10_000:
                return False
            for i in whole:
                free[n][i] = 0
        else:
            fit = next((i for i, f in enumerate(free[n]) if f >= units), None)
            if fit is None:
                return False
            free[n][fit] -= units
    return True


@settings(max_examples=200, deadline=None)
@given(node_gpus=st.lists(st.integers(0, 8), min_size=1, max_size=4), data=st.data())
def test_gpu_shares_always_fit_the_nodes_gpus(node_gpus, data):
    placement = data.draw(st.lists(st.integers(0, len(node_gpus) - 1), max_size=12))
    shares = backend_mod.gpu_shares(node_gpus, placement)
    assert ray_packs(node_gpus, placement, shares)
    for n, share in zip(placement, shares):
        assert (share > 0) == (node_gpus[n] >= 1)  # a GPU node's worker always gets a share, a CPU node's never
        assert share <= 1.0


def test_the_gpu_requirements_are_the_cpu_ones_plus_torch():
    """requirements-gpu.txt repeats requirements.txt (the image hash reads one file) and adds torch,
    at the version the test lock pins."""

    def pins(name):
        text = (Path(__file__).resolve().parents[1] / name).read_text()
        return {line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()}

    cpu, gpu = pins("examples/cslr/requirements.txt"), pins("examples/cslr/requirements-gpu.txt")
    assert not any(p.startswith("torch") for p in cpu)  # a CPU Ray image must not pull CUDA torch
    assert gpu - cpu == {"torch==2.13.0"} and cpu <= gpu
    assert "torch==2.13.0" in pins("requirements-test.lock")  # no local label: the CPU build where offered (Makefile lock)

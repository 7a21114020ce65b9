"""The CSLR example's PyTorch backend (examples/cslr/cslr_torch.py) against its pure-Python model
(cslr_core, itself checked against brute force and finite differences in test_cslr_example.py):
the summed CTC loss of a batch and its weight gradient agree to rounding, for seeded datasets and
for any small shape hypothesis finds, infeasible targets included; a few Adam steps on either
backend give the same weights. Runs on the CPU build of torch (requirements-test.lock): the same
code on `cuda:0` needs a GPU host (examples/cslr/README.md)."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "cslr"))
import cslr_core as core
import cslr_torch


def python_sum(model, samples, batch):
    """What train.py's pure-Python worker returns for `batch`: summed loss and gradient."""
    loss, total = 0.0, [[0.0] * model.inputs for _ in range(model.classes)]
    for i in batch:
        sample_loss, grad = model.loss_and_grad(samples[i])
        loss += sample_loss
        core.add_into(total, grad)
    return loss, total


def assert_close(a, b, rel=1e-9, abs_=1e-9):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a == pytest.approx(row_b, rel=rel, abs=abs_)


@pytest.mark.parametrize("seed, context, vocab, keypoints", [(0, 1, 8, 6), (1, 0, 3, 2), (2, 2, 5, 4)])
def test_batch_loss_and_gradient_equal_the_pure_python_sum(seed, context, vocab, keypoints):
    samples = core.make_dataset(40, seed=seed, vocab=vocab, keypoints=keypoints)
    model = core.Model.create(vocab, 2 * keypoints, context, seed=seed)
    shard = cslr_torch.TorchShard(samples, context)
    batch = random.Random(seed).sample(range(40), 16)
    loss, grad = shard.loss_and_grad(model.weights, batch)
    expected_loss, expected_grad = python_sum(model, samples, batch)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert_close(grad, expected_grad)
    assert any(abs(g) > 1e-3 for row in grad for g in row)  # not trivially zero


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    vocab=st.integers(1, 4),
    dim=st.integers(1, 3),
    context=st.integers(0, 2),
    shapes=st.lists(st.tuples(st.integers(1, 6), st.lists(st.integers(1, 4), min_size=1, max_size=4)), min_size=1, max_size=5),
)
def test_any_small_batch_agrees_with_the_pure_python_model(seed, vocab, dim, context, shapes):
    """Random frames and labels of any length, repeats and targets too long for their frames
    (infinite loss, zero gradient in both) included."""
    rng = random.Random(seed)
    samples = [core.Sample([[rng.gauss(0, 1) for _ in range(dim)] for _ in range(T)], [min(g, vocab) for g in labels]) for T, labels in shapes]
    model = core.Model.create(vocab, dim, context, seed=seed)
    batch = list(range(len(samples)))
    loss, grad = cslr_torch.TorchShard(samples, context).loss_and_grad(model.weights, batch)
    expected_loss, expected_grad = python_sum(model, samples, batch)
    if math.isinf(expected_loss):
        assert math.isinf(loss)
    else:
        assert loss == pytest.approx(expected_loss, rel=1e-9)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("frames, labels", [(3, [1, 1]), (2, [1, 1]), (2, [1, 2]), (1, [1, 2]), (4, [1, 1, 1]), (5, [1, 1, 1]), (3, [2, 1, 2])])
def test_ctc_feasibility_matches_a_finite_pure_python_loss(frames, labels):
    logits = [[0.1 * (t + k) for k in range(3)] for t in range(frames)]
    assert cslr_torch.ctc_feasible(frames, labels) == (not math.isinf(core.ctc_loss_and_grad(logits, labels)[0]))


def test_an_empty_batch_is_zero_loss_and_zero_gradient():
    samples = core.make_dataset(3, seed=1)
    model = core.Model.create(8, 12, seed=0)
    loss, grad = cslr_torch.TorchShard(samples, 1).loss_and_grad(model.weights, [])
    assert loss == 0.0 and grad == [[0.0] * model.inputs for _ in range(model.classes)]


def test_adam_steps_on_either_backend_give_the_same_weights():
    samples = core.make_dataset(64, seed=4)
    py_model, torch_model = core.Model.create(8, 12, seed=0), core.Model.create(8, 12, seed=0)
    py_opt, torch_opt = (core.Adam((9, 37), lr=0.05) for _ in range(2))
    shard = cslr_torch.TorchShard(samples, 1)
    for step in range(4):
        batch = list(range(step * 16, (step + 1) * 16))
        _, py_grad = python_sum(py_model, samples, batch)
        _, torch_grad = shard.loss_and_grad(torch_model.weights, batch)
        py_opt.step(py_model.weights, py_grad)
        torch_opt.step(torch_model.weights, torch_grad)
    assert_close(torch_model.weights, py_model.weights, rel=1e-9, abs_=1e-9)
    assert torch_model.weights != core.Model.create(8, 12, seed=0).weights  # training moved them


def test_the_shard_lives_on_the_device_it_was_given():
    shard = cslr_torch.TorchShard(core.make_dataset(2, seed=1), 1, device="cpu")
    assert shard.x.device.type == "cpu" and shard.x.dtype == cslr_torch.torch.float64

"""The CSLR example's pure parts (examples/cslr/cslr_core.py): CTC loss against a brute-force sum
over every alignment, its gradient against finite differences, greedy decoding, WER, and the
seeded data generator."""

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

"""The pure parts of the CSLR example: synthetic data, the model, CTC, decoding, WER.

Continuous sign-language recognition maps a sequence of body keypoints (frames) to a sequence
of glosses without frame-level alignment; CTC (Graves et al., 2006) trains for exactly that.
Everything here is plain Python (no NumPy, no torch), deterministic for a seed, and small
enough to test against brute force:

- `make_dataset`: each gloss is a keypoint "pose" prototype; a sentence is 2–5 glosses, each held
  for a few noisy frames, with rest-pose transition frames between them (what CTC's blank is for).
- `Model`: a per-frame linear classifier over a window of neighbouring frames; classes are the
  glosses plus the CTC blank (index 0).
- `ctc_loss_and_grad`: -log p(labels | frames) by the forward-backward recursions in log space,
  and its gradient with respect to the per-frame logits.
- `greedy_decode`, `wer`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

BLANK = 0
NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Sample:
    frames: list[list[float]]  # T x D keypoint features
    glosses: list[int]  # gloss ids, 1..V (0 is the CTC blank)


def make_dataset(n: int, seed: int, vocab: int = 8, keypoints: int = 6, noise: float = 0.35, pose_seed: int = 7) -> list[Sample]:
    """`n` seeded synthetic sentences. Features are (x, y) of `keypoints` keypoints per frame;
    the gloss poses depend on `pose_seed` only, so train and test splits share them."""
    dim = 2 * keypoints
    pose_rng = random.Random(pose_seed)
    poses = {g: [pose_rng.uniform(-1.0, 1.0) for _ in range(dim)] for g in range(1, vocab + 1)}
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        glosses = [rng.randint(1, vocab) for _ in range(rng.randint(2, 5))]
        frames: list[list[float]] = []
        for i, g in enumerate(glosses):
            for _ in range(rng.randint(1, 3) if i else rng.randint(0, 2)):  # rest pose between signs
                frames.append([rng.gauss(0.0, noise) for _ in range(dim)])
            for _ in range(rng.randint(3, 6)):
                frames.append([p + rng.gauss(0.0, noise) for p in poses[g]])
        for _ in range(rng.randint(0, 2)):
            frames.append([rng.gauss(0.0, noise) for _ in range(dim)])
        out.append(Sample(frames, glosses))
    return out


# ----------------------------------------------------------------------------------- model


def window(frames: list[list[float]], context: int) -> list[list[float]]:
    """Each frame with its `context` neighbours on either side (edges repeated) and a bias 1."""
    t_max = len(frames) - 1
    return [[v for d in range(-context, context + 1) for v in frames[min(max(t + d, 0), t_max)]] + [1.0] for t in range(len(frames))]


@dataclass
class Model:
    classes: int  # glosses + blank
    inputs: int  # window size * feature dim + 1 (bias)
    context: int = 1
    weights: list[list[float]] = field(default_factory=list)

    @classmethod
    def create(cls, vocab: int, dim: int, context: int = 1, seed: int = 0) -> Model:
        rng = random.Random(seed)
        inputs = (2 * context + 1) * dim + 1
        scale = 1.0 / math.sqrt(inputs)
        return cls(vocab + 1, inputs, context, [[rng.gauss(0.0, scale) for _ in range(inputs)] for _ in range(vocab + 1)])

    def logits(self, x: list[list[float]]) -> list[list[float]]:
        return [[sum(w * v for w, v in zip(row, xt)) for row in self.weights] for xt in x]

    def loss_and_grad(self, sample: Sample) -> tuple[float, list[list[float]]]:
        """CTC loss of one sample and its gradient with respect to the weights."""
        x = window(sample.frames, self.context)
        loss, dlogits = ctc_loss_and_grad(self.logits(x), sample.glosses)
        grad = [[0.0] * self.inputs for _ in range(self.classes)]
        for xt, gt in zip(x, dlogits):
            for k, g in enumerate(gt):
                if g:
                    row = grad[k]
                    for i, v in enumerate(xt):
                        row[i] += g * v
        return loss, grad

    def decode(self, frames: list[list[float]]) -> list[int]:
        return greedy_decode(self.logits(window(frames, self.context)))

    def to_dict(self) -> dict:
        return {"classes": self.classes, "inputs": self.inputs, "context": self.context, "weights": self.weights}


class Adam:
    def __init__(self, shape: tuple[int, int], lr: float = 0.05, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
        self.m = [[0.0] * shape[1] for _ in range(shape[0])]
        self.v = [[0.0] * shape[1] for _ in range(shape[0])]

    def step(self, weights: list[list[float]], grad: list[list[float]]) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for w, g, m, v in zip(weights, grad, self.m, self.v):
            for i, gi in enumerate(g):
                m[i] = self.b1 * m[i] + (1 - self.b1) * gi
                v[i] = self.b2 * v[i] + (1 - self.b2) * gi * gi
                w[i] -= self.lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + self.eps)


def add_into(total: list[list[float]], grad: list[list[float]], scale: float = 1.0) -> None:
    for row_t, row_g in zip(total, grad):
        for i, g in enumerate(row_g):
            row_t[i] += scale * g


# ------------------------------------------------------------------------------------- CTC


def logsumexp(values) -> float:
    values = list(values)
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


def log_softmax(row: list[float]) -> list[float]:
    norm = logsumexp(row)
    return [v - norm for v in row]


def ctc_loss_and_grad(logits: list[list[float]], labels: list[int], blank: int = BLANK) -> tuple[float, list[list[float]]]:
    """-log p(labels | logits) under CTC, and d loss / d logits (T x C).

    alpha_t(s): log prob of the prefixes that end in extended label s at frame t (frame t
    included); beta_t(s): log prob of the suffixes after frame t given s at t (frame t excluded).
    Their sum is the log probability of all alignments through (t, s); the gradient is
    softmax - posterior occupancy of each class. An infeasible target (too few frames) has an
    infinite loss and a zero gradient.
    """
    T = len(logits)
    logp = [log_softmax(row) for row in logits]
    ext = [blank]
    for label in labels:
        ext += [label, blank]
    S = len(ext)

    def can_skip(s: int) -> bool:
        return s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]

    alpha = [[NEG_INF] * S for _ in range(T)]
    alpha[0][0] = logp[0][ext[0]]
    if S > 1:
        alpha[0][1] = logp[0][ext[1]]
    for t in range(1, T):
        prev, cur, lp = alpha[t - 1], alpha[t], logp[t]
        for s in range(S):
            terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else []) + ([prev[s - 2]] if can_skip(s) else [])
            cur[s] = logsumexp(terms) + lp[ext[s]]
    beta = [[NEG_INF] * S for _ in range(T)]
    beta[T - 1][S - 1] = 0.0
    if S > 1:
        beta[T - 1][S - 2] = 0.0
    for t in range(T - 2, -1, -1):
        nxt, cur, lp = beta[t + 1], beta[t], logp[t + 1]
        for s in range(S):
            terms = [nxt[s] + lp[ext[s]]]
            if s + 1 < S:
                terms.append(nxt[s + 1] + lp[ext[s + 1]])
            if s + 2 < S and can_skip(s + 2):
                terms.append(nxt[s + 2] + lp[ext[s + 2]])
            cur[s] = logsumexp(terms)
    log_p = logsumexp([alpha[T - 1][S - 1]] + ([alpha[T - 1][S - 2]] if S > 1 else []))
    C = len(logits[0])
    if log_p == NEG_INF:
        return math.inf, [[0.0] * C for _ in range(T)]
    grad = []
    for t in range(T):
        occupancy = [NEG_INF] * C
        for s in range(S):
            a = alpha[t][s] + beta[t][s]
            if a != NEG_INF:
                occupancy[ext[s]] = logsumexp([occupancy[ext[s]], a])
        grad.append([math.exp(logp[t][k]) - (math.exp(occupancy[k] - log_p) if occupancy[k] != NEG_INF else 0.0) for k in range(C)])
    return -log_p, grad


def ctc_feasible(frames: int, labels: list[int]) -> bool:
    """Whether `frames` frames can emit `labels` under CTC: one frame per label plus one blank
    between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return frames >= len(labels) + repeats


# ------------------------------------------------------------------------- decoding and WER


def collapse(path: list[int], blank: int = BLANK) -> list[int]:
    """CTC's many-to-one map: merge repeats, then drop blanks."""
    out, last = [], None
    for k in path:
        if k != last and k != blank:
            out.append(k)
        last = k
    return out


def greedy_decode(logits: list[list[float]], blank: int = BLANK) -> list[int]:
    return collapse([max(range(len(row)), key=row.__getitem__) for row in logits], blank)


def edit_distance(ref: list, hyp: list) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[list], hyps: list[list]) -> float:
    """Corpus word (gloss) error rate: total edits / total reference length."""
    words = sum(len(r) for r in refs)
    if words == 0:
        raise ValueError("WER needs at least one reference word")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / words

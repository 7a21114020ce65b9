"""The optional PyTorch backend of the CSLR example: the same model and loss as cslr_core, on a
torch.device (cpu or cuda), with gradients by autograd.

Model: per-frame logits = window(frames) @ weights.T (cslr_core.window: ±context frames and a
bias 1), log-softmax over the classes, CTC with blank 0 (torch.nn.functional.ctc_loss), summed
over the samples of a batch — the sum cslr_core.Model.loss_and_grad gives one sample at a time.
A target too long for its frames has an infinite loss and contributes a zero gradient, as in
cslr_core. float64 by default, so results agree with the pure-Python backend to rounding.

A shard's samples are windowed once and kept on the device, padded to the longest; a batch is
one matrix product and one batched ctc_loss call. Weights and gradients cross the boundary as
plain lists of lists (what the driver's Adam step and Ray messages use).

Needs torch (examples/cslr/requirements-gpu.txt); train.py imports this module only when the
torch backend was chosen (cslr_backend.choose_backend).
"""

from __future__ import annotations

import math
import warnings

from cslr_core import BLANK, Sample, collapse, ctc_feasible, window

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without NumPy: not needed here
    import torch
    import torch.nn.functional as F


class TorchShard:
    """Samples on a device, ready for batched CTC loss and gradient computation."""

    def __init__(self, samples: list[Sample], context: int, device: str = "cpu", dtype: torch.dtype = torch.float64):
        self.device = torch.device(device)
        self.dtype = dtype
        self.count = len(samples)
        windows = [window(s.frames, context) for s in samples]
        self.inputs = len(windows[0][0]) if windows else 0
        t_max = max((len(w) for w in windows), default=0)
        s_max = max((len(s.glosses) for s in samples), default=0)
        x = torch.zeros(self.count, t_max, self.inputs, dtype=dtype)
        targets = torch.zeros(self.count, max(s_max, 1), dtype=torch.long)
        for i, (w, s) in enumerate(zip(windows, samples)):
            x[i, : len(w)] = torch.tensor(w, dtype=dtype)
            targets[i, : len(s.glosses)] = torch.tensor(s.glosses, dtype=torch.long)
        self.x = x.to(self.device)
        self.targets = targets.to(self.device)
        self.input_lengths = torch.tensor([len(w) for w in windows], dtype=torch.long, device=self.device)
        self.target_lengths = torch.tensor([len(s.glosses) for s in samples], dtype=torch.long, device=self.device)
        self.feasible = [ctc_feasible(len(w), s.glosses) for w, s in zip(windows, samples)]

    def loss_and_grad(self, weights: list[list[float]], batch: list[int]) -> tuple[float, list[list[float]]]:
        """Summed CTC loss of the samples `batch` (indices into the shard) and its gradient with
        respect to `weights` (classes x inputs), as in summing cslr_core's per-sample results."""
        w = torch.tensor(weights, dtype=self.dtype, device=self.device, requires_grad=True)
        if not batch:
            return 0.0, [[0.0] * len(row) for row in weights]
        idx = torch.tensor(batch, dtype=torch.long, device=self.device)
        lengths = self.input_lengths[idx]
        t_max = int(lengths.max())
        logits = self.x[idx, :t_max] @ w.T  # B x T x C
        log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # T x B x C, what ctc_loss takes
        # zero_infinity: an infeasible sample gives loss 0 and gradient 0 (not NaN); its infinite
        # loss is added back below, as cslr_core reports it.
        losses = F.ctc_loss(log_probs, self.targets[idx], lengths, self.target_lengths[idx], blank=BLANK, reduction="none", zero_infinity=True)
        total = losses.sum()
        total.backward()
        loss = float(total.detach())
        if not all(self.feasible[i] for i in batch):
            loss = math.inf
        return loss, w.grad.detach().cpu().tolist()

    def decode(self, weights: list[list[float]], chunk: int = 64) -> list[list[int]]:
        """Greedy CTC decodes of every sample of the shard with `weights` (cslr_core.greedy_decode:
        the first maximal class per frame, repeats merged, blanks dropped), `chunk` samples at a time."""
        w = torch.tensor(weights, dtype=self.dtype, device=self.device)
        out: list[list[int]] = []
        with torch.no_grad():
            for start in range(0, self.count, chunk):
                lengths = self.input_lengths[start : start + chunk].tolist()
                best = (self.x[start : start + chunk, : max(lengths)] @ w.T).argmax(dim=-1).cpu().tolist()
                out.extend(collapse(path[:n]) for path, n in zip(best, lengths))
        return out

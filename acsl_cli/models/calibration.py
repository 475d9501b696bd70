"""NorCal (Pan et al., NeurIPS 2021): post-hoc calibration of a softmax head's scores.

A detector trained on a long tail gives frequent classes the higher scores. NorCal divides
each foreground class's probability by its training count to a power gamma, leaves the
background's apart (not scaled), and renormalises over the C + 1 columns of every RoI:

    s_c = (p_c / N_c^gamma) / (p_0 + sum_k p_k / N_k^gamma)

which is the softmax of the logits with ``gamma * log N_c`` taken off each foreground
column. As in the release (tydpan/NorCal, ``CalibrationFastRCNNOutputLayers`` with its
defaults ``METHOD: gamma``, ``WITH: exps``, ``RENORM: True``), it acts on each RoI's class
probabilities before the score threshold, the top-k and NMS, and N_c is the number of
train images that hold class c (the release reads LVIS's ``image_count``); instance counts
are an option. A class without train images counts as one (the release would divide by 0).

The release calibrates softmax heads only (detectron2's cross-entropy classifier). A
sigmoid head (BCE, EQL, EQLv2, ACSL, Federated) has no background column to keep apart
and no per-RoI distribution to renormalise; no rule for it could be verified against the
release, so such heads are refused (``refusal``), as are BAGS's and Seesaw's release
layouts, whose scores are products of several softmaxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from acsl_cli.losses import ClassificationLoss
from acsl_cli.losses.common import upcast


def refusal(loss_name: str, params: Mapping[str, Any]) -> str | None:
    """Why NorCal cannot score a head with this loss, or None when it can: its scores must
    be one softmax over C + 1 columns, background in column 0."""
    if loss_name == "softmax_ce":
        return None
    if loss_name == "seesaw" and params.get("layout") == "single_softmax":
        return None
    what = {"seesaw": "an objectness softmax times a class softmax (layout=release)",
            "bags": "group softmaxes merged"}.get(loss_name, "sigmoids")
    return (f"loss '{loss_name}' scores with {what}; NorCal (its release) is defined for "
            "one softmax over the classes and background")


def log_counts(counts: Sequence[int]) -> Tensor:
    """log N_c per foreground class (index label - 1), a class without train data as 1."""
    return torch.tensor([float(max(int(n), 1)) for n in counts], dtype=torch.float64).log()


def norcal_scores(logits: Tensor, log_n: Tensor, gamma: float) -> Tensor:
    """(N, C) calibrated scores of (N, C + 1) logits (column 0 = background): the softmax
    with ``gamma * log N_c`` taken off foreground column c, in float32 like the heads'."""
    logits = upcast(logits)
    shift = (float(gamma) * log_n).to(logits.device, logits.dtype)
    adjusted = torch.cat([logits[:, :1], logits[:, 1:] - shift], dim=1)
    return F.softmax(adjusted, dim=1)[:, 1:]


class NorCal(ClassificationLoss):
    """A head's loss whose ``scores`` are NorCal's: what a ``Scorer`` holds for a calibrated
    row (scoring only; it trains nothing). ``gamma=0`` keeps the head's own scores."""

    name = "norcal"

    def __init__(self, loss: ClassificationLoss, counts: Sequence[int], gamma: float) -> None:
        super().__init__(len(counts))
        self.loss, self.gamma = loss, float(gamma)
        self.register_buffer("log_n", log_counts(counts), persistent=False)

    def num_outputs(self, num_classes: int) -> int:
        return self.loss.num_outputs(num_classes)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover
        raise TypeError("NorCal calibrates scores at test time; it is not a training loss")

    def scores(self, logits: Tensor) -> Tensor:
        if self.gamma == 0:  # the head's own scores, bit for bit
            return self.loss.scores(logits)
        return norcal_scores(logits, self.log_n, self.gamma)


def calibrated(scorer: tuple[Sequence[Any], Sequence[ClassificationLoss]],
               counts: Sequence[int], gamma: float
               ) -> tuple[Sequence[Any], list[ClassificationLoss]]:
    """A ``models.trunk.Scorer`` whose every stage scores with NorCal at ``gamma``."""
    layers, losses = scorer
    return layers, [NorCal(loss, counts, gamma) for loss in losses]

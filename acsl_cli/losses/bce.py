"""Sigmoid binary cross-entropy over all C + 1 columns (paper eq. 2-4): ACSL with W = 1.

Half-precision logits are reduced in float32 (``upcast``): the float16 sum overflows at
LVIS size. No host synchronisation in ``forward``.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import check_width, sigmoid_scores, upcast
from acsl_cli.losses.registry import register_loss


@register_loss("bce")
class SigmoidBCE(ClassificationLoss):
    """One-hot BCE (a background RoI has target 1 in column 0), summed, divided by N.

    ``bg_factor`` only changes ``scores``: sigmoid(z_j) * (1 - sigmoid(z_bg)).
    """

    multi_label: ClassVar[bool] = True

    def __init__(self, num_classes: int | None = None, bg_factor: bool = False) -> None:
        super().__init__(num_classes)
        self.bg_factor = bool(bg_factor)

    def _columns(self, logits: Tensor) -> int:
        return logits.shape[1] if self.num_classes is None else self.num_classes + 1

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._columns(logits))
        logits = upcast(logits)
        target = self.targets(labels, logits.shape[1], logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return loss / max(logits.shape[0], 1)  # an empty batch: 0, not 0 / 0

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._columns(logits))
        logits = upcast(logits)
        target = self.targets(labels, logits.shape[1], logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)

    def scores(self, logits: Tensor) -> Tensor:
        check_width(self.name, logits, self._columns(logits))
        return sigmoid_scores(logits, self.bg_factor)

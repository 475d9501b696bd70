"""Softmax cross-entropy over C + 1 columns: the stage-1 loss and the stage-2 baseline.

Half-precision logits are upcast to float32 first (log-softmax and the mean want it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import check_width, upcast
from acsl_cli.losses.registry import register_loss


@register_loss("softmax_ce")
class SoftmaxCE(ClassificationLoss):
    """Plain softmax CE, mean over the N sampled RoIs (torchvision's ``fastrcnn_loss``)."""

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__(num_classes)

    def _columns(self, logits: Tensor) -> int:
        return logits.shape[1] if self.num_classes is None else self.num_classes + 1

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._columns(logits))
        logits = upcast(logits)
        if logits.shape[0] == 0:  # the mean of nothing is NaN; an empty batch teaches nothing
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, reduction="mean")

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._columns(logits))
        return F.cross_entropy(upcast(logits), labels, reduction="none")

    def scores(self, logits: Tensor) -> Tensor:
        check_width(self.name, logits, self._columns(logits))
        return F.softmax(upcast(logits), dim=1)[:, 1:]

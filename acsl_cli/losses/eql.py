"""Equalization Loss (Tan et al., CVPR 2020) in our C + 1 sigmoid layout.

Column 0 is a background logit (the EQL reference code has none and gives a background
RoI an all-zero target; we keep the background column like BCE/ACSL so the three losses
differ only in W). The weight is

    w_ij = 1 - E(i) * T(f_j) * (1 - y_ij)

with E(i) = 1 for a foreground RoI and 0 for a background RoI, T(f_j) = 1 when the
fraction of train images containing class j, f_j = image_count_j / num_images, is below
``lambda_``. The background column has f = 1 and is never a tail column. Loss =
sum(w * BCE) / N. So tail columns get no negative gradient from foreground RoIs of other
classes, background RoIs keep the full BCE, and the target column is always kept.

Half-precision logits are reduced in float32; ``forward`` never synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import (
    check_width,
    counts_tensor,
    sigmoid_scores,
    upcast,
)
from acsl_cli.losses.registry import register_loss


@register_loss("eql")
class EqualizationLoss(ClassificationLoss):
    """EQL; ``lambda_`` is 0.00177 for LVIS v0.5 and 0.0011 for LVIS v1."""

    needs: ClassVar[tuple[str, ...]] = ("image_counts", "num_images")
    multi_label: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        lambda_: float = 0.00177,
        bg_factor: bool = False,
        image_counts: Sequence[int] | None = None,
        num_images: int | None = None,
    ) -> None:
        super().__init__(num_classes, image_counts=image_counts, num_images=num_images)
        assert image_counts is not None and num_images is not None
        if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or lambda_ < 0:
            raise ConfigError(f"loss 'eql': lambda_ must be a number >= 0, got {lambda_!r}")
        if int(num_images) <= 0:
            raise ConfigError(f"loss 'eql': num_images must be positive, got {num_images}")
        self.lambda_ = float(lambda_)
        self.bg_factor = bool(bg_factor)
        fraction = counts_tensor("eql", "image_counts", image_counts) / int(num_images)
        tail = torch.cat([torch.zeros(1, dtype=torch.bool), fraction < self.lambda_])
        self.register_buffer("tail", tail, persistent=False)

    def weights(self, labels: Tensor) -> Tensor:
        """(N, C + 1) float weights w_ij; exposed so tests can check them directly.

        A target column (the class, and its ancestors under a hierarchy) is always kept.
        """
        tail = self.tail.to(labels.device)
        suppressed = (labels > 0)[:, None] & tail[None, :]
        suppressed &= ~self.targets(labels, suppressed.shape[1], torch.bool)
        return (~suppressed).float()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        logits = upcast(logits)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        target = self.targets(labels, logits.shape[1], logits.dtype)
        weight = self.weights(labels).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target, weight, reduction="sum")
        return loss / logits.shape[0]

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        logits = upcast(logits)
        target = self.targets(labels, logits.shape[1], logits.dtype)
        weight = self.weights(labels).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, weight,
                                                  reduction="none").sum(1)

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return sigmoid_scores(logits, self.bg_factor)

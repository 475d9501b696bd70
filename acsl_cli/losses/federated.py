"""Federated loss (Zhou et al., 2021): sigmoid BCE on a per-batch subset of classes.

Beyond the paper; it shows that adding a loss is one module plus one yaml. Layout is the
usual (N, C + 1) with column 0 = background, but the background column is unused: it gets
weight 0 in the loss (so it keeps its stage-1 values; ``bg_factor`` scoring therefore
reads an untrained-in-stage-2 logit). The loss is BCE over the foreground columns of the
selected classes only, summed and divided by N; a background RoI has all-zero foreground
targets. Selected classes = every class present in the batch's labels, plus classes
sampled without replacement with probability proportional to ``image_count ** 0.5`` until
``num_sample_classes`` are selected (all classes when C <= num_sample_classes; classes with
0 train images are never sampled). Draws: one ``torch.multinomial`` per call from a CPU
generator seeded with ``seed``, skipped when no sampling is needed.

Speed: the draw needs the present classes on the host, so ``forward`` copies the labels
to the CPU once (its only sync); the selected columns are gathered with ``index_select``
(backward: one ``index_add`` instead of an accumulating ``index_put``). Half-precision
logits are reduced in float32.
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

#: Exponent of the image count in the class-sampling probability (Zhou et al.).
FREQ_POWER = 0.5


@register_loss("federated")
class FederatedLoss(ClassificationLoss):
    """Federated BCE; the background logit is not trained by this loss."""

    needs: ClassVar[tuple[str, ...]] = ("image_counts",)
    seeded: ClassVar[bool] = True
    multi_label: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        num_sample_classes: int = 50,
        bg_factor: bool = False,
        seed: int = 0,
        image_counts: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, seed, image_counts=image_counts)
        assert image_counts is not None
        if (
            isinstance(num_sample_classes, bool)
            or int(num_sample_classes) != num_sample_classes
            or num_sample_classes < 1
        ):
            raise ConfigError(
                f"loss 'federated': num_sample_classes must be a positive integer, "
                f"got {num_sample_classes!r}"
            )
        self.num_sample_classes = int(num_sample_classes)
        self.bg_factor = bool(bg_factor)
        weights = counts_tensor("federated", "image_counts", image_counts) ** FREQ_POWER
        self.sample_weights = weights  # CPU: the draw happens on CPU

    def select_classes(self, labels: Tensor) -> Tensor:
        """Sorted foreground labels (1..C) whose columns enter this batch's loss (CPU)."""
        assert self.num_classes is not None
        present = torch.unique(labels.detach().cpu())
        present = present[present > 0]
        if self.expansion is not None:  # a present class's ancestors are present too
            rows = self.expansion.cpu()[present]
            present = rows.any(0).nonzero().squeeze(1)
            present = present[present > 0]
        if self.num_classes <= self.num_sample_classes:
            return torch.arange(1, self.num_classes + 1)
        n_extra = self.num_sample_classes - present.numel()
        weights = self.sample_weights.clone()
        weights[present - 1] = 0
        n_extra = min(n_extra, int((weights > 0).sum()))
        if n_extra <= 0:
            return present
        extra = torch.multinomial(weights, n_extra, replacement=False, generator=self.generator)
        return torch.sort(torch.cat([present, extra + 1])).values

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        if logits.shape[0] == 0:
            return upcast(logits).sum() * 0.0
        selected = self.select_classes(labels).to(logits.device, non_blocking=True)
        z = upcast(logits.index_select(1, selected))
        if self.expansion is None:
            target = (labels[:, None] == selected[None, :]).to(z.dtype)
        else:  # the label and its ancestors
            target = self.expansion.to(z.device)[labels][:, selected].to(z.dtype)
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="sum")
        return loss / logits.shape[0]

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        if logits.shape[0] == 0:
            return upcast(logits).sum(1)
        selected = self.select_classes(labels).to(logits.device, non_blocking=True)
        z = upcast(logits.index_select(1, selected))
        if self.expansion is None:
            target = (labels[:, None] == selected[None, :]).to(z.dtype)
        else:
            target = self.expansion.to(z.device)[labels][:, selected].to(z.dtype)
        return F.binary_cross_entropy_with_logits(z, target, reduction="none").sum(1)

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return sigmoid_scores(logits, self.bg_factor)

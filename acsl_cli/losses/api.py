"""The losses for other frameworks' box heads, with the background column explicit.

This project puts background in column 0 and labels in 0..C (torchvision's convention);
mmdetection and detectron2 put it last (column C, label C). ``detection_loss(...,
background="last")`` takes their layout as it is: logits (N, C + 1) and labels in 0..C
with C = background, and returns the same loss value as the project's own layout on the
permuted logits; ``scores`` returns (N, C) foreground scores in class order either way.

    loss = detection_loss("acsl", num_classes=1230, background="last", xi=0.7,
                          frequencies=freqs)          # what the loss needs, by keyword
    value = loss(class_logits, labels)                # in the box head's loss()
    scores = loss.scores(class_logits)                # in its inference, instead of softmax

Labels outside 0..C are an error (checked on the host: one synchronisation per call);
labels that are not an integer tensor and logits that are not floating point are a
TypeError naming the dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, LossContext
from acsl_cli.losses.registry import build_loss

BACKGROUND = ("first", "last")


class DetectionLoss(nn.Module):
    """A registry loss in a given background layout (see the module docstring)."""

    def __init__(self, loss: ClassificationLoss, num_classes: int, background: str) -> None:
        super().__init__()
        if background not in BACKGROUND:
            raise ConfigError(f"background={background!r}: must be one of first, last")
        if background == "last" and loss.num_outputs(num_classes) != num_classes + 1:
            raise ConfigError(f"loss '{loss.name}' has its own classifier layout "
                              f"({loss.num_outputs(num_classes)} columns for {num_classes} "
                              "classes): use background='first'")
        self.loss, self.num_classes, self.background = loss, num_classes, background

    def _to_first(self, logits: Tensor) -> Tensor:
        if self.background == "first":
            return logits
        return torch.cat([logits[:, -1:], logits[:, :-1]], dim=1)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check_logits(logits)
        if not isinstance(labels, Tensor) or labels.dtype == torch.bool or \
                labels.dtype.is_floating_point or labels.dtype.is_complex:
            kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer tensor (torch.long), got {kind}")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi > self.num_classes:
                raise ValueError(f"labels must lie in 0..{self.num_classes} (background "
                                 f"{0 if self.background == 'first' else self.num_classes}),"
                                 f" got {lo}..{hi}")
        if self.background == "last":  # C (background) -> 0, j -> j + 1
            labels = torch.where(labels == self.num_classes, 0, labels + 1)
        return self.loss(self._to_first(logits), labels)

    def scores(self, logits: Tensor) -> Tensor:
        """(N, C) per-class detection scores, column j = class j (0-based foreground)."""
        _check_logits(logits)
        return self.loss.scores(self._to_first(logits))


def _check_logits(logits: Tensor) -> None:
    """Integer or bool logits would fail deep inside a loss (indexing, overflow)."""
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point:
        kind = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor, got {kind}")


def detection_loss(name: str, num_classes: int, background: str = "first", seed: int = 0,
                   **params: Any) -> DetectionLoss:
    """Build the loss registered as ``name`` for ``num_classes`` foreground classes; the
    dataset statistics it needs (``frequencies``, ``image_counts``, ``instance_counts``,
    ``num_images``) and its own parameters are keywords."""
    stats = {k: params.pop(k) for k in ("frequencies", "image_counts", "instance_counts",
                                         "num_images") if k in params}
    for key in ("frequencies", "image_counts", "instance_counts"):
        if key in stats:
            stats[key] = tuple(stats[key])
    context = LossContext(num_classes, seed, **stats)
    return DetectionLoss(build_loss(name, context, **params), num_classes, background)

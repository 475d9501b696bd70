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

``name`` is any ``loss=NAME`` choice (``acsl losses``): a registry loss or a preset of
``conf/loss/`` such as ``acsl_adaptive`` (its parameters, keywords win).

mmdetection's call, ``loss(cls_score, labels, label_weights, avg_factor=...,
reduction_override=...)``, weights and reduces the loss's per-RoI terms l_i (whose mean
is the plain call's value) as mmdetection's ``weight_reduce_loss`` does: w_i l_i, then
'none' keeps them, 'sum' adds them, 'mean' divides their sum by ``avg_factor + eps``
(eps = float32's machine epsilon) or, without ``avg_factor``, by N; ``avg_factor`` with
'sum' is a ValueError. The result is multiplied by ``loss_weight``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, LossContext
from acsl_cli.losses.presets import preset
from acsl_cli.losses.registry import build_loss

BACKGROUND = ("first", "last")
REDUCTIONS = ("none", "mean", "sum")
#: mmdetection's guard against avg_factor = 0 (all RoIs ignored)
EPS = torch.finfo(torch.float32).eps


class DetectionLoss(nn.Module):
    """A registry loss in a given background layout (see the module docstring)."""

    def __init__(self, loss: ClassificationLoss, num_classes: int, background: str,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        if background not in BACKGROUND:
            raise ConfigError(f"background={background!r}: must be one of first, last")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction={reduction!r}: must be one of none, mean, sum")
        if background == "last" and loss.num_outputs(num_classes) != num_classes + 1:
            raise ConfigError(f"loss '{loss.name}' has its own classifier layout "
                              f"({loss.num_outputs(num_classes)} columns for {num_classes} "
                              "classes): use background='first'")
        self.loss, self.num_classes, self.background = loss, num_classes, background
        self.reduction, self.loss_weight = reduction, float(loss_weight)

    def _to_first(self, logits: Tensor) -> Tensor:
        if self.background == "first":
            return logits
        return torch.cat([logits[:, -1:], logits[:, :-1]], dim=1)

    def forward(self, logits: Tensor, labels: Tensor, label_weights: Tensor | None = None,
                avg_factor: float | Tensor | None = None,
                reduction_override: str | None = None) -> Tensor:
        """The loss of ``logits`` (N, C + 1) for ``labels`` (N,); the optional arguments
        are mmdetection's (module docstring). Without them: the loss's own mean."""
        if reduction_override not in (None, *REDUCTIONS):
            raise ValueError(f"reduction_override={reduction_override!r}: must be one of "
                             "None, none, mean, sum")
        reduction = reduction_override or self.reduction
        plain = label_weights is None and avg_factor is None and reduction == "mean"
        logits, labels = self._to_first_layout(logits, labels)
        if plain:
            return self.loss(logits, labels) * self.loss_weight
        terms = self.loss.roi_losses(logits, labels)
        if label_weights is not None:
            if not isinstance(label_weights, Tensor):
                label_weights = torch.as_tensor(label_weights)
            if label_weights.shape not in ((len(terms),), (len(terms), 1)):
                raise ValueError(f"label_weights must have shape ({len(terms)},), got "
                                 f"{tuple(label_weights.shape)}")
            terms = terms * label_weights.reshape(-1).to(terms.dtype)
        if avg_factor is None:
            out = {"none": terms, "sum": terms.sum(),
                   "mean": terms.sum() / max(len(terms), 1)}[reduction]
        elif reduction == "mean":
            out = terms.sum() / (avg_factor + EPS)
        elif reduction == "none":
            out = terms
        else:
            raise ValueError('avg_factor can not be used with reduction="sum"')
        return out * self.loss_weight

    def _to_first_layout(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Checked inputs in the project's layout (background column and label 0)."""
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
        return self._to_first(logits), labels

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
                   reduction: str = "mean", loss_weight: float = 1.0,
                   **params: Any) -> DetectionLoss:
    """Build the loss ``name`` (a registry name or a ``conf/loss/`` preset) for
    ``num_classes`` foreground classes; the dataset statistics it needs (``frequencies``,
    ``image_counts``, ``instance_counts``, ``num_images``) and its own parameters are
    keywords. ``reduction`` and ``loss_weight`` as in mmdetection's losses."""
    stats = {k: params.pop(k) for k in ("frequencies", "image_counts", "instance_counts",
                                         "num_images") if k in params}
    for key in ("frequencies", "image_counts", "instance_counts"):
        if key in stats:
            stats[key] = tuple(stats[key])
    context = LossContext(num_classes, seed, **stats)
    registered, defaults = preset(name)
    return DetectionLoss(build_loss(registered, context, **{**defaults, **params}),
                         num_classes, background, reduction, loss_weight)

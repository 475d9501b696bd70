"""The contract every classification loss follows.

A loss owns three things the detector must not special-case: how many outputs the
classifier layer has, how that layer is initialised from the stage-1 classifier, and
how logits become per-class scores at inference.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from acsl_cli.errors import ConfigError

#: Dataset statistics a loss may ask for, all indexed by foreground label - 1 (length C).
STAT_NAMES = ("frequencies", "image_counts", "instance_counts", "num_images")


class ClassificationLoss(nn.Module):
    """Base class: ``loss(logits, labels)`` -> scalar, ``loss.scores(logits)`` -> (N, C).

    ``logits`` is (N, num_outputs) with column 0 = background unless a loss documents its
    own layout; ``labels`` is (N,) int64 in 0..C (0 = background).
    """

    #: Config name in the registry; set by ``@register_loss``.
    name: ClassVar[str] = ""
    #: Which of ``STAT_NAMES`` this loss reads (documentation and tests); the engine passes
    #: every statistic the constructor accepts.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def num_outputs(self, num_classes: int) -> int:
        """Width of the classifier layer for ``num_classes`` foreground classes."""
        return num_classes + 1

    def scores(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Per-class detection scores, (N, C); column j is foreground label j + 1."""
        raise NotImplementedError

    @torch.no_grad()
    def init_classifier(self, layer: nn.Linear, stage1: nn.Linear | None) -> None:
        """Initialise a fresh classifier layer; default: copy the stage-1 layer."""
        if stage1 is not None and stage1.weight.shape == layer.weight.shape:
            layer.weight.copy_(stage1.weight)
            layer.bias.copy_(stage1.bias)


def require_stat(name: str, loss: str, value: object) -> None:
    """Raise a one-line ConfigError when a loss is built without a statistic it needs."""
    if value is None:
        raise ConfigError(f"loss '{loss}' needs dataset statistic '{name}' (pass {name}=...)")


def check_labels(logits: Tensor, labels: Tensor, num_columns: int) -> None:
    """Shape checks shared by the losses with a (N, C+1) layout."""
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[1] != num_columns:
        raise ValueError(f"expected {num_columns} logit columns, got {logits.shape[1]}")

"""The contract every classification loss follows.

A loss owns three things the detector must not special-case: how many outputs the
classifier layer has, how that layer is initialised from the stage-1 classifier, and
how logits become per-class scores at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from acsl_cli.errors import ConfigError
from acsl_cli.losses.common import one_hot_targets

#: Dataset statistics a loss may ask for, all indexed by foreground label - 1 (length C).
STAT_NAMES = ("frequencies", "image_counts", "instance_counts", "num_images")


@dataclass(frozen=True)
class LossContext:
    """What the pipeline knows that a loss may need: classes, train statistics, seed.

    Every loss is built from one of these (``build_loss(name, context, **params)``); a
    loss takes the statistics it declares in ``needs`` and the seed if it is ``seeded``.
    """

    num_classes: int
    seed: int = 0
    frequencies: tuple[str, ...] | None = None
    image_counts: tuple[int, ...] | None = None
    instance_counts: tuple[int, ...] | None = None
    num_images: int | None = None
    #: Per class (index label - 1) the labels of its ancestors in a class hierarchy (Open
    #: Images); multi-label losses then train every ancestor of a RoI's class as positive.
    ancestors: tuple[tuple[int, ...], ...] | None = None

    def kwargs_for(self, cls: type[ClassificationLoss]) -> dict[str, Any]:
        """Constructor arguments ``cls`` takes from the context."""
        out: dict[str, Any] = {"num_classes": self.num_classes}
        out.update({k: getattr(self, k) for k in cls.needs})
        if cls.seeded:
            out["seed"] = self.seed
        return out


class ClassificationLoss(nn.Module):
    """Base class: ``loss(logits, labels)`` -> scalar, ``loss.scores(logits)`` -> (N, C).

    ``logits`` is (N, num_outputs) with column 0 = background unless a loss documents its
    own layout; ``labels`` is (N,) int64 in 0..C (0 = background).
    """

    #: Config name in the registry; set by ``@register_loss``.
    name: ClassVar[str] = ""
    #: Which of ``STAT_NAMES`` this loss reads: the one declaration of a loss's needs. The
    #: constructor takes each as a keyword; ``LossContext`` passes exactly these.
    needs: ClassVar[tuple[str, ...]] = ()
    #: Whether the loss makes random draws (it then takes ``seed`` and owns a generator).
    seeded: ClassVar[bool] = False
    #: Whether a RoI may have several positive columns (sigmoid losses): only such a loss
    #: trains a hierarchy's ancestors of the RoI's class as positives (``use_hierarchy``).
    multi_label: ClassVar[bool] = False

    def __init__(self, num_classes: int | None = None, seed: int | None = None,
                 required: Sequence[str] | None = None, **stats: Any) -> None:
        """The shared prologue: required statistics present, C agreed, generator seeded.

        ``required`` defaults to ``needs``; ``stats`` are the statistics given.
        """
        super().__init__()
        for name in self.needs if required is None else required:
            require_stat(name, self.name, stats.get(name))
        per_class = {k: v for k, v in stats.items() if k != "num_images"}
        self.num_classes = _resolve_num_classes(self.name, num_classes, per_class)
        if self.seeded:
            self.seed = int(seed or 0)
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(self.seed)
        self.expansion: Tensor | None
        self.register_buffer("expansion", None, persistent=False)

    def use_hierarchy(self, ancestors: Sequence[Sequence[int]]) -> None:
        """Train every ancestor of a RoI's class as positive too (``ancestors[label - 1]``).

        Builds the (C + 1, C + 1) target table whose row ``label`` has ones at the label and
        its ancestors; row 0 (background) is one-hot.
        """
        if not self.multi_label:
            raise ConfigError(f"loss '{self.name}' gives a RoI one class; it cannot train a "
                              "class hierarchy's ancestors as positives")
        C = len(ancestors)
        if self.num_classes is not None and C != self.num_classes:
            raise ConfigError(f"loss '{self.name}': the hierarchy has {C} classes, the loss "
                              f"{self.num_classes}")
        table = torch.eye(C + 1, dtype=torch.bool)
        for label, parents in enumerate(ancestors, start=1):
            for parent in parents:
                if not 1 <= parent <= C or parent == label:
                    raise ConfigError(f"loss '{self.name}': class {label} has ancestor "
                                      f"{parent}, not a class 1..{C} other than itself")
                table[label, parent] = True
        self.register_buffer("expansion", table, persistent=False)

    def targets(self, labels: Tensor, num_columns: int, dtype: torch.dtype) -> Tensor:
        """(N, num_columns) 0/1 targets: one-hot, or the label and its ancestors."""
        if self.expansion is None:
            return one_hot_targets(labels, num_columns, dtype)
        return self.expansion.to(labels.device)[labels].to(dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        """A state without any entry of this loss loads with fresh statistics.

        A loss's buffers (EQLv2's gradient sums, Seesaw's counts) are training statistics,
        never used to score: a detector rebuilt around a head's loss and loaded with its
        stage-1 weights (``acsl eval ckpt=``) has none of them. A state holding some of
        them (a stage-2 resume file) must hold all of them, as usual.
        """
        local_metadata, strict, missing_keys, unexpected_keys, error_msgs = args
        own_missing: list[str] = []
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      own_missing, unexpected_keys, error_msgs)
        if any(k.startswith(prefix) for k in state_dict):
            missing_keys.extend(own_missing)

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N,) per-RoI terms whose sum over the N RoIs divided by N is ``forward``'s value
        (same draws, same running statistics), for callers that weight RoIs or divide by
        their own count (mmdetection's ``label_weights``, ``avg_factor``). A loss without
        such terms refuses."""
        raise ConfigError(f"loss '{self.name}' has no per-RoI terms (it normalises its own "
                          "way): call it without label_weights, avg_factor or a reduction")

    def num_outputs(self, num_classes: int) -> int:
        """Width of the classifier layer for ``num_classes`` foreground classes."""
        return num_classes + 1

    def scores(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Per-class detection scores, (N, C); column j is foreground label j + 1."""
        raise NotImplementedError

    @torch.no_grad()
    def init_classifier(self, layer: nn.Linear, stage1: nn.Linear | None) -> None:
        """Initialise a fresh classifier layer; default: copy the stage-1 layer, which must
        have its shape (a stage 1 of another width, ``schedule.stage1.loss``, is a
        ValueError: its rows are not this loss's)."""
        if stage1 is None:
            return
        if stage1.weight.shape != layer.weight.shape:
            raise ValueError(f"loss '{self.name}' starts from the stage-1 classifier's rows: "
                             f"stage 1 has {stage1.out_features} outputs, this loss "
                             f"{layer.out_features}")
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


def _resolve_num_classes(loss: str, num_classes: int | None,
                         stats: dict[str, Sequence | None]) -> int | None:
    """Agree on C from ``num_classes`` and the length of every per-class statistic given.

    A statistic of the wrong length would silently shift every class by one group, so a
    mismatch is a configuration error rather than something to guess around.
    """
    found, source = num_classes, "num_classes"
    for name, value in stats.items():
        if value is None:
            continue
        if found is None:
            found, source = len(value), name
        elif len(value) != found:
            raise ConfigError(
                f"loss '{loss}': {name} has {len(value)} entries but {source} says {found} classes"
            )
    if found is not None and found < 1:
        raise ConfigError(f"loss '{loss}': needs at least one foreground class, got {found}")
    return found

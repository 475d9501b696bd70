"""One stage's optimisation recipe and its per-iteration learning rate.

Linear warm-up, then x0.1 steps at fractions of the stage (mmdetection's recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class StageSchedule:
    """What the training loop needs of ``schedule.stage1`` / ``schedule.stage2``."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_ratio: float
    steps: list[float]
    grad_clip: float

    @classmethod
    def from_settings(cls, stage: Any) -> StageSchedule:
        """From a stage's settings (any object with these attributes)."""
        values = {k: getattr(stage, k) for k in cls.__dataclass_fields__}
        return cls(**{**values, "steps": list(values["steps"])})

    def lr_at(self, it: int, total: int) -> float:
        return learning_rate(it, total, self.lr, self.warmup_iters, self.warmup_ratio,
                             self.steps)


def learning_rate(
    it: int, total: int, base_lr: float, warmup_iters: int, warmup_ratio: float,
    steps: Sequence[float], gamma: float = 0.1,
) -> float:
    """LR at iteration ``it`` (0-based) of ``total``; ``steps`` are fractions of ``total``."""
    lr = base_lr * gamma ** sum(it >= int(round(s * total)) for s in steps)
    if it < warmup_iters:
        k = warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
        lr *= k
    return lr

"""One stage's optimisation recipe and its per-iteration learning rate.

Linear warm-up, then x0.1 steps at fractions of the stage (mmdetection's recipe), run by
torch's ``LambdaLR`` on the stage's optimizers: its ``state_dict`` goes into the resume
file. Not ``LinearLR`` + ``MultiStepLR``: chained, they compute the lr multiplicatively
and differ from the closed form in the last bits at almost every iteration, which would
change every run's numbers on fixed seeds. ``LambdaLR`` multiplies the base lr by one
factor: bit for bit the closed form, except where a step falls inside the warm-up (no
recipe here does that), where the product ``base * (gamma^n * warmup)`` may round once
differently from ``(base * gamma^n) * warmup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


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

    def scheduler(self, optimizer: torch.optim.Optimizer, total: int, start: int = 0
                  ) -> LambdaLR:
        """torch's ``LambdaLR`` for ``optimizer`` over ``total`` iterations, set to iteration
        ``start`` (the optimizer's lr is then that iteration's). A resume file without
        scheduler state (written before the scheduler existed) resumes from its iteration
        count this way; one with it loads the scheduler's ``state_dict`` on top."""
        for group in optimizer.param_groups:
            group["initial_lr"] = self.lr  # the base lr, also after an optimizer was loaded
        warmup_iters, warmup_ratio, steps = self.warmup_iters, self.warmup_ratio, self.steps
        return LambdaLR(optimizer, lambda it: lr_factor(it, total, warmup_iters, warmup_ratio,
                                                        steps), last_epoch=start - 1)


def lr_factor(it: int, total: int, warmup_iters: int, warmup_ratio: float,
              steps: Sequence[float], gamma: float = 0.1) -> float:
    """The base lr's multiplier at iteration ``it`` (0-based) of ``total``: ``gamma`` per
    step passed (``steps`` are fractions of ``total``), times the linear warm-up from
    ``warmup_ratio`` at iteration 0 to 1 at ``warmup_iters``."""
    factor = gamma ** sum(it >= int(round(s * total)) for s in steps)
    if it < warmup_iters:
        factor *= warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
    return factor

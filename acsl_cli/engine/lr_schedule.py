"""Per-iteration learning rate: linear warm-up, then x0.1 steps (mmdetection's recipe)."""

from __future__ import annotations

from collections.abc import Sequence


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

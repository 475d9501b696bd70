"""Small pieces shared by the sigmoid-family losses (bce, acsl, eql, federated).

Kept here so that every sigmoid loss scores detections and checks its statistics the
same way; a difference there would show up as a metric difference between losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from acsl_cli.errors import ConfigError

FREQUENCY_GROUPS = ("r", "c", "f")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def upcast(logits: Tensor) -> Tensor:
    """float16/bfloat16 logits as float32, anything else unchanged (the same tensor).

    Losses reduce over N x (C + 1) terms: in float16 a sum at LVIS size overflows (max
    65504) and bfloat16 keeps 3 digits. float32 and float64 inputs pass through untouched,
    so full-precision results stay bit-identical.
    """
    return logits.float() if logits.dtype in HALF_DTYPES else logits


def sigmoid_scores(logits: Tensor, bg_factor: bool) -> Tensor:
    """Per-class sigmoid scores with the background column dropped.

    The authors score with ``sigmoid(z_j)`` alone; ``bg_factor`` multiplies by
    ``1 - sigmoid(z_bg)`` so a confident background logit can veto all classes.
    """
    logits = upcast(logits)
    scores = torch.sigmoid(logits[:, 1:])
    if bg_factor:
        scores = scores * torch.sigmoid(-logits[:, :1])  # 1 - sigmoid(z) == sigmoid(-z)
    return scores


def one_hot_targets(labels: Tensor, num_columns: int, dtype: torch.dtype) -> Tensor:
    """(N, num_columns) one-hot targets; a background RoI has its 1 in column 0."""
    target = torch.zeros(labels.shape[0], num_columns, dtype=dtype, device=labels.device)
    target[torch.arange(labels.shape[0], device=labels.device), labels] = 1
    return target


def check_width(loss: str, logits: Tensor, expected: int | None) -> None:
    """Fail loudly when the classifier width does not match the configured classes."""
    if logits.dim() != 2:
        raise ValueError(f"loss '{loss}': expected 2-d logits, got {tuple(logits.shape)}")
    if expected is not None and logits.shape[1] != expected:
        raise ValueError(f"loss '{loss}': expected {expected} logit columns, got {logits.shape[1]}")


def frequency_columns(loss: str, frequencies: Sequence[str]) -> dict[str, Tensor]:
    """Logit columns (label = index + 1) of each frequency group 'r', 'c', 'f'."""
    bad = sorted({str(f) for f in frequencies} - set(FREQUENCY_GROUPS))
    if bad:
        raise ConfigError(
            f"loss '{loss}': frequencies must be 'r', 'c' or 'f', got {', '.join(bad)}"
        )
    return {
        group: torch.tensor(
            [i + 1 for i, f in enumerate(frequencies) if f == group], dtype=torch.long
        )
        for group in FREQUENCY_GROUPS
    }


def counts_tensor(loss: str, name: str, counts: Sequence[float]) -> Tensor:
    """Per-class counts as a float64 tensor, rejecting negative values."""
    values = torch.as_tensor(list(counts), dtype=torch.float64)
    if values.numel() and bool((values < 0).any()):
        raise ConfigError(f"loss '{loss}': {name} must be non-negative")
    return values


class Scratch:
    """Named temporaries a loss keeps between calls (ACSL's CPU form, GOL): a fresh (N, C)
    tensor is mapped in page by page on every call (the allocator hands matrices this
    large back to the system), which costs about as much as the arithmetic on it. Never
    holds the gradient."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """An uninitialised tensor of ``like``'s shape and device (``dtype`` or its own)."""
        return self.new(name, like.shape, dtype or like.dtype, like.device)

    def new(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> Tensor:
        """An uninitialised tensor of that shape, dtype and device, reusing storage."""
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self.buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

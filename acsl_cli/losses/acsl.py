"""Adaptive Class Suppression Loss (Wang et al., CVPR 2021, paper eq. 5-7).

Layout: logits (N, C + 1), column 0 = background, labels 0..C (0 = background).
``p = sigmoid(z)``, one-hot target (a background RoI has its 1 in column 0), and

    loss = sum_ij W_ij * BCE(z_ij, t_ij) / N

with the binary weight W computed without gradient:

* foreground RoI of class k: ``W[i, k] = 1`` and ``W[i, j] = 1`` wherever ``p_ij >= xi``
  (this may include the background column), else 0;
* background RoI, ``bg_mode="adaptive"`` (default; the paper's statistic-free claim): the
  same rule with k = 0;
* background RoI, ``bg_mode="official"`` (the authors' release): the adaptive row is
  discarded, then every background row gets W = 1 on the frequent columns, a random
  ``int(0.1 * n_bg)`` background rows on the common columns, a random ``int(0.01 * n_bg)``
  rows on the rare columns (so fewer than 100 background RoIs means no rare column is
  suppressed), and ``W[bg, 0] = 1``. This mode needs the per-class frequency groups.

Random draws (official mode only) come from a CPU ``torch.Generator`` seeded with ``seed``:
on every call, ``torch.randperm(n_bg)`` for the common rows first, then another
``torch.randperm(n_bg)`` for the rare rows; the first ``int(...)`` entries of each are the
chosen positions among the background rows taken in batch order. ``official_background_
weights`` replays exactly these draws as a dense mask, for tests and for the benchmark.

Speed: one custom autograd Function computes ``p`` once, turns it in place into the
gradient buffer ``W * (p - t)`` and sums the loss only over the kept entries, as
``softplus(z)`` off target and ``softplus(-z)`` on target (BCE = softplus(z) - z t), which
stays exact for large ``|z|``. Backward is a single scale of the saved buffer (eq. 7).

Two forms of the same arithmetic, chosen by device (``dense`` overrides it, for tests):
on CPU the kept entries are gathered (``nonzero``) and only they pass through softplus,
which is fastest there and is the reference result; on an accelerator a masked sum over
the whole matrix avoids every host synchronisation in adaptive mode, and official mode
syncs once, to count the background rows that the CPU draws need. The two agree to float
rounding (the order of the sum differs); W and the gradient are the same.
Half-precision logits are upcast to float32 first.

Under a class hierarchy (``use_hierarchy``, Open Images) a RoI has several target columns,
its class and every ancestor; W is 1 on all of them, and a plain autograd form computes
the same loss (it equals the fused one exactly when no class has an ancestor, tested).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import (
    check_width,
    frequency_columns,
    sigmoid_scores,
    upcast,
)
from acsl_cli.losses.registry import register_loss

BG_MODES = ("adaptive", "official")
COMMON_FRACTION = 0.1
RARE_FRACTION = 0.01


def draw_official_rows(n_bg: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Positions (among the n_bg background rows) that are suppressed on common / rare
    columns; draws common first, then rare, both on every call so the stream stays aligned."""
    common = torch.randperm(n_bg, generator=generator)[: int(n_bg * COMMON_FRACTION)]
    rare = torch.randperm(n_bg, generator=generator)[: int(n_bg * RARE_FRACTION)]
    return common, rare


def official_background_weights(
    n_bg: int, frequencies: Sequence[str], generator: torch.Generator
) -> Tensor:
    """Dense (n_bg, C + 1) bool W of the background rows in ``bg_mode="official"``.

    Consumes the generator exactly like one call of the loss, so a generator seeded like
    the loss reproduces the loss's draws.
    """
    columns = frequency_columns("acsl", frequencies)
    weights = torch.zeros(n_bg, len(frequencies) + 1, dtype=torch.bool)
    common, rare = draw_official_rows(n_bg, generator)
    weights[:, 0] = True
    weights[:, columns["f"]] = True
    weights[common[:, None], columns["c"][None, :]] = True
    weights[rare[:, None], columns["r"][None, :]] = True
    return weights


@functools.lru_cache(maxsize=32)
def _below(xi: float, dtype: torch.dtype) -> float:
    """Largest ``dtype`` value below ``xi``: ``x > below`` is exactly ``x >= xi`` in dtype,
    which lets ``threshold_`` apply the ``p >= xi`` rule in place in one pass."""
    value = torch.tensor(xi, dtype=dtype)
    return torch.nextafter(value, torch.tensor(-math.inf, dtype=dtype)).item()


class _ACSLFunction(torch.autograd.Function):
    """Single pass: sigmoid once, mask in place, loss over the kept entries only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        labels: Tensor,
        threshold: float,
        background: tuple[Tensor, Any] | None,
        dense: bool,
    ) -> Tensor:
        z = logits.contiguous()
        n = z.shape[0]
        rows = torch.arange(n, device=z.device)
        z_target = z[rows, labels]
        grad = torch.sigmoid(z)
        if dense:
            if background is not None:  # official mode: W of the background rows given
                is_bg, keep = background
                p = grad.clone()
                F.threshold_(grad, threshold, 0.0)
                grad.masked_fill_(is_bg[:, None], 0.0)
                grad = torch.where(keep, p, grad)
            else:
                F.threshold_(grad, threshold, 0.0)  # W * p off target: p where p >= xi
            grad[rows, labels] = 0.0
            off_target = F.softplus(z).masked_fill_(grad == 0, 0.0).sum()
        else:
            F.threshold_(grad, threshold, 0.0)  # W * p off target: p where p >= xi, else 0
            if background is not None:  # official mode: replace the adaptive background rows
                bg_rows, bg_blocks = background
                grad.index_fill_(0, bg_rows, 0.0)
                for block_rows, block_cols in bg_blocks:
                    r, c = block_rows[:, None], block_cols[None, :]
                    grad[r, c] = torch.sigmoid(z[r, c])
            grad[rows, labels] = 0.0  # the target column is accounted for separately below
            kept = grad.view(-1).nonzero().squeeze(1)
            off_target = F.softplus(z.view(-1)[kept]).sum()
        loss = off_target + F.softplus(-z_target).sum()
        grad[rows, labels] = torch.sigmoid(z_target) - 1.0
        ctx.save_for_backward(grad)
        ctx.n = n
        return loss / n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * (grad_out / ctx.n), None, None, None, None


@register_loss("acsl")
class ACSL(ClassificationLoss):
    """ACSL with ``xi`` in (0, 1) and the background rule chosen by ``bg_mode``.

    ``needs`` lists ``frequencies`` so the engine always hands the statistic over (it can
    be derived for any dataset), but only ``bg_mode="official"`` reads it; the default
    adaptive mode builds without it. ``needs_for(bg_mode)`` and ``statistic_free`` say
    which statistics a given configuration really uses.
    """

    needs: ClassVar[tuple[str, ...]] = ("frequencies",)
    seeded: ClassVar[bool] = True
    multi_label: ClassVar[bool] = True
    #: None: the sync-free dense form off CPU, the gathered form on CPU; a bool forces one.
    dense: bool | None = None

    def __init__(
        self,
        num_classes: int | None = None,
        xi: float = 0.7,
        bg_mode: str = "adaptive",
        bg_factor: bool = False,
        seed: int = 0,
        frequencies: Sequence[str] | None = None,
    ) -> None:
        if isinstance(xi, bool) or not isinstance(xi, (int, float)) or not 0.0 < xi < 1.0:
            raise ConfigError(f"loss 'acsl': xi must be strictly between 0 and 1, got {xi!r}")
        if bg_mode not in BG_MODES:
            raise ConfigError(
                f"loss 'acsl': bg_mode must be one of {', '.join(BG_MODES)}, got {bg_mode!r}"
            )
        super().__init__(num_classes, seed, required=self.needs_for(bg_mode),
                         frequencies=frequencies)
        self.xi = float(xi)
        self.bg_mode = bg_mode
        self.bg_factor = bool(bg_factor)
        self._columns: dict[str, Tensor] = {}
        if bg_mode == "official" and frequencies is not None:
            self._columns = frequency_columns("acsl", frequencies)
            # (3, C + 1) column masks "f or background", "c", "r" for the dense form
            masks = torch.zeros(3, len(frequencies) + 1, dtype=torch.bool)
            masks[0, 0] = True
            for i, group in enumerate("fcr"):
                masks[i, self._columns[group]] = True
            self.register_buffer("group_columns", masks, persistent=False)

    @classmethod
    def needs_for(cls, bg_mode: str = "adaptive") -> tuple[str, ...]:
        """Statistics actually read for ``bg_mode`` (adaptive: none)."""
        return ("frequencies",) if bg_mode == "official" else ()

    @property
    def statistic_free(self) -> bool:
        return self.bg_mode == "adaptive"

    def _width(self, logits: Tensor) -> int:
        return logits.shape[1] if self.num_classes is None else self.num_classes + 1

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._width(logits))
        logits = upcast(logits)  # the sums and the xi comparison want float32
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        dense = logits.device.type != "cpu" if self.dense is None else self.dense
        dense = dense or self.expansion is not None  # the multi-label path is dense
        background: tuple[Tensor, Any] | None = None
        if self.bg_mode == "official":
            background = self._dense_background(labels) if dense else \
                self._sparse_background(labels)
        threshold = _below(self.xi, logits.dtype)
        if self.expansion is not None:
            return self._multi_label(logits, labels, threshold, background)
        return _ACSLFunction.apply(logits, labels, threshold, background, dense)

    def _multi_label(self, logits: Tensor, labels: Tensor, threshold: float,
                     background: tuple[Tensor, Tensor] | None) -> Tensor:
        """Eq. 5-7 with several target columns (a class and its ancestors, Open Images):
        W = 1 on every target column and wherever p >= xi; plain autograd, since the fused
        function above assumes one target per row. Background rows as in ``forward``."""
        target = self.targets(labels, logits.shape[1], torch.bool)
        with torch.no_grad():
            weight = target | (torch.sigmoid(logits) > threshold)
            if background is not None:
                is_bg, keep = background
                weight = torch.where(is_bg[:, None], keep | target, weight)
        loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype),
                                                  weight.to(logits.dtype), reduction="sum")
        return loss / logits.shape[0]

    def _sparse_background(self, labels: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Background rows and the (rows, columns) blocks where their W is 1 (CPU form)."""
        device = labels.device
        bg_rows = (labels == 0).nonzero().squeeze(1)
        common, rare = draw_official_rows(bg_rows.numel(), self.generator)
        cols = {k: v.to(device) for k, v in self._columns.items()}
        blocks = [
            (bg_rows, cols["f"]),
            (bg_rows[common.to(device)], cols["c"]),
            (bg_rows[rare.to(device)], cols["r"]),
        ]
        return bg_rows, blocks

    def _dense_background(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) background mask and (N, C + 1) W of the background rows, from the same draws;
        one host sync (the background count), no data-dependent shapes."""
        device = labels.device
        is_bg = labels == 0
        n_bg = int(is_bg.sum())
        common, rare = draw_official_rows(n_bg, self.generator)
        drawn = torch.zeros(2, n_bg + 1, dtype=torch.bool, device=device)  # [:, n_bg]: fg
        drawn[0, common.to(device, non_blocking=True)] = True  # no stream sync
        drawn[1, rare.to(device, non_blocking=True)] = True
        position = torch.where(is_bg, is_bg.cumsum(0) - 1, n_bg)  # rank among bg rows
        common_row, rare_row = drawn[:, position]
        masks = self.group_columns.to(device)
        keep = masks[0][None, :] | (common_row[:, None] & masks[1][None, :]) \
            | (rare_row[:, None] & masks[2][None, :])
        return is_bg, keep & is_bg[:, None]

    def scores(self, logits: Tensor) -> Tensor:
        check_width(self.name, logits, self._width(logits))
        return sigmoid_scores(logits, self.bg_factor)

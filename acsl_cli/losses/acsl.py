"""Adaptive Class Suppression Loss (Wang et al., CVPR 2021, paper eq. 5-7).

Layout: logits (N, C + 1), column 0 = background, labels 0..C (0 = background).
``p = sigmoid(z)``, one-hot target (a background RoI has its 1 in column 0), and

    loss = sum_ij W_ij * BCE(z_ij, t_ij) / N

with the binary weight W computed without gradient:

* foreground RoI of class k: ``W[i, k] = 1`` and ``W[i, j] = 1`` wherever ``p_ij >= xi``
  (this may include the background column), else 0;
* background RoI, ``bg_mode="official"`` (default, as in ``conf/loss/acsl.yaml``; the
  authors' release): the adaptive row is discarded, then every background row gets W = 1
  on the frequent columns, a random ``int(0.1 * n_bg)`` background rows on the common
  columns, a random ``int(0.01 * n_bg)`` rows on the rare columns (so fewer than 100
  background RoIs means no rare column is suppressed), and ``W[bg, 0] = 1``. This mode
  needs the per-class frequency groups;
* background RoI, ``bg_mode="adaptive"`` (the paper's statistic-free claim): the same rule
  as a foreground RoI with k = 0; it needs no statistics.

Random draws (official mode only) come from a CPU ``torch.Generator`` seeded with ``seed``:
on every call, ``torch.randperm(n_bg)`` for the common rows first, then another
``torch.randperm(n_bg)`` for the rare rows; the first ``int(...)`` entries of each are the
chosen positions among the background rows taken in batch order.

The arithmetic lives in ``acsl_forms``: a gathered form on CPU, a sync-free dense form on
accelerators, chosen by the logits' device. Half-precision logits are upcast to float32.

Suppression record (the paper's Figure 3 on real runs): in training mode every call adds,
per foreground RoI of class k, a 1 to cell (k, j) for each column j != k with W = 1, and a
1 to the RoI count of k, on the logits' device with tensor ops only (no host sync off
CPU). On CPU it keeps only the flat indices of the suppressed entries, which the loss
computes anyway, and adds them in one go when they pile up or are read
(``acsl_record``): recording costs about 1 % of the loss. ``suppression()`` returns the
(C, C) counts and (C,) RoIs, background row and column left out. ``state_dict`` carries
them once recorded, so a resumed stage 2 (which saves its losses' state) continues them;
loading never requires them, so a detector whose loss is ACSL still loads a stage-1 state
dict strictly. Under DDP each process records its RoIs.

Under a class hierarchy (``use_hierarchy``, Open Images) a RoI has several target columns,
its class and every ancestor; W is 1 on all of them, and a plain autograd form computes
the same loss (it equals the fused one exactly when no class has an ancestor, tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from acsl_cli.errors import ConfigError
from acsl_cli.losses.acsl_forms import (
    dense_background,
    form_for,
    fused_acsl,
    gathered_background,
    group_masks,
    threshold_below,
)
from acsl_cli.losses.acsl_record import Record, record_dense
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import (
    Scratch,
    check_width,
    frequency_columns,
    sigmoid_scores,
    upcast,
)
from acsl_cli.losses.registry import register_loss

BG_MODES = ("official", "adaptive")
RECORD_KEYS = ("suppression_counts", "suppression_rois")  # in state_dict once recorded


@register_loss("acsl")
class ACSL(ClassificationLoss):
    """ACSL with ``xi`` in (0, 1) and the background rule chosen by ``bg_mode``.

    ``needs`` lists ``frequencies`` so the engine always hands the statistic over (it can
    be derived for any dataset), but only ``bg_mode="official"`` reads it; adaptive mode
    builds without it. ``needs_for(bg_mode)`` says which statistics a mode really uses.
    """

    needs: ClassVar[tuple[str, ...]] = ("frequencies",)
    seeded: ClassVar[bool] = True
    multi_label: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        xi: float = 0.7,
        bg_mode: str = "official",
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
            masks = group_masks(self._columns, len(frequencies) + 1)  # for the dense form
            self.register_buffer("group_columns", masks, persistent=False)
        self._record: Record | None = None
        self._scratch = Scratch()  # the CPU form's reused temporary; never saved

    @classmethod
    def needs_for(cls, bg_mode: str = "official") -> tuple[str, ...]:
        """Statistics actually read for ``bg_mode`` (adaptive: none)."""
        return ("frequencies",) if bg_mode == "official" else ()

    def _width(self, logits: Tensor) -> int:
        return logits.shape[1] if self.num_classes is None else self.num_classes + 1

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._width(logits))
        logits = upcast(logits)  # the sums and the xi comparison want float32
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        form = "dense" if self.expansion is not None else form_for(logits.device)
        background = None
        if self.bg_mode == "official" and form == "dense":
            background = dense_background(labels, self.generator, self.group_columns)
        elif self.bg_mode == "official":
            background = gathered_background(labels, self.generator, self._columns)
        threshold = threshold_below(self.xi, logits.dtype)
        record = self._record_for(logits) if self.training else None
        if self.expansion is not None:
            return self._multi_label(logits, labels, threshold, background, record)
        return fused_acsl(logits, labels, threshold, background, form, record, self._scratch)

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-RoI terms: the dense rule (the same draws as ``forward``'s either form) in
        plain autograd, summed over each row."""
        check_labels(logits, labels, self._width(logits))
        logits = upcast(logits)
        if logits.shape[0] == 0:  # as forward: no draws for an empty batch
            return logits.sum(1)
        background = None
        if self.bg_mode == "official":
            background = dense_background(labels, self.generator,
                                          self.group_columns.to(logits.device))
        threshold = threshold_below(self.xi, logits.dtype)
        record = self._record_for(logits) if self.training else None
        return self._multi_label(logits, labels, threshold, background, record, rows=True)

    def _multi_label(self, logits: Tensor, labels: Tensor, threshold: float,
                     background: tuple[Tensor, Tensor] | None, record: Record | None,
                     rows: bool = False) -> Tensor:
        """Eq. 5-7 with several target columns (a class and its ancestors, Open Images):
        W = 1 on every target column and wherever p >= xi; plain autograd, since the fused
        function assumes one target per row. Background rows as in ``forward``. ``rows``:
        the (N,) per-RoI sums instead of the mean."""
        target = self.targets(labels, logits.shape[1], torch.bool)
        with torch.no_grad():
            weight = target | (torch.sigmoid(logits) > threshold)
            if background is not None:
                is_bg, keep = background
                weight = torch.where(is_bg[:, None], keep | target, weight)
            if record is not None:
                record_dense(record, labels, weight & ~target)
        if rows:
            return F.binary_cross_entropy_with_logits(
                logits, target.to(logits.dtype), weight.to(logits.dtype), reduction="none"
            ).sum(1)
        loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype),
                                                  weight.to(logits.dtype), reduction="sum")
        return loss / logits.shape[0]

    def _record_for(self, logits: Tensor) -> Record:
        """The running record, created (zeros) or moved onto the logits' device if needed."""
        if self._record is None or self._record.width != logits.shape[1]:
            self._record = Record.zeros(logits.shape[1], logits.device)
        elif self._record.rois.device != logits.device:
            self._record = self._record.to(logits.device)
        return self._record

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._record is not None:
            destination[prefix + RECORD_KEYS[0]], destination[prefix + RECORD_KEYS[1]] = \
                self._record  # pending batches added first

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        saved = [state_dict.pop(prefix + key, None) for key in RECORD_KEYS]
        if saved[0] is not None and saved[1] is not None:
            self._record = Record(saved[0].clone(), saved[1].clone())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def suppression(self) -> tuple[Tensor, Tensor] | None:
        """What training has suppressed so far (None before any training call).

        ``counts[k - 1, j - 1]``: foreground RoIs of class k whose column j (j != k) had
        W = 1; ``rois[k - 1]``: foreground RoIs of class k. int64, on the logits' device;
        background row and column left out.
        """
        if self._record is None:
            return None
        counts, rois = self._record
        return counts[1:, 1:], rois[1:]

    def scores(self, logits: Tensor) -> Tensor:
        check_width(self.name, logits, self._width(logits))
        return sigmoid_scores(logits, self.bg_factor)

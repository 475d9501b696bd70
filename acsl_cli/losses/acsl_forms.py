"""ACSL's arithmetic (eq. 5-7) in its two forms, the official background draws, and the
suppression record; ``acsl.py`` picks a form by device and owns the configuration.

One custom autograd Function computes ``p`` once, turns it in place into the gradient
buffer ``W * (p - t)`` and sums the loss only over the kept entries, as ``softplus(z)``
off target and ``softplus(-z)`` on target (BCE = softplus(z) - z t), which stays exact for
large ``|z|``. Backward is a single scale of the saved buffer (eq. 7). The form is an
argument of that Function, so both are production paths that tests can run side by side:

* ``gathered`` (CPU), the reference result. Adaptive rule: the kept entries (about 1 %)
  are gathered (``nonzero``) and only they pass through softplus. Official rule: the
  background rows keep whole column groups (about half the matrix), so a bool mask of the
  dropped entries is built row-wise and the softplus sum is masked, in a buffer the loss
  keeps between calls (``Scratch``). The suppression record reads only the kept entries
  of the foreground rows.
* ``dense`` (accelerators): a masked sum over the whole matrix, which avoids every host
  synchronisation in adaptive mode; official mode syncs once, to count the background
  rows that the CPU draws need.

The two agree to float rounding (the order of the sum differs, and the dense form's
official background rows drop an entry whose ``p`` underflows to 0, where the gathered
form adds its ``softplus``, below 1e-38); W and the gradient are the same, and so is the
suppression record of the foreground rows.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from acsl_cli.losses.acsl_record import Record, record_dense, record_flat, record_rows
from acsl_cli.losses.common import Scratch

COMMON_FRACTION = 0.1
RARE_FRACTION = 0.01
FORMS = ("gathered", "dense")



def form_for(device: torch.device) -> str:
    """The form a device runs: gathered on CPU, dense (sync-free) anywhere else."""
    return "gathered" if device.type == "cpu" else "dense"


@functools.lru_cache(maxsize=32)
def threshold_below(xi: float, dtype: torch.dtype) -> float:
    """Largest ``dtype`` value below ``xi``: ``x > below`` is exactly ``x >= xi`` in dtype,
    which lets ``threshold_`` apply the ``p >= xi`` rule in place in one pass."""
    value = torch.tensor(xi, dtype=dtype)
    return torch.nextafter(value, torch.tensor(-math.inf, dtype=dtype)).item()


def draw_official_rows(n_bg: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Positions (among the n_bg background rows) that are suppressed on common / rare
    columns; draws common first, then rare, both on every call so the stream stays aligned."""
    common = torch.randperm(n_bg, generator=generator)[: int(n_bg * COMMON_FRACTION)]
    rare = torch.randperm(n_bg, generator=generator)[: int(n_bg * RARE_FRACTION)]
    return common, rare


def group_masks(columns: dict[str, Tensor], width: int) -> Tensor:
    """(3, width) bool column masks "frequent or background", "common", "rare" (dense form)."""
    masks = torch.zeros(3, width, dtype=torch.bool)
    masks[0, 0] = True
    for i, group in enumerate("fcr"):
        masks[i, columns[group]] = True
    return masks


def gathered_background(labels: Tensor, generator: torch.Generator,
                        columns: dict[str, Tensor]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Background rows and the (rows, columns) blocks where their W is 1 (gathered form)."""
    device = labels.device
    bg_rows = (labels == 0).nonzero().squeeze(1)
    common, rare = draw_official_rows(bg_rows.numel(), generator)
    cols = {k: v.to(device) for k, v in columns.items()}
    return bg_rows, [(bg_rows, cols["f"]), (bg_rows[common.to(device)], cols["c"]),
                     (bg_rows[rare.to(device)], cols["r"])]


def dense_background(labels: Tensor, generator: torch.Generator, masks: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """(N,) background mask and (N, C + 1) W of the background rows, from the same draws;
    one host sync (the background count), no data-dependent shapes."""
    device = labels.device
    is_bg = labels == 0
    n_bg = int(is_bg.sum())
    common, rare = draw_official_rows(n_bg, generator)
    drawn = torch.zeros(2, n_bg + 1, dtype=torch.bool, device=device)  # [:, n_bg]: fg
    drawn[0, common.to(device, non_blocking=True)] = True  # no stream sync
    drawn[1, rare.to(device, non_blocking=True)] = True
    position = torch.where(is_bg, is_bg.cumsum(0) - 1, n_bg)  # rank among bg rows
    common_row, rare_row = drawn[:, position]
    masks = masks.to(device)
    keep = masks[0][None, :] | (common_row[:, None] & masks[1][None, :]) \
        | (rare_row[:, None] & masks[2][None, :])
    return is_bg, keep & is_bg[:, None]


def masked_softplus_sum(z: Tensor, drop: Tensor, scratch: Scratch | None) -> Tensor:
    """``softplus(z)`` summed where ``drop`` is False, in three whole-matrix ops (each op
    on a busy CPU may wait for a descheduled thread, so fewer, larger ops are faster)."""
    out = (scratch or Scratch()).get("softplus", z)
    torch.ops.aten.softplus.out(z, 1, 20, out=out)  # F.softplus, into the reused buffer
    return out.masked_fill_(drop, 0.0).sum()


def official_drop(grad: Tensor, labels: Tensor, threshold: float, background: Any) -> Tensor:
    """(N, W) bool, True where W = 0 or on the target column, from ``p`` (in ``grad``) and
    the gathered background draws: foreground rows by the threshold (a NaN p is kept, as
    ``threshold_`` keeps it), background rows by their column groups."""
    n, width = grad.shape
    drop = grad <= threshold
    bg_rows, ((_, frequent), *drawn) = background
    keep_row = torch.zeros(width, dtype=torch.bool, device=grad.device)
    keep_row[frequent] = True
    drop[bg_rows] = keep_row.logical_not_()
    for block_rows, block_cols in drawn:
        drop[block_rows[:, None], block_cols[None, :]] = False
    drop[torch.arange(n, device=grad.device), labels] = True
    return drop


def gathered_form(z: Tensor, labels: Tensor, threshold: float, background: Any,
                  record: Record | None, scratch: Scratch | None = None
                  ) -> tuple[Tensor, Tensor]:
    """(loss sum, gradient buffer N * dL/dz). Adaptive: the few kept entries are gathered
    and only they pass through softplus. Official: the background rows keep whole column
    groups (about half the matrix), so the kept entries are masked rather than gathered."""
    rows = torch.arange(z.shape[0], device=z.device)
    z_target = z[rows, labels]
    grad = torch.sigmoid(z)
    if background is None:
        F.threshold_(grad, threshold, 0.0)  # W * p off target: p where p >= xi, else 0
        grad[rows, labels] = 0.0  # the target column is accounted for separately below
        kept = grad.view(-1).nonzero().squeeze(1)
        if record is not None:
            record_flat(record, labels, kept)
        off_target = F.softplus(z.view(-1).index_select(0, kept)).sum()
    else:  # official mode: the background rows' W replaces their adaptive rows
        drop = official_drop(grad, labels, threshold, background)
        grad.masked_fill_(drop, 0.0)
        if record is not None:
            record_rows(record, labels, drop)
        off_target = masked_softplus_sum(z, drop, scratch)
    loss = off_target + F.softplus(-z_target).sum()
    grad[rows, labels] = torch.sigmoid(z_target) - 1.0
    return loss, grad


def dense_form(z: Tensor, labels: Tensor, threshold: float, background: Any,
               record: Record | None, scratch: Scratch | None = None
               ) -> tuple[Tensor, Tensor]:
    """(loss sum, gradient buffer N * dL/dz): a masked sum, no data-dependent shapes."""
    rows = torch.arange(z.shape[0], device=z.device)
    z_target = z[rows, labels]
    grad = torch.sigmoid(z)
    if background is not None:  # official mode: W of the background rows given
        is_bg, keep = background
        p = grad.clone()
        F.threshold_(grad, threshold, 0.0)
        grad.masked_fill_(is_bg[:, None], 0.0)
        grad = torch.where(keep, p, grad)
    else:
        F.threshold_(grad, threshold, 0.0)  # W * p off target: p where p >= xi
    grad[rows, labels] = 0.0
    dropped = grad == 0
    if record is not None:
        record_dense(record, labels, ~dropped)
    loss = F.softplus(z).masked_fill_(dropped, 0.0).sum() + F.softplus(-z_target).sum()
    grad[rows, labels] = torch.sigmoid(z_target) - 1.0
    return loss, grad


_FORM_FNS = {"gathered": gathered_form, "dense": dense_form}


class _ACSLFunction(torch.autograd.Function):
    """Single pass: sigmoid once, mask in place, loss over the kept entries only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, labels: Tensor, threshold: float, background: Any,
        form: str, record: Record | tuple[Tensor, Tensor] | None, scratch: Scratch | None,
    ) -> Tensor:
        sink = record if record is None or isinstance(record, Record) else Record(*record)
        loss, grad = _FORM_FNS[form](logits.contiguous(), labels, threshold, background, sink,
                                     scratch)
        if sink is not record:  # a bare (counts, rois) pair is brought up to date now
            sink.flush()
        ctx.save_for_backward(grad)
        ctx.n = logits.shape[0]
        return loss / ctx.n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * (grad_out / ctx.n), None, None, None, None, None, None


def fused_acsl(logits: Tensor, labels: Tensor, threshold: float, background: Any, form: str,
               record: Record | tuple[Tensor, Tensor] | None = None,
               scratch: Scratch | None = None) -> Tensor:
    """Mean ACSL of float32/64 ``logits`` (one target per row) in ``form``; ``background`` is
    that form's official-mode W of the background rows (None: adaptive rule); ``record``
    (a ``Record``, or a bare (counts, rois) pair, updated before this returns) gets the
    batch's suppressions; ``scratch`` (the loss's own) spares the gathered form a
    temporary per call."""
    if form not in _FORM_FNS:
        raise ValueError(f"ACSL form must be one of {', '.join(FORMS)}, got {form!r}")
    return _ACSLFunction.apply(logits, labels, threshold, background, form, record, scratch)

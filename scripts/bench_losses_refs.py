"""Reference formulations for ``bench_losses.py``: the ones the losses replaced (ACSL as a
per-class loop in the style of the authors' release, BAGS with ``nonzero`` per group,
Federated with advanced indexing), ACSL run in the form its device does not pick, and EFL
as its release computes it. The benchmark times each against the loss and checks they give
its value and gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def acsl_release_style(
    logits: Tensor,
    labels: Tensor,
    xi: float,
    frequencies: list[str],
    generator: torch.Generator,
) -> Tensor:
    """ACSL the way the authors' release computes it: a Python loop over the unique
    labels building the weight mask group by group, then a weighted BCE by autograd.
    Background rows use the release's draws (common rows first, then rare rows)."""
    n, width = logits.shape
    device = logits.device
    cols = {
        group: torch.tensor(
            [i + 1 for i, f in enumerate(frequencies) if f == group], dtype=torch.long
        ).to(device)
        for group in "rcf"
    }
    target = logits.new_zeros(n, width)
    weight = logits.new_zeros(n, width)
    with torch.no_grad():
        high = torch.nonzero(torch.sigmoid(logits) >= xi)
    weight[high[:, 0], high[:, 1]] = 1
    for cls in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == cls).squeeze(1)
        if cls == 0:
            target[rows, 0] = 1
            base = logits.new_zeros(width)
            base[0] = 1
            base[cols["f"]] = 1
            weight[rows] = base.expand(rows.numel(), width)
            n_common = int(rows.numel() * 0.1)
            common = torch.randperm(rows.numel(), generator=generator)[:n_common]
            n_rare = int(rows.numel() * 0.01)
            rare = torch.randperm(rows.numel(), generator=generator)[:n_rare]
            for picked, group in ((common, "c"), (rare, "r")):
                picked_rows = rows[picked.to(device)]
                weight[picked_rows[:, None], cols[group][None, :]] = 1
        else:
            target[rows, cls] = 1
            weight[rows, cls] = 1
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weight * loss).sum() / n


def bags_before(loss: torch.nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """BAGS as written before it was vectorised: ``nonzero`` per group (two syncs each)."""
    logits = logits.float()
    blocks = logits.split([stop - start for start, stop in loss.group_slices], dim=1)
    total = F.cross_entropy(blocks[0], (labels > 0).long())
    groups = loss.group_of_label(labels)
    local = loss.label_local[labels]
    for k in range(1, loss.num_groups):
        is_pos = groups == k
        pos = is_pos.nonzero().squeeze(1)
        if pos.numel() == 0:
            continue
        available = (~is_pos).nonzero().squeeze(1)
        n_sample = loss.others_sample_size(pos.numel(), available.numel())
        pick = torch.randperm(available.numel(), generator=loss.generator)[:n_sample]
        rows = torch.cat([pos, available[pick.to(logits.device)]])
        target = torch.cat([local[pos], local.new_zeros(n_sample)])
        total = total + F.cross_entropy(blocks[k][rows], target)
    return total


def federated_before(loss: torch.nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """Federated as written before: advanced indexing (backward: accumulating index_put)."""
    selected = loss.select_classes(labels).to(logits.device)
    z = logits[:, selected].float()
    target = (labels[:, None] == selected[None, :]).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, target, reduction="sum") / logits.shape[0]


def other_form(loss: torch.nn.Module, form: str, frequencies: list[str]
               ) -> Callable[[Tensor, Tensor], Tensor]:
    """ACSL (float32 logits, one target per row) run in ``form`` rather than the form its
    device picks, through the same ``fused_acsl``, with the loss's xi, mode and generator
    (so the same draws) and a suppression record of its own."""
    from acsl_cli.losses.acsl_forms import (
        dense_background,
        fused_acsl,
        gathered_background,
        group_masks,
        threshold_below,
    )
    from acsl_cli.losses.common import frequency_columns

    columns = frequency_columns("acsl", frequencies)
    masks = group_masks(columns, len(frequencies) + 1)
    record: list[tuple[Tensor, Tensor]] = []

    def run(z: Tensor, y: Tensor) -> Tensor:
        background = None
        if loss.bg_mode == "official" and form == "dense":
            background = dense_background(y, loss.generator, masks)
        elif loss.bg_mode == "official":
            background = gathered_background(y, loss.generator, columns)
        if not record:
            width = z.shape[1]
            record.append((torch.zeros(width, width, dtype=torch.int64, device=z.device),
                           torch.zeros(width, dtype=torch.int64, device=z.device)))
        return fused_acsl(z.float(), y, threshold_below(loss.xi, torch.float32), background,
                          form, record[0])

    return run


def efl_release_style(loss: torch.nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """EFL the way its release computes it (ModelTC's ``EqualizedFocalLoss``): ``pred_t``,
    ``-log``, ``pow`` by autograd, the gradient statistics gathered by a hook on the
    logits' gradient into ``loss``'s buffers (its ``GradientCollector``)."""
    z = logits.float()[:, 1:]
    n, c = z.shape
    target = z.new_zeros(n, c + 1)
    target[torch.arange(n, device=z.device), labels] = 1
    target = target[:, 1:]
    pred = torch.sigmoid(z)
    pred_t = pred * target + (1 - pred) * (1 - target)
    ff = (loss.gamma_b + loss.scale_factor * (1 - loss.pos_neg)).to(z.dtype)
    ff = ff.view(1, -1).expand(n, c)
    terms = -torch.log(pred_t) * torch.pow(1 - pred_t, ff) * (ff / loss.gamma_b)
    if loss.alpha >= 0:
        terms = (loss.alpha * target + (1 - loss.alpha) * (1 - target)) * terms
    if z.requires_grad:
        def collect(grad: Tensor) -> None:
            g = grad.abs()
            pos = (g * target).sum(0)
            loss.pos_grad += pos.double()
            loss.neg_grad += (g.sum(0) - pos).double()
            loss.pos_neg = torch.clamp(loss.pos_grad / (loss.neg_grad + 1e-10), 0, 1)

        z.register_hook(collect)
    return terms.sum() / (labels > 0).sum().clamp(min=1)

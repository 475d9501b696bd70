"""Gumbel Optimised Loss (Alexandridis et al., ECCV 2022) in our C + 1 layout.

Release read: github.com/kostas1515/GOL at commit 70026b73cacf7ee9c8b209907a83cff7d7e34d65,
``mmdet/models/losses/droploss.py`` (``DropLoss``, ``use_classif='gumbel'``: GOL as its README
trains it, ``configs/gol/droploss_normed_mask_r50_rfs_4x4_2x_gumbel.py``) and
``mmdet/models/losses/gumbel_ce.py`` (``GumbelCE``, the paper's activation study).

Gumbel activation: ``p = 1 / exp(exp(-z))``, the Gumbel CDF in place of the sigmoid.

``variant: gol`` (default, the release's DropLoss with Gumbel activation). The release's
classifier has C outputs and no background logit; here column 0 (background) is kept for
the layout but takes no part (weight 0, zero gradient), so a background RoI has an
all-zero target. With ``zc = clamp(z, -4, 10)`` and ``p = 1 / exp(exp(-zc))``:

    loss = sum_ij w_ij * BCE(p_ij, t_ij) / N,   BCE = -(t log p + (1 - t) log(1 - p))
    w_ij = 1 - T_j * D_ij * (1 - t_ij)

``T_j = 1`` for a tail class, ``f_j < lambda_`` with ``f_j = image_count_j / num_images`` (both
rounded to float32, as the release compares them); ``D_ij = 1`` on a foreground row, and on
a background row ``D_ij = [u_ij > r]`` with ``u_ij ~ U[0, 1)`` drawn per entry and ``r`` the
fraction of this batch's foreground RoIs whose class is a tail class (float32; no
foreground RoI: ``r`` is NaN, no comparison holds, nothing is dropped, as in the release).
So tail columns get no negative gradient from foreground RoIs of other classes, and a
background RoI drops each tail column with probability ``1 - r``.

``variant: gumbel_ce`` (the release's ``GumbelCE``): every column, background included
(target 1 in column 0 for a background RoI), w = 1, and the batch loss ``sum / N`` clamped
to [0, 20] (its gradient vanishes above 20). It has no per-RoI form (``roi_losses``
refuses: the clamp acts on the mean).

Numerics as released: the logits are clamped to [-4, 10] before the activation (zero
gradient outside); ``F.binary_cross_entropy``'s floor of -100 on the logs never binds after
that clamp (``log p >= -e^4``, ``log(1 - p) >= log(1 - exp(-e^-10)) ~ -10``); its gradient
``(p - t) / max(p (1 - p), 1e-12)`` keeps the 1e-12 floor, so a positive whose ``p <
~1e-12`` (z below about -3.3) gets almost no gradient, as in the release (torch floors at
1e-12 rounded to float32, we at 1e-12 in the logits' dtype: in float64 such gradients differ
by 4e-9 relative). One fused autograd function computes ``p`` once and leaves the gradient
buffer for backward, which scales it in place (one backward per forward); weights and masks
are 0/1 floats and the target entries are read and written on a flat view (speed: see
docs/results.md, "Loss speed").

Draws: the release calls ``torch.rand_like`` on the full (N, C) matrix; only the tail
columns' draws can matter, so we draw (N, T) for the T tail columns (same distribution),
every call with N > 0, on the logits' device: from the loss's CPU generator on CPU; on an
accelerator from a device generator re-seeded each call with a seed drawn from the CPU
generator (host-side only, no synchronisation). The engine checkpoints the CPU generator,
so a resumed stage 2 draws as a straight one. There is no other state.

Statistics: the release ships ``image_count_frequency`` per LVIS class (image count over
99,388 v1 / 56,740 v0.5 train images); we derive it from the train split: ``image_counts``
over ``num_images`` (all train images), so a class within ~1 % of the bound may fall on the
other side of it. ``lambda_``: the release's 0.0011 (LVIS v1) and default 0.00177 (v0.5),
the dataset's ``eql_lambda``.

Scores (both variants, the release's ``get_activation``): ``1 / exp(exp(-z_j))`` on the
foreground columns, unclamped, no background factor (DropLoss appends a zero background
column; GumbelCE's background column is dropped by mmdetection's NMS).

Classifier initialisation: ``init: release`` (default) is the release's ``init_cfg`` for
``fc_cls`` (every weight 0.001, bias -2: ``p = exp(-e^2) ~ 6e-4`` at the start), the
stage-1 layer not copied, as BAGS's release default here; ``init: stage1`` copies the
stage-1 layer like the other sigmoid losses (the release trains end to end, so neither is
its decoupled protocol: the release's own init is the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import Scratch, check_width, counts_tensor, upcast
from acsl_cli.losses.registry import register_loss

VARIANTS = ("gol", "gumbel_ce")
INITS = ("stage1", "release")
CLAMP_MIN, CLAMP_MAX = -4.0, 10.0  # the release's logit clamp before the activation
BCE_EPS = 1e-12  # torch's floor on p (1 - p) in binary_cross_entropy's gradient
LOSS_MAX = 20.0  # GumbelCE's clamp of the batch loss
INIT_WEIGHT, INIT_BIAS = 0.001, -2.0  # the release's fc_cls init_cfg


def gumbel(z: Tensor) -> Tensor:
    """The release's Gumbel CDF as it computes it: ``1 / exp(exp(-z))``."""
    return torch.exp(torch.exp(-z)).reciprocal()


def target_entries(labels: Tensor, width: int) -> Tensor:
    """Flat indices ``i * width + labels[i]`` of the target entries of an (N, width) matrix.

    gather/scatter_ on a flat view with these run serially, where ``x[rows, labels]``
    (advanced indexing) hands even N = 8192 entries to the thread pool: on a busy CPU each
    such call waits about a scheduler tick for the second thread.
    """
    return torch.arange(labels.shape[0], device=labels.device).mul_(width).add_(labels)


class _GumbelBCE(torch.autograd.Function):
    """sum(keep * BCE(gumbel(clamp(z)), t)) * scale with one target column per row.

    Forward turns the activation's temporaries into the gradient buffer, backward scales
    it in place (so it runs once per forward); ``cap`` (GumbelCE) clamps the value at
    LOSS_MAX and zeroes the gradient past it.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, target: Tensor, keep: Tensor | None, scale: float,
                cap: bool, scratch: Scratch) -> Tensor:
        z = z.contiguous()  # ``target``: flat indices of the target entries
        grad = z.clamp(CLAMP_MIN, CLAMP_MAX)  # becomes the gradient buffer
        mask = scratch.get("mask", z)  # 0/1 in z's dtype: a float product, not a bool one
        torch.eq(grad, z, out=mask)  # clamp's gradient mask (bounds included)
        u = grad.neg_().exp_()  # u = exp(-zc)
        p = scratch.get("p", z)
        torch.exp(u, out=p).reciprocal_()
        p_t, u_t = p.view(-1).gather(0, target), u.view(-1).gather(0, target)
        tmp = scratch.get("tmp", z)
        terms = torch.neg(p, out=tmp).log1p_()  # log(1 - p); the target entries below
        terms.view(-1).scatter_(0, target, torch.log(p_t))
        if keep is not None:
            terms.mul_(keep)
            mask.mul_(keep)
        value = terms.sum().neg_().mul_(scale)
        # (p - t) u p / max(p (1 - p), eps): BCE's gradient through 1/exp and exp(-z)
        denom = torch.addcmul(p, p, p, value=-1.0, out=tmp).clamp_min_(BCE_EPS)
        denom_t = denom.view(-1).gather(0, target)
        grad.mul_(p).mul_(p).div_(denom)
        grad.view(-1).scatter_(0, target, (p_t - 1.0) * u_t * p_t / denom_t)
        if cap:  # zero past LOSS_MAX: a 0-dim factor, no host sync (scale * 1 == scale)
            grad.mul_(mask).mul_((value <= LOSS_MAX).to(z.dtype) * scale)
            value = value.clamp(0.0, LOSS_MAX)
        else:
            grad.mul_(mask).mul_(scale)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        # in place: a second backward through this forward (retain_graph) raises autograd's
        # in-place error rather than computing; one fresh (N, C + 1) tensor per step fewer
        return grad.mul_(grad_out), None, None, None, None, None, None


@register_loss("gol")
class GumbelOptimisedLoss(ClassificationLoss):
    """GOL: Gumbel activation with DropLoss weights (``variant=gol``) or plain
    (``variant=gumbel_ce``); ``lambda_`` bounds the tail by image fraction."""

    needs: ClassVar[tuple[str, ...]] = ("image_counts", "num_images")
    seeded: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        lambda_: float = 0.00177,
        variant: str = "gol",
        init: str = "release",
        seed: int = 0,
        image_counts: Sequence[int] | None = None,
        num_images: int | None = None,
    ) -> None:
        if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or lambda_ < 0:
            raise ConfigError(f"loss 'gol': lambda_ must be a number >= 0, got {lambda_!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"loss 'gol': variant must be one of {', '.join(VARIANTS)}, "
                              f"got {variant!r}")
        if init not in INITS:
            raise ConfigError(f"loss 'gol': init must be one of {', '.join(INITS)}, "
                              f"got {init!r}")
        super().__init__(num_classes, seed, image_counts=image_counts, num_images=num_images)
        assert image_counts is not None and num_images is not None
        if isinstance(num_images, bool) or int(num_images) <= 0:
            raise ConfigError(f"loss 'gol': num_images must be positive, got {num_images}")
        self.lambda_, self.variant, self.init = float(lambda_), variant, init
        fraction = (counts_tensor("gol", "image_counts", image_counts) / int(num_images)).float()
        tail = fraction < torch.tensor(self.lambda_, dtype=torch.float32)
        self.tail: Tensor
        self.tail_columns: Tensor
        self.register_buffer("tail", torch.cat([tail.new_zeros(1), tail]), persistent=False)
        self.register_buffer("tail_columns", tail.nonzero().squeeze(1) + 1, persistent=False)
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._scratch = Scratch()  # forward's temporaries; never saved

    def _width(self) -> int:
        assert self.num_classes is not None
        return self.num_classes + 1

    def uniforms(self, n: int, device: torch.device) -> Tensor:
        """(n, T) float32 U[0, 1) draws for the tail columns: one call's draws."""
        shape = (n, self.tail_columns.numel())
        if device.type == "cpu":
            return torch.rand(shape, generator=self.generator)
        gen = self._device_generators.get(device)
        if gen is None:
            gen = self._device_generators[device] = torch.Generator(device=device)
        seed = torch.randint(0, 2**62, (), generator=self.generator)  # a CPU tensor
        gen.manual_seed(int(seed))
        return torch.rand(shape, generator=gen, device=device)

    def weights(self, labels: Tensor, dtype: torch.dtype = torch.bool,
                scratch: Scratch | None = None) -> Tensor:
        """(N, C + 1) DropLoss weights w (0/1 in ``dtype``), one call's draws; column 0 is 0.

        CPU: (n_bg, T) draws for the background rows only (their count is known on the
        host); elsewhere (N, T) draws, the foreground rows' unused (no synchronisation).
        The forward pass asks for floats: a float product with a 0/1 float is one
        vectorised pass where a bool operand costs a conversion (about 10 times slower).
        """
        n, device = labels.shape[0], labels.device
        fg = labels > 0
        # fraction of foreground RoIs of a tail class; 0 / 0 = NaN without foreground
        ratio = (self.tail.to(device).index_select(0, labels) & fg).sum().float() \
            / fg.sum().float()
        # keep = not (u > r): u in [0, 1), so u <= r, with r = 2 (keep all) where r is NaN
        bound = ratio.nan_to_num(2.0)
        scratch = scratch or Scratch()
        if device.type == "cpu":
            block = scratch.new("block", (n, self.tail_columns.numel()), dtype, device)
            bg_rows = (~fg).nonzero().squeeze(1)
            draws = self.uniforms(bg_rows.numel(), device)
            block.zero_().index_copy_(0, bg_rows,
                                      torch.le(draws, bound, out=scratch.get("kept", draws, dtype)))
        else:
            block = torch.le(self.uniforms(n, device), bound).logical_and_(~fg[:, None]).to(dtype)
        shape = (n, self._width())
        keep = scratch.new("keep", shape, dtype, device)
        keep.fill_(1)
        # the tail columns; scatter_ along rows with a broadcast index runs a tight loop per
        # row (index_copy_ or keep[:, tail] = block: 3 to 6 times slower)
        keep.scatter_(1, self.tail_columns.to(device).expand_as(block), block)
        keep.view(-1).scatter_(0, target_entries(labels, self._width()), 1)
        keep[:, 0] = 0
        return keep

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels, self._width())
        z = upcast(logits)
        n = z.shape[0]
        if n == 0:
            return z.sum() * 0.0
        keep = self.weights(labels, z.dtype, self._scratch) if self.variant == "gol" else None
        return _GumbelBCE.apply(z, target_entries(labels, z.shape[1]), keep, 1.0 / n,
                                self.variant == "gumbel_ce", self._scratch)

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-RoI sums of w * BCE in plain autograd, as the release writes them (same
        draws as ``forward``); ``gumbel_ce`` refuses (its clamp acts on the mean)."""
        if self.variant != "gol":
            return super().roi_losses(logits, labels)
        check_labels(logits, labels, self._width())
        z = upcast(logits)
        if z.shape[0] == 0:
            return z.sum(1)
        keep = self.weights(labels, z.dtype)
        p = gumbel(z.clamp(CLAMP_MIN, CLAMP_MAX))
        target = self.targets(labels, z.shape[1], z.dtype)
        return F.binary_cross_entropy(p, target, keep, reduction="none").sum(1)

    def scores(self, logits: Tensor) -> Tensor:
        check_width(self.name, logits, self._width())
        return gumbel(upcast(logits)[:, 1:])

    @torch.no_grad()
    def init_classifier(self, layer: nn.Linear, stage1: nn.Linear | None) -> None:
        """``release``: weights 0.001, bias -2; ``stage1``: copy the stage-1 layer."""
        if self.init == "stage1":
            super().init_classifier(layer, stage1)
        else:
            layer.weight.fill_(INIT_WEIGHT)
            layer.bias.fill_(INIT_BIAS)

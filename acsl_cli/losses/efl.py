"""Equalized Focal Loss (Li et al., CVPR 2022) on the RoI classifier's sigmoid logits.

Release read: ModelTC/United-Perception (= ModelTC/EOD) at commit
52aaeb9ed27a490820696d7754d19f98cd6ecd11, ``up/tasks/det/plugins/efl/models/losses/efl.py``
(``EqualizedFocalLoss``), its gradient hook ``GradientCollector`` in
``up/utils/general/hook_helper.py``, the normaliser of ``retina_post_iou``
(``up/tasks/det/models/postprocess/retina_post_process.py``) and the defaults of
``configs/det/efl/efl_improved_baseline_r50_2x_rfs.yaml``.

Layout: logits (N, C + 1), column 0 = background, labels 0..C. As in the release (C
sigmoid logits, label 0 dropped from the one-hot target), the loss is over the C
foreground columns and a background RoI has an all-zero target; column 0 is not trained
(zero gradient, it keeps its stage-1 values, like ``federated``'s). With ``p = sigmoid(z)``,
``p_t = p`` where ``t = 1`` and ``1 - p`` where ``t = 0``, for a foreground column j:

    gamma_j = gamma_b + s (1 - g_j),   w_j = gamma_j / gamma_b,
    L = sum_ij alpha_t w_j (1 - p_t)^gamma_j (-log p_t) / max(num_pos, 1)

with ``alpha_t = alpha`` for ``t = 1`` and ``1 - alpha`` for ``t = 0`` (no alpha factor when
``alpha < 0``, as the release's ``focal_alpha >= 0`` test), ``num_pos`` the number of
foreground RoIs, and ``g_j = clamp(pos_j / (neg_j + 1e-10), 0, 1)`` from the accumulated
gradient magnitudes, 1 before any update (so the first batch is the plain focal loss).
Defaults: the release's config, ``gamma_b = 2``, ``s = 8`` (``scale_factor``), ``alpha =
0.25``.

Statistics: the release adds, in a backward hook on the classifier's output, the
magnitude of the loss's gradient with respect to each logit: ``pos_j += sum_i t_ij |dL/dz_ij|``,
``neg_j += sum_i (1 - t_ij) |dL/dz_ij|`` (all-reduced over ranks), then ``g = clamp(pos / (neg
+ 1e-10), 0, 1)``. Here the same gradient is computed analytically in ``forward``, with
no hook and no host synchronisation:

    |dL/dz_ij| = alpha_t w_j (1 - p_t)^gamma_j ((1 - p_t) - gamma_j p_t log p_t) / max(num_pos, 1)

and added once the batch's value is formed (so a batch uses the statistics of the
batches before it, as in the release, where the hook fires after the forward).
Under torch.distributed (training mode) one all-reduce carries the positive count and the
batch's sums; the normaliser is then the release's ``max(total num_pos, 1) / world_size``.
The statistics are those of the loss's own gradient: an engine that scales the loss (a
cascade's stage weight, an fp16 gradient scaler) does not scale them, where the release's
hook would see the scaled gradient (its configs use ``loss_weight: 1`` in fp32).

Differences from the release: the state (``pos_grad``, ``neg_grad``, ``pos_neg``) is float64
registered buffers (moved by ``.to``, saved in ``state_dict()``), updated only in training
mode like EQLv2's; ``-log p_t`` and ``(1 - p_t)^gamma`` are formed from ``softplus`` so that
saturated logits give finite values where the release's ``-log(sigmoid(z))`` is infinite;
in eval mode the normaliser is the local positive count. The paper's EFL is a one-stage
(dense, anchor) loss; here it trains the RoI classifier of the frozen two-stage trunk.

Scoring, the release's activation: ``sigmoid(z_j)`` (its IoU-branch factor belongs to the
one-stage head, which this detector does not have). ``bg_factor=true`` multiplies by
``1 - sigmoid(z_bg)``, a stage-1 logit here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import Scratch, check_width, sigmoid_scores, upcast
from acsl_cli.losses.registry import register_loss

RATIO_EPS = 1e-10  # the release's guard in pos / (neg + eps)


def _number(name: str, value: object, minimum: float | None = 0.0, strict: bool = False
            ) -> float:
    """A real number (>= or > ``minimum``) as float, else a one-line ConfigError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        rule = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ConfigError(f"loss 'efl': {name} must be a number{rule}, got {value!r}")
    return float(value)


def negative_side(u: Tensor, gamma: Tensor, mag_out: Tensor | None = None,
                  scratch: Scratch | None = None) -> tuple[Tensor, Tensor]:
    """EFL terms of entries seen as negatives with logit ``u`` (a positive with logit z is a
    negative with u = -z): ``term = sigmoid(u)^gamma softplus(u)`` = (1 - p_t)^gamma (-log
    p_t), and the magnitude of its derivative, ``mag = sigmoid(u)^gamma (sigmoid(u) + gamma
    (1 - sigmoid(u)) softplus(u))``, written to ``mag_out`` when given.

    Two buffers besides ``mag`` (``scratch``'s when given: at LVIS size a fresh tensor costs
    several in-place passes, the allocator returns it to the system and faults it back), the
    rest in place; ``term`` is one of them."""
    if scratch is None:
        ce = F.softplus(u, threshold=50.0)  # -log p_t; log1p(exp(u)) is finite below 50
        log_q = torch.sub(u, ce)            # log(1 - p_t)
    else:  # the same kernels (F.softplus is aten's softplus), written to reused storage
        ce = torch.ops.aten.softplus.out(u, 1.0, 50.0, out=scratch.get("ce", u))
        log_q = torch.sub(u, ce, out=scratch.get("log_q", u))
    q = torch.exp(log_q, out=mag_out) if mag_out is not None else torch.exp(log_q)
    mod = log_q.mul_(gamma).exp_()      # (1 - p_t)^gamma
    term = ce.mul_(mod)
    # mag = q mod + gamma (1 - q) term = q (mod - gamma term) + gamma term
    return term, q.mul_(mod.addcmul_(term, gamma, value=-1.0)).addcmul_(term, gamma)


class _FocalTerms(torch.autograd.Function):
    """Sum of the unnormalised EFL terms over the foreground columns, its gradient formed
    in the same pass (the statistics need it anyway), and the batch's column sums of the
    gradient magnitude on positives and on negatives (zeros unless ``collect``).

    ``labels`` (one-hot targets): every entry is computed as a negative, in place, and the
    N positive entries (label - 1 of each foreground row) are replaced by gather/scatter_,
    no host synchronisation. ``target`` (multi-hot, a class hierarchy): dense selects."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, labels: Tensor, target: Tensor | None,
                gamma: Tensor, pos_w: Tensor, neg_w: Tensor, collect: bool,
                scratch: Scratch) -> tuple[Tensor, Tensor, Tensor]:
        n, width = logits.shape
        z = logits[:, 1:]
        grad = logits.new_empty(n, width)
        grad[:, 0] = 0.0
        if target is None:
            value, pos, neg = _one_hot(z, labels, gamma, pos_w, neg_w, grad, collect, scratch)
        else:
            value, pos, neg = _multi_hot(z, target, gamma, pos_w, neg_w, grad, collect,
                                         scratch)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(pos, neg)
        return value, pos, neg

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_value: Tensor, *unused: Any
                 ) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_value, None, None, None, None, None, None, None


def _one_hot(z: Tensor, labels: Tensor, gamma: Tensor, pos_w: Tensor, neg_w: Tensor,
             grad: Tensor, collect: bool, scratch: Scratch) -> tuple[Tensor, Tensor, Tensor]:
    """The N positive entries are read and written by gather/scatter_ (``index_select`` for
    the per-class factors): advanced indexing, ``take`` and ``index_put_`` hand even N =
    8192 entries to the thread pool, a scheduler tick each on a busy CPU. Masks are 0/1
    floats (a product with a bool operand costs a conversion; x * 1.0 and x * 0.0 are what
    the bool product computes)."""
    n, c = z.shape
    fg = labels > 0
    fg_f = fg.to(z.dtype)
    keep = (~fg).to(z.dtype)                     # 1 where an entry stays as it is
    col = (labels - 1).clamp_(min=0)             # a background row points at column 0
    term, mag = negative_side(z, gamma, mag_out=grad[:, 1:], scratch=scratch)
    # the positive entries: their own terms, from u = -z
    g_c, pw_c = gamma.index_select(0, col), pos_w.index_select(0, col)
    term_p, mag_p = negative_side(z.gather(1, col.unsqueeze(1)).squeeze_(1).neg_(), g_c)
    rows = torch.arange(n, device=z.device)
    at = rows * c + col
    flat = term.view(-1)                         # drop the positives' negative-side terms
    flat.scatter_(0, at, flat.gather(0, at).mul_(keep))
    value = term.sum(0).mul_(neg_w).sum() + (term_p * pw_c * fg_f).sum()
    at = rows.mul_(c + 1).add_(col).add_(1)      # the same entries in grad, (N, C + 1)
    whole = grad.view(-1)
    whole.scatter_(0, at, whole.gather(0, at).mul_(keep))
    if collect:
        neg = mag.sum(0).mul_(neg_w)
        pos = torch.zeros_like(neg).index_add_(0, col, mag_p * pw_c * fg_f)  # serial on CPU
    else:
        pos = neg = z.new_zeros(c)
    mag.mul_(neg_w)
    whole.scatter_(0, at, torch.where(fg, -(mag_p * pw_c), whole.gather(0, at)))
    return value, pos, neg


def _multi_hot(z: Tensor, target: Tensor, gamma: Tensor, pos_w: Tensor, neg_w: Tensor,
               grad: Tensor, collect: bool, scratch: Scratch
               ) -> tuple[Tensor, Tensor, Tensor]:
    positive = target > 0
    term, mag = negative_side(torch.where(positive, -z, z), gamma, scratch=scratch)
    aw = torch.where(positive, pos_w, neg_w)
    value = (term * aw).sum()
    mag.mul_(aw)
    if collect:
        pos = (mag * target).sum(0)
        neg = mag.sum(0) - pos
    else:
        pos = neg = z.new_zeros(z.shape[1])
    torch.where(positive, -mag, mag, out=grad[:, 1:])
    return value, pos, neg


@register_loss("efl")
class EqualizedFocalLoss(ClassificationLoss):
    """EFL with base focusing ``gamma_b``, ``scale_factor`` s and focal ``alpha``.

    Needs no dataset statistic, only ``num_classes`` (the gradient sums are per class).
    """

    multi_label: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        gamma_b: float = 2.0,
        scale_factor: float = 8.0,
        alpha: float = 0.25,
        bg_factor: bool = False,
    ) -> None:
        super().__init__(num_classes)
        if self.num_classes is None:
            raise ConfigError("loss 'efl' needs num_classes (its statistics are per class)")
        self.gamma_b = _number("gamma_b", gamma_b, 0.0, strict=True)  # w = gamma / gamma_b
        self.scale_factor = _number("scale_factor", scale_factor)
        self.alpha = _number("alpha", alpha, None)
        if self.alpha > 1.0:
            raise ConfigError(f"loss 'efl': alpha must be <= 1 (a negative value turns it "
                              f"off), got {alpha!r}")
        if not isinstance(bg_factor, bool):
            raise ConfigError(f"loss 'efl': bg_factor must be true or false, got {bg_factor!r}")
        self.bg_factor = bg_factor
        c = self.num_classes
        self.register_buffer("pos_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("pos_neg", torch.ones(c, dtype=torch.float64))
        self._scratch = Scratch()  # forward's (N, C) temporaries; never saved

    def focusing(self) -> tuple[Tensor, Tensor]:
        """(C,) float64 focusing factors gamma_j and weighting factors w_j = gamma_j / gamma_b
        from the current gradient ratios."""
        gamma = self.gamma_b + self.scale_factor * (1.0 - self.pos_neg)
        return gamma, gamma / self.gamma_b

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        logits = upcast(logits)
        dtype, device = logits.dtype, logits.device
        target = None if self.expansion is None else \
            self.targets(labels, logits.shape[1], dtype)[:, 1:]
        gamma, weight = self.focusing()
        if self.alpha >= 0:
            pos_w, neg_w = self.alpha * weight, (1.0 - self.alpha) * weight
        else:
            pos_w = neg_w = weight
        rows = [x.to(device, dtype) for x in (gamma, pos_w, neg_w)]
        collect = self.training
        value, pos, neg = _FocalTerms.apply(logits, labels, target, *rows, collect,
                                            self._scratch)
        count = (labels > 0).sum().to(torch.float64)
        world = 1
        if collect and dist.is_available() and dist.is_initialized():
            stats = torch.cat([count.reshape(1).to(self.pos_grad.device),
                               pos.to(self.pos_grad.device, torch.float64),
                               neg.to(self.pos_grad.device, torch.float64)])
            dist.all_reduce(stats)
            count, pos, neg = stats[0], stats[1:-self.num_classes], stats[-self.num_classes:]
            world = dist.get_world_size()
        normaliser = count.clamp(min=1.0) / world
        if collect:
            self._update(pos, neg, normaliser)
        return value / normaliser.to(device, dtype)

    @torch.no_grad()
    def _update(self, pos: Tensor, neg: Tensor, normaliser: Tensor) -> None:
        """Add the batch's gradient magnitudes (divided by the normaliser, as the hook
        sees them) and refresh the ratio, all in float64."""
        home = self.pos_grad.device
        norm = normaliser.to(home, torch.float64)
        self.pos_grad += pos.to(home, torch.float64) / norm
        self.neg_grad += neg.to(home, torch.float64) / norm
        ratio = self.pos_grad / (self.neg_grad + RATIO_EPS)
        self.pos_neg.copy_(ratio.clamp_(min=0.0, max=1.0))

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return sigmoid_scores(logits, self.bg_factor)

"""Effective Class-Margin loss (Cho and Krähenbühl, ECCV 2022) in our C + 1 sigmoid layout.

Release read: github.com/janghyuncho/ECM-Loss at commit a6372408 (2023-09-02; the loss
files date from 84746948, 2022-10-23): ``mmdet/models/losses/effective_class_margin_loss.py``
(``EffectiveClassMarginLoss``), ``mmdet/models/losses/ecm_utils.py``
(``get_detection_weight``) and ``configs/effective_class_margin_loss/r50_ecm_1x.py``.

Layout: logits (N, C + 1), column 0 = background (the release's last column, its
"objectness"), labels 0..C, one-hot targets: a foreground RoI has its 1 in its class's
column, a background RoI in the background column. Per column j the count n_j: the train
count of class j, and for the background column ``fg_bg_ratio`` (6.3313, the release's
"empirical fg-bg ratio from Mask-RCNN") times the sum of all class counts. With
N = sum_j n_j over all C + 1 columns (background included):

    alpha_j = log((n_j^(1/4) + (N - n_j)^(1/4)) / (N - n_j)^(1/4))   positive margin
    beta_j  = log((n_j^(1/4) + (N - n_j)^(1/4)) / n_j^(1/4))         negative margin
    p_ij    = e^(z_ij + alpha_j) / (e^(z_ij + alpha_j) + e^(-z_ij + beta_j))
            = sigmoid(2 z_ij + alpha_j - beta_j)
    a_j = (N - n_j) / n_j,   w_j = a_j log((1 + a_j) / a_j)         class weight
    loss = sum_ij w_j BCE(p_ij, t_ij) / N_rois

(the release's ``compute_weight`` and ``get_detection_weight``; ``label_weights`` and
``avg_factor`` are ignored there, the sum is divided by the number of RoIs). We evaluate
the BCE from the logit x = 2 z + alpha - beta, as softplus(x) off target and softplus(-x)
on target: the same value, finite where the release's exp() of float32 logits overflows.
``forward`` is one autograd Function that forms the gradient in place during the forward
and builds no one-hot matrix (about as fast as plain BCE); ``roi_losses`` (mmdetection's
weighted path) uses ``binary_cross_entropy_with_logits`` on the same logit.

Counts: the release loads them from ``lvis_v1_image_count.pkl``. Despite its name that file
holds instance counts: its 1203 entries sum to 1,270,141, the number of LVIS v1 train
annotations, and its first ones (109, 1081, 3720) are the instance counts of aerosol_can,
air_conditioner and airplane (image counts 64, 364, 1911); the paper's margin "depends only
on the number of positive and negative annotations". We ship no file: the counts are the
train split's, from the ``LossContext`` (``counts: instances``, the default, reads
``instance_counts``; ``counts: images`` reads ``image_counts`` instead, an option).

A class with no train instance (n_j = 0) is where the release divides by zero (NaN loss);
here its column has weight 0 and margin 0, the limit of the release's terms as n_j -> 0
for its negatives (w_j -> 1, alpha_j - beta_j -> -inf, so BCE(., 0) -> 0): the column
takes no loss and no gradient. All counts zero is a ConfigError.

Scoring, the release's ``get_activation``: ``sigmoid(z_j) * (1 - sigmoid(z_bg))`` (plain
sigmoid of the logit, no factor 2 and no margin; ``bg_factor=true``); ``bg_factor=false``
scores with ``sigmoid(z_j)`` alone (an option). One positive column per RoI, as in the
release: under a class hierarchy (Open Images) ancestors are not trained as positives.

Not part of the loss, so not followed: the release's classifier is a cosine layer
(``NormedLinear``, temperature 20) trained end to end; here the loss trains whatever
classifier the stage-2 head has (the stage-1 layer copied, like ``bce``). The margins and
weights are float64 buffers computed once from the counts (no running state: nothing to
checkpoint, so they are not in ``state_dict``); ``forward`` never synchronises with the
host and reduces half-precision logits in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import check_width, counts_tensor, sigmoid_scores, upcast
from acsl_cli.losses.registry import register_loss

#: the release's default: background RoIs per foreground RoI in Mask R-CNN's sampler
FG_BG_RATIO = 6.3313
COUNTS = {"instances": "instance_counts", "images": "image_counts"}


def effective_margins(counts: Tensor, fg_bg_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """(C + 1,) float64 positive margins alpha, negative margins beta and class weights w
    from (C,) class counts; column 0 is the background column (count ratio x sum)."""
    fg = counts.to(torch.float64)
    n = torch.cat([fg.sum().reshape(1) * fg_bg_ratio, fg])
    rest = n.sum() - n  # N - n_j > 0 for every column once any class count is positive
    seen = n > 0
    safe = torch.where(seen, n, torch.ones_like(n))
    p, q = safe.pow(0.25), rest.pow(0.25)
    alpha = torch.where(seen, torch.log((p + q) / q), torch.zeros_like(n))
    beta = torch.where(seen, torch.log((p + q) / p), torch.zeros_like(n))
    a = rest / safe
    weight = torch.where(seen, a * torch.log1p(1.0 / a), torch.zeros_like(n))
    return alpha, beta, weight


class _ECMFunction(torch.autograd.Function):
    """sum_ij w_j BCE(2 z_ij + s_j, t_ij) / N in a few passes, no one-hot matrix.

    With x = 2 z + s and one target y_i per row, BCE(x, t) is softplus(x) off target and
    softplus(-x) on target (exact for large |x|, no cancellation); the gradient
    2 w_j (sigmoid(x_ij) - t_ij) / N is formed in place of x during the forward and only
    scaled in backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, labels: Tensor, shift: Tensor, weight: Tensor
    ) -> Tensor:
        n = logits.shape[0]
        x = torch.add(shift, logits, alpha=2.0)
        rows = torch.arange(n, device=logits.device)
        # softplus's linear branch is exact to the dtype's rounding past the threshold
        threshold = 40.0 if logits.dtype == torch.float64 else 20.0
        terms = F.softplus(x, threshold=threshold)  # BCE off target
        terms[rows, labels] = F.softplus(-x[rows, labels], threshold=threshold)  # on target
        total = (terms.sum(0) * weight).sum()  # column sums: one read, nothing for autocast
        twice = 2.0 * weight
        grad = x.sigmoid_().mul_(twice)
        grad[rows, labels] -= twice[labels]
        ctx.save_for_backward(grad)
        ctx.n = max(n, 1)
        return total / ctx.n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * (grad_out / ctx.n), None, None, None


@register_loss("ecm")
class EffectiveClassMarginLoss(ClassificationLoss):
    """ECM: margins and class weights from train counts and ``fg_bg_ratio``.

    ``needs`` lists both counts so the engine hands both over; ``counts`` picks the one
    read (``instances``, the release's, or ``images``).
    """

    needs: ClassVar[tuple[str, ...]] = ("instance_counts", "image_counts")

    def __init__(
        self,
        num_classes: int | None = None,
        fg_bg_ratio: float = FG_BG_RATIO,
        counts: str = "instances",
        bg_factor: bool = True,
        instance_counts: Sequence[int] | None = None,
        image_counts: Sequence[int] | None = None,
    ) -> None:
        if counts not in COUNTS:
            raise ConfigError(f"loss 'ecm': counts must be one of {', '.join(COUNTS)}, "
                              f"got {counts!r}")
        if isinstance(fg_bg_ratio, bool) or not isinstance(fg_bg_ratio, (int, float)) or \
                not 0.0 < fg_bg_ratio < math.inf:
            raise ConfigError(f"loss 'ecm': fg_bg_ratio must be a number > 0, got "
                              f"{fg_bg_ratio!r}")
        if not isinstance(bg_factor, bool):
            raise ConfigError(f"loss 'ecm': bg_factor must be true or false, got {bg_factor!r}")
        stat = COUNTS[counts]
        super().__init__(num_classes, required=(stat,), instance_counts=instance_counts,
                         image_counts=image_counts)
        values = counts_tensor("ecm", stat, instance_counts if counts == "instances"
                               else image_counts)
        if not bool((values > 0).any()):
            raise ConfigError(f"loss 'ecm': {stat} are all zero (no train data to set margins)")
        self.fg_bg_ratio, self.counts, self.bg_factor = float(fg_bg_ratio), counts, bg_factor
        alpha, beta, weight = effective_margins(values, self.fg_bg_ratio)
        self.register_buffer("pos_margin", alpha, persistent=False)
        self.register_buffer("neg_margin", beta, persistent=False)
        self.register_buffer("class_weight", weight, persistent=False)

    def _weighted_bce(self, logits: Tensor, labels: Tensor, reduction: str) -> Tensor:
        """w_j BCE(2 z + alpha_j - beta_j, t), reduced as torch's ``reduction``."""
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        logits = upcast(logits)
        shift = (self.pos_margin - self.neg_margin).to(logits.device, logits.dtype)
        weight = self.class_weight.to(logits.device, logits.dtype)
        target = self.targets(labels, logits.shape[1], logits.dtype)
        margined = torch.add(shift, logits, alpha=2.0)  # 2 z + alpha - beta, one kernel
        return F.binary_cross_entropy_with_logits(margined, target, weight, reduction=reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        logits = upcast(logits)
        shift = (self.pos_margin - self.neg_margin).to(logits.device, logits.dtype)
        weight = self.class_weight.to(logits.device, logits.dtype)
        return _ECMFunction.apply(logits, labels, shift, weight)

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self._weighted_bce(logits, labels, "none").sum(1)

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return sigmoid_scores(logits, self.bg_factor)

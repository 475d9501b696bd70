"""Equalization Loss v2 (Tan et al., CVPR 2021) in our C + 1 sigmoid layout.

Layout: logits (N, C + 1), column 0 = background, labels 0..C (0 = background), one-hot
targets as in ``bce`` (a background RoI has its 1 in column 0). With ``p = sigmoid(z)``:

    loss = sum_ij w_ij * BCE(z_ij, t_ij) / N,   w_ij = q_j t_ij + r_j (1 - t_ij)

where, for a foreground column j (label j), from the gradient magnitudes accumulated over
all previous batches,

    g_j = pos_j / (neg_j + 1e-10),   r_j = f(g_j) = 1 / (1 + exp(-gamma (g_j - mu))),
    q_j = 1 + alpha (1 - r_j)

(defaults gamma = 12, mu = 0.8, alpha = 4). After the loss of a batch is formed, the
accumulators take that batch's weighted gradient magnitudes of the logits, computed
analytically (``|dBCE/dz| = |p - t|``, no autograd hook):

    pos_j += sum_i t_ij w_ij |p_ij - t_ij|,   neg_j += sum_i (1 - t_ij) w_ij |p_ij - t_ij|

Release behaviours followed (the authors' mmdetection ``EQLv2``, where background is the
last column; here it is column 0):

* the background column is never re-weighted (q = r = 1) and has no accumulators;
* the very first batch uses w = 1 everywhere ("no statistics yet"); every later batch uses
  the ratio even where an accumulator is still zero (g = 0 gives r = f(0) ~ 7e-5);
* the weights of a batch come from the statistics *before* it, and the batch's
  contribution is collected with those same weights, summed over RoIs (not divided by N);
* the loss is divided by N, the number of sampled RoIs (fg and bg), like ``bce``;
* under torch.distributed the batch's sums are all-reduced (summed over ranks) before they
  are added, so every rank holds the same accumulators.

Differences from the release: the accumulators are float64 registered buffers (``pos_grad``,
``neg_grad`` and the batch counter ``updates``): they move with ``.to(device)``, are part of
``state_dict()``, and float64 keeps a sum over ~10^5 iterations from stalling. Like
BatchNorm's running statistics they are updated only in training mode (``loss.train()``,
the default); ``loss.eval()`` evaluates the loss with the current weights and leaves the
statistics alone.

Scoring, by default the release's (its ``get_activation``, used with its ``test_with_obj``
on): ``sigmoid(z_j) * (1 - sigmoid(z_bg))``, the background logit acting as objectness
(``bg_factor=true``). ``bg_factor=false`` scores with ``sigmoid(z_j)`` alone, like ``bce``
(this project's default before; kept to compare).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import check_width, sigmoid_scores
from acsl_cli.losses.registry import register_loss

RATIO_EPS = 1e-10  # the release's guard in pos / (neg + eps)


def check_number(loss: str, name: str, value: object, minimum: float = 0.0) -> float:
    """A real number >= ``minimum`` as float, else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ConfigError(f"loss '{loss}': {name} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


@register_loss("eqlv2")
class EqualizationLossV2(ClassificationLoss):
    """EQLv2 with mapping ``gamma``, ``mu`` and positive up-weighting ``alpha``.

    Needs no dataset statistic, only ``num_classes`` (the accumulators are per class).
    """

    multi_label: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        bg_factor: bool = True,
    ) -> None:
        super().__init__(num_classes)
        if self.num_classes is None:
            raise ConfigError("loss 'eqlv2' needs num_classes (its statistics are per class)")
        self.gamma = check_number("eqlv2", "gamma", gamma)
        self.mu = check_number("eqlv2", "mu", mu)
        self.alpha = check_number("eqlv2", "alpha", alpha)
        if not isinstance(bg_factor, bool):
            raise ConfigError(f"loss 'eqlv2': bg_factor must be true or false, got {bg_factor!r}")
        self.bg_factor = bg_factor
        c = self.num_classes
        self.register_buffer("pos_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def gradient_ratio(self) -> Tensor:
        """(C,) g_j = pos_j / (neg_j + 1e-10) from the accumulated statistics."""
        return self.pos_grad / (self.neg_grad + RATIO_EPS)

    def column_weights(self) -> tuple[Tensor, Tensor]:
        """(C + 1,) float64 positive weights q and negative weights r, column 0 = background
        (always 1); all ones before the first update."""
        r = torch.sigmoid(self.gamma * (self.gradient_ratio() - self.mu))
        r = torch.where(self.updates > 0, r, torch.ones_like(r))
        r = torch.cat([r.new_ones(1), r])
        return 1.0 + self.alpha * (1.0 - r), r

    def _weighted_bce(self, logits: Tensor, labels: Tensor, reduction: str) -> Tensor:
        """The weighted BCE terms (``reduction`` as torch's), statistics collected once."""
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        target = self.targets(labels, logits.shape[1], logits.dtype)
        pos_w, neg_w = (w.to(logits.device, logits.dtype) for w in self.column_weights())
        weight = target * pos_w + (1.0 - target) * neg_w
        loss = F.binary_cross_entropy_with_logits(logits, target, weight, reduction=reduction)
        if self.training:
            self._collect(logits.detach(), target, weight)
        return loss

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self._weighted_bce(logits, labels, "sum") / max(logits.shape[0], 1)

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self._weighted_bce(logits, labels, "none").sum(1)

    @torch.no_grad()
    def _collect(self, logits: Tensor, target: Tensor, weight: Tensor) -> None:
        """Add this batch's weighted gradient magnitudes |p - t| w (foreground columns)."""
        grad = (torch.sigmoid(logits) - target).abs_().mul_(weight)[:, 1:]
        fg_target = target[:, 1:]
        pos, neg = (grad * fg_target).sum(0), (grad * (1.0 - fg_target)).sum(0)
        # a batch is summed in the logits' dtype, the running sums are float64
        stats = torch.stack([pos, neg]).to(self.pos_grad.device, torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        self.pos_grad += stats[0]
        self.neg_grad += stats[1]
        self.updates += 1

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return sigmoid_scores(logits, self.bg_factor)

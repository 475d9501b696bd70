"""Seesaw Loss (Wang et al., CVPR 2021) in our single C + 1 softmax layout.

Layout: logits (N, C + 1), column 0 = background, labels 0..C (0 = background). For a
foreground RoI of class i, every other foreground column j gets its logit shifted by
``log S_ij`` with ``S_ij = M_ij * C_ij``, then ordinary softmax CE is taken:

    M_ij = (N_j / N_i)^p  if N_j < N_i  else 1      (mitigation, p = 0.8)
    C_ij = (sigma_j / max(sigma_i, eps))^q  if that ratio > 1  else 1
                                                     (compensation, q = 2, eps = 1e-2)
    loss = sum_i CE(z_i + log S_i, label_i) / N

N_j is the cumulative number of RoIs of class j seen in training, counted online: each
batch's labels are added *before* its loss is formed, and counts are clamped to >= 1 in the
ratio. sigma is the softmax over the foreground columns 1..C of the detached logits, so
both factors are constants for autograd (as in the release) and the gradient is
``(softmax(z + log S) - onehot) / N``. In log space the factors are
``log M = p * min(log N_j - log N_i, 0)`` and ``log C = q * max(log sigma_j - log
max(sigma_i, eps), 0)``, which is the release's formula without its underflow.

The release (mmdetection ``SeesawLoss``) has C + 2 outputs: C class logits (label C =
background) and a separate 2-way objectness softmax; the seesaw CE runs over the C class
columns on foreground RoIs only, plain CE trains objectness on every RoI, and both sums
are divided by N. Adapted here to one C + 1 softmax:

* a background RoI takes plain softmax CE with target column 0 (no factors: in the release
  it only meets the unweighted objectness CE);
* a foreground RoI's background column is never re-weighted (S = 1 there: the release's
  class softmax has no background column), and sigma excludes column 0, so the eps clamp
  acts on the same probability as in the release;
* counts (buffer ``cum_samples``, float64, C + 1 entries, background RoIs counted in entry
  0 but never used) are per process like the release's, not all-reduced. They are updated
  only in training mode (``loss.train()``, the default), move with ``.to(device)`` and are
  saved in ``state_dict()``;
* the release's cosine ("normed linear") classifier is not used: the head's layer stays
  the project's plain linear ``cls_score``.

Scoring: softmax over the C + 1 columns, background column dropped. That is
``softmax_fg(z)_j * (1 - p_bg)``, the release's "class softmax times objectness" product
with the objectness read from the same softmax instead of a separate branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import check_width, upcast
from acsl_cli.losses.eqlv2 import check_number
from acsl_cli.losses.registry import register_loss


@register_loss("seesaw")
class SeesawLoss(ClassificationLoss):
    """Seesaw with mitigation power ``p``, compensation power ``q`` and clamp ``eps``.

    Needs no dataset statistic (the counts are gathered online), only ``num_classes``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
    ) -> None:
        super().__init__(num_classes)
        if self.num_classes is None:
            raise ConfigError("loss 'seesaw' needs num_classes (its counts are per class)")
        self.p = check_number("seesaw", "p", p)
        self.q = check_number("seesaw", "q", q)
        self.eps = check_number("seesaw", "eps", eps)
        if self.eps <= 0:
            raise ConfigError(f"loss 'seesaw': eps must be positive, got {eps!r}")
        self.register_buffer("cum_samples", torch.zeros(self.num_classes + 1,
                                                        dtype=torch.float64))

    def log_factors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C + 1) ``log M`` and ``log C`` from the current counts; zero on background
        rows, on column 0 and on each RoI's own column. No gradient flows through them."""
        logits = logits.detach()
        cols = torch.arange(logits.shape[1], device=logits.device)[None, :]
        rows = labels[:, None]
        keep = (rows > 0) & (cols > 0) & (cols != rows)  # fg RoI, other fg columns
        log_m = torch.zeros_like(logits)
        log_c = torch.zeros_like(logits)
        if self.p > 0:
            log_n = self.cum_samples.clamp(min=1.0).log().to(logits.device, logits.dtype)
            diff = log_n[None, :] - log_n[labels][:, None]  # log(N_j / N_i)
            log_m = (self.p * diff.clamp(max=0.0)) * keep
        if self.q > 0:
            log_sigma = torch.zeros_like(logits)
            log_sigma[:, 1:] = F.log_softmax(logits[:, 1:], dim=1)
            log_self = log_sigma.gather(1, labels[:, None]).clamp(min=math.log(self.eps))
            log_c = (self.q * (log_sigma - log_self).clamp(min=0.0)) * keep
        return log_m, log_c

    def factors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C + 1) mitigation M and compensation C (ones where not applied)."""
        log_m, log_c = self.log_factors(logits, labels)
        return log_m.exp(), log_c.exp()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_classes + 1)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.training:
            # index_add_ rather than bincount: no host synchronisation on CUDA
            device = self.cum_samples.device
            ones = torch.ones(labels.shape, dtype=self.cum_samples.dtype, device=device)
            self.cum_samples.index_add_(0, labels.to(device), ones)
        log_m, log_c = self.log_factors(logits, labels)
        adjusted = logits + (log_m + log_c)
        return F.cross_entropy(adjusted, labels, reduction="sum") / max(logits.shape[0], 1)

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_width(self.name, logits, self.num_classes + 1)
        return F.softmax(upcast(logits), dim=1)[:, 1:]

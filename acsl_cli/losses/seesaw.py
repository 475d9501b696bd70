"""Seesaw Loss (Wang et al., CVPR 2021), in the release's layout or one C + 1 softmax.

For a foreground RoI of class i, every other class j gets its logit shifted by
``log S_ij``, ``S_ij = M_ij * C_ij``, before an ordinary softmax CE over the classes:

    M_ij = (N_j / N_i)^p  if N_j < N_i  else 1      (mitigation, p = 0.8)
    C_ij = (sigma_j / max(sigma_i, eps))^q  if that ratio > 1  else 1
                                                     (compensation, q = 2, eps = 1e-2)

N_j is the cumulative number of RoIs of class j seen in training, counted before the
batch's loss is formed and clamped to >= 1 in the ratio; sigma is the softmax over the C
class logits, detached, so both factors are constants for autograd (as in the release). In
log space ``log M = p * min(log N_j - log N_i, 0)`` and ``log C = q * max(log sigma_j - log
max(sigma_i, eps), 0)``: the release's formula without its underflow.

``layout: release`` (default), the authors' mmdetection ``SeesawLoss``: C + 2 outputs, C
class logits plus a separate 2-way objectness softmax. Here, so that column 0 stays
background as everywhere in this project (and as in BAGS's G0):

    columns 0, 1: objectness [background, foreground];  column l + 1: class label l (1..C)

    loss = (sum_{fg RoIs} CE(z_cls + log S, label) + sum_{all RoIs} CE(z_obj, fg)) / N

with N = all sampled RoIs (the release's ``avg_factor``, ``loss_weight`` 1 for both
terms). Scores: ``softmax(z_cls)_j * p_obj(foreground)``; ``p_obj(background)`` is the
background score the release appends and the detector drops.

``layout: single_softmax``, this project's earlier adaptation: one (C + 1)-way softmax,
column 0 = background, the factors on foreground columns of foreground RoIs only (sigma
still over columns 1..C), plain CE for a background RoI, sum / N. Scores: softmax over
C + 1 columns, background dropped, i.e. the class softmax times ``1 - p_bg`` of the same
softmax.

Both: counts (buffer ``cum_samples``, float64, C + 1 entries) count background RoIs in
entry 0 like the release counts them in its entry C, and never use them. They are per
process like the release's (not all-reduced), updated only in training mode
(``loss.train()``, the default), move with ``.to(device)`` and are saved in
``state_dict()``. The release's cosine classifier (mmdetection's ``NormedLinear``,
``tempearture=20``) is the head's layer, not the loss's: ``loss.classifier=normed`` (any
loss) or the ``seesaw_normed`` preset (``models.classifier``); the default is the plain
linear ``cls_score``. No host synchronisation in ``forward`` (background rows are masked,
not removed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acsl_cli.errors import ConfigError
from acsl_cli.losses.bags import NEW_LOGIT_STD
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import upcast
from acsl_cli.losses.eqlv2 import check_number
from acsl_cli.losses.registry import register_loss

LAYOUTS = ("release", "single_softmax")


def seesaw_log_factors(class_logits: Tensor, targets: Tensor, counts: Tensor, p: float,
                       q: float, eps: float) -> tuple[Tensor, Tensor]:
    """(N, C) ``log M`` and ``log C`` of class logits (N, C), targets 0..C-1, counts (C,).

    Zero on each row's own column by construction (ratio 1 there). No gradient.
    """
    z = class_logits.detach()
    log_m = torch.zeros_like(z)
    log_c = torch.zeros_like(z)
    if p > 0:
        log_n = counts.clamp(min=1.0).log().to(z.device, z.dtype)
        log_m = p * (log_n[None, :] - log_n[targets][:, None]).clamp(max=0.0)
    if q > 0:
        log_sigma = F.log_softmax(z, dim=1)
        log_self = log_sigma.gather(1, targets[:, None]).clamp(min=math.log(eps))
        log_c = q * (log_sigma - log_self).clamp(min=0.0)
    return log_m, log_c


@register_loss("seesaw")
class SeesawLoss(ClassificationLoss):
    """Seesaw with mitigation power ``p``, compensation power ``q``, clamp ``eps`` and a
    classifier ``layout`` (``release``: C + 2 outputs; ``single_softmax``: C + 1).

    Needs no dataset statistic (the counts are gathered online), only ``num_classes``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
        layout: str = "release",
    ) -> None:
        super().__init__(num_classes)
        if self.num_classes is None:
            raise ConfigError("loss 'seesaw' needs num_classes (its counts are per class)")
        self.p = check_number("seesaw", "p", p)
        self.q = check_number("seesaw", "q", q)
        self.eps = check_number("seesaw", "eps", eps)
        if self.eps <= 0:
            raise ConfigError(f"loss 'seesaw': eps must be positive, got {eps!r}")
        if layout not in LAYOUTS:
            raise ConfigError(f"loss 'seesaw': layout must be one of {', '.join(LAYOUTS)}, "
                              f"got {layout!r}")
        self.layout = layout
        self.register_buffer("cum_samples", torch.zeros(self.num_classes + 1,
                                                        dtype=torch.float64))

    @property
    def release(self) -> bool:
        return self.layout == "release"

    def num_outputs(self, num_classes: int) -> int:
        return num_classes + 2 if self.release else num_classes + 1

    def _split(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(the leading columns, class logits (N, C)): the objectness pair (release) or the
        background column (single_softmax)."""
        return (logits[:, :2], logits[:, 2:]) if self.release else (logits[:, :1],
                                                                   logits[:, 1:])

    def log_factors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``log M`` and ``log C`` over the columns the seesaw CE runs on: the C class
        columns (release, (N, C)) or all C + 1 columns (single_softmax, column 0 zero).
        Zero on background rows; no gradient flows through them."""
        class_logits = self._split(logits)[1]
        fg = (labels > 0).to(class_logits.dtype)[:, None]
        log_m, log_c = seesaw_log_factors(class_logits, (labels - 1).clamp(min=0),
                                          self.cum_samples[1:], self.p, self.q, self.eps)
        log_m, log_c = log_m * fg, log_c * fg
        if not self.release:
            log_m, log_c = (F.pad(t, (1, 0)) for t in (log_m, log_c))
        return log_m, log_c

    def factors(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mitigation M and compensation C (ones where not applied), as ``log_factors``."""
        log_m, log_c = self.log_factors(logits, labels)
        return log_m.exp(), log_c.exp()

    def _observe(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Checked, upcast logits; in training the batch's labels counted first."""
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_outputs(self.num_classes))
        logits = upcast(logits)
        if self.training:
            # index_add_ rather than bincount: no host synchronisation on CUDA
            device = self.cum_samples.device
            ones = torch.ones(labels.shape, dtype=self.cum_samples.dtype, device=device)
            self.cum_samples.index_add_(0, labels.to(device), ones)
        return logits

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = self._observe(logits, labels)
        n = max(logits.shape[0], 1)
        log_m, log_c = self.log_factors(logits, labels)
        if not self.release:
            adjusted = logits + (log_m + log_c)
            return F.cross_entropy(adjusted, labels, reduction="sum") / n
        objectness, class_logits = self._split(logits)
        fg = labels > 0
        per_roi = F.cross_entropy(class_logits + (log_m + log_c), (labels - 1).clamp(min=0),
                                  reduction="none")
        classes = (per_roi * fg.to(per_roi.dtype)).sum()
        return (classes + F.cross_entropy(objectness, fg.long(), reduction="sum")) / n

    def roi_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = self._observe(logits, labels)
        log_m, log_c = self.log_factors(logits, labels)
        if not self.release:
            return F.cross_entropy(logits + (log_m + log_c), labels, reduction="none")
        objectness, class_logits = self._split(logits)
        fg = labels > 0
        per_roi = F.cross_entropy(class_logits + (log_m + log_c), (labels - 1).clamp(min=0),
                                  reduction="none")
        return per_roi * fg.to(per_roi.dtype) + F.cross_entropy(objectness, fg.long(),
                                                                reduction="none")

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        width = self.num_outputs(self.num_classes)
        if logits.dim() != 2 or logits.shape[1] != width:
            raise ValueError(f"loss 'seesaw': expected (N, {width}) logits, got "
                             f"{tuple(logits.shape)}")
        logits = upcast(logits)
        if not self.release:
            return F.softmax(logits, dim=1)[:, 1:]
        objectness, class_logits = self._split(logits)
        return F.softmax(class_logits, dim=1) * F.softmax(objectness, dim=1)[:, 1:2]

    @torch.no_grad()
    def init_classifier(self, layer: nn.Linear, stage1: nn.Linear | None) -> None:
        """single_softmax: copy the stage-1 layer. release: class rows copied from the
        stage-1 (C + 1)-way classifier's class rows, the objectness background row from its
        background row, the objectness foreground row (no stage-1 counterpart) drawn from
        N(0, 0.01^2) with zero bias, as BAGS does for its new logits. A stage 1 trained with
        the release layout (``schedule.stage1.loss=seesaw``) is copied whole."""
        if not self.release or (stage1 is not None and stage1.weight.shape ==
                                layer.weight.shape):
            super().init_classifier(layer, stage1)
            return
        assert self.num_classes is not None
        c = self.num_classes
        if layer.out_features != c + 2:
            raise ValueError(f"loss 'seesaw': classifier has {layer.out_features} outputs, "
                             f"needs {c + 2}")
        nn.init.normal_(layer.weight, std=NEW_LOGIT_STD)
        nn.init.zeros_(layer.bias)
        if stage1 is None:
            return
        if stage1.out_features != c + 1 or stage1.in_features != layer.in_features:
            raise ValueError(f"loss 'seesaw': stage-1 classifier is "
                             f"{tuple(stage1.weight.shape)}, expected ({c + 1}, "
                             f"{layer.in_features})")
        rows = [0, *range(2, c + 2)]  # stage-1 row 0 (background) -> 0, label l -> l + 1
        layer.weight[rows] = stage1.weight.to(layer.weight)
        layer.bias[rows] = stage1.bias.to(layer.bias)

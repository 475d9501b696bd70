"""A box head's classifier layer: plain ``nn.Linear`` (the default) or the normalised
(cosine) classifier of the Seesaw Loss release (``loss.classifier=normed``).

The Seesaw LVIS configs of mmdetection (``configs/seesaw_loss/``, Wang et al. CVPR 2021)
give the box head ``cls_predictor_cfg=dict(type='NormedLinear', tempearture=20)`` (sic),
every stage of the cascade ones too. Read from the release
(``mmdet/models/layers/normed_predictor.py``, formerly ``models/utils/``), its output is

    z_j = (T x / (|x|^p + eps)) . (w_j / (|w_j|^p + eps)) + b_j

with |.| the Euclidean norm of each input row x and each weight row w_j, temperature T
(20), power p (1) and eps (1e-6) added after the power, the bias used (``nn.Linear``'s
default ``bias=True``), and weights drawn from N(0, 0.01^2) with zero bias. A zero input
or a zero row gives z_j = b_j (the eps keeps the division finite).

``NormedLinear`` is an ``nn.Linear`` with the same parameters (``weight``, ``bias``), so a
loss's ``init_classifier`` and every state dict treat it as one: what the layer is comes
from the settings (the head's ``loss.classifier``, saved with its loss), not from its
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from acsl_cli.settings.sections import CLASSIFIERS

#: the release's defaults (``NormedLinear(tempearture=20, power=1.0, eps=1e-6)``)
TEMPERATURE, POWER, EPS = 20.0, 1.0, 1e-6
#: the release's weight init: N(0, std^2), bias 0
INIT_STD = 0.01


class NormedLinear(nn.Linear):
    """``T * x/(|x|^p + eps) @ (W/(|W_j|^p + eps))^T + b`` (module docstring)."""

    def __init__(self, in_features: int, out_features: int, temperature: float = TEMPERATURE,
                 power: float = POWER, eps: float = EPS, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        if not temperature > 0:
            raise ValueError(f"NormedLinear: temperature must be positive, got {temperature}")
        self.temperature, self.power, self.eps = float(temperature), float(power), float(eps)

    def reset_parameters(self) -> None:
        """The release's init: weights N(0, 0.01^2), bias 0."""
        nn.init.normal_(self.weight, mean=0.0, std=INIT_STD)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight / (self.weight.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        x = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        return F.linear(x * self.temperature, w, self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature:g}, "
                f"power={self.power:g}, eps={self.eps:g}")


@dataclass(frozen=True)
class ClassifierSpec:
    """Which classifier layer a head or a detector's box head gets (``loss.classifier``,
    ``loss.temperature``: the head's loss settings)."""

    kind: str = CLASSIFIERS[0]
    temperature: float = TEMPERATURE

    def __post_init__(self) -> None:
        if self.kind not in CLASSIFIERS:
            raise ValueError(f"classifier {self.kind!r}: expected one of "
                             f"{', '.join(CLASSIFIERS)}")

    @property
    def normed(self) -> bool:
        return self.kind == "normed"

    def layer(self, in_features: int, out_features: int) -> nn.Linear:
        """A fresh layer: ``nn.Linear`` (its own init, the draws it always made) or
        ``NormedLinear`` (the release's init)."""
        if self.normed:
            return NormedLinear(in_features, out_features, self.temperature)
        return nn.Linear(in_features, out_features)


#: the default: torchvision's plain ``cls_score``
LINEAR = ClassifierSpec()


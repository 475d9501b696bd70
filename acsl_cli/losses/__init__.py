"""Classification losses for the RoI head, one module each, behind a registry.

For another framework's box head: ``detection_loss(name, num_classes, background=...)``
(``losses.api``).

Adding a loss = one module here (decorated with ``@register_loss``) + one yaml in
``conf/loss/`` + one import line below.
"""

# Importing a loss module registers it: a new loss adds its module name here.
from acsl_cli.losses import (  # noqa: F401
    acsl,
    bags,
    bce,
    ecm,
    efl,
    eql,
    eqlv2,
    federated,
    gol,
    plugins,  # noqa: F401  (an unknown loss= loads installed plugins)
    seesaw,
    softmax_ce,
)
from acsl_cli.losses.api import DetectionLoss, detection_loss
from acsl_cli.losses.base import STAT_NAMES, ClassificationLoss, LossContext
from acsl_cli.losses.registry import available_losses, build_loss, loss_class, register_loss

__all__ = [
    "STAT_NAMES",
    "ClassificationLoss",
    "DetectionLoss",
    "LossContext",
    "available_losses",
    "build_loss",
    "detection_loss",
    "loss_class",
    "register_loss",
]

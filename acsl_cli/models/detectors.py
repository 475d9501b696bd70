"""Detectors behind a registry, as the losses are: ``detector=NAME`` picks the function
that builds the detector from its settings (``DetectorSettings``). Every detector shares
the trunk and RPN of ``models.detector.build_detector``; its RoI head keeps the contract
of ``models.roi_head.RoIHead``.

Adding one: a function here decorated ``@register_detector("<name>")``, its settings
class in ``settings.detection`` registered as ``@kind(DETECTOR_KINDS)`` (its keys; another
detector's key is refused; ``tests/test_cascade.py`` checks both registries list the same
names) and ``conf/detector/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.models.detection import FasterRCNN

from acsl_cli.losses import ClassificationLoss
from acsl_cli.models.cascade import CascadeSpec
from acsl_cli.models.classifier import LINEAR, ClassifierSpec
from acsl_cli.models.detector import build_detector
from acsl_cli.models.roi_head import RoIHead
from acsl_cli.settings import (
    BackboneSettings,
    CascadeRCNNSettings,
    DetectorSettings,
    FasterRCNNSettings,
)

#: (the detector's own settings, backbone settings, number of classes, stage-1 loss, min
#: and max image size, the classifier layer by keyword: ``classifier=ClassifierSpec``)
#: -> the detector
Builder = Callable[..., FasterRCNN]
_DETECTORS: dict[str, Builder] = {}


def register_detector(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        _DETECTORS[name] = fn
        return fn

    return wrap


def detector_names() -> tuple[str, ...]:
    return tuple(_DETECTORS)


def detector_from(d: DetectorSettings, backbone: BackboneSettings, num_classes: int,
                  loss: ClassificationLoss, min_size: int, max_size: int,
                  classifier: ClassifierSpec = LINEAR) -> FasterRCNN:
    """The detector ``d.name`` names (the settings rule has checked the name); its
    classifier layers are the ones ``classifier`` asks for (plain linear by default)."""
    model = _DETECTORS[d.name](d, backbone, num_classes, loss, min_size, max_size,
                               classifier=classifier)
    if not isinstance(model.roi_heads, RoIHead):
        raise TypeError(f"detector {d.name}: its RoI head does not keep models.roi_head's "
                        "contract")
    return model


@register_detector("faster_rcnn")
def faster_rcnn(d: FasterRCNNSettings, backbone: BackboneSettings, num_classes: int,
                loss: ClassificationLoss, min_size: int, max_size: int, *,
                classifier: ClassifierSpec = LINEAR) -> FasterRCNN:
    return build_detector(backbone, num_classes, loss, min_size, max_size, cascade=None,
                          class_agnostic_boxes=d.class_agnostic_boxes, classifier=classifier)


@register_detector("cascade_rcnn")
def cascade_rcnn(d: CascadeRCNNSettings, backbone: BackboneSettings, num_classes: int,
                 loss: ClassificationLoss, min_size: int, max_size: int, *,
                 classifier: ClassifierSpec = LINEAR) -> FasterRCNN:
    """Cai & Vasconcelos 2018 on the same trunk: the configured per-stage values."""
    spec = CascadeSpec(tuple(d.iou_thresholds), tuple(d.stage_weights),
                       tuple(tuple(w) for w in d.box_coder_weights))
    # the first stage's Faster R-CNN head is built, class-specific, before it is replaced:
    # the same random draws as ever
    return build_detector(backbone, num_classes, loss, min_size, max_size, cascade=spec,
                          class_agnostic_boxes=False, classifier=classifier)

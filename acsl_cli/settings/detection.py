"""The backbone and detector sections (``backbone=``, ``detector=``): one settings class
per kind, each with its own keys (``declare.kinds``); another kind's key is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acsl_cli.settings.declare import kind, setting
from acsl_cli.settings.rules import boolean, choice_in, integer, list_of, number, text

#: ``backbone=NAME`` -> its settings class (``kind``): a key of another backbone is refused
BACKBONE_KINDS: dict[str, type] = {}
#: the paper's ResNet / ResNeXt FPN backbones (``models.backbones.ARCHS``)
RESNETS = ("r50", "r101", "r152", "x101_64x4d", "x101_32x8d")


def _backbone(name: str) -> Any:
    return setting(name, choice_in(BACKBONE_KINDS))


class BackboneSettings:
    """The trunk and the detector sizes that go with it (``backbone=``); each kind's
    class declares its own keys and defaults."""

    name: str
    anchor_sizes: tuple[int, ...]
    representation_size: int
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int
    roi_batch_size_per_image: int
    pre_nms_topk: int


_ANCHOR = list_of(integer(1, 100_000), nonempty=True)
_TOP_N = integer(1, 10**7)


@kind(BACKBONE_KINDS)
@dataclass(frozen=True)
class SmallBackboneSettings(BackboneSettings):
    """``small``: ResNet-10 with an FPN of ``fpn_channels``, trained from scratch."""

    name: str = _backbone("small")
    fpn_channels: int = setting(64, integer(1, 4096))
    anchor_sizes: tuple[int, ...] = setting((16, 32, 64, 128), _ANCHOR)
    representation_size: int = setting(256, integer(1, 65_536))
    rpn_pre_nms_top_n_train: int = setting(600, _TOP_N)
    rpn_post_nms_top_n_train: int = setting(300, _TOP_N)
    rpn_pre_nms_top_n_test: int = setting(300, _TOP_N)
    rpn_post_nms_top_n_test: int = setting(150, _TOP_N)
    roi_batch_size_per_image: int = setting(64, integer(1, 1_000_000))
    pre_nms_topk: int = setting(10000, integer(1, 10**8))


@kind(BACKBONE_KINDS, *RESNETS)
@dataclass(frozen=True)
class ResNetBackboneSettings(BackboneSettings):
    """The paper's ResNet / ResNeXt FPN (256 channels) with its ImageNet ``weights`` (null,
    a torchvision name, or a local file) and ``trainable_layers`` of the trunk."""

    name: str = _backbone("r50")
    weights: str | None = setting(None, text(null=True))
    trainable_layers: int = setting(3, integer(0, 5))
    anchor_sizes: tuple[int, ...] = setting((32, 64, 128, 256, 512), _ANCHOR)
    representation_size: int = setting(1024, integer(1, 65_536))
    rpn_pre_nms_top_n_train: int = setting(2000, _TOP_N)
    rpn_post_nms_top_n_train: int = setting(2000, _TOP_N)
    rpn_pre_nms_top_n_test: int = setting(1000, _TOP_N)
    rpn_post_nms_top_n_test: int = setting(1000, _TOP_N)
    roi_batch_size_per_image: int = setting(512, integer(1, 1_000_000))
    pre_nms_topk: int = setting(10000, integer(1, 10**8))


#: ``detector=NAME`` -> its settings class; ``models.detectors`` registers a builder under
#: the same name (``tests/test_cascade.py`` checks both list the same names)
DETECTOR_KINDS: dict[str, type] = {}


def _detector(name: str) -> Any:
    return setting(name, choice_in(DETECTOR_KINDS))


class DetectorSettings:
    """Which detector stage 1 trains (``detector=``); each kind's class declares its own
    keys, and a key of another detector is refused."""

    name: str

    @property
    def num_stages(self) -> int:  # pragma: no cover - each kind says
        raise NotImplementedError


@kind(DETECTOR_KINDS)
@dataclass(frozen=True)
class FasterRCNNSettings(DetectorSettings):
    name: str = _detector("faster_rcnn")
    #: one box regression shared by all classes (mmdetection's ``reg_class_agnostic``)
    #: instead of one per class
    class_agnostic_boxes: bool = setting(False, boolean)

    @property
    def num_stages(self) -> int:
        """Box heads in sequence, each with its own classifier and loss."""
        return 1


@kind(DETECTOR_KINDS)
@dataclass(frozen=True)
class CascadeRCNNSettings(DetectorSettings):
    """Cai & Vasconcelos 2018: IoU 0.5/0.6/0.7, tighter box-coder weights as the boxes
    improve; one entry per stage, the lengths must agree (``config_rules``)."""

    name: str = _detector("cascade_rcnn")
    iou_thresholds: tuple[float, ...] = setting(
        (0.5, 0.6, 0.7), list_of(number(0, 1, lo_open=True, hi_open=True), nonempty=True))
    stage_weights: tuple[float, ...] = setting((1.0, 0.5, 0.25),
                                               list_of(number(0, 1e6), nonempty=True))
    box_coder_weights: tuple[tuple[float, ...], ...] = setting(
        ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
        list_of(list_of(number(0, 1e6, lo_open=True), nonempty=True), nonempty=True))

    @property
    def num_stages(self) -> int:
        return len(self.iou_thresholds)

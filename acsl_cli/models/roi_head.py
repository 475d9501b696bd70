"""The contract of a detector's RoI head: what ``models.trunk.FrozenTrunk`` (stage 2,
validation, test) and ``engine.finetune_heads`` use, for Faster R-CNN's one stage
(``roi_heads.LossAwareRoIHeads``) and Cascade R-CNN's several (``cascade.CascadeRoIHeads``)
alike. A new detector's head keeps it (``models.detectors``)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from acsl_cli.losses import ClassificationLoss

#: where a detector's state holds its stage-1 losses' statistics (EQLv2's gradient sums,
#: Seesaw's counts): training state of stage 1, never weights another detector starts from
LOSS_STATE = ("roi_heads.cls_loss.", "roi_heads.stage_losses.")


def is_loss_state(key: str) -> bool:
    return key.startswith(LOSS_STATE)


@runtime_checkable
class RoIHead(Protocol):
    cls_loss: ClassificationLoss  # the stage-1 loss (the first stage's): training, scoring
    stage_losses: Any  # each stage's stage-1 loss, first stage first (a cascade: one each)
    stage_weights: tuple[float, ...]  # each stage's loss weight (stage 2 keeps them)
    fg_bg_sampler: Any  # torchvision's BalancedPositiveNegativeSampler: stage 2 resizes it
    detections_per_img: int
    nms_thresh: float

    @property
    def classifiers(self) -> list[nn.Linear]:
        """Each stage's ``cls_score`` layer, first stage first: an ``nn.Linear`` (plain or
        ``models.classifier.NormedLinear``, which keeps its parameters and their names)."""
        ...

    def sample_stages(self, features: Any, proposals: list[Tensor], image_shapes: Any,
                      targets: list[dict[str, Tensor]], sampler: Any
                      ) -> list[tuple[Tensor, Tensor]]:
        """Per stage, the features and labels of the RoIs ``sampler`` picks."""
        ...

    def test_stages(self, features: Any, proposals: list[Tensor], image_shapes: Any
                    ) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """Per stage the features the classifiers score; then the box regression and the
        boxes it applies to."""
        ...

    def detect(self, scores_all: Tensor, box_regression: Tensor, proposals: list[Tensor],
               image_shapes: list[tuple[int, int]], max_detections: int | None = None
               ) -> list[dict[str, Tensor]]:
        """Detections from per-class scores, with this head's coder and thresholds."""
        ...

"""Config -> torchvision Faster R-CNN (FPN) with a loss-aware RoI head, or Cascade R-CNN
(``models.cascade``) on the same trunk and RPN."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from acsl_cli.losses import ClassificationLoss
from acsl_cli.models.backbones import build_backbone
from acsl_cli.models.cascade import CascadeSpec, cascade_heads
from acsl_cli.models.classifier import LINEAR, ClassifierSpec
from acsl_cli.models.roi_heads import BoxPredictor, LossAwareRoIHeads
from acsl_cli.settings import BackboneSettings


def build_detector(
    backbone_cfg: BackboneSettings, num_classes: int,
    cls_loss: ClassificationLoss | Sequence[ClassificationLoss],
    min_size: int, max_size: int, *, cascade: CascadeSpec | None, class_agnostic_boxes: bool,
    classifier: ClassifierSpec = LINEAR,
) -> FasterRCNN:
    """Faster R-CNN + FPN; ``num_classes`` foreground classes, classifier width from the loss
    (``cls_loss``: one, or one per detector stage, each a cascade stage's own), its layer
    from ``classifier`` (every stage's, on a cascade).
    With ``cascade``, the RoI head is Cascade R-CNN's (same trunk, RPN, pooling, sampler,
    always class-agnostic); ``class_agnostic_boxes`` gives Faster R-CNN one box per RoI.

    Test-time settings follow the paper: NMS 0.5, score threshold 0, 300 detections.
    """
    losses = [cls_loss] if isinstance(cls_loss, ClassificationLoss) else list(cls_loss)
    stages = 1 if cascade is None else len(cascade.iou_thresholds)
    if len(losses) not in (1, stages):
        raise ValueError(f"detector: {len(losses)} losses for {stages} stage(s)")
    first = losses[0]
    cfg = backbone_cfg
    backbone = build_backbone(cfg)
    sizes = tuple((int(s),) for s in cfg.anchor_sizes)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_predictor=BoxPredictor(cfg.representation_size, num_classes, 1, False),
        box_score_thresh=0.0,
        box_nms_thresh=0.5,
        box_detections_per_img=300,
        box_batch_size_per_image=cfg.roi_batch_size_per_image,
        box_positive_fraction=0.25,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, cfg.representation_size),
    )
    old = model.roi_heads
    model.roi_heads = LossAwareRoIHeads(
        old.box_roi_pool,
        old.box_head,
        BoxPredictor(cfg.representation_size, num_classes, first.num_outputs(num_classes),
                     class_agnostic_boxes, classifier),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=cfg.roi_batch_size_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=0.0,
        nms_thresh=0.5,
        detections_per_img=300,
        cls_loss=first,
        pre_nms_topk=cfg.pre_nms_topk,
    )
    if cascade is not None:
        model.roi_heads = cascade_heads(model.roi_heads, first if len(losses) == 1 else losses,
                                        first.num_outputs(num_classes),
                                        cfg.representation_size, cascade, classifier)
    return model

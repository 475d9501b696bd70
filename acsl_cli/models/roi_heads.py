"""A Faster R-CNN box head whose classification loss and scoring belong to the loss.

torchvision's ``RoIHeads`` hard-codes softmax cross-entropy and softmax scoring. Here the
head delegates both to a ``ClassificationLoss``, so the detector never special-cases a
loss: BCE/ACSL score with sigmoid, softmax CE with softmax, BAGS with its group merge.
The pieces (``box_features``, ``detect``) are public so ``models.trunk.FrozenTrunk`` can
run the frozen detector once and score several classifier heads on the same RoIs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from acsl_cli.losses import ClassificationLoss
from acsl_cli.models.classifier import LINEAR, ClassifierSpec


class BoxPredictor(nn.Module):
    """``cls_score`` (width chosen by the loss; plain linear, or the normalised layer that
    ``classifier`` asks for) and ``bbox_pred``: class-specific (C+1 boxes per RoI) or
    class-agnostic (one box per RoI, every class placed by it)."""

    def __init__(self, in_channels: int, num_classes: int, num_logits: int,
                 class_agnostic: bool, classifier: ClassifierSpec = LINEAR) -> None:
        super().__init__()
        self.cls_score = classifier.layer(in_channels, num_logits)
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic else (num_classes + 1) * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class LossAwareRoIHeads(RoIHeads):
    """RoI box head: sampling and pooling from torchvision, loss and scoring from ``cls_loss``."""

    def __init__(self, *args, cls_loss: ClassificationLoss, pre_nms_topk: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cls_loss = cls_loss
        self.pre_nms_topk = pre_nms_topk

    def box_features(self, features, proposals, image_shapes) -> Tensor:
        return self.box_head(self.box_roi_pool(features, proposals, image_shapes))

    def sample_rois(self, proposals: list[Tensor], targets: list[dict[str, Tensor]],
                    sampler) -> tuple[list[Tensor], list[Tensor]]:
        """The RoIs (and their labels) that ``sampler`` picks, with the ground-truth boxes
        added and matched as torchvision's ``select_training_samples`` does: stage 2 samples
        with its own count without touching this head's sampler."""
        self.check_targets(targets)
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        _, labels = self.assign_targets_to_proposals(proposals, gt_boxes,
                                                     [t["labels"] for t in targets])
        pos, neg = sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg, strict=True)]
        return ([p[k] for p, k in zip(proposals, keep, strict=True)],
                [lab[k] for lab, k in zip(labels, keep, strict=True)])

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        feats = self.box_features(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(feats)
        if self.training:
            labels = torch.cat(labels)
            losses = {
                "loss_classifier": self.cls_loss(class_logits, labels),
                "loss_box_reg": box_regression_loss(
                    box_regression, labels, torch.cat(regression_targets)
                ),
            }
            return [], losses
        scores = self.cls_loss.scores(class_logits)
        return self.detect(scores, box_regression, proposals, image_shapes), {}

    # -- the stage interface ``FrozenTrunk`` uses for Faster and Cascade R-CNN alike:
    # one stage here (``models.cascade`` has several)
    stage_weights: tuple[float, ...] = (1.0,)

    @property
    def classifiers(self) -> list[nn.Linear]:
        """The ``cls_score`` layer of each stage (an ``nn.Linear``: plain, or the
        ``models.classifier.NormedLinear`` subclass)."""
        return [self.box_predictor.cls_score]

    @property
    def stage_losses(self) -> list[ClassificationLoss]:
        """The loss of each stage (trains and scores its classifier)."""
        return [self.cls_loss]

    def sample_stages(self, features, proposals: list[Tensor], image_shapes,
                      targets: list[dict[str, Tensor]], sampler) -> list[tuple[Tensor, Tensor]]:
        """Per stage, the features and labels of the RoIs ``sampler`` picks."""
        rois, labels = self.sample_rois(proposals, targets, sampler)
        return [(self.box_features(features, rois, image_shapes), torch.cat(labels))]

    def test_stages(self, features, proposals: list[Tensor], image_shapes
                    ) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """Per stage the RoI features the classifiers score, then the box regression and
        the boxes it applies to."""
        feats = self.box_features(features, proposals, image_shapes)
        return [feats], self.box_predictor.bbox_pred(feats), proposals

    def detect(
        self,
        scores_all: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        max_detections: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections from per-class scores (``select_detections``) with this head's
        coder, thresholds and ``detections_per_img`` (unless ``max_detections``)."""
        return select_detections(scores_all, box_regression, proposals, image_shapes,
                                 self.box_coder, self.score_thresh, self.pre_nms_topk,
                                 self.nms_thresh, max_detections or self.detections_per_img)


def select_detections(
    scores_all: Tensor, box_regression: Tensor, proposals: list[Tensor],
    image_shapes: list[tuple[int, int]], box_coder, score_thresh: float, pre_nms_topk: int,
    nms_thresh: float, max_detections: int,
) -> list[dict[str, Tensor]]:
    """Top-k before NMS, per-class NMS, top ``max_detections``.

    ``scores_all`` (N, C) come from a loss's ``scores``: the head never special-cases a
    loss. The top-k keeps a 1231-way sigmoid head fast: with score threshold 0 every
    (RoI, class) pair is a candidate, ~1.2M per image on LVIS. Only the kept pairs'
    boxes are decoded. ``box_regression`` is class-specific (N, (C+1)*4) or
    class-agnostic (N, 4, a cascade's).
    """
    num_classes = scores_all.shape[1]
    per_image = [len(p) for p in proposals]
    results = []
    for scores, deltas, props, shape in zip(
        scores_all.split(per_image),
        box_regression.split(per_image),
        proposals,
        image_shapes,
        strict=True,
    ):
        flat = scores.flatten().float()
        keep = flat > score_thresh
        idx = torch.nonzero(keep).squeeze(1)
        if idx.numel() > pre_nms_topk:
            top = flat[idx].topk(pre_nms_topk).indices
            idx = idx[top]
        rois, cls = idx // num_classes, idx % num_classes
        per_class = deltas.reshape(len(props), deltas.shape[-1] // 4, 4)  # 0 RoIs too
        # float32 decoding: under bf16 autocast the deltas are bf16 (~8 px at 800 px)
        d = per_class[rois, cls + 1 if per_class.shape[1] > 1 else 0].float()
        boxes = box_coder.decode_single(d, props[rois].float())
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        sc, labels = flat[idx], cls + 1
        ok = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, sc, labels = boxes[ok], sc[ok], labels[ok]
        kept = box_ops.batched_nms(boxes, sc, labels, nms_thresh)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": sc[kept], "labels": labels[kept]})
    return results


def box_regression_loss(box_regression: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Smooth-L1 on the positive RoIs' deltas (class-specific, or class-agnostic (N, 4)),
    normalised by all RoIs."""
    pos = torch.nonzero(labels > 0).squeeze(1)
    per_class = box_regression.reshape(labels.shape[0], box_regression.shape[-1] // 4, 4)
    deltas = per_class[pos, labels[pos] if per_class.shape[1] > 1 else 0]
    loss = F.smooth_l1_loss(deltas, targets[pos], beta=1 / 9, reduction="sum")
    return loss / max(labels.numel(), 1)

"""Cascade R-CNN's box heads (Cai & Vasconcelos 2018) on torchvision's FPN trunk and RPN.

A single IoU threshold trades quality for quantity: at 0.5 the head learns from loose
boxes and its detections stay loose. The cascade runs box heads in sequence, each trained
on the boxes the previous one refined (ground truth added) at a higher IoU threshold, so
every stage sees enough positives of the quality it is asked to output. Regression is
class-agnostic, with tighter box-coder weights per stage (the refined deltas shrink).

At test time every RoI passes all stages (the same RoIs, refined stage by stage); each
classifier scores its own stage's features, the stages are combined (``stage_scores``), and
the last stage's regression gives the boxes. Classification loss and scoring belong to
``cls_loss`` as in the Faster R-CNN head, so no loss is special-cased here either.

Combining the stages (``test.cascade_scores``): ``mean_logits`` (the default) averages the
stages' raw classifier outputs and applies the last stage's loss's own activation to the
mean (sigmoid, softmax, BAGS's group merge), as the ACSL release (mmdetection v1
``CascadeRCNN.simple_test``: ``sum(ms_scores) / num_stages`` then the last head's
``get_det_bboxes``) and mmdetection v2/v3 (``CascadeRoIHead``, raw ``cls_score`` averaged;
a custom activation is applied per stage only to pick the refinement labels) do.
``mean_probs`` scores each stage by its loss and averages the scores (detectron2's rule).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import boxes as box_ops

from acsl_cli.losses import ClassificationLoss
from acsl_cli.losses.common import upcast
from acsl_cli.models.classifier import LINEAR, ClassifierSpec
from acsl_cli.models.roi_heads import BoxPredictor, box_regression_loss, select_detections

STAGES = "roi_heads.stages."
#: How a cascade's stages are combined at test time (``test.cascade_scores``).
CASCADE_SCORES = ("mean_logits", "mean_probs")


def stage_prefix(i: int) -> str:
    """State-dict prefix of stage ``i``'s box head and predictor."""
    return f"{STAGES}{i}."


@dataclass(frozen=True)
class CascadeSpec:
    """One entry per stage (the paper's three by default)."""

    iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    box_coder_weights: tuple[tuple[float, ...], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class CascadeStage(nn.Module):
    """A stage: its own TwoMLPHead, classifier (``box_predictor.cls_score``, width from the
    loss, layer from ``classifier``) and class-agnostic regressor (``box_predictor.bbox_pred``,
    4 outputs). Names follow torchvision's head, so a Faster R-CNN's weights load into stage
    0 by prefix."""

    def __init__(self, in_channels: int, representation_size: int, num_logits: int,
                 classifier: ClassifierSpec = LINEAR) -> None:
        super().__init__()
        self.box_head = TwoMLPHead(in_channels, representation_size)
        self.box_predictor = BoxPredictor(representation_size, 0, num_logits,
                                          class_agnostic=True, classifier=classifier)


@dataclass
class StageRoIs:
    """What one training stage drew: RoIs per image, their labels, matched GT boxes, the
    RoIs' features and the stage's box deltas for them."""

    rois: list[Tensor]
    labels: list[Tensor]
    matched: list[Tensor]
    feats: Tensor
    deltas: Tensor


class CascadeRoIHeads(nn.Module):
    """Cascade box heads with the stage interface of ``LossAwareRoIHeads`` (see
    ``models.trunk``)."""

    def __init__(self, box_roi_pool: nn.Module, stages: list[CascadeStage], spec: CascadeSpec,
                 batch_size_per_image: int, positive_fraction: float, score_thresh: float,
                 nms_thresh: float, detections_per_img: int,
                 cls_loss: ClassificationLoss | Sequence[ClassificationLoss],
                 pre_nms_topk: int) -> None:
        super().__init__()
        n = len(stages)
        if not len(spec.iou_thresholds) == len(spec.stage_weights) == len(
                spec.box_coder_weights) == n:
            raise ValueError(f"cascade: {n} stages need {n} IoU thresholds, weights, coders")
        self.box_roi_pool = box_roi_pool
        self.stages = nn.ModuleList(stages)
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False)
                         for t in spec.iou_thresholds]
        self.coders = [det_utils.BoxCoder(tuple(w)) for w in spec.box_coder_weights]
        self.stage_weights = tuple(float(w) for w in spec.stage_weights)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image,
                                                                       positive_fraction)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.pre_nms_topk = detections_per_img, pre_nms_topk
        losses = [cls_loss] * n if isinstance(cls_loss, ClassificationLoss) else list(cls_loss)
        if len(losses) != n:
            raise ValueError(f"cascade: {n} stages need one loss each, got {len(losses)}")
        #: each stage's loss: a stateful one (EQLv2's gradient sums, Seesaw's counts) keeps
        #: its own statistics per stage, as each stage's head of the releases does
        self.stage_losses = nn.ModuleList(losses)
        self.cascade_scores = CASCADE_SCORES[0]  # the model's own forward; see stage_scores

    @property
    def cls_loss(self) -> ClassificationLoss:
        """The first stage's loss."""
        return self.stage_losses[0]

    @property
    def classifiers(self) -> list[nn.Linear]:
        return [s.box_predictor.cls_score for s in self.stages]

    def assign(self, i: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> tuple[list[Tensor], list[Tensor]]:
        """Stage ``i``'s labels (0 = background, -1 = ignored) and matched GT boxes: IoU
        >= the stage's threshold with a GT box is foreground, anything else background."""
        labels, matched = [], []
        for props, t in zip(proposals, targets, strict=True):
            gt = t["boxes"].to(props.dtype)
            if gt.numel() == 0:
                labels.append(torch.zeros(len(props), dtype=torch.int64, device=props.device))
                matched.append(torch.zeros_like(props))
                continue
            idx = self.matchers[i](box_ops.box_iou(gt, props))
            lab = t["labels"].to(torch.int64)[idx.clamp(min=0)]
            lab[idx == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
            lab[idx == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
            labels.append(lab)
            matched.append(gt[idx.clamp(min=0)])
        return labels, matched

    def training_stages(self, features: dict[str, Tensor], proposals: list[Tensor],
                        image_shapes: list[tuple[int, int]], targets: list[dict[str, Tensor]],
                        sampler) -> Iterator[StageRoIs]:
        """Each stage in turn: GT boxes added to its proposals, labelled at its threshold,
        sampled by ``sampler``, pooled; the next stage's proposals are these RoIs (the
        added GT boxes left out) moved by this stage's regression, detached."""
        for i, stage in enumerate(self.stages):
            n_props = [len(p) for p in proposals]
            with_gt = [torch.cat([p, t["boxes"].to(p.dtype)])
                       for p, t in zip(proposals, targets, strict=True)]
            labels, matched = self.assign(i, with_gt, targets)
            pos, neg = sampler(labels)
            keep = [torch.where(p | n)[0] for p, n in zip(pos, neg, strict=True)]
            rois = [b[k] for b, k in zip(with_gt, keep, strict=True)]
            feats = stage.box_head(self.box_roi_pool(features, rois, image_shapes))
            deltas = stage.box_predictor.bbox_pred(feats)
            yield StageRoIs(rois, [lab[k] for lab, k in zip(labels, keep, strict=True)],
                            [m[k] for m, k in zip(matched, keep, strict=True)], feats, deltas)
            if i + 1 < len(self.stages):
                moved = self.refine(i, deltas.detach(), rois, image_shapes)
                proposals = [b[k < n] for b, k, n in zip(moved, keep, n_props, strict=True)]

    def refine(self, i: int, deltas: Tensor, rois: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """``rois`` moved by stage ``i``'s class-agnostic deltas (float32), clipped."""
        boxes = self.coders[i].decode_single(deltas.float(), torch.cat(rois).float())
        return [box_ops.clip_boxes_to_image(b, s).to(r.dtype) for b, s, r in zip(
            boxes.split([len(r) for r in rois]), image_shapes, rois, strict=True)]

    def losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        """Per stage (numbered from 1) its classification and box losses, each scaled by
        the stage's weight."""
        out = {}
        for i, st in enumerate(self.training_stages(features, proposals, image_shapes,
                                                     targets, self.fg_bg_sampler)):
            w, labels = self.stage_weights[i], torch.cat(st.labels)
            logits = self.stages[i].box_predictor.cls_score(st.feats)
            reg = self.coders[i].encode_single(torch.cat(st.matched), torch.cat(st.rois))
            out[f"loss_classifier_{i + 1}"] = w * self.stage_losses[i](logits, labels)
            out[f"loss_box_reg_{i + 1}"] = w * box_regression_loss(st.deltas, labels, reg)
        return out

    def sample_stages(self, features, proposals: list[Tensor], image_shapes,
                      targets: list[dict[str, Tensor]], sampler) -> list[tuple[Tensor, Tensor]]:
        """Per stage, the features and labels of the RoIs ``sampler`` picks for it."""
        return [(st.feats, torch.cat(st.labels)) for st in self.training_stages(
            features, proposals, image_shapes, targets, sampler)]

    def test_stages(self, features, proposals: list[Tensor], image_shapes
                    ) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """Every stage's features of the same RoIs, refined stage by stage; then the last
        stage's deltas and the boxes they apply to."""
        stage_feats, rois = [], proposals
        for i, stage in enumerate(self.stages):
            feats = stage.box_head(self.box_roi_pool(features, rois, image_shapes))
            deltas = stage.box_predictor.bbox_pred(feats)
            stage_feats.append(feats)
            if i + 1 < len(self.stages):
                rois = self.refine(i, deltas, rois, image_shapes)
        return stage_feats, deltas, rois

    def detect(self, scores_all: Tensor, box_regression: Tensor, proposals: list[Tensor],
               image_shapes: list[tuple[int, int]], max_detections: int | None = None
               ) -> list[dict[str, Tensor]]:
        return select_detections(scores_all, box_regression, proposals, image_shapes,
                                 self.coders[-1], self.score_thresh, self.pre_nms_topk,
                                 self.nms_thresh, max_detections or self.detections_per_img)

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            return [], self.losses(features, proposals, image_shapes, targets)
        stage_feats, deltas, boxes = self.test_stages(features, proposals, image_shapes)
        logits = [layer(f) for layer, f in zip(self.classifiers, stage_feats, strict=True)]
        scores = stage_scores(logits, list(self.stage_losses), self.cascade_scores)
        return self.detect(scores, deltas, boxes, image_shapes), {}


def stage_scores(logits: Sequence[Tensor], losses: Sequence[ClassificationLoss],
                 rule: str = CASCADE_SCORES[0]) -> Tensor:
    """Per-class scores (N, C) from each stage's logits and loss (one stage: its loss's
    scores). ``mean_logits``: the last stage's loss scores the mean of the logits (half
    precision averaged in float32); ``mean_probs``: each stage's scores, averaged."""
    if len(logits) != len(losses):
        raise ValueError(f"cascade: {len(logits)} stages' logits for {len(losses)} losses")
    if len(logits) == 1:
        return losses[0].scores(logits[0])
    if rule == "mean_logits":
        return losses[-1].scores(torch.stack([upcast(z) for z in logits]).mean(0))
    if rule == "mean_probs":
        return torch.stack([loss.scores(z) for loss, z in zip(losses, logits, strict=True)]
                           ).mean(0)
    raise ValueError(f"cascade: unknown stage scoring {rule!r}, expected one of "
                     f"{', '.join(CASCADE_SCORES)}")


def cascade_heads(old, cls_loss: ClassificationLoss | Sequence[ClassificationLoss],
                  num_logits: int, representation_size: int, spec: CascadeSpec,
                  classifier: ClassifierSpec = LINEAR) -> CascadeRoIHeads:
    """Cascade heads replacing a torchvision ``RoIHeads`` ``old``: its RoI pooling,
    sampler and test settings kept, one new box head per stage; ``cls_loss`` one loss for
    every stage, or one per stage; every stage's classifier the layer ``classifier`` asks
    for (the release's cascade Seesaw configs give all three stages the normalised one)."""
    in_channels = old.box_head.fc6.in_features
    stages = [CascadeStage(in_channels, representation_size, num_logits, classifier)
              for _ in spec.iou_thresholds]
    s = old.fg_bg_sampler
    return CascadeRoIHeads(old.box_roi_pool, stages, spec, s.batch_size_per_image,
                           s.positive_fraction, old.score_thresh, old.nms_thresh,
                           old.detections_per_img, cls_loss, old.pre_nms_topk)

"""The frozen stage-1 detector as seen by stage 2, inference and head saving.

Stage 2 trains only classification layers (paper 4.2), so everything up to the RoI
features is shared by every head: ``FrozenTrunk`` runs that part once per batch and lets
several heads (a ``cls_score`` layer plus the loss that trains and scores it) use the same
RoIs. It goes through the detector's own modules (transform, backbone, RPN, RoI pooling)
rather than re-implementing ``GeneralizedRCNN.forward``, and never swaps attributes of the
live model: a head is "installed" only in a state dict for saving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from acsl_cli.losses import ClassificationLoss

Scorer = tuple[nn.Module, ClassificationLoss]  # (cls_score layer, loss that scores)
CLS_SCORE = "roi_heads.box_predictor.cls_score."


class FrozenTrunk:
    """A Faster R-CNN whose parameters and BatchNorm statistics stay fixed."""

    def __init__(self, detector: FasterRCNN) -> None:
        self.detector = detector
        freeze(detector)

    @property
    def stage1_classifier(self) -> nn.Linear:
        return self.detector.roi_heads.box_predictor.cls_score

    @torch.no_grad()
    def sampled_rois(self, images: list[Tensor], targets: list[dict]) -> tuple[Tensor, Tensor]:
        """RoI features and labels of the RoIs that training would sample for these images.

        The RPN runs in training mode so proposal counts follow the training settings, like
        the authors' stage 2; its losses are computed and discarded.
        """
        d = self.detector
        d.rpn.train()
        try:
            images_t, targets_t = d.transform(images, targets)
            features = d.backbone(images_t.tensors)
            proposals, _ = d.rpn(images_t, features, targets_t)
            proposals, _, labels, _ = d.roi_heads.select_training_samples(proposals, targets_t)
            feats = d.roi_heads.box_features(features, proposals, images_t.image_sizes)
        finally:
            d.rpn.eval()
        return feats, torch.cat(labels)

    @torch.no_grad()
    def detect(self, images: list[Tensor], scorers: Mapping[str, Scorer] | None = None
               ) -> dict[str, list[dict[str, Tensor]]]:
        """Detections per scorer in original image coordinates; box regression, proposals
        and features are computed once. ``scorers=None`` uses the detector's own head."""
        d = self.detector
        if scorers is None:
            scorers = {"model": (self.stage1_classifier, d.roi_heads.cls_loss)}
        sizes = [tuple(im.shape[-2:]) for im in images]
        images_t, _ = d.transform(images)
        features = d.backbone(images_t.tensors)
        proposals, _ = d.rpn(images_t, features)
        rh = d.roi_heads
        feats = rh.box_features(features, proposals, images_t.image_sizes)
        box_regression = rh.box_predictor.bbox_pred(feats)
        out = {}
        for name, (layer, loss) in scorers.items():
            dets = rh.detect(loss.scores(layer(feats)), box_regression, proposals,
                             images_t.image_sizes)
            out[name] = d.transform.postprocess(dets, images_t.image_sizes, sizes)
        return out

    def state_dict_with(self, classifier: nn.Module) -> dict[str, Any]:
        """The detector's state dict with ``classifier`` installed as its ``cls_score``."""
        state = {k: v for k, v in self.detector.state_dict().items()
                 if not k.startswith(CLS_SCORE)}
        state.update({CLS_SCORE + k: v for k, v in classifier.state_dict().items()})
        return state


def freeze(model: nn.Module) -> None:
    """Freeze all parameters and put BatchNorm in eval mode.

    A trunk with ordinary BatchNorm keeps updating running statistics in train mode even
    with ``requires_grad=False``; "frozen" must mean eval mode too.
    """
    model.requires_grad_(False)
    model.eval()

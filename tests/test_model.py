"""Detector construction and the loss-owned scoring of the RoI head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acsl_cli.config import load_settings
from acsl_cli.data.lvis_dataset import category_map, read_annotations
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.losses import build_loss
from acsl_cli.models.backbones import build_backbone
from acsl_cli.models.detector import build_detector
from acsl_cli.settings import ResNetBackboneSettings

FIXTURE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"  # see data/README.md


def backbone_cfg(name: str = "small", **over):
    """``backbone=NAME`` with ``backbone.KEY=VALUE`` for each of ``over``, read as a run
    reads it."""
    return load_settings([f"backbone={name}", *(f"backbone.{k}={v}" for k, v in over.items())]
                         ).backbone


def small_detector(num_classes: int, loss, **over):
    return build_detector(backbone_cfg(**over), num_classes, loss, 128, 128, cascade=None,
                          class_agnostic_boxes=False)


def test_1231_way_head_on_real_lvis_categories():
    cmap = category_map(read_annotations(FIXTURE))
    loss = build_loss("acsl", num_classes=cmap.num_classes, xi=0.7, bg_mode="adaptive")
    torch.manual_seed(0)
    model = small_detector(cmap.num_classes, loss).eval()
    assert model.roi_heads.box_predictor.cls_score.out_features == 1231
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 1231 * 4
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])[0]
    # sigmoid scores with threshold 0: every (RoI, class) pair is a candidate; the head
    # must still cap at 300 and keep labels in 1..1230
    assert 0 < len(out["boxes"]) <= 300
    assert out["labels"].min() >= 1 and out["labels"].max() <= 1230
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def _fixed_head_inputs(num_classes: int):
    """Two proposals far apart, zero box deltas, chosen logits."""
    proposals = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [70.0, 70.0, 110.0, 100.0]])]
    logits = torch.tensor([[0.5, 2.0, -1.0, 0.0], [1.0, -2.0, 3.0, -0.5]])[:, : num_classes + 1]
    deltas = torch.zeros(2, (num_classes + 1) * 4)
    return proposals, logits, deltas


@pytest.mark.parametrize("loss_name", ["softmax_ce", "bce", "acsl"])
def test_detection_scores_come_from_the_loss(loss_name):
    params = {"bg_mode": "adaptive"} if loss_name == "acsl" else {}
    loss = build_loss(loss_name, num_classes=3, **params)
    model = small_detector(3, loss)
    proposals, logits, deltas = _fixed_head_inputs(3)
    scores = model.roi_heads.cls_loss.scores(logits)  # what forward and FrozenTrunk pass
    dets = model.roi_heads.detect(scores, deltas, proposals, [(128, 128)])[0]
    expected = torch.softmax(logits, 1)[:, 1:] if loss_name == "softmax_ce" \
        else torch.sigmoid(logits[:, 1:])
    # every (proposal, class) pair survives: boxes of different classes are not suppressed
    # against each other, and the two proposals do not overlap
    assert len(dets["scores"]) == 6
    got = sorted(dets["scores"].tolist(), reverse=True)
    assert got == pytest.approx(sorted(expected.flatten().tolist(), reverse=True))
    # zero deltas decode to the proposal itself
    top = dets["boxes"][0]
    roi = int(expected.flatten().argmax()) // 3
    assert torch.allclose(top, proposals[0][roi], atol=1e-4)


def test_pre_nms_topk_caps_candidates():
    loss = build_loss("bce", num_classes=3)
    model = small_detector(3, loss, pre_nms_topk=2)
    proposals, logits, deltas = _fixed_head_inputs(3)
    scores = model.roi_heads.cls_loss.scores(logits)  # what forward and FrozenTrunk pass
    dets = model.roi_heads.detect(scores, deltas, proposals, [(128, 128)])[0]
    expected = torch.sigmoid(logits[:, 1:]).flatten().topk(2).values
    assert torch.allclose(dets["scores"], expected)


def test_bags_head_has_its_own_width():
    counts = [500, 50, 5, 2000, 20, 3]
    loss = build_loss("bags", instance_counts=counts)
    model = small_detector(6, loss)
    assert model.roi_heads.box_predictor.cls_score.out_features == loss.num_outputs(6) == 6 + 6
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 7 * 4


def test_r50_backbone_loads_local_weights(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    state = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    backbone = build_backbone(backbone_cfg("r50", weights=str(path)))
    body = backbone.body.state_dict()
    assert torch.equal(body["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(body["bn1.running_mean"], state["bn1.running_mean"])
    # trainable_layers=3: the stem and layer1 stay frozen, layer2-4 train
    grads = {n.split(".")[0]: p.requires_grad for n, p in backbone.body.named_parameters()}
    assert grads["conv1"] is False and grads["layer1"] is False and grads["layer4"] is True


def test_backbone_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_backbone(backbone_cfg("r50", weights=str(tmp_path / "none.pth")))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match="not a resnet50 state dict"):
        build_backbone(backbone_cfg("r50", weights=str(bad)))
    with pytest.raises(ConfigError, match="backbone.name='vgg': must be one of small, r50"):
        load_settings(["backbone.name=vgg"])


def test_default_weights_offline_is_one_line(monkeypatch, tmp_path):
    """``backbone.weights=DEFAULT`` uses torchvision's download; offline that is one line."""
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError, match="cannot download resnet50 weights") as err:
        build_backbone(ResNetBackboneSettings(weights="DEFAULT"))
    assert "\n" not in str(err.value) and "backbone.weights=/path/resnet50.pth" in str(err.value)


@pytest.mark.parametrize("width", [4, 4 * 4], ids=["class_agnostic", "class_specific"])
def test_box_loss_of_no_rois_is_zero(width):
    from acsl_cli.models.roi_heads import box_regression_loss

    reg = torch.zeros(0, width, requires_grad=True)
    loss = box_regression_loss(reg, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and reg.grad.shape == (0, width)

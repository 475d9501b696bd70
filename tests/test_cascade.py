"""Cascade R-CNN: each stage's IoU threshold, its loss weight, the test scores (both rules),
stage 2 on three classifiers, and the pipeline end to end (values derived by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from typer.testing import CliRunner

from acsl_cli import config as config_mod
from acsl_cli.cli import app
from acsl_cli.engine.checkpoint import load_checkpoint
from acsl_cli.engine.finetune_heads import HeadsStep, new_head
from acsl_cli.engine.loop import LossGuard
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, build_loss
from acsl_cli.models.cascade import CASCADE_SCORES, CascadeRoIHeads, CascadeSpec, stage_scores
from acsl_cli.models.classifier import NormedLinear
from acsl_cli.models.detector import build_detector
from acsl_cli.models.init import load_matching
from acsl_cli.models.trunk import FrozenTrunk
from acsl_cli.pipeline.components import classifier_spec, loss_context, make_loss, stage_losses
from acsl_cli.pipeline.evaluate import test_trunk as trunk_from_settings  # not a test
from acsl_cli.pipeline.train import STAGE1_ROW, run_train
from acsl_cli.settings import Settings, declared, stage1_key
from tests.cli_refusals import assert_train_refuses
from tests.test_engine import TINY

CASCADE = [*TINY, "detector=cascade_rcnn"]
GT = {"boxes": torch.tensor([[20.0, 20.0, 70.0, 70.0]]), "labels": torch.tensor([2])}
# IoU with GT: (50 * 27.5) / (50 * 50) = 0.55, between the first two thresholds
AT_055 = torch.tensor([[20.0, 20.0, 70.0, 47.5]])


def _cascade(num_classes: int = 3, loss: str = "softmax_ce", seed: int = 0) -> nn.Module:
    s = config_mod.load_settings([])
    torch.manual_seed(seed)
    return build_detector(s.backbone, num_classes, build_loss(loss, LossContext(num_classes)),
                          128, 128, cascade=CascadeSpec(), class_agnostic_boxes=False)


def _images(n: int = 2) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 128, 128, generator=g) for _ in range(n)], [GT] * n


def _no_regression(rh: CascadeRoIHeads) -> None:
    with torch.no_grad():
        for stage in rh.stages:
            stage.box_predictor.bbox_pred.weight.zero_()
            stage.box_predictor.bbox_pred.bias.zero_()


def test_a_box_at_iou_055_is_foreground_for_stage_one_and_background_for_stage_two():
    model = _cascade()
    rh = model.roi_heads
    assert [rh.assign(i, [AT_055], [GT])[0][0].tolist() for i in range(3)] == [[2], [0], [0]]
    # the real path: stage 2 samples stage 1's RoIs moved by its (here zero) regression,
    # without the GT box stage 1 added, then adds the GT box again
    _no_regression(rh)
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    keep_all = det_utils.BalancedPositiveNegativeSampler(512, 1.0)
    stages = list(rh.training_stages(features, [AT_055], [(128, 128)], [GT], keep_all))
    assert [st.labels[0].tolist() for st in stages] == [[2, 2], [0, 2], [0, 2]]
    for st in stages:
        assert torch.allclose(st.rois[0], torch.cat([AT_055, GT["boxes"]]), atol=1e-4)


def _stage_losses(model: nn.Module, weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
    model.roi_heads.stage_weights = weights
    model.train()
    images, targets = _images()
    torch.manual_seed(5)  # the same RPN and RoI samples in every call
    return model(images, targets)


def test_each_stage_loss_is_scaled_by_its_weight():
    model = _cascade()
    plain = _stage_losses(model, (1.0, 1.0, 1.0))
    paper = _stage_losses(model, (1.0, 0.5, 0.25))
    first = _stage_losses(model, (1.0, 0.0, 0.0))
    for part in ("classifier", "box_reg"):
        assert plain[f"loss_{part}_2"] > 0 and plain[f"loss_{part}_3"] > 0
        for i, w in enumerate((1.0, 0.5, 0.25), start=1):
            assert torch.equal(paper[f"loss_{part}_{i}"], w * plain[f"loss_{part}_{i}"])
        assert torch.equal(first[f"loss_{part}_1"], plain[f"loss_{part}_1"])
        assert first[f"loss_{part}_2"] == 0 and first[f"loss_{part}_3"] == 0
    # with weights (1, 0, 0) the later stages get no gradient
    model.zero_grad()
    sum(first.values()).backward()
    assert model.roi_heads.stages[0].box_head.fc6.weight.grad.abs().sum() > 0
    for stage in model.roi_heads.stages[1:]:
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in stage.parameters())


#: zero weights and these biases make each classifier's logits the same for every RoI:
#: softmax scores stage 1 (1, 2, 1, 1) / 5, stage 2 (1, 1, 3, 1) / 6, stage 3 (2, 1, 1, 1) / 5
BIASES = ((0, math.log(2), 0, 0), (0, 0, math.log(3), 0), (math.log(2), 0, 0, 0))
#: mean_probs: the mean of those scores
MEAN_PROBS = {1: (2 / 5 + 1 / 6 + 1 / 5) / 3, 2: (1 / 5 + 3 / 6 + 1 / 5) / 3,
              3: (1 / 5 + 1 / 6 + 1 / 5) / 3}
#: mean_logits: softmax of the mean logits (ln 2 / 3, ln 2 / 3, ln 3 / 3, 0), i.e. of
#: exp = (2^(1/3), 2^(1/3), 3^(1/3), 1)
_Z = 2 * 2 ** (1 / 3) + 3 ** (1 / 3) + 1
MEAN_LOGITS = {1: 2 ** (1 / 3) / _Z, 2: 3 ** (1 / 3) / _Z, 3: 1 / _Z}


@pytest.mark.parametrize("rule, want", [("mean_logits", MEAN_LOGITS),
                                        ("mean_probs", MEAN_PROBS)])
def test_test_scores_combine_the_three_classifiers_by_the_rule(rule, want):
    """The detector's own forward and the trunk that evaluation builds from the settings
    (``test.cascade_scores``) both score by the rule; the default is mean_logits."""
    model = _cascade().eval()
    with torch.no_grad():
        for layer, bias in zip(model.roi_heads.classifiers, BIASES, strict=True):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(bias))
    images, _ = _images()
    model.roi_heads.cascade_scores = rule
    with torch.no_grad():
        own = model(images)
    overrides = [] if rule == "mean_logits" else [f"test.cascade_scores={rule}"]
    trunk = trunk_from_settings(config_mod.load_settings(overrides), model)
    ce = [build_loss("softmax_ce", LossContext(3)) for _ in range(3)]
    out = trunk.detect(images, {"model": trunk.stage1_scorer,
                                "head": (list(model.roi_heads.classifiers), ce)})
    for dets in (own, out["model"], out["head"]):
        assert all(len(d["labels"]) > 0 for d in dets)
        for d in dets:
            expect = torch.tensor([want[int(lab)] for lab in d["labels"]])
            assert torch.allclose(d["scores"], expect, atol=1e-6)


E = math.e
SIG = {z: 1 / (1 + math.exp(-z)) for z in (0, 1, 3)}


@pytest.mark.parametrize("loss, rule, want", [
    # logits (bg, l1, l2): stage 1 (0, 3, 0), stage 2 (0, 0, 3), stage 3 (0, 0, 0); mean
    # (0, 1, 1). softmax of the mean: (1, e, e) / (1 + 2e)
    ("softmax_ce", "mean_logits", [E / (1 + 2 * E), E / (1 + 2 * E)]),
    # softmax per stage: (1, e^3, 1) / (2 + e^3), (1, 1, e^3) / (2 + e^3), (1, 1, 1) / 3
    ("softmax_ce", "mean_probs", [((E**3 + 1) / (2 + E**3) + 1 / 3) / 3] * 2),
    # sigmoid of each class logit (no background factor): of the mean, or the mean of them
    ("bce", "mean_logits", [SIG[1], SIG[1]]),
    ("bce", "mean_probs", [(SIG[3] + 2 * SIG[0]) / 3] * 2),
])
def test_stage_scores_on_hand_derived_values(loss, rule, want):
    logits = [torch.tensor([[0.0, 3.0, 0.0]], dtype=torch.float64),
              torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64),
              torch.zeros(1, 3, dtype=torch.float64)]
    losses = [build_loss(loss, LossContext(2)) for _ in range(3)]
    got = stage_scores(logits, losses, rule)
    assert torch.allclose(got, torch.tensor([want], dtype=torch.float64), rtol=1e-12)
    # one stage (Faster R-CNN): its loss's scores whatever the rule
    assert torch.equal(stage_scores(logits[:1], losses[:1], rule), losses[0].scores(logits[0]))


def test_the_stage_scoring_is_a_test_setting_with_one_line_errors():
    from acsl_cli.settings import stage2_key

    default = config_mod.load_settings(CASCADE)
    probs = config_mod.load_settings([*CASCADE, "test.cascade_scores=mean_probs"])
    assert default.test.cascade_scores == CASCADE_SCORES[0] == "mean_logits"
    assert default.test.canonical and not probs.test.canonical  # the stage-1 row re-scored
    assert stage1_key(probs, 1) == stage1_key(default, 1)
    assert stage2_key(probs, [probs.loss], "x", 1) == stage2_key(default, [default.loss],
                                                                 "x", 1)
    rule = next(d.rule for d in declared(Settings) if d.path == ("test", "cascade_scores"))
    for name in CASCADE_SCORES:  # the setting accepts exactly the rules the model knows
        rule("test.cascade_scores", name)
    assert rule.example(CASCADE_SCORES[0]) == CASCADE_SCORES[1] and len(CASCADE_SCORES) == 2
    with pytest.raises(ConfigError, match=r"test.cascade_scores") as err:
        config_mod.load_settings(["test.cascade_scores=mean"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown stage scoring"):
        stage_scores([torch.zeros(1, 3)] * 2, [build_loss("bce", LossContext(2))] * 2, "max")


def test_boxes_are_refined_stage_by_stage_and_the_last_stage_places_them():
    model = _cascade().eval()
    rh = model.roi_heads
    _no_regression(rh)
    with torch.no_grad():  # deltas = biases; dx is divided by the stage's x weight
        rh.stages[0].box_predictor.bbox_pred.bias.copy_(torch.tensor([1.0, 0, 0, 0]))  # 1/10
        rh.stages[2].box_predictor.bbox_pred.bias.copy_(torch.tensor([0.3, 0, 0, 0]))  # 1/100
        features = model.backbone(torch.zeros(1, 3, 128, 128))
        feats, deltas, boxes = rh.test_stages(features, [GT["boxes"]], [(128, 128)])
        scores = torch.tensor([[0.1, 0.8, 0.1]])
        dets = rh.detect(scores, deltas, boxes, [(128, 128)])[0]
    assert len(feats) == 3
    # stage 1 moves the 50-px box by 5 px; stage 2 does not move it; stage 3 by 0.5 px
    assert torch.allclose(boxes[0], torch.tensor([[25.0, 20.0, 75.0, 70.0]]))
    assert torch.allclose(dets["boxes"][dets["labels"] == 2],
                          torch.tensor([[25.5, 20.0, 75.5, 70.0]]))


def test_a_faster_rcnn_state_dict_initialises_the_trunk_rpn_and_first_stage():
    s = config_mod.load_settings([])
    torch.manual_seed(3)
    faster = build_detector(s.backbone, 3, build_loss("softmax_ce", LossContext(3)), 128, 128,
                            cascade=None, class_agnostic_boxes=False)
    cascade = _cascade(seed=4)
    report = load_matching(cascade, faster.state_dict(), "faster.pt")
    mine, theirs = cascade.state_dict(), faster.state_dict()
    for k in theirs:
        if k.startswith(("backbone.", "rpn.")):
            assert torch.equal(mine[k], theirs[k]), k
    for name in ("box_head.fc6.weight", "box_head.fc7.bias", "box_predictor.cls_score.weight"):
        assert torch.equal(mine[f"roi_heads.stages.0.{name}"], theirs[f"roi_heads.{name}"])
        assert not torch.equal(mine[f"roi_heads.stages.1.{name}"], theirs[f"roi_heads.{name}"])
    # class-specific regression (4 (C + 1) outputs) does not fit the class-agnostic one
    assert "roi_heads.stages.0.box_predictor.bbox_pred.weight" in report.reinitialised
    assert "roi_heads.stages.0.box_head.fc6.weight" in report.loaded and not report.unused


@pytest.mark.parametrize("name", ["softmax_ce", "bce", "acsl", "bags", "eqlv2", "seesaw",
                                  "federated", "eql", "efl", "seesaw_normed"])
def test_every_loss_trains_a_cascade_head_with_one_loss_per_stage(tiny, name):
    cfg, data, _ = tiny
    context = loss_context(data, 0)
    C = data.cmap.num_classes
    model = build_detector(cfg.backbone, C, build_loss("softmax_ce", LossContext(C)), 128,
                           128, cascade=CascadeSpec(), class_agnostic_boxes=False)
    trunk = FrozenTrunk(model)
    extra = ["loss.bins=[4]"] if name == "bags" else []  # the tiny set's counts: one bin
    spec = config_mod.load_settings([*TINY, f"loss={name}", *extra]).loss
    losses = stage_losses(make_loss(spec, context), spec, context, trunk.num_stages)
    assert len({id(loss) for loss in losses}) == 3
    if getattr(losses[0], "generator", None) is not None:  # BAGS, Federated: own streams
        draws = [torch.randint(10**9, (4,), generator=loss.generator) for loss in losses]
        assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    head = new_head(name, losses, trunk.stage1_classifier, C, classifier_spec(spec))
    # the normalised classifier on every stage, as the release's cascade Seesaw configs
    assert all(isinstance(layer, NormedLinear) == name.endswith("_normed")
               for layer in head.layers)
    before = [layer.weight.clone() for layer in head.layers]
    step = HeadsStep(trunk, [head], StageSchedule.from_settings(cfg.schedule.stage2), "cpu",
                     "off")
    batch = [data.train[i] for i in range(2)]
    torch.manual_seed(0)
    row = step([b[0] for b in batch], [b[1] for b in batch], 0, LossGuard("stage 2"))
    assert math.isfinite(row[name])
    assert all(not torch.equal(b, layer.weight) for b, layer in zip(before, head.layers,
                                                                     strict=True))
    dets = trunk.detect([batch[0][0]], {name: head.scorer})[name][0]
    assert len(dets["scores"]) > 0 and torch.isfinite(dets["scores"]).all()


def test_the_detector_is_part_of_the_stage1_key():
    faster = config_mod.load_settings(TINY)
    cascade = config_mod.load_settings(CASCADE)
    assert stage1_key(faster, 1) != stage1_key(cascade, 1)
    tighter = config_mod.load_settings([*CASCADE, "detector.iou_thresholds=[0.5,0.6,0.8]"])
    assert stage1_key(tighter, 1) != stage1_key(cascade, 1)


def test_class_agnostic_boxes_for_faster_rcnn_train_and_evaluate(tmp_path):
    """``detector.class_agnostic_boxes=true``: one box per RoI (4 regression outputs) for
    every class; it moves the stage-1 key only when set, and its head's checkpoint evaluates
    to the run's metrics (the detector is rebuilt the same way from the saved config)."""
    agnostic = [*TINY, "detector.class_agnostic_boxes=true"]
    assert stage1_key(config_mod.load_settings(agnostic), 1) != stage1_key(
        config_mod.load_settings(TINY), 1)
    assert stage1_key(config_mod.load_settings([*TINY, "detector.class_agnostic_boxes=false"]),
                      1) == stage1_key(config_mod.load_settings(TINY), 1)
    s = config_mod.load_settings(agnostic)
    model = build_detector(s.backbone, 3, build_loss("bce", LossContext(3)), 128, 128,
                           cascade=None, class_agnostic_boxes=True)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4
    images, targets = _images()
    losses = model.train()(images, targets)
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"] > 0
    with torch.no_grad():
        dets = model.eval()(images)
    assert all(len(d["boxes"]) > 0 for d in dets)
    res = run_train([*agnostic, f"output_root={tmp_path}", "loss=bce", "run_name=agn"])
    metrics = json.loads((res.run_dir / "metrics.json").read_text())["bce"]
    [ckpt] = (res.run_dir / "heads").glob("bce*/checkpoint.pt")
    out = tmp_path / "m.json"
    got = CliRunner().invoke(app, ["eval", f"ckpt={ckpt}", f"output_root={tmp_path}",
                                   f"out={out}", "progress=false"])
    assert got.exit_code == 0, got.output
    assert json.loads(out.read_text()) == metrics


def test_cascade_heads_end_to_end_alone_or_together_and_from_their_checkpoint(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", *CASCADE, f"output_root={tmp_path}",
                              "loss=softmax_ce,acsl", "run_name=both"])
    assert res.exit_code == 0, res.output
    both = json.loads((tmp_path / "runs/both/metrics.json").read_text())
    acsl = next(k for k in both if k.startswith("acsl"))  # its label: acsl xi=... bg=...
    assert "softmax_ce" in both
    # a cache entry from before mean_logits was the rule (no cascade_scores, its row scored
    # otherwise: here spoilt) is re-scored on reuse, its detector kept
    [cached] = (tmp_path / "cache/stage1").glob("*/metrics.json")
    saved = json.loads(cached.read_text())
    assert saved.pop("cascade_scores") == "mean_logits"
    cached.write_text(json.dumps({**saved, "metrics": {**saved["metrics"], "AP": -1.0}}))
    alone = run_train([*CASCADE, f"output_root={tmp_path}", "loss=acsl", "run_name=alone"])
    assert alone.stage1_reused
    assert json.loads(cached.read_text()) == {**saved, "cascade_scores": "mean_logits"}
    assert json.loads((alone.run_dir / "metrics.json").read_text())[STAGE1_ROW] == both[
        STAGE1_ROW]
    # every metric, exactly (strict JSON: undefined metrics are null in both files)
    assert json.loads((alone.run_dir / "metrics.json").read_text())[acsl] == both[acsl]
    [ckpt] = (tmp_path / "runs/both/heads").glob("acsl*/checkpoint.pt")
    assert set(load_checkpoint(ckpt)["classifier"]) == {
        f"{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["eval", f"ckpt={ckpt}", f"output_root={tmp_path}",
                              f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == both[acsl]


@pytest.mark.parametrize("args, expect", [
    (["detector=mask_rcnn"], "unknown detector 'mask_rcnn' (choose from cascade_rcnn, "
                             "faster_rcnn)"),
    (["detector=cascade_rcnn", "detector.stage_weights=[1,0.5]"], "one entry per stage"),
    (["detector=cascade_rcnn", "detector.box_coder_weights=[[10,10,5],[20,20,10,10],"
      "[30,30,15,15]]"], "detector.box_coder_weights[0]=[10, 10, 5]: need 4 weights"),
    (["detector=cascade_rcnn", "detector.iou_thresholds=[0.5,0.6,1.0]"],
     "detector.iou_thresholds[2]=1.0: must be a finite number > 0 and < 1"),
])
def test_bad_detector_settings_are_one_line_errors(args, expect, tmp_path):
    assert_train_refuses(args, expect, tmp_path)


@pytest.mark.parametrize("cascade", [True, False], ids=["cascade", "faster"])
def test_an_image_without_proposals_has_no_detections_and_no_error(cascade):
    """The RPN may keep nothing (here: its test-time cap set to 0): an empty result per
    image, as mmdetection returns, instead of a reshape error."""
    s = config_mod.load_settings([])
    torch.manual_seed(0)
    model = build_detector(s.backbone, 3, build_loss("softmax_ce", LossContext(3)), 128, 128,
                           cascade=CascadeSpec() if cascade else None,
                           class_agnostic_boxes=False).eval()
    model.rpn._post_nms_top_n = {"training": 0, "testing": 0}
    images, _ = _images()
    with torch.no_grad():
        dets = model(images)
    assert [len(d["boxes"]) for d in dets] == [0, 0]
    trunk = FrozenTrunk(model)
    out = trunk.detect(images, {"model": trunk.stage1_scorer})
    assert [len(d["boxes"]) for d in out["model"]] == [0, 0]


def test_the_configured_stage_values_reach_the_cascade():
    """Rule: ``detector.stage_weights``, ``iou_thresholds`` and ``box_coder_weights`` are
    the model's, through the pipeline's one builder (not the cascade's own defaults)."""
    from types import SimpleNamespace

    from acsl_cli.pipeline.components import build_model

    s = config_mod.load_settings([
        "detector=cascade_rcnn", "detector.stage_weights=[2,1,0.125]",
        "detector.iou_thresholds=[0.4,0.55,0.8]",
        "detector.box_coder_weights=[[1,2,3,4],[5,6,7,8],[9,10,11,12]]"])
    assert s.detector.stage_weights != CascadeSpec().stage_weights
    data = SimpleNamespace(cmap=SimpleNamespace(num_classes=3))  # all the builder reads
    rh = build_model(s, data, build_loss("softmax_ce", LossContext(3))).roi_heads
    assert rh.stage_weights == (2.0, 1.0, 0.125)
    assert [m.high_threshold for m in rh.matchers] == [0.4, 0.55, 0.8]
    assert [c.weights for c in rh.coders] == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]


def test_every_detector_the_settings_accept_is_registered():
    """``detector=NAME`` is checked by the settings' choice rule (the config layer cannot
    import the models) and built by the registry: both list the same names, and every
    ``conf/detector/`` yaml names one of them."""
    from pathlib import Path

    import yaml

    from acsl_cli.models.detectors import detector_names
    from acsl_cli.settings.sections import DETECTOR_KINDS as DETECTORS

    assert sorted(detector_names()) == sorted(DETECTORS)
    conf = Path(__file__).resolve().parents[1] / "conf" / "detector"
    assert sorted(yaml.safe_load(p.read_text())["name"] for p in conf.glob("*.yaml")) == \
        sorted(DETECTORS)

"""``schedule.stage1.loss``: stage 1 trained end to end with a method's own loss (EQLv2's and
Seesaw's papers do), cached under its own key (the default's key unchanged), scored by
that loss, and combinations stage 2 cannot start from refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from acsl_cli import config as config_mod
from acsl_cli.cli import app
from acsl_cli.engine.checkpoint import load_checkpoint
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.engine.train_detector import DetectorStep
from acsl_cli.layout import CHECKPOINT
from acsl_cli.losses import LossContext, build_loss
from acsl_cli.models.detector import build_detector
from acsl_cli.models.trunk import FrozenTrunk
from acsl_cli.pipeline.components import loss_context, stage1_model
from acsl_cli.settings import stage1_key, stage2_key
from tests.cli_refusals import assert_train_refuses
from tests.test_engine import TINY

#: the default (softmax CE) stage-1 key as main computed it before the option existed
#: (``tests/test_settings_kinds.py``'s KEYS_ON_MAIN), and EQLv2's on this version
DEFAULT_KEY, EQLV2_KEY = "9bd8661d1c5d", "76fd3610472a"


def _key(*overrides: str) -> str:
    return stage1_key(config_mod.load_settings(list(overrides)), 1)


def test_the_default_key_stays_and_another_loss_has_its_own():
    assert _key() == _key("schedule.stage1.loss=softmax_ce") == DEFAULT_KEY
    assert _key("schedule.stage1.loss=eqlv2") == EQLV2_KEY
    # the loss's resolved parameters enter: ACSL's xi follows the top-level key, EQL's
    # lambda the dataset's loss_defaults (neither in the default key)
    assert _key("schedule.stage1.loss=acsl", "xi=0.5") != _key("schedule.stage1.loss=acsl")
    assert _key("schedule.stage1.loss=eql") != _key("schedule.stage1.loss=bce")
    assert _key("dataset.loss_defaults.eql_lambda=0.2") == DEFAULT_KEY
    assert _key("schedule.stage1.loss=eql", "dataset.loss_defaults.eql_lambda=0.2") != _key(
        "schedule.stage1.loss=eql")
    # stage 2's key holds stage 1's folder name, not the option again
    s, e = (config_mod.load_settings(o) for o in ([], ["schedule.stage1.loss=eqlv2"]))
    assert stage2_key(s, [s.loss], "x", 1) == stage2_key(e, [e.loss], "x", 1)
    assert e.stage1_loss.as_dict() == {"name": "eqlv2", "gamma": 12, "mu": 0.8, "alpha": 4,
                                       "bg_factor": True}


@pytest.mark.parametrize("args, expect", [
    (["schedule.stage1.loss=eqlv3"],
     "schedule.stage1.loss='eqlv3': not a loss (did you mean eqlv2? choose from acsl, "),
    (["loss=eqlv2", "schedule.stage1.loss=seesaw"],
     "loss=eqlv2 with schedule.stage1.loss=seesaw: the head starts from stage 1's "
     "classifier rows, and stage 1's C + 2 do not fit it (it copies those of a C + 1-wide "
     "one)"),
    (["loss=bags", "loss.classifier_init=stage1_rows", "schedule.stage1.loss=seesaw"],
     "loss=bags with schedule.stage1.loss=seesaw: the head starts from stage 1's classifier "
     "rows, and stage 1's C + 2 do not fit it (it copies those of a C + 1-wide one)"),
    # a BAGS stage 1's rows are laid out by its own bins: not copied into another head
    (["loss=bags", "loss.classifier_init=stage1_rows", "schedule.stage1.loss=bags"],
     "stage 1's C + 5 do not fit it (it copies those of a C + 1-wide one)"),
    (["loss=acsl", "xi=0.5,0.7", "schedule.stage1.loss=acsl"],
     "schedule.stage1.loss=acsl: its xi follows a head key and differs between the heads"),
])
def test_what_stage_2_cannot_start_from_is_one_line_before_any_work(args, expect, tmp_path):
    assert_train_refuses(args, expect, tmp_path)


def test_heads_that_start_fresh_or_copy_a_same_width_stage_1_are_accepted(tmp_path):
    for args in (["loss=bags", "schedule.stage1.loss=seesaw"],  # BAGS: fresh rows
                 ["loss=seesaw", "schedule.stage1.loss=seesaw"],  # C + 2 into C + 2
                 ["loss=gol", "schedule.stage1.loss=seesaw"]):  # GOL: its release init
        res = CliRunner().invoke(app, ["train", "--dry-run", *args,
                                       f"output_root={tmp_path}"])
        assert res.exit_code == 0, res.output


def _images(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 128, 128, generator=g) for _ in range(n)]


def test_the_stage1_detector_scores_with_its_loss_by_hand():
    """EQLv2's release scoring, sigmoid(z_j) (1 - sigmoid(z_bg)), computed here from the
    classifier's logits, is what the detector's own forward and the stage-1 row's scorer
    (``FrozenTrunk``) give."""
    s = config_mod.load_settings([])
    torch.manual_seed(0)
    model = build_detector(s.backbone, 3, build_loss("eqlv2", LossContext(3)), 128, 128,
                           cascade=None, class_agnostic_boxes=False).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 2)  # scores far from flat
        images = _images()
        own = model(images)
        t = model.transform
        images_t, _ = t(images)
        features = model.backbone(images_t.tensors)
        proposals, _ = model.rpn(images_t, features)
        rh = model.roi_heads
        feats, deltas, boxes = rh.test_stages(features, proposals, images_t.image_sizes)
        z = rh.box_predictor.cls_score(feats[0])
        by_hand = torch.sigmoid(z[:, 1:]) * torch.sigmoid(-z[:, :1])  # 1 - sigmoid(z_bg)
        dets = t.postprocess(rh.detect(by_hand, deltas, boxes, images_t.image_sizes),
                             images_t.image_sizes, [(128, 128)] * 2)
        row = FrozenTrunk(model).detect(images)["model"]
    for a, b, c in zip(own, dets, row, strict=True):
        assert len(a["scores"]) > 0
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])
            torch.testing.assert_close(c[k], b[k])
    # softmax scoring of the same logits would give other scores
    softmax = torch.softmax(z, 1)[:, 1:]
    assert not torch.allclose(softmax, by_hand)


def test_stage1_model_takes_the_losss_width_init_and_one_loss_per_cascade_stage(tiny):
    _, data, _ = tiny
    C = data.cmap.num_classes
    s = config_mod.load_settings([*TINY, "schedule.stage1.loss=gol"])
    model = stage1_model(s, data, loss_context(data, 0))
    layer = model.roi_heads.box_predictor.cls_score
    assert model.roi_heads.cls_loss.name == "gol"  # GOL's release init: 0.001, bias -2
    assert torch.all(layer.weight == 0.001) and torch.all(layer.bias == -2)
    s = config_mod.load_settings([*TINY, "schedule.stage1.loss=seesaw"])
    assert stage1_model(s, data, loss_context(data, 0)).roi_heads.classifiers[
        0].out_features == C + 2  # Seesaw's release layout
    s = config_mod.load_settings([*TINY, "schedule.stage1.loss=eqlv2",
                                  "detector=cascade_rcnn"])
    model = stage1_model(s, data, loss_context(data, 0))
    losses = list(model.roi_heads.stage_losses)
    assert [loss.name for loss in losses] == ["eqlv2"] * 3
    assert len({id(loss) for loss in losses}) == 3  # each stage its own statistics
    # the statistics are the detector's state: saved and restored with stage 1's resume
    step = DetectorStep(model, StageSchedule.from_settings(s.schedule.stage1), "cpu", "off")
    state = step.state_dict()["model"]
    assert {f"roi_heads.stage_losses.{i}.pos_grad" for i in range(3)} <= state.keys()
    state["roi_heads.stage_losses.1.pos_grad"] = torch.arange(C, dtype=torch.float64)
    step.load_state_dict({**step.state_dict(), "model": state})
    assert torch.equal(losses[1].pos_grad, torch.arange(C, dtype=torch.float64))


def test_an_eqlv2_stage_1_trains_caches_and_scores_with_eqlv2(tmp_path):
    """End to end: stage 1 trains with EQLv2 (its gradient statistics counted once per
    iteration), under another key than the default, and its row is what the saved stage-1
    detector scores with EQLv2; a head of another loss evaluates from its checkpoint."""
    root = tmp_path / "outputs"
    args = [*TINY, "loss=eqlv2,bce", "schedule.stage1.loss=eqlv2", f"output_root={root}",
            "run_name=r"]
    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    s = config_mod.load_settings([a.replace("eqlv2,bce", "eqlv2") for a in args])
    folder = root / "cache" / "stage1" / stage1_key(s, 1)
    default = stage1_key(config_mod.load_settings([*TINY, f"output_root={root}"]), 1)
    assert folder.is_dir() and folder.name != default
    ckpt = load_checkpoint(folder / CHECKPOINT)
    assert ckpt["loss"] == s.stage1_loss.as_dict()
    assert ckpt["model"]["roi_heads.cls_loss.updates"].item() == s.schedule.max_iters
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 8 + 1
    metrics = json.loads((root / "runs" / "r" / "metrics.json").read_text())
    assert list(metrics) == ["stage1 (eqlv2)", "eqlv2", "bce"]
    out = tmp_path / "s1.json"
    res = CliRunner().invoke(app, ["eval", f"ckpt={folder / CHECKPOINT}",
                                   f"output_root={root}", f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == metrics["stage1 (eqlv2)"]
    head = root / "runs" / "r" / "heads" / "bce" / CHECKPOINT
    res = CliRunner().invoke(app, ["eval", f"ckpt={head}", f"output_root={root}",
                                   f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == metrics["bce"]


def test_a_seesaw_normed_stage_1_trains_the_normalised_classifier_under_its_own_key(tiny):
    """Seesaw's own recipe: stage 1 end to end with the normalised classifier (every
    cascade stage's too), keyed apart from a plain Seesaw stage 1."""
    from acsl_cli.models.classifier import NormedLinear

    _, data, _ = tiny
    assert _key("schedule.stage1.loss=seesaw_normed") != _key("schedule.stage1.loss=seesaw")
    for extra in ([], ["detector=cascade_rcnn"]):
        s = config_mod.load_settings([*TINY, "schedule.stage1.loss=seesaw_normed", *extra])
        layers = stage1_model(s, data, loss_context(data, 0)).roi_heads.classifiers
        assert layers and all(isinstance(x, NormedLinear) and x.temperature == 20
                               for x in layers)
        s = config_mod.load_settings([*TINY, "schedule.stage1.loss=seesaw", *extra])
        assert not any(isinstance(x, NormedLinear)
                       for x in stage1_model(s, data, loss_context(data, 0)).roi_heads.classifiers)

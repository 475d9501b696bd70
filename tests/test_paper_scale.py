"""Paper-scale options on small models: init=, lean heads, multi-scale and flip test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.config import load_settings
from acsl_cli.engine.checkpoint import load_checkpoint
from acsl_cli.errors import DataError
from acsl_cli.losses import build_loss
from acsl_cli.models.detector import build_detector
from acsl_cli.models.init import detector_state, load_matching
from acsl_cli.models.trunk import _unflip, merge_detections
from acsl_cli.pipeline.train import STAGE1_ROW, run_train
from acsl_cli.settings import LossSettings
from tests.test_engine import TINY


def test_init_from_a_torchvision_state_dict_with_other_classes():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    coco = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = coco.state_dict()
    cfg = load_settings(["backbone=r50"]).backbone
    model = build_detector(cfg, 60, build_loss("softmax_ce", num_classes=60), 800, 1333,
                           cascade=None, class_agnostic_boxes=False)
    report = load_matching(model, detector_state({"model": state}, "coco.pth"), "coco.pth")
    head = "roi_heads.box_predictor."
    assert sorted(report.reinitialised) == sorted(
        head + k for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight",
                           "bbox_pred.bias"))
    assert report.unused == ()
    own = model.state_dict()
    for k in report.loaded:
        assert torch.equal(own[k], state[k]), k
    assert own[head + "cls_score.weight"].shape == (61, 1024)
    with pytest.raises(DataError, match="not a detector state dict"):
        detector_state({"model": [1, 2]}, "x.pth")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("o")
    res = run_train([*TINY, f"output_root={root}", "loss=bce"])
    return root, res


def test_lean_head_checkpoint_points_to_stage1_and_evaluates_to_the_run(smoke, tmp_path):
    root, res = smoke
    ckpt = res.run_dir / "heads" / "bce" / "checkpoint.pt"
    head = load_checkpoint(ckpt)
    assert head["format"] == "acsl-head/1" and "model" not in head
    assert set(head["classifier"]) == {"weight", "bias"}
    s1 = res.stage1_dir / "checkpoint.pt"
    # relative to the head's folder, so a moved outputs/ keeps working
    assert (ckpt.parent / head["stage1"]["path"]).resolve() == s1.resolve()
    assert not Path(head["stage1"]["path"]).is_absolute()
    assert ckpt.stat().st_size * 20 < s1.stat().st_size
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["eval", f"ckpt={ckpt}", f"out={out}", "progress=false"])
    assert r.exit_code == 0, r.output
    got, want = json.loads(out.read_text()), json.loads(
        (res.run_dir / "metrics.json").read_text())["bce"]
    assert got == want


def test_a_head_whose_stage1_changed_is_refused(smoke, tmp_path):
    root, res = smoke
    ckpt = res.run_dir / "heads" / "bce" / "checkpoint.pt"
    head = load_checkpoint(ckpt)
    fake_base = tmp_path / "base.pt"
    fake_base.write_bytes((res.stage1_dir / "checkpoint.pt").read_bytes() + b"x")
    head["stage1"]["path"] = str(fake_base)
    moved = tmp_path / "head.pt"
    torch.save(head, moved)
    (tmp_path / "config.yaml").write_text((ckpt.parent / "config.yaml").read_text())
    r = CliRunner().invoke(app, ["eval", f"ckpt={moved}"])
    assert r.exit_code == 2 and "has changed since the head was trained" in r.output


def test_stage1_epochs_0_with_init_uses_the_detector_as_it_is(smoke, tmp_path):
    root, res = smoke
    again = run_train([*TINY, f"output_root={tmp_path}", "loss=bce",
                       f"init={res.stage1_dir / 'checkpoint.pt'}", "schedule.stage1.epochs=0"])
    assert again.metrics[STAGE1_ROW] == res.metrics[STAGE1_ROW]
    assert "init from" in (again.run_dir / "train.log").read_text()


def test_multi_scale_and_flip_test(smoke, tmp_path):
    root, res = smoke
    ckpt = res.run_dir / "heads" / "bce" / "checkpoint.pt"
    runner = CliRunner()
    outs = {}
    for name, extra in {"one": [], "same": ["test.scales=[128]"],
                        "ms": ["test.scales=[96,128,160]", "test.flip=true"]}.items():
        out = tmp_path / f"{name}.json"
        r = runner.invoke(app, ["eval", f"ckpt={ckpt}", f"out={out}", "progress=false", *extra])
        assert r.exit_code == 0, r.output
        outs[name] = json.loads(out.read_text())
    assert outs["same"] == outs["one"]  # one variant at the training size changes nothing
    assert all(v is None or 0 <= v <= 1 for v in outs["ms"].values())
    # on the detections themselves (the smoke model's APs are all ~0)
    from acsl_cli import config as config_mod
    from acsl_cli.models.trunk import FrozenTrunk
    from acsl_cli.pipeline.components import build_model, load_data, loss_context, make_loss

    cfg = config_mod.load_settings([*TINY, f"output_root={root}"])
    data = load_data(cfg)
    loss = make_loss(LossSettings("softmax_ce"), loss_context(data, 0))
    model = build_model(cfg, data, loss)
    model.load_state_dict(load_checkpoint(res.stage1_dir / "checkpoint.pt")["model"])
    images = [data.val[i][0] for i in range(3)]
    plain = FrozenTrunk(model).detect(images)["model"]
    same = FrozenTrunk(model, [128]).detect(images)["model"]
    ms = FrozenTrunk(model, [96, 128, 160], flip=True).detect(images)["model"]
    capped = FrozenTrunk(model, max_detections=5).detect(images)["model"]
    assert model.roi_heads.detections_per_img == 300  # the cap is the trunk's, not kept
    for p, c in zip(plain, capped, strict=True):
        assert torch.equal(c["scores"], p["scores"][:5])
    for p, s_, m in zip(plain, same, ms, strict=True):
        assert torch.equal(p["boxes"], s_["boxes"]) and torch.equal(p["scores"], s_["scores"])
        assert len(m["scores"]) <= 300 and bool((m["scores"][:-1] >= m["scores"][1:]).all())
        assert not torch.equal(m["scores"][:20], p["scores"][:20])
        assert bool((m["boxes"][:, 2] <= 128.01).all()) and bool((m["boxes"] >= -0.01).all())


def test_merge_keeps_the_best_of_overlapping_variants_and_unflips():
    a = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
         "labels": torch.tensor([1])}
    b = {"boxes": torch.tensor([[1.0, 0, 10, 10], [50, 50, 60, 60]]),
         "scores": torch.tensor([0.8, 0.5]), "labels": torch.tensor([1, 1])}
    m = merge_detections([a, b], 0.5, 300)
    assert m["scores"].tolist() == pytest.approx([0.9, 0.5])
    assert m["boxes"].tolist() == [[0.0, 0, 10, 10], [50, 50, 60, 60]]
    assert len(merge_detections([a, b], 0.5, 1)["scores"]) == 1
    u = _unflip({"boxes": torch.tensor([[10.0, 5, 30, 20]])}, 128)
    assert u["boxes"].tolist() == [[98.0, 5, 118, 20]]


def test_the_cached_stage1_row_is_scored_canonically(tmp_path):
    """A run with test.flip trains stage 1: the cache must hold the one-scale score, the
    run's own table the flipped one."""
    flipped = run_train([*TINY, f"output_root={tmp_path / 'a'}", "loss=bce", "test.flip=true",
                         "schedule.eval_max_images=null"])
    plain = run_train([*TINY, f"output_root={tmp_path / 'b'}", "loss=bce",
                       "schedule.eval_max_images=null"])
    cached = [json.loads(next((tmp_path / r).glob("cache/stage1/*/metrics.json")).read_text())
              for r in ("a", "b")]
    assert cached[0]["metrics"] == cached[1]["metrics"]
    assert cached[0]["per_category"] == cached[1]["per_category"]
    assert flipped.metrics[STAGE1_ROW] != plain.metrics[STAGE1_ROW]


def test_stage2_rois_per_image_sets_how_many_rois_stage2_samples(smoke):
    """``schedule.stage2.rois_per_image`` (paper: 512) changes stage 2's RoI sample only."""
    from acsl_cli import config as config_mod
    from acsl_cli.pipeline.components import build_model, load_data, loss_context, make_loss
    from acsl_cli.pipeline.evaluate import test_trunk

    root, res = smoke
    counts = {}
    for n in ("null", "4", "512"):
        cfg = config_mod.load_settings([*TINY, f"output_root={root}",
                                      f"schedule.stage2.rois_per_image={n}"])
        data = load_data(cfg)
        loss = make_loss(LossSettings("softmax_ce"), loss_context(data, 0))
        model = build_model(cfg, data, loss)
        model.load_state_dict(load_checkpoint(res.stage1_dir / "checkpoint.pt")["model"])
        trunk = test_trunk(cfg, model)
        batch = [data.train[i] for i in range(2)]
        torch.manual_seed(0)
        [(feats, labels)] = trunk.sampled_rois([b[0] for b in batch], [b[1] for b in batch])
        assert feats.shape[0] == labels.shape[0]
        counts[n] = labels.shape[0]
        # the detector's own sampler is left as stage 1 trained it
        assert model.roi_heads.fg_bg_sampler.batch_size_per_image == \
            cfg.backbone.roi_batch_size_per_image
    per_image = config_mod.load_settings(TINY).backbone.roi_batch_size_per_image
    assert counts["4"] == 8  # 4 per image, 2 images
    assert counts["null"] == min(counts["512"], 2 * per_image)
    assert counts["512"] > counts["null"]  # all proposals, capped by what the RPN gives

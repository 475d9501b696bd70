"""NorCal (test.calibration): the rule on hand-derived values, gamma=0 identical to the
plain head, sigmoid heads refused, the override spellings, and a tiny run's gamma curve
with the gamma picked on held-out images rather than on val."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from acsl_cli import config as config_mod
from acsl_cli.cli import app
from acsl_cli.errors import ConfigError
from acsl_cli.losses import build_loss
from acsl_cli.models.calibration import NorCal, log_counts, norcal_scores, refusal
from acsl_cli.pipeline.calibrate import at_grid_edge, pick
from acsl_cli.pipeline.train import STAGE1_ROW, run_train
from tests.conftest import TINY

# --- the rule --------------------------------------------------------------------------


def test_norcal_on_hand_derived_values():
    # column 0 is background; N = 1, 4, 16 train images
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                           [math.log(2), 0.0, math.log(4), 0.0]], dtype=torch.float64)
    log_n = log_counts([1, 4, 16])
    # gamma 0.5: exps 1,1,1,1 -> 1, 1/2, 1/4 on the classes; background 1 kept; sum 2.75
    got = norcal_scores(logits[:1], log_n, 0.5)
    assert got.tolist()[0] == pytest.approx([1 / 2.75, 0.5 / 2.75, 0.25 / 2.75], abs=1e-15)
    # gamma 1: exps 2,1,4,1 -> 2 | 1/1, 4/4, 1/16 ; sum 4.0625
    got = norcal_scores(logits[1:], log_n, 1.0)
    assert got.tolist()[0] == pytest.approx([1 / 4.0625, 1 / 4.0625, 0.0625 / 4.0625],
                                            abs=1e-15)


def test_a_class_without_train_images_counts_as_one():
    logits = torch.zeros(1, 3, dtype=torch.float64)
    got = norcal_scores(logits, log_counts([0, 4]), 1.0)  # weights 1 (0 -> 1) and 1/4
    assert got.tolist()[0] == pytest.approx([1 / 2.25, 0.25 / 2.25], abs=1e-15)


def test_norcal_equals_the_releases_recipe_on_random_logits():
    """The release: exp of the logits, foreground columns times 1 / N^gamma, renormalised
    over all columns (background included) per RoI."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    counts = [1, 3, 10, 50, 200, 1000]
    for gamma in (0.3, 0.5, 1.0, 2.0):
        probs = torch.exp(logits)
        probs[:, 1:] = probs[:, 1:] / torch.tensor(counts, dtype=torch.float64) ** gamma
        probs = probs / probs.sum(dim=1, keepdim=True)
        torch.testing.assert_close(norcal_scores(logits, log_counts(counts), gamma),
                                   probs[:, 1:], rtol=1e-12, atol=1e-15)


def test_gamma_zero_is_the_softmax_heads_own_scores_bit_for_bit():
    ce = build_loss("softmax_ce", None, num_classes=6)
    logits = torch.randn(40, 7, generator=torch.Generator().manual_seed(1)) * 4
    plain = ce.scores(logits)
    assert torch.equal(norcal_scores(logits, log_counts([1, 2, 3, 4, 5, 600]), 0.0), plain)
    assert torch.equal(NorCal(ce, [1, 2, 3, 4, 5, 600], 0).scores(logits), plain)
    assert not torch.equal(NorCal(ce, [1, 2, 3, 4, 5, 600], 0.5).scores(logits), plain)


@pytest.mark.parametrize("name, params", [
    ("bce", {}), ("acsl", {}), ("eql", {}), ("eqlv2", {}), ("federated", {}), ("bags", {}),
    ("seesaw", {"layout": "release"})])
def test_heads_not_scored_by_one_softmax_are_refused(name, params):
    why = refusal(name, params)
    assert why is not None and f"loss '{name}'" in why


def test_softmax_heads_are_calibrated():
    assert refusal("softmax_ce", {}) is None
    assert refusal("seesaw", {"layout": "single_softmax"}) is None


def test_the_pick_takes_the_best_and_the_smaller_gamma_on_a_tie():
    assert pick([0.0, 0.5, 1.0], [0.1, 0.3, 0.2]) == 0.5
    assert pick([1.0, 0.5, 0.0], [0.3, 0.3, 0.1]) == 0.5
    assert pick([0.0, 1.0], [None, float("nan")]) is None
    assert pick([0.0, 1.0], [None, 0.0]) == 1.0


def test_a_pick_on_the_grids_upper_edge_is_said_so():
    from acsl_cli.reporting.calibration import calibration_markdown

    assert at_grid_edge([0.0, 0.5, 1.0], pick([0.0, 0.5, 1.0], [0.1, 0.2, 0.3]))
    assert not at_grid_edge([1.0, 0.5, 0.0], 0.5)
    assert not at_grid_edge([0.0, 0.5, 1.0], 0.0)  # gamma=0 is the uncalibrated model
    assert not at_grid_edge([1.0], 1.0)  # one value: nothing was searched
    assert not at_grid_edge([0.0, 1.0], None)
    point = {"AP": 0.5, "APr": 0.2, "APc": 0.5, "APf": 0.7}
    record = {"counts": "images", "heldout": {"images": 9}, "select_metric": "AP",
              "heads": {h: {"picked_gamma": 1.0, "picked_at_grid_edge": edge,
                            "curve": [{"gamma": g, "val": point, "heldout": point}
                                      for g in (0.0, 1.0)]}
                        for h, edge in (("a", True), ("b", False))}}
    text = calibration_markdown(record)
    assert text.count("largest gamma of the grid") == 1
    assert text.index("largest gamma") < text.index("### b")


# --- settings and override spellings ---------------------------------------------------


def test_the_override_spellings():
    c = config_mod.load_settings(["test.calibration=norcal",
                                  "test.calibration.gamma=0,0.5,1"]).test.calibration
    assert (c.method, c.gamma) == ("norcal", (0, 0.5, 1))
    c = config_mod.load_settings(["test.calibration=norcal",
                                  "test.calibration.gamma=0.5"]).test.calibration
    assert c.gamma == (0.5,)
    assert config_mod.load_settings([]).test.calibration.method == "none"
    with pytest.raises(ConfigError, match="must be one of none, norcal"):
        config_mod.load_settings(["test.calibration=platt"])
    with pytest.raises(ConfigError, match="the values must differ"):
        config_mod.load_settings(["test.calibration=norcal", "test.calibration.gamma=1,1.0"])
    with pytest.raises(ConfigError, match=r"gamma\[0\]=-1"):
        config_mod.load_settings(["test.calibration=norcal", "test.calibration.gamma=-1,1"])


def test_a_real_set_cannot_pick_gamma_but_reports_the_curve():
    with pytest.raises(ConfigError, match="has no images held out from train"):
        config_mod.load_settings(["dataset=lvis_v0.5", "test.calibration=norcal",
                                  "test.calibration.gamma=0,1"])
    s = config_mod.load_settings(["dataset=lvis_v0.5", "test.calibration=norcal",
                                  "test.calibration.gamma=0,1", "test.calibration.select=none"])
    assert s.test.calibration.gamma == (0, 1)
    one = config_mod.load_settings(["dataset=lvis_v0.5", "test.calibration=norcal",
                                    "test.calibration.gamma=0.5"])
    assert one.test.calibration.gamma == (0.5,)  # one gamma: nothing to pick


def test_calibration_is_test_time_only():
    plain = config_mod.load_settings([])
    cal = config_mod.load_settings(["test.calibration=norcal", "test.calibration.gamma=0,1"])
    from acsl_cli.settings import stage1_key, stage2_key

    assert stage1_key(plain, 1) == stage1_key(cal, 1)
    assert stage2_key(plain, [plain.loss], "x", 1) == stage2_key(cal, [cal.loss], "x", 1)
    assert cal.test.canonical  # the cached plain stage-1 row stays valid


# --- a tiny run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("o")
    res = run_train([*TINY, f"output_root={root}", "loss=softmax_ce,bce",
                     "test.calibration=norcal", "test.calibration.gamma=0,0.5,1"])
    return root, res


def test_train_scores_each_softmax_head_at_every_gamma(calibrated_run):
    root, res = calibrated_run
    rows = json.loads((res.run_dir / "metrics.json").read_text())
    record = json.loads((res.run_dir / "calibration.json").read_text())
    for base in (STAGE1_ROW, "softmax_ce"):
        # gamma = 0 is the plain row, exactly
        assert rows[f"{base} norcal gamma=0"] == rows[base]
        head = record["heads"][base]
        assert [p["gamma"] for p in head["curve"]] == [0.0, 0.5, 1.0]
        # the pick maximises the held-out AP, never looks at val, and reports val there
        held = [p["heldout"]["AP"] for p in head["curve"]]
        assert head["picked_gamma"] == pick([0.0, 0.5, 1.0], held)
        picked = head["reported_row"]
        assert picked == f"{base} norcal (gamma picked on held-out)"
        assert rows[picked] == rows[f"{base} norcal gamma={head['picked_gamma']:g}"]
    assert "bce" in record["not_calibrated"] and not any(k.startswith("bce norcal")
                                                         for k in rows)
    assert record["heldout"]["images"] >= 1
    assert (res.run_dir / "calibration.png").stat().st_size > 0
    assert "| 0 |" in (res.run_dir / "calibration.md").read_text()


def test_the_heldout_images_are_new_draws_of_the_train_distribution(calibrated_run):
    root, res = calibrated_run
    folder = next((root / "cache" / "data").glob("synthetic-*-heldout-0.1"))
    train_folder = folder.parent / folder.name.split("-heldout")[0]
    held = json.loads((folder / "heldout.json").read_text())
    train = json.loads((train_folder / "train.json").read_text())
    val = json.loads((train_folder / "val.json").read_text())
    assert held["categories"] == train["categories"]  # r/c/f groups and counts from train
    seen = {im["id"] for im in train["images"]} | {im["id"] for im in val["images"]}
    assert not seen & {im["id"] for im in held["images"]}
    # every class is in it (at least one image each), none of its images is a train image
    assert {a["category_id"] for a in held["annotations"]} == {
        c["id"] for c in train["categories"]}
    pixels = [np.asarray(Image.open(train_folder / im["file_name"])) for im in train["images"]]
    for im in held["images"]:
        mine = np.asarray(Image.open(folder / im["file_name"]))
        assert not any(np.array_equal(mine, p) for p in pixels)


def test_eval_ckpt_scores_one_head_at_several_gammas_in_one_command(calibrated_run,
                                                                    tmp_path):
    root, res = calibrated_run
    ckpt = res.run_dir / "heads" / "softmax_ce" / "checkpoint.pt"
    runner = CliRunner()
    out = tmp_path / "m.json"
    r = runner.invoke(app, ["eval", f"ckpt={ckpt}", "test.calibration=norcal",
                            "test.calibration.gamma=0,0.5,1", f"out={out}",
                            "progress=false"])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    head = got["calibration"]["heads"]["model"]
    picked = next(p for p in head["curve"] if p["gamma"] == head["picked_gamma"])
    assert {k: got[k] for k in picked["val"]} == picked["val"]  # out= holds the pick
    # the same numbers as the training run's rows (same head, same frozen detector)
    train_record = json.loads((res.run_dir / "calibration.json").read_text())
    def numbers(curve):
        return [{k: v for k, v in p.items() if k != "row"} for p in curve]

    assert numbers(head["curve"]) == numbers(train_record["heads"]["softmax_ce"]["curve"])
    # gamma = 0 gives the uncalibrated metrics exactly
    plain = tmp_path / "plain.json"
    r = runner.invoke(app, ["eval", f"ckpt={ckpt}", "test.calibration=none", f"out={plain}",
                            "progress=false"])
    assert r.exit_code == 0, r.output
    assert json.loads(plain.read_text()) == head["curve"][0]["val"]


def test_gamma_zero_detections_are_bit_identical(tiny):
    from acsl_cli.engine.inference import predict
    from acsl_cli.models.calibration import calibrated
    from acsl_cli.models.trunk import FrozenTrunk

    cfg, data, model = tiny
    trunk = FrozenTrunk(model)
    own = trunk.stage1_scorer
    counts = data.stats.image_counts
    dets = predict(trunk, data.val, data.cmap, "cpu",
                   {"plain": own, "g0": calibrated(own, counts, 0.0),
                    "g1": calibrated(own, counts, 1.0)}, show_progress=False, amp="off")
    assert dets["g0"] == dets["plain"] and len(dets["plain"]) > 0
    assert dets["g1"] != dets["plain"]


def test_eval_ckpt_refuses_a_sigmoid_head_in_one_line(calibrated_run, tmp_path):
    root, res = calibrated_run
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["eval", f"ckpt={res.run_dir / 'heads' / 'bce' / 'checkpoint.pt'}",
                                 "test.calibration=norcal", "test.calibration.gamma=0,1",
                                 f"out={out}", "progress=false"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: test.calibration=norcal: loss 'bce'")
    assert not out.exists()

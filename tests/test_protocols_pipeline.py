"""The protocols through the commands: ``acsl eval dets=... test.protocol=fixed|pooled``
against the reference scripts on lvis-api, the top-K inference (the standard detections
unchanged, the running top K equal to one selection over everything), and a smoke
``acsl train`` reporting standard, fixed and pooled AP side by side in its tables, metrics
files and ``acsl report``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.engine.topk import CategoryTopK, TopDetections, concat, keep_top
from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.evaluation.detections import parse_detections
from acsl_cli.evaluation.results import evaluate_results_file
from acsl_cli.models.trunk import FrozenTrunk
from tests.conftest import TINY
from tests.test_lvis_eval import LVIS_SAMPLE, _synthetic_detections
from tests.test_lvis_protocols import reference_fixed, reference_pooled


@pytest.fixture(scope="module")
def fixture_dets(tmp_path_factory):
    gt = json.loads(LVIS_SAMPLE.read_text())
    dets = _synthetic_detections(gt, 3, True)
    path = tmp_path_factory.mktemp("dets") / "dets.json"
    path.write_text(json.dumps(dets))
    return path, dets


def _eval(tmp_path, dets_path, *args):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", f"dets={dets_path}", f"ann={LVIS_SAMPLE}",
                                   f"out={out}", "progress=false", *args])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def _same(got: dict, want: dict) -> None:
    for key, value in want.items():
        if value is None or math.isnan(value) or value == -1:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key


def test_eval_dets_fixed_equals_reference(tmp_path, fixture_dets, monkeypatch):
    path, dets = fixture_dets
    got, output = _eval(tmp_path, path, "test.protocol=fixed", "test.dets_per_class=20")
    assert set(got) == set(METRIC_KEYS)
    _same(got, reference_fixed(LVIS_SAMPLE, dets, 20, monkeypatch))
    assert "dets.json [fixed]" in output


def test_eval_dets_pooled_writes_pooled_keys_and_nulls(tmp_path, fixture_dets, monkeypatch):
    path, dets = fixture_dets
    got, _ = _eval(tmp_path, path, "test.protocol=pooled", "test.dets_per_class=20")
    pooled = reference_pooled(LVIS_SAMPLE, dets, 20, monkeypatch)
    _same(got, {"AP": pooled["all"], "APr": pooled["r"], "APc": pooled["c"],
                "APf": pooled["f"]})
    assert all(got[k] is None for k in ("AP50", "AP75", "APs", "APm", "APl"))


def test_eval_dets_several_protocols_side_by_side(tmp_path, fixture_dets):
    path, _ = fixture_dets
    got, output = _eval(tmp_path, path, "test.protocol=[standard,pooled]")
    assert list(got) == ["standard", "pooled"]
    plain, _ = _eval(tmp_path, path)  # the default: the standard protocol's keys
    assert got["standard"] == plain
    assert "dets.json [pooled]" in output


def test_protocols_refused_for_open_images_predictions(tmp_path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("ImageID,LabelName,Score,XMin,XMax,YMin,YMax\n")
    res = CliRunner().invoke(app, ["eval", f"dets={csv}", f"ann={tmp_path}",
                                   "test.protocol=fixed"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: test.protocol=fixed: fixed and pooled are LVIS")


# ---------------------------------------------------------------------------------------
# Top-K inference
# ---------------------------------------------------------------------------------------


def _tops(rng, n, n_img, cats) -> TopDetections:
    return TopDetections(rng.integers(0, n_img, n), rng.choice(cats, n),
                         rng.uniform(0, 50, (n, 4)).round(2),
                         rng.integers(0, 20, n).astype(np.float64) / 20)  # ties


def test_running_top_k_equals_one_selection_over_everything():
    rng = np.random.default_rng(0)
    cats = [10, 20, 30]
    top = CategoryTopK(7, cats)
    top.limit = 25  # merge often
    everything = []
    for image in range(40):
        n = int(rng.integers(0, 12))
        labels = torch.tensor(rng.integers(1, 4, n))
        xyxy = torch.tensor(np.tile(rng.uniform(0, 40, (n, 2)), (1, 2)), dtype=torch.float32)
        xyxy[:, 2:] += torch.tensor(rng.uniform(1, 9, (n, 2)), dtype=torch.float32)
        scores = torch.tensor(rng.integers(0, 10, n) / 10, dtype=torch.float32)
        top.add([{"boxes": xyxy, "labels": labels, "scores": scores}], [image])
        boxes = xyxy.double().numpy()
        boxes[:, 2:] = (xyxy[:, 2:] - xyxy[:, :2]).double().numpy()
        everything.append(TopDetections(np.full(n, image), np.array(cats)[labels.numpy() - 1],
                                        boxes.round(2), scores.double().numpy()))
    got, want = top.result(), keep_top(concat(everything), 7)
    for field in ("image_ids", "category_ids", "boxes", "scores"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert np.bincount(got.category_ids).max() == 7
    # the evaluator's selection is the same rule
    gt = {"images": [{"id": i} for i in range(40)],
          "categories": [{"id": c} for c in cats], "annotations": []}
    parsed = parse_detections(gt, concat(everything).as_results(), "dets")
    from acsl_cli.evaluation.lvis_protocols import top_per_category

    again = top_per_category(parsed, 7)
    assert np.array_equal(again.scores, want.scores)
    assert np.array_equal(again.image_ids, want.image_ids)


@pytest.mark.parametrize(("scales", "flip"), [(None, False), ([96, 128], True)])
def test_wide_detection_leaves_the_standard_detections_unchanged(tiny, scales, flip):
    _, data, model = tiny
    images = [data.val[i][0] for i in range(3)]
    trunk = FrozenTrunk(model, scales, flip, max_detections=20)
    plain = trunk.detect(images)["model"]
    standard, wide = trunk.detect_wide(images, None, 500)
    for a, b, w in zip(plain, standard["model"], wide["model"], strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key
        assert len(w["scores"]) >= len(a["scores"])
    assert max(len(w["scores"]) for w in wide["model"]) > 20


# ---------------------------------------------------------------------------------------
# acsl train, protocols side by side
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = root / "m.json"
    res = CliRunner().invoke(app, ["train", *TINY, f"output_root={root}", "loss=softmax_ce",
                                   "test.protocol=[standard,fixed,pooled]",
                                   "test.dets_per_class=40", f"out={out}"])
    assert res.exit_code == 0, res.output
    run = next((root / "runs").iterdir())
    return root, run, res.output, json.loads(out.read_text())


def test_train_reports_protocols_side_by_side(protocol_run):
    root, run, output, out_file = protocol_run
    rows = json.loads((run / "metrics.json").read_text())
    assert list(rows) == ["stage1 (softmax CE)", "softmax_ce",
                          "stage1 (softmax CE) [fixed]", "softmax_ce [fixed]",
                          "stage1 (softmax CE) [pooled]", "softmax_ce [pooled]"]
    assert all(rows["softmax_ce [pooled]"][k] is None for k in ("AP50", "APs"))
    assert list(out_file) == ["standard", "fixed", "pooled"]
    assert out_file["fixed"] == rows["softmax_ce [fixed]"]
    for name in ("metrics.md", "metrics.csv"):
        assert "softmax_ce [fixed]" in (run / name).read_text()
    assert "softmax_ce [pooled]" in output  # the terminal table
    header = (run / "per_category_ap.csv").read_text().splitlines()[0]
    assert "softmax_ce [fixed]" in header and "[pooled]" not in header

    # Each row is what the evaluator gives on the detections saved beside the head.
    val = next(root.glob("cache/data/*/val.json"))
    head = run / "heads" / "softmax_ce"
    top = json.loads((head / "results_topk.json").read_text())
    per_cat = np.bincount([d["category_id"] for d in top])
    assert per_cat.max() <= 40
    again = evaluate_results_file(head / "results_topk.json", val,
                                  protocols=("fixed", "pooled"), dets_per_class=40)
    standard = evaluate_results_file(head / "results.json", val)
    for protocol, label in (("fixed", "softmax_ce [fixed]"), ("pooled", "softmax_ce [pooled]")):
        _same(rows[label], again.by_protocol[protocol])
    _same(rows["softmax_ce"], standard.metrics)


def test_report_compares_within_each_protocol(protocol_run, tmp_path):
    _, run, _, _ = protocol_run
    res = CliRunner().invoke(app, ["report", str(run), f"out_dir={tmp_path / 'r'}"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    by_name = {r["model"]: r for r in report["rows"]}
    rows = json.loads((run / "metrics.json").read_text())
    fixed = by_name["softmax_ce [fixed]"]
    base = rows["stage1 (softmax CE) [fixed]"]["AP"]
    assert fixed["delta"]["AP"] == pytest.approx(
        round(100 * (rows["softmax_ce [fixed]"]["AP"] - base), 2), abs=0.011)
    assert by_name["stage1 (softmax CE) [pooled]"]["delta"]["AP"] == 0.0
    assert "[pooled]" in res.output  # escaped: rich would take it for markup (names wrap)


def test_eval_checkpoint_reproduces_the_protocol_rows(protocol_run, tmp_path):
    root, run, _, _ = protocol_run
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", f"ckpt={run / 'heads' / 'softmax_ce' / 'checkpoint.pt'}",
                                   f"output_root={root}", "progress=false",
                                   "test.protocol=[fixed,pooled]", f"out={out}"])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    rows = json.loads((run / "metrics.json").read_text())
    assert got == {"fixed": rows["softmax_ce [fixed]"], "pooled": rows["softmax_ce [pooled]"]}

"""``test.backend=lvis-api``: the official evaluator's numbers through the same commands,
equal to the default backend on the LVIS fixture (real LVIS v0.5 val annotations)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.evaluation.results import evaluate_results_file
from tests.test_lvis_eval import LVIS_SAMPLE, _synthetic_detections

TOL = 1e-9


@pytest.fixture(scope="module")
def dets_file(tmp_path_factory):
    gt = json.loads(LVIS_SAMPLE.read_text())
    path = tmp_path_factory.mktemp("dets") / "dets.json"
    path.write_text(json.dumps(_synthetic_detections(gt, seed=1, tie_scores=True)))
    return path


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL


def test_lvis_api_backend_equals_ours_on_the_fixture(dets_file):
    ours = evaluate_results_file(dets_file, LVIS_SAMPLE)
    official = evaluate_results_file(dets_file, LVIS_SAMPLE, backend="lvis-api")
    assert ours.metrics.keys() == official.metrics.keys()
    for key, value in ours.metrics.items():
        assert _same(official.metrics[key], value), key
    assert [r["category_id"] for r in official.per_category] == \
        [r["category_id"] for r in ours.per_category]
    for a, b in zip(ours.per_category, official.per_category, strict=True):
        assert _same(a["AP"], b["AP"]) and a["num_gt"] == b["num_gt"], a["category_id"]
    assert 0.05 < official.metrics["AP"] < 0.9
    assert "float" not in np.__dict__  # lvis 0.5.3's np.float was lent, then taken back


def test_lvis_api_backend_through_acsl_eval_and_its_refusals(dets_file, tmp_path):
    outs = {}
    for backend in ("ours", "lvis-api"):
        out = tmp_path / f"{backend}.json"
        res = CliRunner().invoke(app, ["eval", f"dets={dets_file}", f"ann={LVIS_SAMPLE}",
                                       f"test.backend={backend}", f"out={out}"])
        assert res.exit_code == 0, res.output
        outs[backend] = json.loads(out.read_text())
    assert outs["ours"].keys() == outs["lvis-api"].keys()
    for key, value in outs["ours"].items():
        if isinstance(value, float):
            assert _same(outs["lvis-api"][key], value), key
    refused = CliRunner().invoke(app, ["eval", f"dets={dets_file}", f"ann={LVIS_SAMPLE}",
                                       "test.backend=lvis-api", "test.protocol=fixed"])
    assert refused.exit_code == 2
    assert "lvis-api has the standard protocol only" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    quiet = CliRunner().invoke(app, ["eval", f"dets={dets_file}", f"ann={LVIS_SAMPLE}",
                                     "test.backend=lvis-api"])
    assert quiet.exit_code == 0 and "Assuming" not in quiet.output  # lvis-api's log kept in


def test_lvis_api_backend_on_no_detection(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    ours = evaluate_results_file(empty, LVIS_SAMPLE)
    official = evaluate_results_file(empty, LVIS_SAMPLE, backend="lvis-api")
    for key, value in ours.metrics.items():
        assert _same(official.metrics[key], value), key


def test_the_pipelines_scorer_gives_lvis_api_numbers_on_the_embedded_val(tmp_path):
    """What train and ``eval ckpt=`` score with: the same numbers from either backend on
    the generated val set (detections: jittered ground truth, some on other classes)."""
    from dataclasses import replace

    from acsl_cli.config import load_settings
    from acsl_cli.pipeline.components import load_data
    from acsl_cli.pipeline.evaluate import scorer
    from tests.conftest import TINY

    s = load_settings(TINY + [f"output_root={tmp_path}"])
    data = load_data(s)
    rng = np.random.default_rng(0)
    cats = [c["id"] for c in data.val_gt["categories"]]
    dets = []
    for ann in data.val_gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):
            jx, jy = rng.normal(0, 0.15, 2) * [w, h]
            cat = ann["category_id"] if rng.random() < 0.7 else int(rng.choice(cats))
            dets.append({"image_id": ann["image_id"], "category_id": cat,
                         "bbox": [x + jx, y + jy, w, h], "score": float(rng.random())})
    images = len(data.val)
    ours = scorer(s, data, images)(dets, None, ("standard",))["standard"]
    official_s = replace(s, test=replace(s.test, backend="lvis-api"))
    official = scorer(official_s, data, images)(dets, None, ("standard",))["standard"]
    for key, value in ours[0].items():
        assert _same(official[0][key], value), key
    assert [r["AP"] for r in official[1]] == pytest.approx([r["AP"] for r in ours[1]],
                                                           abs=TOL, nan_ok=True)
    assert 0.05 < official[0]["AP"] < 0.95

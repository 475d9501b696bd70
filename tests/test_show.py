"""``acsl show``: boxes drawn where the detections are, false-positive pages, one-line
errors for bad arguments."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.pipeline.show import false_positives
from acsl_cli.pipeline.train import run_train
from acsl_cli.reporting.drawing import scale_for
from tests.test_engine import TINY


def test_show_draws_the_heads_detections_on_the_val_images(tmp_path):
    res = run_train([*TINY, f"output_root={tmp_path / 'o'}", "loss=bce", "run_name=r"])
    head = res.run_dir / "heads" / "bce"
    dets = json.loads((head / "results.json").read_text())
    val = json.loads(next((tmp_path / "o" / "cache" / "data").glob("synthetic-*/val.json"))
                     .read_text())
    first = min(im["id"] for im in val["images"])
    best = max((d for d in dets if d["image_id"] == first), key=lambda d: d["score"])
    out = tmp_path / "show"
    cli = CliRunner().invoke(app, ["show", f"ckpt={head / 'checkpoint.pt'}", f"out_dir={out}",
                                   "images=2", f"score={best['score']}"])
    assert cli.exit_code == 0, cli.output
    pictures = sorted(out.glob("image_*.png"))
    assert len(pictures) == 2
    image = next(im for im in val["images"] if im["id"] == first)
    source = Image.open(next((tmp_path / "o" / "cache" / "data").glob("synthetic-*"))
                        / image["file_name"]).convert("RGB")
    drawn = Image.open(out / f"image_{first}.png").convert("RGB")
    k = scale_for(source)
    assert drawn.size == (source.width * k, source.height * k)
    plain = np.asarray(source.resize(drawn.size, Image.NEAREST)).astype(int)
    painted = np.asarray(drawn).astype(int)
    x, y, w, h = (round(v * k) for v in best["bbox"])
    # the box's left edge is drawn over the source: those pixels differ
    edge = (slice(y + h // 2 - 2, y + h // 2 + 3), slice(max(x, 0), max(x, 0) + 2))
    assert np.abs(painted[edge] - plain[edge]).sum() > 0
    assert (painted != plain).any(axis=2).mean() < 0.5  # the picture is still the image


def test_false_positives_match_greedily_and_name_what_they_hit():
    gts = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
           {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]}]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.8},  # dup
            {"image_id": 1, "category_id": 1, "bbox": [21, 21, 10, 10], "score": 0.7},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 5, 5], "score": 0.6}]
    fps = false_positives(dets, gts, 1)
    assert [d["score"] for d, _ in fps] == [0.8, 0.7, 0.6]
    assert [None if g is None else g["category_id"] for _, g in fps] == [1, 2, None]


def test_show_needs_a_head_or_a_results_file(tmp_path):
    res = CliRunner().invoke(app, ["show", f"out_dir={tmp_path}"])
    assert res.exit_code == 2 and "acsl show needs ckpt=" in res.output
    res = CliRunner().invoke(app, ["show", "ckpt=/x.pt", "images=0"])
    assert res.exit_code == 2 and "images=0" in res.output

"""``acsl show``: boxes drawn where the detections are, false-positive pages, one-line
errors for bad arguments."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.pipeline.show import false_positives, match
from acsl_cli.pipeline.train import run_train
from acsl_cli.plan_show import plan_show
from acsl_cli.reporting.drawing import KINDS, LINE, Box, draw_boxes, scale_for
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
    size = (source.width * k, source.height * k)
    assert drawn.width == size[0] and drawn.height > size[1]  # the legend below the image
    plain = np.asarray(source.resize(size, Image.NEAREST)).astype(int)
    painted = np.asarray(drawn).astype(int)[:size[1]]
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


GREY = (90, 90, 90)


def test_boxes_are_drawn_in_their_kinds_colour_with_a_legend_below():
    """A grey 96 px image is enlarged 4x; a box's outline is ``LINE`` px of its colour
    from its scaled corner inwards, the inside stays grey; every colour of the legend is
    in the strip below the image."""
    image = Image.new("RGB", (96, 96), GREY)
    k = scale_for(image)
    assert k == 4
    boxes = [Box((10, 50, 30, 20), "a", "r", None, "missed"),
             Box((50, 10, 20, 30), "b", "f", 0.5, "fp")]
    drawn = np.asarray(draw_boxes(image, boxes)).astype(int)
    top = drawn[:96 * k]
    for b in boxes:
        x, y, w, h = (v * k for v in b.xywh)
        colour = KINDS[b.kind][1]
        mid = y + h // 2
        assert (top[mid, x:x + LINE] == colour).all()  # left edge
        assert (top[mid, x + w - LINE + 1:x + w + 1] == colour).all()  # right edge
        assert (top[y + h, x + w // 2] == colour).all()  # bottom edge
        assert (top[mid, x + LINE + 4] == GREY).all()  # inside, below the label
        assert (top[mid, x - 2] == GREY).all()  # outside
    strip = drawn[96 * k:]
    assert len(strip) >= 16
    for _, colour in KINDS.values():
        assert (strip == colour).all(axis=2).sum() >= 50, colour  # a 10 x 10 swatch


def test_drawn_detections_match_ground_truth_class_by_class():
    gts = [{"category_id": 1, "bbox": [0, 0, 10, 10]},
           {"category_id": 1, "bbox": [40, 40, 10, 10]},  # nobody finds it: missed
           {"category_id": 2, "bbox": [20, 20, 10, 10]}]
    dets = [{"category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.5},  # dup of the next
            {"category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
            {"category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.8},  # right place,
            {"category_id": 2, "bbox": [21, 21, 10, 10], "score": 0.4}]  # wrong class; TP
    found, hits = match(dets, gts)
    assert found == {0, 2} and hits == {1, 3}


def test_default_view_draws_at_most_ten_detections_per_image_above_0_3(tmp_path):
    """30 detections in a grid, scores rising: the defaults (score=0.3, top=10) draw the ten
    best, the rest of the grid stays grey; top=N changes it."""
    Image.new("RGB", (96, 96), GREY).save(tmp_path / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 96}],
           "categories": [{"id": 1, "name": "red_circle", "frequency": "r"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                            "bbox": [80, 80, 10, 10], "area": 100}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    grid = [(4 + 9 * (i % 10), 4 + 20 * (i // 10)) for i in range(30)]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [x, y, 6, 6], "score": 0.25 + 0.02 * i}
            for i, (x, y) in enumerate(grid)]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    args = [f"dets={tmp_path / 'dets.json'}", f"ann={tmp_path / 'ann.json'}",
            f"image_dir={tmp_path}"]
    plan = plan_show(args)
    assert (plan.score, plan.top, plan.images) == (0.3, 10, 8)

    def drawn(*extra: str) -> list[int]:
        out = tmp_path / f"show{len(extra)}"
        res = CliRunner().invoke(app, ["show", *args, f"out_dir={out}", *extra])
        assert res.exit_code == 0, res.output
        picture = np.asarray(Image.open(out / "image_1.png").convert("RGB")).astype(int)
        fp = KINDS["fp"][1]
        # a box's left edge, 4x enlarged, below where its label lies
        return [i for i, (x, y) in enumerate(grid) if (picture[4 * y + 20, 4 * x] == fp).all()]

    assert drawn() == list(range(20, 30))  # the ten highest scores
    assert drawn("top=100") == list(range(3, 30))  # every one scoring >= 0.3

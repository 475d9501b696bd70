"""Open Images end to end: dataset=openimages_synthetic through training, the challenge
metric, the predictions file, ``acsl eval dets=...csv`` and ``acsl data stats``; bad
release files stop with one line naming the file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.config import load_settings
from acsl_cli.evaluation.openimages_gt import ground_truth
from acsl_cli.evaluation.openimages_metric import expand_ground_truth
from acsl_cli.evaluation.openimages_scoring import score_openimages
from acsl_cli.losses.registry import loss_class
from acsl_cli.pipeline.components import load_data, loss_context, make_loss
from acsl_cli.settings import LossSettings

SMALL = ["dataset=openimages_synthetic", "dataset.num_classes=12",
         "dataset.max_images_per_class=24", "dataset.val_instances_per_class=3",
         "schedule=smoke", "schedule.eval_max_images=null", "progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oi")
    r = CliRunner().invoke(app, ["train", *SMALL, f"output_root={root}",
                                 "loss=softmax_ce,bce,acsl", "run_name=oi"])
    assert r.exit_code == 0, r.output
    return root, root / "runs" / "oi"


def _release(root: Path) -> Path:
    (folder,) = (root / "cache" / "data").glob("openimages_synthetic-*/")
    return folder


def test_train_end_to_end_scores_with_the_challenge_metric(run):
    root, folder = run
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"stage1 (softmax CE)", "softmax_ce", "bce",
                            "acsl xi=0.7 bg=official"}
    for m in metrics.values():
        assert m["AP"] == m["AP50"] and 0 <= m["AP"] <= 1  # one IoU threshold: 0.5
        assert m["AP75"] is None and m["APs"] is None
    assert "Open Images challenge metric" in (folder / "train.log").read_text()
    rows = list(csv.DictReader((folder / "per_category_ap.csv").open()))
    names = {r["name"] for r in rows}
    assert "Circle" in names  # a parent class is scored (its GT comes from its children)


def test_eval_of_a_heads_predictions_file_equals_its_metrics(run, tmp_path):
    root, folder = run
    release = _release(root)
    for head in ("bce", "softmax_ce"):
        preds = folder / "heads" / head / "predictions.csv"
        with preds.open() as f:
            assert next(csv.reader(f)) == ["ImageID", "LabelName", "Score", "XMin", "XMax",
                                           "YMin", "YMax"]
        out = tmp_path / f"{head}.json"
        r = CliRunner().invoke(app, ["eval", f"dets={preds}", f"ann={release}",
                                     f"train_ann={release / 'train-annotations-bbox.csv'}",
                                     f"out={out}"])
        assert r.exit_code == 0, r.output
        saved = json.loads((folder / "metrics.json").read_text())[head]
        assert json.loads(out.read_text()) == saved


def test_sigmoid_losses_train_the_hierarchy_and_softmax_losses_do_not(run):
    root, _ = run
    cfg = load_settings([*SMALL, f"output_root={root}"])
    data = load_data(cfg)
    context = loss_context(data, 0)
    assert context.ancestors is not None
    circle = data.openimages.names.index("Circle") + 1
    red_circle = data.openimages.names.index("Red circle") + 1
    assert context.ancestors[red_circle - 1] == (circle,)
    bce = make_loss(LossSettings("bce"), context)
    assert bool(bce.expansion[red_circle, circle]) and not bool(bce.expansion[circle, red_circle])
    assert not loss_class("softmax_ce").multi_label
    # the train counts of a parent are those of its children's images together
    with (_release(root) / "train-annotations-bbox.csv").open() as f:
        rows = list(csv.DictReader(f))
    children = {n for i, n in enumerate(data.openimages.label_names)
                if circle in context.ancestors[i]}
    images = {r["ImageID"] for r in rows if r["LabelName"] in children}
    assert data.stats.image_counts[circle - 1] == len(images)


def test_expand_hierarchy_scores_a_leaf_only_detector_on_the_parents(run):
    """A perfect detector of leaf classes scores 1 on every leaf; the parents' AP is 0
    unless test.expand_hierarchy copies each detection to the ancestors."""
    root, _ = run
    data = load_data(load_settings([*SMALL, f"output_root={root}"]))
    oi = data.openimages
    gt = ground_truth(oi.split, len(oi.names))
    dets = []
    for i in range(gt.num_images):
        for b in range(int(gt.box_offsets[i]), int(gt.box_offsets[i + 1])):
            x0, y0, x1, y1 = (float(v) for v in gt.boxes[b])
            w, h = float(oi.widths[i]), float(oi.heights[i])
            dets.append({"image_id": i, "category_id": int(gt.box_labels[b]), "score": 0.9,
                         "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]})
    kw = dict(ancestors=oi.ancestors, names=oi.names, groups=oi.groups)
    leaves = [i + 1 for i, a in enumerate(oi.ancestors) if a]
    parents = sorted({p for a in oi.ancestors for p in a})
    full_gt = expand_ground_truth(gt, oi.ancestors)
    plain, rows = score_openimages(full_gt, dets, oi.widths, oi.heights, **kw)
    ap = {r["category_id"]: r["AP"] for r in rows}
    assert all(ap[c] == pytest.approx(1.0) for c in leaves)
    assert all(ap[c] == 0.0 for c in parents)
    assert plain["AP"] == pytest.approx(len(leaves) / (len(leaves) + len(parents)))
    full, _ = score_openimages(full_gt, dets, oi.widths, oi.heights, expand=True, **kw)
    assert full["AP"] == pytest.approx(1.0)


def test_data_stats_reports_the_hierarchy_expanded_groups(run, tmp_path):
    root, _ = run
    out = tmp_path / "stats.json"
    r = CliRunner().invoke(app, ["data", "stats", *SMALL, f"output_root={root}", f"out={out}"])
    assert r.exit_code == 0, r.output
    stats = json.loads(out.read_text())
    data = load_data(load_settings([*SMALL, f"output_root={root}"]))
    assert stats["num_categories"] == data.cmap.num_classes == 12 + 6
    assert [c["image_count"] for c in stats["categories"]] == list(data.stats.image_counts)
    assert sum(stats["groups"].values()) == 18


def _broken_release(root: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    shutil.copytree(_release(root), folder)
    return folder


def _train_on(folder: Path, tmp_path: Path):
    return CliRunner().invoke(app, ["train", "dataset=openimages", f"dataset.root={folder}",
                                    "dataset.hierarchy_json=${.root}/bbox_labels_hierarchy.json",
                                    "schedule=smoke", "progress=false",
                                    f"output_root={tmp_path / 'out'}", "loss=bce"])


def test_release_with_a_missing_column_stops_in_one_line(run, tmp_path):
    root, _ = run
    folder = _broken_release(root, tmp_path)
    path = folder / "train-annotations-bbox.csv"
    rows = list(csv.reader(path.open()))
    drop = rows[0].index("XMax")
    path.write_text("\n".join(",".join(v for j, v in enumerate(r) if j != drop)
                              for r in rows) + "\n")
    r = _train_on(folder, tmp_path)
    assert r.exit_code == 2, r.output
    assert "train-annotations-bbox.csv" in r.output and "XMax" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs"
                                                               ).iterdir())


def test_release_with_a_missing_image_or_a_cycle_stops_in_one_line(run, tmp_path):
    root, _ = run
    folder = _broken_release(root, tmp_path)
    victim = sorted((folder / "validation").iterdir())[0]
    victim.unlink()
    r = _train_on(folder, tmp_path)
    assert r.exit_code == 2 and victim.stem in r.output and "Traceback" not in r.output
    shutil.copy(_release(root) / "validation" / victim.name, victim)
    tree = json.loads((folder / "bbox_labels_hierarchy.json").read_text())
    shape = tree["Subcategory"][0]
    leaf = shape["Subcategory"][0]
    leaf["Subcategory"] = [{"LabelName": shape["LabelName"]}]  # shape -> leaf -> shape
    (folder / "bbox_labels_hierarchy.json").write_text(json.dumps(tree))
    r = _train_on(folder, tmp_path)
    assert r.exit_code == 2 and "cycle" in r.output and "Traceback" not in r.output

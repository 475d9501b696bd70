"""Re-scoring explains itself: ``acsl eval dets=`` says how many of the ground truth's
images the detections cover, and a run's metrics.json says which val images it scored
(``schedule.eval_max_images``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "lvis_v0.5_val_100.json"


def _gt_as_dets(images: list[dict], anns: list[dict]) -> list[dict]:
    keep = {im["id"] for im in images}
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in anns if a["image_id"] in keep]


def test_eval_dets_states_its_coverage_of_the_ground_truth(tmp_path):
    gt = json.loads(FIXTURE.read_text())
    with_boxes = sorted({a["image_id"] for a in gt["annotations"]})
    part = [im for im in gt["images"] if im["id"] in set(with_boxes[:7])]
    dets = tmp_path / "results.json"
    dets.write_text(json.dumps(_gt_as_dets(part, gt["annotations"])))
    proc = subprocess.run([sys.executable, "-m", "acsl_cli", "eval", f"dets={dets}",
                           f"ann={FIXTURE}"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # the note may wrap under the table
    n = len(gt["images"])
    assert f"detections cover 7 of {n} images of {FIXTURE.name}; the other {n - 7} count " \
           "as missed" in out, out

    full = tmp_path / "all.json"
    full.write_text(json.dumps(_gt_as_dets(gt["images"], gt["annotations"])))
    from acsl_cli.evaluation.results import evaluate_results_file

    covered = len({a["image_id"] for a in gt["annotations"]})
    line = evaluate_results_file(full, FIXTURE).coverage
    assert line.startswith(f"detections cover {covered} of {n} images of {FIXTURE.name}")
    assert ("missed" in line) == (covered < n)


def test_a_run_records_the_val_images_it_scored(tmp_path):
    from acsl_cli.evaluation.results import evaluate_results_file
    from acsl_cli.pipeline.train import run_train

    res = run_train([*TINY, "schedule.max_iters=2", "schedule.eval_max_images=3",
                     f"output_root={tmp_path}", "loss=bce"])
    val = next(tmp_path.glob("cache/data/*/val.json"))
    total = len(json.loads(val.read_text())["images"])
    assert total > 3
    note = (res.run_dir / "metrics.md").read_text()
    assert f"scored 3 of {total} val images (the first 3: schedule.eval_max_images)" in note
    rows = json.loads((res.run_dir / "metrics.json").read_text())
    assert all("val_images" not in row for row in rows.values())  # rows: metrics only
    line = evaluate_results_file(res.run_dir / "heads" / "bce" / "results.json", val).coverage
    covered = int(line.split()[2])
    assert 0 < covered <= 3 and line.startswith(f"detections cover {covered} of {total} ")

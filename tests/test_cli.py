"""The ``acsl`` command end to end, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app

FIXTURE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"  # see data/README.md
METRICS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}


def acsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real console entry point, as a researcher runs it."""
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    out = work / "m.json"
    proc = acsl("train", "schedule=smoke", f"out={out}", "progress=false", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work, proc, out


def test_smoke_train_writes_a_complete_run(smoke_run):
    work, proc, out = smoke_run
    runs = [p for p in (work / "outputs" / "runs").iterdir()]
    assert len(runs) == 1 and not runs[0].name.startswith(".")
    run = runs[0]
    for name in ("config.yaml", "train.log", "metrics.json", "metrics.csv", "metrics.md",
                 "per_category_ap.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics) == ["stage1 (softmax CE)", "acsl xi=0.7 bg=official"]
    for row in metrics.values():
        assert set(row) == METRICS
        assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())
    assert json.loads(out.read_text()) == metrics["acsl xi=0.7 bg=official"]
    ckpts = list(run.glob("heads/*/checkpoint.pt"))
    assert len(ckpts) == 1 and (ckpts[0].parent / "config.yaml").is_file()
    assert "APr" in proc.stdout and "run directory" in proc.stdout
    # per-category CSV: one row per category with GT in the evaluated val images
    val = json.loads(next((work / "outputs" / "cache" / "data").glob("*/val.json")).read_text())
    first = {im["id"] for im in sorted(val["images"], key=lambda i: i["id"])[:24]}  # smoke
    with_gt = {a["category_id"] for a in val["annotations"] if a["image_id"] in first}
    rows = (run / "per_category_ap.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows} == with_gt


def test_second_run_reuses_stage1_and_eval_ckpt_reproduces(smoke_run):
    work, _, _ = smoke_run
    proc = acsl("train", "schedule=smoke", "loss=bce", "progress=false", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "stage 1 reused" in proc.stdout
    run = max((work / "outputs" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    saved = json.loads((run / "metrics.json").read_text())["bce"]
    ckpt = next(run.glob("heads/*/checkpoint.pt"))
    out = work / "eval.json"
    proc = acsl("eval", f"ckpt={ckpt}", f"out={out}", "progress=false", cwd=work)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(out.read_text())
    for k in METRICS:
        assert (again[k] is None and saved[k] is None) or abs(again[k] - saved[k]) < 1e-9


def test_eval_results_file_perfect_detections_give_ap_1(tmp_path):
    gt = json.loads(FIXTURE.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0 - 1e-4 * i} for i, a in enumerate(gt["annotations"])]
    dets_file = tmp_path / "dets.json"
    dets_file.write_text(json.dumps(dets))
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", f"dets={dets_file}", f"ann={FIXTURE}", f"out={out}"])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["APr"] == pytest.approx(1.0) and m["APf"] == pytest.approx(1.0)


def _bad(args: list[str], tmp_path: Path, expect: str) -> None:
    out = f"output_root={tmp_path / 'outputs'}"
    res = CliRunner().invoke(app, [*args, out, "progress=false"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.output
    assert "Traceback" not in res.output
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    "args, expect",
    [
        (["train", "loss=nope"], "unknown loss 'nope'"),
        (["train", "backbone=vgg"], "unknown backbone 'vgg'"),
        (["train", "dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["train", "xi=1.5"], "xi=1.5"),
        (["train", "xi=0"], "xi=0"),
        (["train", "dataset=coco_format"], "missing value for dataset"),
        (["train", "dataset=coco_format", "dataset.train_ann=/no/such.json",
          "dataset.val_ann=/no/v.json", "dataset.train_images=/x", "dataset.val_images=/x"],
         "/no/such.json: annotation file not found"),
        (["train", "schedule=smoke", "loss=bags", "loss.bins=[10,100,1000]"],
         "no class has a train instance count in bin [1000, inf)"),
        (["train", "dataset=openimages_synthetic", "dataset.image_size=32"],
         "max_object_size=40: need cluster < min <= max <= image_size (32)"),
        (["train", "dataset=openimages_synthetic", "dataset.min_cluster_objects=3"],
         "dataset.min_cluster_objects=3"),
        (["train", "dataset=openimages_synthetic", "dataset.min_cluster_objects=8",
          "dataset.max_cluster_objects=6"], "need <= max_cluster_objects (6)"),
        (["eval"], "needs ckpt=PATH"),
        (["eval", "ckpt=/no/such.pt"], "/no/such.pt: checkpoint not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(args, expect, tmp_path):
    _bad(args, tmp_path, expect)


FOLDER_KEY = "writes a folder, given as out_dir=DIR (out= is the JSON file of train"
FILE_KEY = "out_dir: this command writes one JSON file, given as out=FILE.json"


@pytest.mark.parametrize("args, expect", [
    (["show", "ckpt=/no/such.pt", "out=pics"], "out=pics: acsl show " + FOLDER_KEY),
    (["report", "/no/such/run", "out=cmp"], "out=cmp: acsl report " + FOLDER_KEY),
    (["train", "out_dir=x"], FILE_KEY),
    (["sweep", "seed=0,1", "out_dir=x"], FILE_KEY),
    (["eval", f"dets={FIXTURE}", f"ann={FIXTURE}", "out_dir=x"], FILE_KEY),
    (["data", "stats", "out_dir=x"], FILE_KEY),
])
def test_out_is_a_file_and_out_dir_a_folder_each_refused_where_it_is_not(args, expect,
                                                                          tmp_path):
    """show and report write folders (``out_dir=``); train, sweep, eval and data stats one
    JSON file (``out=``): the other name is one line pointing at the right one."""
    _bad(args, tmp_path, expect)


def test_results_with_unknown_ids_are_rejected(tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                                 "score": 0.5}]))
    _bad(["eval", f"dets={dets}", f"ann={FIXTURE}"], tmp_path, str(dets))
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    _bad(["eval", f"dets={bad}", f"ann={FIXTURE}"], tmp_path, str(bad))


def test_checkpoint_for_other_classes_is_rejected(smoke_run, tmp_path):
    work, _, _ = smoke_run
    ckpt = next((work / "outputs" / "runs").glob("*/heads/*/checkpoint.pt"))
    _bad(["eval", f"ckpt={ckpt}", "dataset.num_classes=30",
          f"output_root={work / 'outputs'}"], tmp_path, "do not match")
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"garbage")
    _bad(["eval", f"ckpt={corrupt}"], tmp_path, "not a readable checkpoint")


def test_sweep_runs_each_seed_and_averages(tmp_path):
    from tests.test_engine import TINY

    res = CliRunner().invoke(app, ["sweep", *TINY, "seed=0,1", "loss=bce,acsl",
                                   f"output_root={tmp_path}", f"out={tmp_path / 'm.json'}"])
    assert res.exit_code == 0, res.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if "sweep-" in p.name)
    assert len(runs) == 2
    per_run = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert list(per_run[0]) == ["stage1 (softmax CE)", "bce", "acsl xi=0.7 bg=official"]
    assert per_run[0]["stage1 (softmax CE)"] != per_run[1]["stage1 (softmax CE)"]  # 2 seeds
    summary = next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("-sweep"))
    mean = json.loads((summary / "metrics.json").read_text())
    for row in mean:
        for k, v in mean[row].items():
            vals = [r[row][k] for r in per_run]
            if v is not None:
                assert v == pytest.approx(sum(vals) / 2)
    assert "±" in (summary / "summary.md").read_text()
    assert json.loads((tmp_path / "m.json").read_text()) == mean["acsl xi=0.7 bg=official"]

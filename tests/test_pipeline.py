"""What the pipeline promises between its rooms: cache-independent stage 2, sweep
statistics, identical heads under DDP, one-line errors on every command's path."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.pipeline.train import run_train
from tests.test_engine import TINY

HERE = Path(__file__).resolve().parent


def test_stage2_is_the_same_with_stage1_trained_or_loaded_from_the_cache(tmp_path):
    args = [*TINY, f"output_root={tmp_path}", "loss=bce,acsl"]
    first = run_train(args)
    second = run_train(args)
    assert not first.stage1_reused and second.stage1_reused
    assert first.metrics == second.metrics  # every head, every metric, exactly
    h1 = json.loads(next(first.run_dir.glob("heads/bce/history.json")).read_text())
    h2 = json.loads(next(second.run_dir.glob("heads/bce/history.json")).read_text())
    assert h1 == h2


def test_a_head_with_fresh_columns_is_the_same_with_stage1_trained_or_loaded(tmp_path):
    """BAGS's classifier rows are drawn, not copied from stage 1: their draw must not depend
    on how much of the global random stream training stage 1 used."""
    args = [*TINY, f"output_root={tmp_path}", "loss=bags", "loss.bins=[4]"]
    first, second = run_train(args), run_train(args)
    assert not first.stage1_reused and second.stage1_reused
    assert first.metrics == second.metrics
    h1, h2 = (json.loads(next(r.run_dir.glob("heads/bags/history.json")).read_text())
              for r in (first, second))
    assert h1 == h2


def test_sweep_std_is_the_sample_std_of_the_runs(tmp_path):
    res = CliRunner().invoke(app, ["sweep", *TINY, "seed=0,1,2", "loss=bce",
                                   f"output_root={tmp_path}"])
    assert res.exit_code == 0, res.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if "-sweep-" in p.name)
    per_run = [json.loads((r / "metrics.json").read_text()) for r in runs]
    summary = next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("-sweep"))
    std = json.loads((summary / "std.json").read_text())
    checked = 0
    for row, metrics in std.items():
        for k, v in metrics.items():
            vals = [r[row][k] for r in per_run]
            if any(x is None for x in vals):
                assert v is None
                continue
            assert v == pytest.approx(statistics.stdev(vals), abs=1e-12)
            checked += 1
    assert checked >= 8
    # strict JSON everywhere: undefined metrics (APl on 128-px images) are null, never NaN
    def no_nan(c: str) -> None:
        pytest.fail(f"non-strict JSON constant {c}")

    for f in [summary / "std.json", summary / "metrics.json", runs[0] / "metrics.json"]:
        json.loads(f.read_text(), parse_constant=no_nan)


def _one_line_error(res, expect: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.output


@pytest.fixture(scope="module")
def head_ckpt(tmp_path_factory):
    """A bce head's checkpoint; Seesaw with the normalised classifier shares its pass."""
    root = tmp_path_factory.mktemp("o")
    res = run_train([*TINY, f"output_root={root}", "loss=bce,seesaw_normed"])
    return root, res.run_dir / "heads" / "bce" / "checkpoint.pt"


def test_a_normed_head_trains_beside_a_plain_one_and_eval_rebuilds_its_layer(head_ckpt,
                                                                             tmp_path):
    """``loss=bce,seesaw_normed``: both heads train in one pass and are scored; the normed
    head's checkpoint names its layer, and ``eval ckpt=`` scores it with that layer (the
    run's row again, every metric)."""
    from acsl_cli.engine.checkpoint import load_checkpoint
    from acsl_cli.models.classifier import ClassifierSpec
    from acsl_cli.pipeline.components import classifier_spec
    from acsl_cli.plan import checkpoint_settings, plan_eval

    root, bce = head_ckpt
    run = bce.parents[2]
    rows = json.loads((run / "metrics.json").read_text())
    assert list(rows)[1:] == ["bce", "seesaw normed T=20"]
    path = run / "heads" / "seesaw_normed_T20" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert (ckpt["loss"]["classifier"], ckpt["loss"]["temperature"]) == ("normed", 20.0)
    (stage1,) = root.glob("cache/stage1/*/checkpoint.pt")
    s1 = load_checkpoint(stage1)["model"]["roi_heads.box_predictor.cls_score.weight"]
    for head in (bce, path):  # trained: no longer the stage-1 rows it started from
        w = load_checkpoint(head)["classifier"]["weight"]
        assert not torch.equal(w[-s1.shape[0] + 1:], s1[1:]), head
    _, loss = checkpoint_settings(plan_eval([f"ckpt={path}"]), ckpt)
    assert classifier_spec(loss) == ClassifierSpec("normed", 20.0)
    _, other = checkpoint_settings(plan_eval([f"ckpt={path}", "loss.temperature=10"]), ckpt)
    assert classifier_spec(other) == ClassifierSpec("normed", 10.0)  # overrides apply
    for head, kind in ((path, "linear"), (bce, "normed")):  # but not to the layer's kind
        res = CliRunner().invoke(app, ["eval", f"ckpt={head}", f"loss.classifier={kind}",
                                       f"out={tmp_path / 'no.json'}", "progress=false"])
        _one_line_error(res, f"loss.classifier={kind}: {head} is a head trained with the")
    assert not (tmp_path / "no.json").exists()
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", f"ckpt={path}", f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    again, saved = json.loads(out.read_text()), rows["seesaw normed T=20"]
    for k in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert (again[k] is None and saved[k] is None) or abs(again[k] - saved[k]) < 1e-9, k


def test_eval_ckpt_goes_through_the_same_override_grammar(head_ckpt, tmp_path):
    root, ckpt = head_ckpt
    runner = CliRunner()
    _one_line_error(runner.invoke(app, ["eval", f"ckpt={ckpt}", "dataset=lvis_v0.5",
                                        "dataset.root=/no/lvis"]), "/no/lvis")
    _one_line_error(runner.invoke(app, ["eval", f"ckpt={ckpt}", "seed=abc"]), "seed='abc'")
    _one_line_error(runner.invoke(app, ["eval", f"ckpt={ckpt}", "nokey=1"]), "nokey")
    _one_line_error(runner.invoke(app, ["train", "seed=abc"]), "seed='abc'")
    _one_line_error(runner.invoke(app, ["train", "schedule.workers=1.5"]), "schedule.workers")
    _one_line_error(runner.invoke(app, ["train", "schedule.stage2.lr=-1"]),
                    "schedule.stage2.lr")
    # and a good override still applies: same checkpoint, fewer val images
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["eval", f"ckpt={ckpt}", "schedule.eval_max_images=4",
                              f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(out.read_text())) >= {"AP", "APr"}


def test_ddp_heads_end_identical_on_both_ranks(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_heads.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        assert torch.equal(a[name]["weight"], b[name]["weight"]), name
        assert not torch.equal(a[name]["weight"], a[name]["start"]), name  # it did train


def test_plain_coco_copy_of_the_benchmark_trains_with_the_train_groups(tmp_path):
    """LVIS fields stripped: the run still reports 24 r / 22 c / 14 f, taken from train."""
    from acsl_cli.data.synthetic.shapes import SyntheticSpec, ensure_generated

    src = ensure_generated(SyntheticSpec(), tmp_path / "gen")
    coco = tmp_path / "coco"
    coco.mkdir()
    for split in ("train", "val"):
        data = json.loads((src / f"{split}.json").read_text())
        for c in data["categories"]:
            for k in ("frequency", "image_count", "instance_count"):
                c.pop(k, None)
        for im in data["images"]:
            im.pop("neg_category_ids", None)
            im.pop("not_exhaustive_category_ids", None)
        (coco / f"{split}.json").write_text(json.dumps(data))
    res = run_train([
        "schedule=smoke", "progress=false", f"output_root={tmp_path / 'o'}", "loss=bce",
        "dataset=coco_format", f"dataset.train_ann={coco / 'train.json'}",
        f"dataset.val_ann={coco / 'val.json'}", f"dataset.train_images={src}",
        f"dataset.val_images={src}", "dataset.min_size=128", "dataset.max_size=128"])
    line = "groups from train: 24 r / 22 c / 14 f"
    assert line in (res.run_dir / "train.log").read_text()
    assert line in (res.run_dir / "metrics.md").read_text()
    assert all(m["APr"] is not None for m in json.loads(
        (res.run_dir / "metrics.json").read_text()).values())


def test_a_killed_sweep_resumes_to_the_same_tables(tmp_path):
    args = [*TINY, "seed=0,1", "loss=bce", "run_name=S"]
    straight = tmp_path / "a"
    res = CliRunner().invoke(app, ["sweep", *args, f"output_root={straight}"])
    assert res.exit_code == 0, res.output
    killed = tmp_path / "b"
    cmd = [sys.executable, "-m", "acsl_cli", "sweep", *args, f"output_root={killed}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 300
    while not (killed / "runs" / "S-sweep-0").exists() and time.time() < deadline:
        time.sleep(0.1)
    p.kill()
    p.wait()
    assert not (killed / "runs" / "S-sweep").exists()  # it was stopped before the end
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for f in ("metrics.json", "std.json"):
        assert json.loads((killed / "runs" / "S-sweep" / f).read_text()) == json.loads(
            (straight / "runs" / "S-sweep" / f).read_text()), f
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "complete already" in again.stderr
    # the name of another sweep: the message says what differs, nothing is trained
    other = CliRunner().invoke(app, ["sweep", *TINY, "seed=0,1", "loss=acsl", "run_name=S",
                                     f"output_root={straight}"])
    assert other.exit_code == 2 and "holds another sweep (heads: bce -> acsl" in other.output
    more = CliRunner().invoke(app, ["sweep", *TINY, "seed=0,1,2", "loss=bce", "run_name=S",
                                    f"output_root={straight}"])
    assert more.exit_code == 2, more.output
    assert "its runs: seed=0; seed=1; this one: seed=0; seed=1; seed=2" in more.output
    assert sorted(p.name for p in (straight / "runs").iterdir()) == ["S-sweep", "S-sweep-0",
                                                                    "S-sweep-1"]


def test_run_records_reproduce_and_parse(tmp_path):
    res = run_train([*TINY, f"output_root={tmp_path}", "loss=bce,acsl",
                     "schedule.eval_max_images=null"])
    val = next(tmp_path.glob("cache/data/*/val.json"))
    for hid, label in (("bce", "bce"), ("acsl_xi0.7_bgofficial", "acsl xi=0.7 bg=official")):
        out = tmp_path / f"{hid}.json"
        r = CliRunner().invoke(app, ["eval", f"dets={res.run_dir / 'heads' / hid / 'results.json'}",
                                     f"ann={val}", f"out={out}"])
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text()) == json.loads(
            (res.run_dir / "metrics.json").read_text())[label]
    events = [json.loads(line) for line in
              (res.run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds.count("eval") == 3 and "train" in kinds
    assert {"command", "versions", "git_commit", "device", "world_size"} <= set(events[0])
    stages = {e["stage"] for e in events if e["type"] == "train"}
    assert stages == {"stage 1", "stage 2"}
    log = (res.run_dir / "train.log").read_text()
    assert any(line.startswith("| acsl xi=0.7 bg=official |")
               for line in log.splitlines()[-5:])  # the final table closes the log
    import csv

    rows = list(csv.DictReader((res.run_dir / "per_category_ap.csv").open()))
    from acsl_cli.data.annotations import read_annotations

    train = read_annotations(next(tmp_path.glob("cache/data/*/train.json")))
    images = {c["id"]: c["image_count"] for c in train["categories"]}
    assert all(int(r["train_images"]) == images[int(r["category_id"])] for r in rows)

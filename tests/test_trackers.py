"""Trackers hold the run's curves and final metrics: TensorBoard event files, a W&B
offline run; a stage 1 reused from the cache replays its saved curve into them."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.reporting import trackers
from tests.test_engine import TINY
from tests.wandb_records import read_run


def _train(root, name, *extra):
    res = CliRunner().invoke(app, ["train", *TINY, f"output_root={root}", "loss=bce",
                                   f"run_name={name}", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((root / "runs" / name / "metrics.json").read_text())["bce"]


def _events(root, name):
    lines = (root / "runs" / name / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_tensorboard_and_wandb_hold_the_curves_and_final_metrics(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = tmp_path / "o"
    metrics = _train(root, "tb", "tracker=tensorboard")
    acc = EventAccumulator(str(root / "runs" / "tb" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    stage2 = [e.value for e in acc.Scalars("stage2/bce")]  # one curve per head
    logged = [e for e in _events(root, "tb") if e["type"] == "train" and e["stage"] == "stage 2"]
    assert stage2 == pytest.approx([e["bce"] for e in logged])
    assert acc.Scalars("eval/bce/AP")[0].value == pytest.approx(metrics["AP"])
    assert "stage1/loss" in scalars and "config/text_summary" in acc.Tags()["tensors"]

    again = _train(root, "wb", "tracker=wandb")  # stage 1 from the cache
    assert again == metrics
    replayed = [e for e in _events(root, "wb") if e.get("replayed")]
    trained = [e for e in _events(root, "tb") if e["type"] == "train" and e["stage"] == "stage 1"]
    assert [(e["iter"], e["loss"]) for e in replayed] == [(e["iter"], e["loss"]) for e in trained]
    (run_file,) = (root / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.time() + 60  # W&B's service process may still be writing its file
    history, summary = read_run(run_file)
    while "eval/bce/AP" not in summary and time.time() < deadline:
        time.sleep(0.5)
        history, summary = read_run(run_file)
    curve = [row["stage2/bce"] for row in history if "stage2/bce" in row]
    assert curve == pytest.approx([e["bce"] for e in logged])  # same seed, same curve
    assert [row["stage1/loss"] for row in history if "stage1/loss" in row] == pytest.approx(
        [e["loss"] for e in trained])
    assert summary["eval/bce/AP"] == pytest.approx(metrics["AP"])


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(trackers._PACKAGE, "wandb", "no_such_package_acsl")
    res = CliRunner().invoke(app, ["train", "tracker=wandb", f"output_root={tmp_path / 'o'}"])
    assert res.exit_code == 2 and "tracker=wandb needs the no_such_package_acsl" in res.output
    assert not (tmp_path / "o").exists()


def test_validation_events_go_to_their_stages_curve_and_final_metrics_to_eval():
    """Rule: an ``eval`` event with an epoch is validation during training and is drawn as
    ``val_<stage>/<model>/<metric>`` at that epoch; one without is the run's final metric
    (``eval/<model>``, step 0); train events are ``<stage>/<loss>`` at their iteration.
    Undefined (nan) metrics and the event's own fields are not scalars."""
    val = {"type": "eval", "model": "bce", "stage": "stage 2", "epoch": 3, "images": 8,
           "AP": 0.25, "APr": float("nan")}
    assert trackers._scalars(val) == ("val_stage2/bce", 3, {"AP": 0.25})
    final = {"type": "eval", "model": "bce", "images": 8, "AP": 0.5}
    assert trackers._scalars(final) == ("eval/bce", 0, {"AP": 0.5})
    train = {"type": "train", "stage": "stage 1", "iter": 7, "epoch": 1, "loss": 1.5,
             "lr": 0.02}
    assert trackers._scalars(train) == ("stage1", 7, {"loss": 1.5, "lr": 0.02})
    assert trackers._scalars({"type": "start"}) is None and trackers._scalars("x") is None

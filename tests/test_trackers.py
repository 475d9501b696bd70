"""Trackers hold the run's curves and final metrics: TensorBoard event files, a W&B
offline run; a stage 1 reused from the cache replays its saved curve into them."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.reporting import trackers
from tests.test_engine import TINY
from tests.wandb_records import read_run

#: a head whose id (acsl_xi0.7_bgofficial) is not its label (acsl xi=0.7 bg=official)
HEAD_ID, LABEL = "acsl_xi0.7_bgofficial", "acsl xi=0.7 bg=official"


def _train(root, name, *extra):
    res = CliRunner().invoke(app, ["train", *TINY, f"output_root={root}", "loss=acsl",
                                   "xi=0.7", f"run_name={name}", *extra])
    assert res.exit_code == 0, res.output
    heads = yaml.safe_load((root / "runs" / name / "config.yaml").read_text())["heads"]
    assert {h: v["label"] for h, v in heads.items()} == {HEAD_ID: LABEL}
    return json.loads((root / "runs" / name / "metrics.json").read_text())[LABEL]


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
    stage2 = [e.value for e in acc.Scalars(f"stage2/{HEAD_ID}")]  # one curve per head
    logged = [e for e in _events(root, "tb") if e["type"] == "train" and e["stage"] == "stage 2"]
    assert stage2 == pytest.approx([e[HEAD_ID] for e in logged])
    assert acc.Scalars(f"eval/{HEAD_ID}/AP")[0].value == pytest.approx(metrics["AP"])
    assert "stage1/loss" in scalars and "config/text_summary" in acc.Tags()["tensors"]
    # one name per model: the head's id for its loss curve and its metrics, stage1 for the
    # stage-1 detector (the cache scores it as "model", the run's rows say "stage1 (...)")
    curves = {t.split("/")[1] for t in scalars if t.startswith("stage2/")} - {"lr"}
    evaluated = {t.split("/")[1] for t in scalars if t.startswith("eval/")}
    assert curves == {HEAD_ID} and evaluated == {HEAD_ID, "stage1"}

    again = _train(root, "wb", "tracker=wandb")  # stage 1 from the cache
    assert again == metrics
    replayed = [e for e in _events(root, "wb") if e.get("replayed")]
    trained = [e for e in _events(root, "tb") if e["type"] == "train" and e["stage"] == "stage 1"]
    assert [(e["iter"], e["loss"]) for e in replayed] == [(e["iter"], e["loss"]) for e in trained]
    (run_file,) = (root / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.time() + 60  # W&B's service process may still be writing its file
    history, summary = read_run(run_file)
    while f"eval/{HEAD_ID}/AP" not in summary and time.time() < deadline:
        time.sleep(0.5)
        history, summary = read_run(run_file)
    curve = [row[f"stage2/{HEAD_ID}"] for row in history if f"stage2/{HEAD_ID}" in row]
    assert curve == pytest.approx([e[HEAD_ID] for e in logged])  # same seed, same curve
    assert [row["stage1/loss"] for row in history if "stage1/loss" in row] == pytest.approx(
        [e["loss"] for e in trained])
    assert summary[f"eval/{HEAD_ID}/AP"] == pytest.approx(metrics["AP"])


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


def test_each_model_has_one_name_in_training_validation_and_final_metrics(tmp_path):
    """The events a run logs name a head by its id (loss curve, final metrics) or by its
    label (validation, NorCal rows), the stage-1 detector "stage1 (softmax CE)" or "model":
    TensorBoard holds each under one name, read back from its event files."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from acsl_cli.reporting.runs import STAGE1_ROW

    events = [  # as engine/iter_log.py and pipeline/evaluate.py write them
        {"type": "train", "stage": "stage 2", "iter": 0, "epoch": 0, "lr": 0.1, HEAD_ID: 0.5},
        {"type": "eval", "model": STAGE1_ROW, "stage": "stage 1", "epoch": 1, "AP": 0.1},
        {"type": "eval", "model": "model", "images": 8, "AP": 0.11},
        {"type": "eval", "model": LABEL, "stage": "stage 2", "epoch": 1, "AP": 0.2},
        {"type": "eval", "model": HEAD_ID, "images": 8, "AP": 0.3},
        {"type": "eval", "model": f"{HEAD_ID} [fixed]", "images": 8, "AP": 0.31},
        {"type": "eval", "model": f"{LABEL} norcal gamma=0.5", "images": 8, "AP": 0.32},
    ]
    handler = trackers.tracker_handlers("tensorboard", tmp_path, tmp_path, {}, "", "r",
                                        {HEAD_ID: LABEL, "bce": "bce"})[0]
    for e in events:
        handler.emit(logging.makeLogRecord({"msg": "", "event": e}))
    handler.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    got = {t: acc.Scalars(t)[0].value for t in acc.Tags()["scalars"]}
    assert got == pytest.approx({
        f"stage2/{HEAD_ID}": 0.5, "stage2/lr": 0.1, "val_stage1/stage1/AP": 0.1,
        "eval/stage1/AP": 0.11, f"val_stage2/{HEAD_ID}/AP": 0.2, f"eval/{HEAD_ID}/AP": 0.3,
        f"eval/{HEAD_ID} [fixed]/AP": 0.31, f"eval/{HEAD_ID} norcal gamma=0.5/AP": 0.32})
    assert trackers.model_tag("bce norcal gamma=1", {"bce": "bce", "b": "bce norcal"}) == \
        "b gamma=1"  # the longest label that the name starts with

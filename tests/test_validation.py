"""``schedule.eval_every_epochs``: one evaluation per epoch of each stage in the event log,
results unchanged by validating, and the report's AP-against-epoch figure."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.reporting.curves import validation_points
from acsl_cli.reporting.runs import load_runs
from tests.test_engine import TINY

# two epochs per stage: smoke's max_iters (6) would stop inside the first epoch
EPOCHS = ["schedule.max_iters=null", "schedule.stage1.epochs=2", "schedule.stage2.epochs=2"]


def _run(root, name, *extra):
    res = CliRunner().invoke(app, ["train", *TINY, *EPOCHS, f"output_root={root}",
                                   "loss=bce", f"run_name={name}", *extra])
    assert res.exit_code == 0, res.output
    return root / "runs" / name


def test_one_validation_per_epoch_and_the_same_results(tmp_path):
    root = tmp_path / "o"
    validated = _run(root, "val", "schedule.eval_every_epochs=1")
    events = [json.loads(x) for x in (validated / "events.jsonl").read_text().splitlines()]
    during = [(e["stage"], e["model"], e["epoch"]) for e in events
              if e["type"] == "eval" and "epoch" in e]
    assert during == [("stage 1", "stage1 (softmax CE)", 1), ("stage 1", "stage1 (softmax CE)", 2),
                      ("stage 2", "bce", 1), ("stage 2", "bce", 2)]
    final = json.loads((validated / "metrics.json").read_text())
    last = next(e for e in events if e["type"] == "eval" and e.get("epoch") == 2
                and e["stage"] == "stage 2")
    assert last["AP"] == final["bce"]["AP"]  # the last epoch's validation is the final head
    plain = _run(root, "plain")  # stage 1 from the cache, no validation
    assert json.loads((plain / "metrics.json").read_text()) == final
    (run,) = load_runs([validated])
    assert len(validation_points(run)) == 2
    report = CliRunner().invoke(app, ["report", str(validated), f"out_dir={tmp_path / 'r'}"])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "r" / "validation.png").stat().st_size > 1000

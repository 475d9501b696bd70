"""Issue 25, pooling: sweeps, ``acsl report`` and a sweep's reuse check pool only runs that
differ in nothing but the seed (one rule, ``settings.pooling``), whatever other runs are in
the same report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acsl_cli.errors import ConfigError
from acsl_cli.pipeline.reuse import finished_run
from acsl_cli.plan import plan_sweep
from acsl_cli.reporting.compare import _variants
from acsl_cli.reporting.runs import Run
from tests.conftest import TINY


def acsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> dict[str, Path]:
    """The issue's three runs: a Faster R-CNN run (trained), the same with class-agnostic
    boxes and a Cascade R-CNN run (its copies with the config each of those runs saves:
    the cascade's ``detector`` section holds no ``class_agnostic_boxes``)."""
    work = tmp_path_factory.mktemp("pool")
    root = work / "o"
    proc = acsl("train", *TINY, "loss=bce", "run_name=fas", f"output_root={root}", cwd=work)
    assert proc.returncode == 0, proc.stderr
    runs = root / "runs"
    cascade = plan_sweep(["detector=cascade_rcnn"]).runs[0].settings.as_dict()["detector"]
    assert "class_agnostic_boxes" not in cascade
    for name, detector, shift in (("agn", {"class_agnostic_boxes": True}, 0.2),
                                  ("cas", None, 0.4)):
        shutil.copytree(runs / "fas", runs / name)
        cfg = yaml.safe_load((runs / name / "config.yaml").read_text())
        if detector is None:
            cfg["detector"] = cascade
        else:
            cfg["detector"].update(detector)
        (runs / name / "config.yaml").write_text(yaml.safe_dump(cfg))
        metrics = json.loads((runs / name / "metrics.json").read_text())
        for row in metrics.values():  # other numbers: a pooled row would have a std
            row["AP"] = min(1.0, row["AP"] + shift)
        (runs / name / "metrics.json").write_text(json.dumps(metrics))
    return {"work": work, "fas": runs / "fas", "agn": runs / "agn", "cas": runs / "cas"}


def test_report_pooling_keeps_apart_runs_that_differ_in_an_outcome_setting(three):
    """``acsl report runs/cas runs/fas runs/agn``: fas and agn were one row, "mean of 2
    seeds", std 0."""
    out = three["work"] / "report"
    proc = acsl("report", str(three["cas"]), str(three["fas"]), str(three["agn"]),
                f"out_dir={out}", cwd=three["work"])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 6  # stage 1 and bce, for each of the three runs
    assert all(len(r["runs"]) == 1 and r["seeds"] == [0] for r in rows)
    by_run = {r["runs"][0]: r for r in rows if r["loss"] == "bce"}
    assert "detector.class_agnostic_boxes=true" in by_run["agn"]["variant"]
    assert "detector.class_agnostic_boxes=false" in by_run["fas"]["variant"]
    assert "detector.name=cascade_rcnn" in by_run["cas"]["variant"]
    for name in ("fas", "agn"):  # each row is its own run's number
        saved = json.loads((three[name] / "metrics.json").read_text())["bce"]["AP"]
        assert by_run[name]["mean"]["AP"] == pytest.approx(100 * saved, abs=0.006)


def test_report_pooling_still_pools_runs_that_differ_only_in_the_seed(three, tmp_path):
    """The same rule pools a copy of the Faster run with another seed, beside the cascade."""
    other = tmp_path / "runs" / "fas1"
    shutil.copytree(three["fas"], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["seed"] = 1
    cfg["provenance"] = {"command": "elsewhere"}  # the run's record of itself: not compared
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    from acsl_cli.reporting.compare import compare
    from acsl_cli.reporting.runs import load_runs

    c = compare(load_runs([three["cas"], three["fas"], other]))
    pooled = [r for r in c.rows if len(r.runs) == 2]
    assert {tuple(r.runs) for r in pooled} == {("fas", "fas1")}
    assert all(r.seeds == [0, 1] for r in pooled)


def _run(path: str, config: dict) -> Run:
    return Run(Path(path), config.get("seed"), "", config, {})


def test_report_pooling_sweep_and_report_use_one_rule():
    """A sweep's variants are the report's variants of the same runs (they were the sweep's
    override text, so a sweep and a report of it named and pooled rows differently)."""
    plan = plan_sweep(["seed=0,1", "detector=faster_rcnn,cascade_rcnn", "loss=bce"])
    configs = [r.settings.as_dict() for r in plan.runs]
    report = _variants([_run(f"/r{i}", c) for i, c in enumerate(configs)])
    assert list(plan.variants) == [report[Path(f"/r{i}")] for i in range(4)]
    assert plan.variants[0] == plan.variants[2] != plan.variants[1] == plan.variants[3]
    # a setting that cannot change a result does not split a sweep's runs
    workers = plan_sweep(["seed=0,1", "schedule.workers=0,1", "loss=bce"])
    assert workers.variants == ("", "", "", "")


def test_report_pooling_reuse_check_counts_a_missing_key_at_its_default(tmp_path):
    """A saved run whose config lacks ``detector.class_agnostic_boxes`` (the cascade's
    and older runs' configs) ran with the default: it is not reused for ``=true``."""
    from omegaconf import OmegaConf

    (plan,) = plan_sweep(["seed=0", "loss=bce", "detector.class_agnostic_boxes=true"]).runs
    cfg = plan.settings.as_dict()
    del cfg["detector"]["class_agnostic_boxes"]
    cfg["heads"] = {h.id: {"label": h.label, "loss": h.loss.as_dict()} for h in plan.heads}
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (folder / "metrics.json").write_text(json.dumps({"bce": {"AP": 0.5}}))
    with pytest.raises(ConfigError, match="detector.class_agnostic_boxes: False there, "
                                          "True here"):
        finished_run(folder, plan)
    (default,) = plan_sweep(["seed=0", "loss=bce"]).runs
    assert finished_run(folder, default) is not None  # at the default it is this run

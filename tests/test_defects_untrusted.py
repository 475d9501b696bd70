"""Issue 25, files that travel with a checkpoint or a run are plain data: config.yaml (beside a
head or inside it) is never interpolated, the command's own output_root applies, a stage-1
pointer names a file inside the head's output root or nothing, runs.txt names the sweep's
own runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acsl_cli.engine.checkpoint import (
    FORMAT,
    HEAD_FORMAT,
    load_head_base,
    load_head_state,
    save_checkpoint,
)
from acsl_cli.errors import DataError
from acsl_cli.files import file_sha256
from acsl_cli.layout import pointer
from acsl_cli.models.trunk import CLS_SCORE, stage_prefix, with_classifier
from acsl_cli.plan import checkpoint_settings, plan_eval, plan_train
from acsl_cli.plan_show import plan_show
from acsl_cli.reporting.runs import load_runs
from tests.conftest import TINY

SECRET = "s3cr3t-value-of-the-test"


def acsl(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _config(**changes) -> dict:
    cfg = plan_train(TINY).settings.as_dict()
    cfg.update(changes)
    return cfg


def _detector_ckpt(folder: Path, config: dict | None, loss: dict | None = None,
                   embedded: dict | None = None) -> Path:
    """A detector checkpoint (no weights are read before the config) with config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model": {}, "category_ids": [], "loss": loss or {"name": "bce"}}
    if embedded is not None:
        payload["config"] = embedded
    save_checkpoint(folder / "checkpoint.pt", payload)
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "checkpoint.pt"


def test_interpolation_in_a_heads_run_name_is_not_printed_by_eval_dry_run(tmp_path):
    ckpt = _detector_ckpt(tmp_path / "h", _config(
        run_name="x${oc.env:ACSL_TEST_SECRET}"))
    proc = acsl("eval", f"ckpt={ckpt}", "--dry-run", cwd=tmp_path,
                env={"ACSL_TEST_SECRET": SECRET})
    assert SECRET not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "run_name" in proc.stderr and "interpolation" in proc.stderr


def test_interpolation_in_a_heads_output_root_creates_no_folder(tmp_path):
    ckpt = _detector_ckpt(tmp_path / "h", _config(
        output_root="shared/${oc.env:ACSL_TEST_SECRET}"))
    proc = acsl("eval", f"ckpt={ckpt}", cwd=tmp_path, env={"ACSL_TEST_SECRET": SECRET})
    assert proc.returncode == 2 and "interpolation" in proc.stderr, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not (tmp_path / "shared").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("where", ["embedded config", "loss"])
def test_interpolation_inside_the_checkpoint_is_refused(tmp_path, monkeypatch, where):
    """The config saved in the checkpoint (no config.yaml beside) and its loss alike."""
    monkeypatch.setenv("ACSL_TEST_SECRET", SECRET)
    if where == "loss":
        ckpt = _detector_ckpt(tmp_path / "h", _config(), loss={
            "name": "acsl", "xi": "${oc.env:ACSL_TEST_SECRET}"})
    else:
        ckpt = _detector_ckpt(tmp_path / "h", None,
                              embedded=yaml.safe_dump(_config(
                                  run_name="${oc.env:ACSL_TEST_SECRET}")))
    from acsl_cli.engine.checkpoint import load_checkpoint

    plan = plan_eval([f"ckpt={ckpt}"])
    with pytest.raises(DataError, match="interpolation") as e:
        checkpoint_settings(plan, load_checkpoint(ckpt))
    assert SECRET not in str(e.value)


def test_eval_and_show_use_the_commands_output_root_not_the_stored_one(tmp_path):
    stored = tmp_path / "moved-away"
    ckpt = _detector_ckpt(tmp_path / "h", _config(output_root=str(stored)))
    from acsl_cli.engine.checkpoint import load_checkpoint

    for plan in (plan_eval([f"ckpt={ckpt}"]), plan_show([f"ckpt={ckpt}"]).as_eval()):
        settings, _ = checkpoint_settings(plan, load_checkpoint(ckpt))
        assert settings.output_root == "outputs"  # the default, never the stored one
    mine = plan_eval([f"ckpt={ckpt}", f"output_root={tmp_path / 'mine'}"])
    assert checkpoint_settings(mine, load_checkpoint(ckpt))[0].output_root == \
        str(tmp_path / "mine")


def _head(root: Path, ref: dict, classifier: dict | None = None) -> Path:
    folder = root / "runs" / "r" / "heads" / "h"
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", {"classifier": classifier or {}, "stage1": ref},
                    HEAD_FORMAT)
    return folder / "checkpoint.pt"


def _stage1(root: Path, state: dict) -> Path:
    folder = root / "cache" / "stage1" / "k"
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", {"model": state})
    return folder / "checkpoint.pt"


def test_a_stage1_pointer_out_of_the_tree_is_refused_alike_whether_it_exists(tmp_path):
    outside = tmp_path / "elsewhere" / "checkpoint.pt"
    outside.parent.mkdir()
    save_checkpoint(outside, {"model": {}})
    digest = file_sha256(outside)
    root = tmp_path / "o"
    messages = []
    for i, path in enumerate(["../../../../../elsewhere/checkpoint.pt", str(outside),
                              "../../../../../elsewhere/gone.pt", "/dev/zero"]):
        head = _head(root / str(i), {"path": path, "sha256": digest})
        with pytest.raises(DataError, match="does not name a file inside") as e:
            load_head_base(head, {"stage1": {"path": path, "sha256": digest}})
        messages.append(str(e.value).replace(path, "P").replace(str(root / str(i)), "R"))
    assert len(set(messages)) == 1  # existence outside the tree is not told
    inside = _stage1(root / "ok", {})
    head = _head(root / "ok", {"path": pointer(inside, root / "ok" / "runs" / "r" / "heads"
                                                / "h"), "sha256": file_sha256(inside)})
    import torch

    ckpt = torch.load(head, weights_only=True)
    assert load_head_base(head, ckpt)["format"] == FORMAT


def test_a_faster_head_on_a_cascade_stage1_is_one_line(tmp_path):
    """The pointer's sha256 matches, but the stage 1 is a Cascade R-CNN: ValueError was a
    traceback."""
    import torch

    root = tmp_path / "o"
    cascade = {f"{stage_prefix(s)}box_predictor.cls_score.weight": torch.zeros(3, 4)
               for s in range(3)}
    base = _stage1(root, cascade)
    where = root / "runs" / "r" / "heads" / "h"
    ref = {"path": pointer(base, where), "sha256": file_sha256(base)}
    faster_classifier = {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    head = _head(root, ref, faster_classifier)
    with pytest.raises(DataError, match="does not fit the stage-1 detector"):
        load_head_state(head, torch.load(head, weights_only=True))
    with pytest.raises(ValueError):  # and the reverse, at the cause
        with_classifier({CLS_SCORE + "weight": torch.zeros(3, 4)}, {"0.weight": 1})


def _fake_run(folder: Path, ap: float, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"bce": {"AP": ap}}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    return folder


def test_a_copied_sweep_reads_its_own_runs_not_the_original_trees(tmp_path):
    """runs.txt held absolute paths: a copy of the tree read the original's runs."""
    runs = tmp_path / "a" / "runs"
    for i in range(2):
        _fake_run(runs / f"s-sweep-{i}", 0.1, seed=i)
    (runs / "s-sweep").mkdir()
    (runs / "s-sweep" / "runs.txt").write_text(
        "".join(f"seed={i}\t{runs / f's-sweep-{i}'}\n" for i in range(2)))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = tmp_path / "b" / "runs"
    loaded = load_runs([copy / "s-sweep"])
    assert [r.path for r in loaded] == [copy / "s-sweep-0", copy / "s-sweep-1"]
    # relative entries (what a sweep writes now) resolve from the sweep folder; one that
    # leaves the sweep's runs folder is never followed there
    (copy / "s-sweep" / "runs.txt").write_text("seed=0\t../s-sweep-0\n")
    assert [r.path.resolve() for r in load_runs([copy / "s-sweep"])] == \
        [(copy / "s-sweep-0").resolve()]
    _fake_run(runs / "only-there", 0.3)
    (copy / "s-sweep" / "runs.txt").write_text("seed=0\t../../../a/runs/only-there\n")
    with pytest.raises(DataError, match="line 1: no run folder"):
        load_runs([copy / "s-sweep"])

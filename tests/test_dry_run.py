"""``--dry-run``: every run's and head's settings and the plan are printed, nothing is
written (no output folder, no generated data, no cache entry)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from acsl_cli.cli import app

FIXTURE = Path(__file__).resolve().parent / "data" / "lvis_v0.5_val_100.json"


def _run(args: list[str], tmp_path: Path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert list(tmp_path.iterdir()) == []  # nothing written, not even output_root
    return res.output


def _documents(text: str) -> list[dict]:
    """The YAML blocks between the '# ...' lines."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            if current:
                blocks.append(yaml.safe_load("\n".join(current)))
            current = []
        else:
            current.append(line)
    if current:
        blocks.append(yaml.safe_load("\n".join(current)))
    return blocks


def test_train_dry_run_prints_both_heads_and_writes_nothing(tmp_path, monkeypatch):
    out = _run(["train", "--dry-run", "loss=acsl,bce", "xi=0.5",
                f"output_root={tmp_path / 'outputs'}"], tmp_path, monkeypatch)
    docs = _documents(out)
    run = docs[0]
    assert run["seed"] == 0 and run["output_root"] == str(tmp_path / "outputs")
    assert run["dataset"]["name"] == "synthetic" and "stage2" in run["schedule"]
    losses = [d["loss"] for d in docs[1:]]
    assert losses == [{"name": "acsl", "xi": 0.5, "bg_mode": "official", "bg_factor": False,
                       "seed": 0}, {"name": "bce", "bg_factor": False}]
    assert "not cached: will be trained" in out and "# disk: about" in out


def test_the_stage1_line_names_its_loss_with_the_classifier_layer(tmp_path, monkeypatch):
    """Was: ``loss seesaw p=0.8 ...`` for Seesaw's own recipe, its normed layer unsaid."""
    out = _run(["train", "--dry-run", "loss=seesaw_normed", "schedule.stage1.loss=seesaw_normed",
                f"output_root={tmp_path / 'o'}"], tmp_path, monkeypatch)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("# stage 1: ")]
    assert line.startswith("# stage 1: loss seesaw p=0.8 q=2 eps=0.01 layout=release "
                           "classifier=normed temperature=20.0, "), line


def test_sweep_dry_run_lists_every_run(tmp_path, monkeypatch):
    out = _run(["sweep", "--dry-run", "seed=0,1", "loss=bce",
                f"output_root={tmp_path / 'o'}"], tmp_path, monkeypatch)
    runs = [d for d in _documents(out) if "seed" in d]
    assert [r["seed"] for r in runs] == [0, 1]
    assert "2 distinct stage-1 entries" in out


def test_eval_dry_run_names_what_it_would_score(tmp_path, monkeypatch):
    out = _run(["eval", "--dry-run", f"dets={FIXTURE}", f"ann={FIXTURE}",
                f"out={tmp_path / 'm.json'}"], tmp_path, monkeypatch)
    assert f"score {FIXTURE} against {FIXTURE}" in out
    assert f"written to {tmp_path / 'm.json'}" in out


def test_help_lists_the_config_groups():
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for group, option in [("dataset", "synthetic_lvis"), ("loss", "seesaw"),
                          ("backbone", "r101"), ("schedule", "smoke"), ("sampler", "rfs")]:
        assert f"{group}:" in text and option in text, (group, option)

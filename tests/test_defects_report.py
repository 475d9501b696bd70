"""Issue 25, ``acsl report`` on damaged inputs: events.jsonl read as plain data (bad lines
skipped with one warning), a report folder written whole or not at all, ``--dry-run``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acsl_cli.errors import ConfigError
from acsl_cli.files import staged_folder
from acsl_cli.reporting.curves import validation_points
from acsl_cli.reporting.runs import load_run

GOOD = [{"type": "eval", "stage": "stage 2", "model": "bce", "epoch": e, "AP": 0.1 * e,
         "APr": 0.05 * e} for e in (1, 2)]


def acsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _run(folder: Path, events: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stage1 (softmax CE)": {"AP": 0.1},
                                                     "bce": {"AP": 0.2, "APr": 0.1}}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    (folder / "events.jsonl").write_bytes(events)
    return folder


def _lines(*events: object) -> bytes:
    return b"".join((e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n"
                    for e in events)


BAD = {
    "non-UTF-8 byte": b'{"type": "eval", "model": "bce\xff", "epoch": 3, "AP": 0.3}',
    "epoch 'x'": {"type": "eval", "stage": "stage 2", "model": "bce", "epoch": "x", "AP": 0.3},
    "epoch 1e400": b'{"type": "eval", "stage": "stage 2", "model": "bce", "epoch": 1e400, '
                   b'"AP": 0.3}',
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_events_line_is_skipped_with_one_warning_and_the_report_is_whole(tmp_path,
                                                                                case):
    run = _run(tmp_path / "runs" / "r", _lines(GOOD[0], BAD[case], GOOD[1]))
    out = tmp_path / "rep"
    proc = acsl("report", str(run), f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and (out / "validation.png").is_file()
    warnings = [ln for ln in proc.stderr.splitlines() if "events.jsonl" in ln]
    assert len(warnings) == 1 and "1 line(s) skipped" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_non_numeric_ap_is_not_drawn(tmp_path):
    """AP 'high' made the validation figure's y axis a category axis."""
    bad = {**GOOD[1], "epoch": 3, "AP": "high"}
    run = load_run(_run(tmp_path / "r", _lines(GOOD[0], bad, GOOD[1])))
    points = validation_points(run)[("stage 2", "bce")]
    assert [e for e, _ in points] == [1, 2]
    assert all(isinstance(m["AP"], float) and math.isfinite(m["AP"]) for _, m in points)


def test_a_report_folder_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "rep"
    with pytest.raises(RuntimeError), staged_folder(out) as stage:
        (stage / "a.png").write_bytes(b"x")
        raise RuntimeError("the report failed half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "old.md").write_text("earlier report")
    with staged_folder(out) as stage:
        (stage / "report.md").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["old.md", "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no staging folder left


def test_report_dry_run_compares_and_writes_nothing(tmp_path):
    run = _run(tmp_path / "runs" / "r", _lines(*GOOD))
    before = sorted(p.name for p in run.iterdir())
    proc = acsl("report", "--dry-run", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "bce" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == before  # no report/ folder


@pytest.mark.parametrize("where", ["file", "under a file", "pseudo-filesystem"])
def test_an_out_folder_that_cannot_be_one_is_one_line_before_any_work(tmp_path, where):
    (tmp_path / "f").write_text("a file")
    out = {"file": tmp_path / "f", "under a file": tmp_path / "f" / "sub",
           "pseudo-filesystem": Path("/proc/acsl-report-test")}[where]
    with pytest.raises(ConfigError, match=f"out_dir={out}"), staged_folder(out):
        raise AssertionError("the block must not run")

"""Issue 25, command arguments: every one checked before any folder is created, each bad
one a single ``error:`` line (exit 2); the Python API's dtype errors; W&B offline."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from acsl_cli.cli import app
from tests.conftest import TINY


def _bad(args: list[str], match: str) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and match in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_a_5001_digit_integer_on_the_command_line_is_one_line():
    line = _bad(["train", "--dry-run", "seed=1" + "0" * 5000], "bad override")
    assert len(line) < 500


def test_an_unbounded_integer_range_is_not_printed_with_the_machines_max():
    line = _bad(["train", "--dry-run", "schedule.eval_every_epochs=0"], "eval_every_epochs")
    assert "9223372036854775807" not in line and "an integer >= 1" in line


def _files(tmp_path: Path) -> dict[str, Path]:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"conv1.weight": [1.0]}, f)
    return {"list": tmp_path / "list.pt", "text": tmp_path / "text.pt",
            "pickle": tmp_path / "plain.pkl"}


@pytest.mark.parametrize("kind, match", [("list", "not a state dict of tensors (it holds a "
                                          "list)"),
                                         ("text", "not a file that torch.save wrote"),
                                         ("pickle", "something other than tensors")])
def test_backbone_weights_are_checked_before_any_folder(tmp_path, kind, match, recwarn):
    """A list was a TypeError traceback, a text file '(KeyError)', a pickle a multi-line
    torch warning; all of them after the benchmark was generated and runs/ created."""
    path = _files(tmp_path)[kind]
    out = tmp_path / "o"
    _bad(["train", *TINY, "backbone=r50", f"backbone.weights={path}", f"output_root={out}"],
         match)
    assert not out.exists()
    assert not [w for w in recwarn if "pickle" in str(w.message)]


def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path):
    path = _files(tmp_path)["text"]
    _bad(["eval", f"ckpt={path}"], "not a file that torch.save wrote")


@pytest.mark.parametrize("case", ["taken run_name", "output_root a file"])
def test_dry_run_runs_the_preflight_checks(tmp_path, case):
    out = tmp_path / "o"
    if case == "taken run_name":
        (out / "runs" / "taken").mkdir(parents=True)
        args, match = [f"output_root={out}", "run_name=taken"], "already exists"
    else:
        out.write_text("a file")
        args, match = [f"output_root={out}"], "output_root"
    for command in ("train", "sweep"):
        _bad([command, "--dry-run", *TINY, *args], match)


def _scene(tmp_path: Path) -> dict[str, Path]:
    """One image, two rare classes, a false positive of class 2."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (40, 40, 40)).save(images / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
           "categories": [{"id": 1, "name": "c1", "frequency": "r"},
                          {"id": 2, "name": "c2", "frequency": "r"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20],
                            "area": 400, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 10], "score": 0.9}]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return {"ann": tmp_path / "ann.json", "dets": tmp_path / "dets.json", "images": images}


def _show(scene: dict[str, Path], *extra: str) -> list[str]:
    return ["show", f"dets={scene['dets']}", f"ann={scene['ann']}",
            f"image_dir={scene['images']}", *extra]


def test_show_draws_the_scene(tmp_path):
    """The scene itself draws (what the defects below depart from)."""
    scene = _scene(tmp_path)
    res = CliRunner().invoke(app, _show(scene, f"out_dir={tmp_path / 'pics'}"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pics" / "false_positives_c2.png").is_file()


@pytest.mark.parametrize("where", ["a file", "under a file", "pseudo-filesystem"])
def test_show_out_that_cannot_be_a_folder_is_one_line(tmp_path, where):
    scene = _scene(tmp_path)
    (tmp_path / "f").write_text("a file")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "sub",
           "pseudo-filesystem": Path("/proc/acsl-show-test")}[where]
    _bad(_show(scene, f"out_dir={out}"), f"out_dir={out}")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write into: a read-only tmpfs as root (root ignores permission
    bits), else a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                       check=True)
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.parametrize("inside", [False, True])
def test_show_out_in_a_read_only_folder_is_one_line(tmp_path, read_only_folder, inside):
    scene = _scene(tmp_path)
    out = read_only_folder / "pics" if inside else read_only_folder
    _bad(_show(scene, f"out_dir={out}"), f"out_dir={out}")
    assert list(read_only_folder.iterdir()) == []


def test_show_empty_classes_is_refused_not_every_rare_class(tmp_path):
    scene = _scene(tmp_path)
    out = tmp_path / "pics"
    _bad(_show(scene, f"out_dir={out}", "classes=[]"), "classes")
    assert not out.exists()


def test_show_missing_image_dir_leaves_no_out_folder(tmp_path):
    scene = _scene(tmp_path)
    scene["images"] = tmp_path / "missing"
    out = tmp_path / "pics"
    _bad(_show(scene, f"out_dir={out}"), "image_dir")
    assert not out.exists()


def test_show_ckpt_missing_names_the_checkpoint(tmp_path):
    line = _bad(["show", f"ckpt={tmp_path / 'gone.pt'}"], "not found")
    assert "results.json" not in line


@pytest.mark.parametrize("labels, logits, match", [
    (torch.tensor([0.0, 1.0]), torch.randn(2, 4), "labels must be an integer tensor"),
    (torch.tensor([True, False]), torch.randn(2, 4), "labels must be an integer tensor"),
    (torch.tensor([0, 1]), torch.ones(2, 4, dtype=torch.long), "logits must be a floating"),
])
@pytest.mark.parametrize("name", ["bce", "acsl", "softmax_ce"])
def test_the_python_api_names_the_dtype(labels, logits, match, name):
    from acsl_cli.losses.api import detection_loss

    loss = detection_loss(name, num_classes=3, frequencies=["r", "c", "f"])
    with pytest.raises(TypeError, match=match):
        loss(logits, labels)


def test_wandb_without_a_server_goes_offline_at_once_with_one_warning(monkeypatch, caplog):
    """No WANDB_MODE and no network: about 100 s of retries and tracebacks before."""
    from acsl_cli.reporting.trackers import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    caplog.set_level(logging.WARNING, "acsl")
    t0 = time.monotonic()
    assert wandb_mode() == "offline"
    assert time.monotonic() - t0 < 10
    assert len([r for r in caplog.records if "wandb" in r.getMessage()]) == 1
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own setting is left to W&B
    assert wandb_mode() is None

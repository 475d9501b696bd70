""""Did you mean" for a mistyped key, group option or class name, instead of Hydra's advice
to add the key with ``+``; ``acsl show --help``'s example names a class that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.data.synthetic.shapes import SyntheticSpec, class_attributes

FIXTURE = Path(__file__).resolve().parent / "data" / "lvis_v0.5_val_100.json"


@pytest.mark.parametrize("override, line", [
    ("schedul.max_iters=3", "unknown key 'schedul.max_iters' (did you mean "
                            "schedule.max_iters? "),
    ("schedule.stage1.lrr=0.1", "unknown key 'schedule.stage1.lrr' (did you mean "
                                "schedule.stage1.lr? "),
    ("dataset.nm_classes=3", "unknown key 'dataset.nm_classes' (did you mean "
                             "dataset.num_classes? "),
    ("zzz=1", "unknown key 'zzz' (every key and its value: acsl train --dry-run)"),
    ("loss=acls", "unknown loss 'acls' (did you mean acsl? choose from acsl, "),
    ("sampler=class_awre", "unknown sampler 'class_awre' (did you mean class_aware? "),
    ("loss=nope", "unknown loss 'nope' (choose from "),
])
def test_unknown_keys_and_options_name_the_closest(override, line):
    res = CliRunner().invoke(app, ["train", "--dry-run", override])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + line), res.output
    assert "+" not in lines[0]


def test_show_suggests_the_class_and_its_help_example_names_a_real_one(tmp_path):
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    for given, close in (("aerosol_cam", "aerosol_can"), ("can_aerosol", "aerosol_can")):
        res = CliRunner().invoke(app, ["show", f"dets={dets}", f"ann={FIXTURE}",
                                       f"image_dir={tmp_path}", f"out_dir={tmp_path / 's'}",
                                       f"classes=[{given}]"])
        assert res.exit_code == 2, res.output
        assert res.output.strip() == (f"error: classes: unknown class '{given}' (did you "
                                      f"mean {close}? give names or category ids)")
    assert not (tmp_path / "s").exists()
    names = {c["name"] for c in json.loads(FIXTURE.read_text())["categories"]}
    assert "aerosol_can" in names
    help_text = " ".join(CliRunner().invoke(app, ["show", "--help"]).output.split())
    example = re.search(r"classes=\[(\w+)\]", help_text)
    default = SyntheticSpec()
    shipped = {f"{c}_{s}" for s, c in map(class_attributes, range(default.num_classes))}
    assert example and example[1] in shipped, help_text

"""Small things a daily user meets: the configuration doc names every option of conf/,
one line when a download fails offline, a load error not cut mid-word, the launcher
bench without Slurm."""

from __future__ import annotations

import importlib.util
import re
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group", ["backbone", "loss", "dataset", "launcher"])
def test_configuration_doc_names_every_option_of_the_group(group):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{group}` |")), None)
    listed = set(re.findall(r"`([^`]+)`", doc if row is None else row))
    shipped = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
    assert shipped and shipped <= listed, sorted(shipped - listed)


def test_default_weights_offline_is_one_line_and_prints_nothing(tmp_path, monkeypatch, capfd):
    """torch.hub announces "Downloading: ..." before it connects; offline (the network is
    absent here: the download raises what urllib raises) only the error line is left."""
    from acsl_cli.errors import DataError
    from acsl_cli.models.backbones import _resnet_fpn

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as caught:
        _resnet_fpn("resnet50", SimpleNamespace(weights="DEFAULT", trainable_layers=3))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    message = str(caught.value)
    assert message.splitlines() == [message]
    assert message.startswith("backbone.weights=DEFAULT: cannot download resnet50 weights "
                              "([Errno -2] Name or service not known)")


def test_download_notice_comes_back_before_progress(capfd):
    """Online, the held "Downloading" line is written as soon as progress shows."""
    import sys

    from acsl_cli.models.backbones import _download_notice_held

    with _download_notice_held():
        sys.stdout.write('Downloading: "https://x/w.pth" to /tmp/w.pth\n')
        sys.stdout.flush()
        sys.stderr.write("  3%|#  \n")
    out, err = capfd.readouterr()
    assert out == 'Downloading: "https://x/w.pth" to /tmp/w.pth\n' and "3%" in err


class _Head(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(1024, outputs)


def test_seesaw_layout_mismatch_is_told_whole_with_the_way_out():
    from acsl_cli.pipeline.evaluate import layout_hint, load_error_cause
    from acsl_cli.settings import LossSettings

    try:  # a single-softmax Seesaw head (C + 1 = 61) into the release layout (C + 2 = 62)
        _Head(62).load_state_dict(_Head(61).state_dict())
    except RuntimeError as e:
        error = e
    cause = load_error_cause(error)
    assert cause == ("size mismatch for cls_score.weight: copying a param with shape "
                     "torch.Size([61, 1024]) from checkpoint, the shape in current model is "
                     "torch.Size([62, 1024]).")
    assert layout_hint(LossSettings("seesaw", {"layout": "release"}), error) == \
        "; a Seesaw head of the other layout: add loss.layout=single_softmax"
    assert layout_hint(LossSettings("bce"), error) == ""
    long = RuntimeError("Error(s) in loading state_dict:\n\t" + "word " * 100)
    assert load_error_cause(long, keep=40) == "word word word word word word word word ..."


def test_bench_launchers_names_slurm_when_it_is_missing(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_launchers",
                                                  ROOT / "scripts" / "bench_launchers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no squeue
    assert module.slurm_missing() == ("no sbatch or squeue on PATH (a local cluster: "
                                      "scripts/slurm_local.sh start)")

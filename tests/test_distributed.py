"""torchrun (PyTorch DDP, gloo on CPU): two processes train and evaluate one run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_engine import TINY


def test_torchrun_two_processes_write_one_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "acsl_cli", "train", *TINY, "device=cpu", "run_name=ddp",
           "loss=bce,acsl"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert [r.name for r in runs] == ["ddp"]  # rank 1 wrote nothing of its own
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert list(metrics) == ["stage1 (softmax CE)", "bce", "acsl xi=0.7 bg=official"]
    # the run table is printed once, by rank 0
    assert proc.stdout.count("run directory") == 1

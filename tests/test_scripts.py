"""Every script in scripts/ runs in its --quick mode (nothing else runs the scripts, so a
script broken by a refactor would otherwise go unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").iterdir()
                 if p.suffix in (".py", ".sh") and not p.name.endswith("_refs.py"))
# what each one prints when it finished its work (a line a crash would not reach)
EXPECT = {
    "bench_eval.py": "detections are synthetic",
    "bench_eval_protocols.py": "detections are synthetic",
    "bench_losses.py": "vs its dense form",
    "bench_openimages_eval.py": "evaluate_openimages:",
    "bench_openimages_load.py": "image check:",
    "bench_startup.py": 'python -c "import torch"',
    "bench_train.py": "stage-1 images/s ours/bare",
    "bench_launchers.py": "x in process",
    "fetch_gpu_wheels.sh": "",
    "gpu_check.sh": "all steps passed",
    "slurm_local.sh": "debug",
}


def test_every_script_is_covered():
    assert set(SCRIPTS) <= set(EXPECT), set(SCRIPTS) - set(EXPECT)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_quick_mode_runs(name, tmp_path):
    path = ROOT / "scripts" / name
    cmd = ([sys.executable, str(path)] if name.endswith(".py") else ["bash", str(path)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable,
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "GPU_WHEELS": str(tmp_path / "wheels")}
    proc = subprocess.run([*cmd, "--quick"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert EXPECT[name] in output, output[-3000:]

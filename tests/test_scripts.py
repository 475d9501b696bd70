"""Every script in scripts/ runs in its --quick mode (nothing else runs the scripts, so a
script broken by a refactor would otherwise go unnoticed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.terminal import default_sigint

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").iterdir()
                 if p.suffix in (".py", ".sh") and not p.name.endswith("_refs.py"))
# what each one prints when it finished its work (a line a crash would not reach)
EXPECT = {
    "bench_compare.py": "figure(s) flagged of",
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


def test_bench_compare_refuses_a_bad_base_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_compare.py"),
                           "no-such-ref-1f2e3d", "--quick"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: BASE 'no-such-ref-1f2e3d': not a commit of the repository at {ROOT}"]
    assert list(tmp_path.iterdir()) == []


def load_bench_compare():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "scripts" /
                                                  "bench_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_compare_flags_only_a_slowdown_every_round_agrees_on():
    bc = load_bench_compare()
    name = "losses: eql (x BCE)"
    assert bc.verdict([1.2, 1.3, 1.15], True, name) == ("**SLOWER (flagged)**", True)
    # one round within 10 %: a busy machine, not the code (the median alone would flag it)
    text, flagged = bc.verdict([1.25, 1.05, 1.3], True, name)
    assert not flagged and text.startswith("unclear")
    assert bc.verdict([1.02, 0.97, 1.08], True, name) == ("same (within 10 %)", False)
    assert bc.verdict([0.5, 0.6, 0.55], True, name) == ("better", False)
    # lower is worse (a throughput): 0.8 = 25 % slower in every round
    assert bc.verdict([0.8, 0.85, 0.8], False, "x") == ("**SLOWER (flagged)**", True)
    assert bc.verdict([1.3, 1.3], True, "eval: peak RSS above baseline (MiB)")[0] == \
        "**LARGER (flagged)**"
    # the control is the same code on both sides: never a verdict on the change
    assert bc.verdict([1.4, 1.5, 1.6], True, bc.CONTROLS[0]) == (
        "control (same code on both sides)", False)
    assert bc.verdict([1.3], True, name)[1]  # --quick: one round decides


def worktrees_under(folder) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if line.startswith("worktree ") and str(folder) in line]


def test_bench_compare_removes_its_worktree_on_ctrl_c(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a benchmark
    runs on the temporary worktree: the worktree and its folder are gone afterwards."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_compare.py"), "HEAD", "--quick",
         "--only", "train"], cwd=tmp_path, start_new_session=True, text=True,
        preexec_fn=default_sigint,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline().startswith("round 1/1: train (old)")
        assert len(worktrees_under(tmp_path)) == 1  # the benchmark runs in it now
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert worktrees_under(tmp_path) == [] and list(tmp_path.iterdir()) == []

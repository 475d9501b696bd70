"""``launcher=slurm`` against a real Slurm (scripts/slurm_local.sh start) when things go
wrong (issue 25): squeue fails, a job is cancelled, the node goes down and comes back,
srun is missing on the submit host, sbatch refuses, the waiting command is stopped, a job
fails with its own error. Each ends in one line and the job's true state. Most jobs are
submitted held (``launcher.additional={hold:true}``), so nothing trains."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY
from tests.test_launchers import (  # noqa: F401 - partition is a fixture
    ROOT,
    _restarts,
    acsl,
    job_ids,
    partition,
)

SWEEP = ["sweep", *TINY, "seed=0", "loss=bce"]
HELD = "launcher.additional={hold:true}"  # sbatch --hold: pending until released


def slurm(tmp_path: Path, name: str, partition: str) -> list[str]:  # noqa: F811
    return [*SWEEP, f"output_root={tmp_path}", f"run_name={name}", "launcher=slurm",
            f"launcher.partition={partition}"]


def one_line(text: str, prefix: str = "error: ") -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    return lines[0]


def squeue_state(job: str) -> str:
    r = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True,
                       text=True, timeout=60)
    return r.stdout.strip()


def failing_squeue(tmp_path: Path) -> dict:
    """PATH with an squeue in front of the real one that fails as a lost controller does."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out "
                                 "on send/recv operation' >&2\nexit 1\n")
    (shim / "squeue").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}


def test_squeue_failing_makes_the_state_unknown_and_submits_nothing(tmp_path, partition):  # noqa: F811
    """Was: every job taken as ended, and the rerun submitted it a second time."""
    cmd = [*slurm(tmp_path, "u", partition), HELD, "launcher.wait=false"]
    r = acsl(*cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (job,) = job_ids(r.stdout)
    state = (tmp_path / "launcher" / "u" / "jobs.json").read_text()
    try:
        again = acsl(*cmd, env=failing_squeue(tmp_path), timeout=300)
        assert again.returncode == 1, (again.stdout, again.stderr)
        line = one_line(again.stderr)
        assert line == (f"error: slurm job(s) {job}: state unknown because the scheduler did "
                        "not answer (squeue: slurm_load_jobs error: Socket timed out on "
                        "send/recv operation); they may still be queued or running; nothing "
                        "was submitted"), line
        assert "submitted" not in again.stdout
        assert (tmp_path / "launcher" / "u" / "jobs.json").read_text() == state
        assert squeue_state(job) == "PENDING"
        told = acsl(*cmd, timeout=300)  # squeue answers again: the job as it is
        assert told.returncode == 0 and f"slurm job {job} (runs 0): pending (JobHeldUser)" \
            in told.stdout, told.stdout
        assert "submitted" not in told.stdout
    finally:
        subprocess.run(["scancel", job], timeout=60)


def test_a_cancelled_job_ends_the_waiting_command_with_its_state(tmp_path, partition):  # noqa: F811
    """scancel while the command waits: one line saying CANCELLED, exit 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "acsl_cli", *slurm(tmp_path, "c", partition),
                          HELD], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    job = _submitted(tmp_path / "launcher" / "c", p)
    subprocess.run(["scancel", job], check=True, timeout=60)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1, (out, err)
    line = one_line(err)
    assert line.startswith(f"error: slurm job {job} (runs 0) ended CANCELLED without "
                           "finishing c-sweep-0; log "), line
    assert line.endswith("run the same command again to submit it again")


def _submitted(folder: Path, p: subprocess.Popen) -> str:
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (folder / "jobs.json").is_file():
            (job,) = json.loads((folder / "jobs.json").read_text()).values()
            return job
        time.sleep(0.2)
    raise AssertionError(f"nothing submitted: {p.communicate()}")


def test_sigterm_to_the_waiting_command_leaves_slurm_jobs_running_and_says_so(
        tmp_path, partition):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "acsl_cli", *slurm(tmp_path, "t", partition),
                          HELD], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    job = _submitted(tmp_path / "launcher" / "t", p)
    try:
        time.sleep(1)  # past the submit, waiting
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 143
        assert one_line(err, "terminated") == (
            f"terminated (SIGTERM): slurm job(s) {job} keep running (not cancelled); the same "
            f"command, run again, waits for them; scancel {job} stops them")
        assert squeue_state(job) == "PENDING"  # detached, as it said
    finally:
        subprocess.run(["scancel", job], timeout=60)


def test_srun_missing_on_the_submit_host_is_one_line_before_anything(tmp_path, partition):  # noqa: F811
    """Was submitit's RuntimeError traceback."""
    path = tmp_path / "bin"
    path.mkdir()
    for cmd in ("sbatch", "squeue", "sinfo", "scontrol", "scancel"):
        (path / cmd).symlink_to(shutil.which(cmd))
    out = tmp_path / "o"
    r = acsl(*slurm(out, "s", partition), env={"PATH": str(path)}, timeout=300)
    assert r.returncode == 2
    assert one_line(r.stderr) == ("error: launcher=slurm: srun is not on PATH on this machine "
                                  "(its jobs are submitted from here; sbatch, squeue, sinfo, "
                                  "scontrol are)")
    assert not out.exists()


def test_bad_partition_leaves_no_output_root(tmp_path, partition):  # noqa: F811
    """Was: output_root created, then the launcher's check refused (an empty folder left)."""
    out = tmp_path / "o"
    r = acsl(*SWEEP, f"output_root={out}", "launcher=slurm", "launcher.partition=nosuch",
             timeout=300)
    assert r.returncode == 2 and "no such partition" in one_line(r.stderr)
    assert not out.exists()


def test_sbatch_refusal_is_one_line_and_leaves_no_script_or_pickle(tmp_path, partition):  # noqa: F811
    r = acsl(*slurm(tmp_path, "r", partition), "launcher.constraint=nosuch", timeout=300)
    assert r.returncode == 2
    assert one_line(r.stderr).startswith("error: launcher=slurm: sbatch refused the job (")
    left = tmp_path / "launcher" / "r" / "slurm"
    assert not left.exists() or not list(left.iterdir()), list(left.iterdir())


def test_a_slurm_jobs_own_error_is_the_commands_one_line(tmp_path, partition):  # noqa: F811
    """Stage 1 diverges in the Slurm job: its line, not "ended without finishing"."""
    r = acsl(*slurm(tmp_path, "d", partition), "schedule.stage1.lr=1e6",
             "schedule.stage1.warmup_iters=0")
    assert r.returncode == 1, (r.stdout, r.stderr)
    (job,) = job_ids(r.stdout)
    line = one_line(r.stderr)
    assert line.startswith(f"error: slurm job {job} (runs 0) failed: stage 1: loss "), line
    assert "run the same command again" not in line


def test_node_down_then_resumed_the_job_is_requeued_reported_and_finishes(tmp_path,
                                                                           partition):  # noqa: F811
    """The node goes down under a running job: Slurm requeues it (the local cluster's node
    may come back at once: ReturnToService=2). The command run then reports the job as
    queued or running, never as ended, and submits nothing; after ``state=resume`` the
    same command waits for it and collects the sweep."""
    node = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%N"], capture_output=True,
                          text=True, timeout=60, check=True).stdout.split()[0]
    cmd = slurm(tmp_path, "n", partition)
    r = acsl(*cmd, "launcher.wait=false", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (job,) = job_ids(r.stdout)
    try:
        deadline = time.time() + 300
        while squeue_state(job) != "RUNNING" and time.time() < deadline:
            time.sleep(0.2)
        assert squeue_state(job) == "RUNNING"
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                        "reason=acsl-test"], check=True, timeout=60)
        deadline = time.time() + 120
        while _restarts(job) < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert _restarts(job) >= 1, "the node failure did not requeue the job"
        told = acsl(*cmd, "launcher.wait=false", timeout=300)
        assert told.returncode == 0, told.stderr
        assert re.search(rf"^slurm job {job} \(runs 0\): (pending \(.+\)|running)$",
                         told.stdout, re.M), told.stdout
        assert "submitted" not in told.stdout
    finally:
        _operator_brings_back(node, job)
    # on a loaded machine the requeued launch can race the old step's teardown: Slurm then
    # drains the node ("duplicate jobid") and holds the job (launch failed, requeued held),
    # possibly after the resume above (was: the command below waited for ever); the
    # operator watches while it waits, as one would
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # files, not pipes: a pipe nobody reads while the command waits can fill and stall it
    out, err = tmp_path / "again.out", tmp_path / "again.err"
    with out.open("w") as o, err.open("w") as e, subprocess.Popen(
            [sys.executable, "-m", "acsl_cli", *cmd], cwd=ROOT, env=env, stdout=o,
            stderr=e) as p:
        deadline = time.time() + 600
        while p.poll() is None and time.time() < deadline:
            _operator_brings_back(node, job)
            time.sleep(2)
        if p.poll() is None:
            p.kill()
        p.wait()
    again = subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stdout
    assert (tmp_path / "runs" / "n-sweep" / "metrics.json").is_file()


def _operator_brings_back(node: str, job: str) -> None:
    """``state=resume`` (refused if the node is up) and ``release`` (refused unless held)."""
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                   capture_output=True, timeout=60)
    subprocess.run(["scontrol", "release", job], capture_output=True, timeout=60)

"""``launcher=local`` tells the truth (issue 25): per-sweep keys take one value, launcher
keys belong to their launcher, a job's own error reaches the command as its own line, a
signal to the waiting command stops its jobs (no traceback in their logs), one command
per sweep name, GPUs counted by CUDA, the runs' provenance is the user's command, and
every check is made before any folder is created. No Slurm needed here."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from acsl_cli.config import load_settings
from acsl_cli.errors import ConfigError
from tests.conftest import TINY
from tests.terminal import default_sigint
from tests.test_launchers import ROOT, acsl, job_ids

SWEEP = ["sweep", *TINY, "seed=0", "loss=bce"]


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (r.stdout, r.stderr)
    return lines[0]


# -- arguments: checked before anything exists ------------------------------------------

@pytest.mark.parametrize("args", [
    ["launcher=local", "launcher.max_parallel=1,2"],
    ["launcher=local", "run_name=a,b"],
    ["launcher=local", "launcher.wait=true,false", "run_name=w"],
    ["launcher=local,slurm"],
])
def test_comma_list_over_a_per_sweep_key_is_one_line_before_anything(tmp_path, args):
    """Was: every job failed with IndexError (the job replays the sweep without them)."""
    out = tmp_path / "o"
    r = acsl(*SWEEP, "seed=0,1", f"output_root={out}", *args, timeout=300)
    assert r.returncode == 2
    line = one_error_line(r)
    key = next(a for a in args if "," in a).split("=")[0]
    assert f"{key} takes one value per sweep" in line, line
    assert not out.exists()


@pytest.mark.parametrize("args,owner,chosen", [
    (["launcher.max_parallel=2"], "local", "inprocess"),
    (["+launcher.max_parallel=2"], "local", "inprocess"),  # was accepted and ignored
    (["launcher=local", "+launcher.partition=gpu"], "slurm", "local"),
    (["launcher=local", "launcher.additional={mail-type:END}"], "slurm", "local"),
])
def test_a_key_of_another_launcher_is_refused_by_name(args, owner, chosen):
    """Was: Hydra's "use +launcher.max_parallel=2" hint, and with the + the key was ignored."""
    with pytest.raises(ConfigError) as e:
        load_settings(args)
    key = args[-1].lstrip("+").split("=")[0]
    assert str(e.value).startswith(f"{key}: a setting of launcher={owner}, not of "
                                   f"launcher={chosen}"), e.value
    assert "+" not in str(e.value)


@pytest.mark.parametrize("value", ["5", "[a,b]", "{mail-type:[a,b]}", "{mail-type:false}",
                                   "{mail-type:null}", "{comment:'a\nb'}"])
def test_additional_sbatch_options_must_be_a_mapping_of_one_line_values(value):
    """Was: accepted, then submitit's traceback at submit."""
    with pytest.raises(ConfigError) as e:
        load_settings(["launcher=slurm", f"launcher.additional={value}"])
    assert str(e.value).startswith("launcher.additional"), e.value


def test_additional_sbatch_options_that_are_fine_pass():
    s = load_settings(["launcher=slurm", "launcher.additional={mail-type:END,exclusive:true}"])
    assert dict(s.launcher.additional) == {"mail-type": "END", "exclusive": True}


def test_launcher_checks_come_before_output_root_is_created(tmp_path):
    """Was: the folder was created, then the launcher refused (an empty folder left)."""
    out = tmp_path / "o"
    r = acsl(*SWEEP, f"output_root={out}", "launcher=local", "launcher.wait=false",
             timeout=300)
    assert r.returncode == 2
    assert "launcher.wait=false needs run_name" in one_error_line(r)
    assert not out.exists()


def test_gpus_named_by_cuda_visible_devices_but_not_found_are_refused(tmp_path):
    """CUDA_VISIBLE_DEVICES names one GPU more than CUDA finds here: was a sweep trained on
    the CPU without a word; now one line naming both counts, before any folder."""
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = ",".join(str(i) for i in range(found + 1))
    out = tmp_path / "o"
    r = acsl(*SWEEP, f"output_root={out}", "launcher=local",
             f"launcher.gpus_per_run={found + 1}", env={"CUDA_VISIBLE_DEVICES": named},
             timeout=300)
    assert r.returncode == 2
    line = one_error_line(r)
    assert f"this machine has {found} usable GPU(s) (CUDA_VISIBLE_DEVICES={named} names " \
           f"{found + 1}, CUDA finds {found})" in line, line
    assert not out.exists()


def test_gpus_per_run_with_device_cpu_is_refused():
    with pytest.raises(ConfigError, match="launcher.gpus_per_run=1 with device=cpu"):
        load_settings(["launcher=local", "launcher.gpus_per_run=1", "device=cpu"])


# -- a job's own error, and what a finished job's runs record ------------------------------

def test_a_jobs_own_error_is_the_commands_one_line(tmp_path):
    """Stage 1 diverges in the job (the loss guard): was "ended without finishing ... run the
    same command again"; now the job's own line, with its exit code (1: diverged)."""
    r = acsl(*SWEEP, f"output_root={tmp_path}", "run_name=d", "launcher=local",
             "schedule.stage1.lr=1e6", "schedule.stage1.warmup_iters=0")
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = one_error_line(r)
    (job,) = job_ids(r.stdout)
    assert line.startswith(f"error: local job {job} (runs 0) failed: stage 1: loss "), line
    assert "run the same command again" not in line
    log = (tmp_path / "launcher" / "d").glob("job-*.log")
    assert "Traceback" not in next(log).read_text()


def test_a_launched_runs_provenance_is_the_users_command(tmp_path):
    """Was the worker's argv (``acsl /path/job-<key>.json --slots 1 ...``)."""
    args = [*SWEEP, f"output_root={tmp_path}", "run_name=p", "launcher=local"]
    r = acsl(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "runs" / "p-sweep-0" / "config.yaml").read_text())
    assert saved["provenance"]["command"] == shlex.join(["acsl", *args])


# -- signals and a second command: a job held at its slot lock, so nothing trains ---------

def _held_slot(folder: Path) -> int:
    """Take the sweep's only slot: its job then waits (deterministically) for it."""
    folder.mkdir(parents=True)
    fd = os.open(folder / "slot-0.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _start_waiting_sweep(tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    """A local sweep whose one job waits at its slot; returns (command, job pid, its log)."""
    folder = tmp_path / "launcher" / "h"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "acsl_cli", *SWEEP, f"output_root={tmp_path}",
                          "run_name=h", "launcher=local"], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True,  # its own process group, as at a terminal
                         preexec_fn=default_sigint)  # was: hung 120 s under `&`
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        logs = list(folder.glob("job-*.log"))
        if (folder / "jobs.json").is_file() and logs and "slot" not in logs[0].read_text():
            # the job runs (its log exists, no slot yet): the command waits
            (pid,) = json.loads((folder / "jobs.json").read_text()).values()
            if _catches_sigterm(pid):  # the job is at its slot lock, its handler set
                return p, pid, logs[0]
        time.sleep(0.2)
    p.kill()
    raise AssertionError(f"the sweep did not start its job: {p.communicate()}")


def _catches_sigterm(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt")),
                 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _gone(pid: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_a_signal_to_the_waiting_command_stops_its_jobs_with_one_line(tmp_path, sig, code,
                                                                      word):
    """SIGTERM to the command (was: exit 143 "nothing half-written", the job ran on and wrote
    runs later) and Ctrl-C at a terminal (the whole process group; was a raw
    KeyboardInterrupt traceback in the job's log)."""
    fd = _held_slot(tmp_path / "launcher" / "h")
    try:
        p, pid, log = _start_waiting_sweep(tmp_path)
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        os.close(fd)
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{word}: local job(s) {pid} stopped "
                                                   "with this command"), lines
    assert _gone(pid)  # stopped before the command returned
    text = log.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith(f"{word}: the job stopped"), text
    assert not (tmp_path / "runs" / "h-sweep-0").exists()


def test_a_second_identical_sweep_is_refused_while_the_first_runs(tmp_path):
    """Was: both waited on the job, and both wrote the summary (``h-sweep-<hex>``)."""
    fd = _held_slot(tmp_path / "launcher" / "h")
    try:
        p, pid, _ = _start_waiting_sweep(tmp_path)
        r = acsl(*SWEEP, f"output_root={tmp_path}", "run_name=h", "launcher=local",
                 timeout=300)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        os.close(fd)
    assert r.returncode == 2
    assert f"run_name=h: another acsl sweep of this name is running (pid {p.pid})" in \
        one_error_line(r)
    assert "submitted" not in r.stdout and _gone(pid)


def test_each_launchers_keys_are_the_ones_its_yaml_documents():
    from acsl_cli.settings.sections import LAUNCHER_KINDS

    for name, cls in LAUNCHER_KINDS.items():
        documented = yaml.safe_load((ROOT / "conf" / "launcher" / f"{name}.yaml").read_text())
        assert set(documented) == set(cls.__dataclass_fields__), name


def test_runs_sharing_a_stage1_key_go_into_one_job_in_sweep_order():
    """Rule: one job per stage-1 key, so no two jobs ever train (or wait on) the same stage
    1. ``schedule.stage2.lr`` does not shape stage 1 and the seed does: the runs of one
    seed share a job, in the order of the sweep, whatever order the list gives."""
    from acsl_cli.pipeline.launchers.jobs import group_runs
    from acsl_cli.plan import plan_sweep

    overrides = ["seed=1,0", "schedule.stage2.lr=0.01,0.02", "loss=bce"]
    plan = plan_sweep(overrides)
    names = [f"s-sweep-{i}" for i in range(len(plan.runs))]
    seeds = [r.settings.seed for r in plan.runs]
    want = [tuple(i for i, s in enumerate(seeds) if s == seed)
            for seed in dict.fromkeys(seeds)]  # first appearance order
    assert len(want) == 2 and all(len(w) == 2 for w in want)
    jobs = group_runs(plan, overrides, names)
    assert [j.runs for j in jobs] == want
    assert [j.names for j in jobs] == [tuple(names[i] for i in w) for w in want]
    assert all(j.overrides == tuple(overrides) for j in jobs)

"""``acsl sweep launcher=local|slurm`` against a real Slurm (scripts/slurm_local.sh start,
which CI runs first): the same tables as in process, a cancelled job resubmitted by the
same command, bad input refused before anything is submitted; stage-1 builds without
locks; a 2-node torchrun on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SWEEP = ["sweep", *TINY, "seed=0,1", "loss=bce,acsl"]
TABLES = ("metrics.json", "std.json", "metrics.csv", "summary.md")


def acsl(*args: str, env: dict | None = None, timeout: float = 900
         ) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full, cwd=ROOT)


@pytest.fixture(scope="module")
def partition() -> str:
    """The local cluster's partition; a missing cluster fails (never skips) these tests."""
    if shutil.which("sinfo") is None:
        pytest.fail("no Slurm here: run scripts/slurm_local.sh start (as root) first")
    r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"Slurm unreachable ({r.stderr.strip()}): slurm_local.sh start"
    parts = [p.rstrip("*") for p in r.stdout.split()]
    return "debug" if "debug" in parts else parts[0]


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory) -> Path:
    """The reference: the sweep in this process (launcher=inprocess, the default)."""
    out = tmp_path_factory.mktemp("inprocess")
    r = acsl(*SWEEP, f"output_root={out}", "run_name=s")
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "runs" / "s-sweep"


def assert_same_tables(folder: Path, reference: Path) -> None:
    for name in TABLES:
        assert (folder / name).read_text() == (reference / name).read_text(), name
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text())


def job_ids(stdout: str) -> list[str]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("jobs: "))
    return line.split()[1:]


def squeued(ids: list[str]) -> set[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True,
                       text=True, timeout=60)
    return set(r.stdout.split())


def test_slurm_sweep_writes_the_same_tables(tmp_path, partition, inprocess):
    t0 = time.time()
    r = acsl(*SWEEP, f"output_root={tmp_path}", "run_name=s", "launcher=slurm",
             f"launcher.partition={partition}")
    assert r.returncode == 0, r.stderr[-3000:]
    ids = job_ids(r.stdout)
    assert len(ids) == 2  # two seeds: two stage-1 keys, two jobs
    assert all((tmp_path / "launcher" / "s" / "slurm" / f"{i}_0_result.pkl").is_file()
               for i in ids)  # they really ran as Slurm jobs
    assert_same_tables(tmp_path / "runs" / "s-sweep", inprocess)
    print(f"launcher=slurm sweep: {time.time() - t0:.1f} s")


def test_cancelled_job_is_resubmitted_by_the_same_command(tmp_path, partition, inprocess):
    cmd = [*SWEEP, f"output_root={tmp_path}", "run_name=c", "launcher=slurm",
           f"launcher.partition={partition}"]
    # both jobs held back (sbatch --begin) so the first cannot finish before it is
    # cancelled, however quick the smoke run and however slow the machine; the second is
    # then released
    r = acsl(*cmd, "launcher.wait=false", "launcher.additional={begin:'now+600'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run the same command again" in r.stdout
    first, second = job_ids(r.stdout)
    subprocess.run(["scancel", first], check=True, timeout=60)
    subprocess.run(["scontrol", "update", f"JobId={second}", "StartTime=now"], check=True,
                   timeout=60)
    deadline = time.time() + 120
    while first in squeued([first]) and time.time() < deadline:
        time.sleep(0.5)
    assert not (tmp_path / "runs" / "c-sweep-0" / "metrics.json").exists()
    again = acsl(*cmd)  # waits for the running job, submits the cancelled one again
    assert again.returncode == 0, again.stderr[-3000:]
    resubmitted = job_ids(again.stdout)
    assert first not in resubmitted and len(resubmitted) >= 1
    assert_same_tables(tmp_path / "runs" / "c-sweep", inprocess)


def _restarts(job: str) -> int:
    r = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"\bRestarts=(\d+)", r.stdout)
    return int(m[1]) if m else -1


def test_job_signalled_mid_run_is_requeued_and_continues(tmp_path, partition, inprocess):
    """USR2 (Slurm's time-limit / preemption warning): submitit requeues the job, which
    resumes; the run ends with the in-process run's metrics."""
    cmd = ["sweep", *TINY, "seed=0", "loss=bce,acsl", f"output_root={tmp_path}",
           "run_name=p", "launcher=slurm", f"launcher.partition={partition}"]
    r = acsl(*cmd, "launcher.wait=false")
    assert r.returncode == 0, r.stderr[-3000:]
    (job,) = job_ids(r.stdout)
    stage1 = tmp_path / "cache" / "stage1"
    deadline = time.time() + 300
    while not list(stage1.glob("*.lock")) and time.time() < deadline:  # stage 1 started
        time.sleep(0.2)
    assert list(stage1.glob("*.lock")), "the job never reached stage 1"
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    deadline, restarts = time.time() + 120, 0
    while job in squeued([job]) and time.time() < deadline and restarts < 1:
        restarts = _restarts(job)
        time.sleep(0.2)
    assert restarts >= 1, "the job was not requeued"
    again = acsl(*cmd)  # waits for the requeued job (same id), submits nothing new
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stdout
    run = json.loads((tmp_path / "runs" / "p-sweep-0" / "metrics.json").read_text())
    assert run == json.loads((inprocess.parent / "s-sweep-0" / "metrics.json").read_text())


def test_local_launcher_two_at_once_writes_the_same_tables(tmp_path, inprocess):
    r = acsl(*SWEEP, f"output_root={tmp_path}", "run_name=l", "launcher=local",
             "launcher.max_parallel=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(job_ids(r.stdout)) == 2
    slots = {f.name for f in (tmp_path / "launcher" / "l").glob("slot-*.lock")}
    assert slots <= {"slot-0.lock", "slot-1.lock"} and slots
    assert_same_tables(tmp_path / "runs" / "l-sweep", inprocess)


def _dead_controller(tmp_path: Path) -> Path:
    """A slurm.conf whose controller port nobody listens on (loopback only)."""
    text = Path("/etc/slurm/slurm.conf").read_text()
    conf = tmp_path / "slurm.conf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free now, and nothing will listen there
    conf.write_text(re.sub(r"(?m)^SlurmctldPort=\d+", f"SlurmctldPort={port}", text))
    return conf


@pytest.mark.parametrize("case", ["partition", "nodes", "no_slurm", "dead_controller"])
def test_bad_launcher_input_is_one_line_before_any_submit(tmp_path, partition, case):
    out = tmp_path / "o"
    args = [*SWEEP, f"output_root={out}", "launcher=slurm"]
    env: dict = {}
    expect = {"partition": "launcher.partition=nosuch: no such partition",
              "nodes": "launcher.nodes=0",
              "no_slurm": "launcher=slurm: no Slurm on this machine (sbatch is not on PATH)",
              "dead_controller": "launcher=slurm: cannot reach the Slurm controller"}[case]
    if case == "partition":
        args.append("launcher.partition=nosuch")
    elif case == "nodes":
        args.append("launcher.nodes=0")
    elif case == "no_slurm":
        env["PATH"] = str(tmp_path / "empty")  # python is called by its full path
    else:
        env["SLURM_CONF"] = str(_dead_controller(tmp_path))
    r = acsl(*args, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines
    assert not (out / "launcher").exists() and not (out / "runs").exists()


def test_cache_entry_published_twice_without_locks_keeps_one(tmp_path, monkeypatch):
    from acsl_cli.locks import CacheEntry

    monkeypatch.setenv("ACSL_NO_LOCKS", "1")
    entry = CacheEntry(tmp_path / "key", ("a.txt",))
    built = []
    for who in ("first", "second"):
        tmp = tmp_path / f".key.{who}.tmp"
        tmp.mkdir()
        (tmp / "a.txt").write_text(who)
        built.append(tmp)
    assert entry.publish(built[0]) == entry.folder
    assert entry.publish(built[1]) == entry.folder  # the other builder's entry stands
    assert (entry.folder / "a.txt").read_text() == "first" and entry.complete()


def test_two_stage1_builds_without_locks_leave_one_valid_entry(tmp_path):
    from acsl_cli.config import load_settings
    from acsl_cli.engine.checkpoint import load_checkpoint
    from acsl_cli.layout import follow
    from acsl_cli.pipeline.components import load_data

    base = [*TINY, f"output_root={tmp_path}", "loss=bce", "device=cpu"]
    load_data(load_settings(base))  # the benchmark first (its generator is not the subject)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACSL_NO_LOCKS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "acsl_cli", "train", *base,
                               f"run_name=r{i}"], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    logs = [(tmp_path / "runs" / f"r{i}" / "train.log").read_text() for i in range(2)]
    assert all("stage 1: trained" in log for log in logs)  # both built it: no lock held
    stage1 = tmp_path / "cache" / "stage1"
    entries = [p for p in stage1.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not [p for p in stage1.iterdir() if p.name.startswith(".")]
    for i in range(2):
        run = tmp_path / "runs" / f"r{i}"
        pointed = follow((run / "stage1").read_text().strip(), run)
        assert pointed.resolve() == entries[0].resolve()
    ckpt = load_checkpoint(entries[0] / "checkpoint.pt")
    assert ckpt["model"] and json.loads((entries[0] / "metrics.json").read_text())["metrics"]


def test_two_node_torchrun_on_loopback_ends_with_identical_heads(tmp_path):
    """Two torchrun "nodes" (one process each) joined by a static rendezvous on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(HERE / "ddp_heads.py"), str(tmp_path)],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        assert torch.equal(a[name]["weight"], b[name]["weight"]), name
        assert not torch.equal(a[name]["weight"], a[name]["start"]), name


def test_slurm_tasks_become_a_ddp_group_with_identical_heads(tmp_path, partition):
    """Two Slurm tasks (srun -n 2): torch.distributed set up from SLURM_* as a launcher=slurm
    job with several tasks does it, then the DDP heads test on both ranks."""
    code = ("import runpy, sys; from acsl_cli.pipeline.launchers.jobs import "
            "slurm_distributed_env as env; env(); sys.argv = ['ddp_heads', sys.argv[1]]; "
            f"runpy.run_path({str(HERE / 'ddp_heads.py')!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    r = subprocess.run(["srun", f"--partition={partition}", "--ntasks=2", "--cpus-per-task=1",
                        "--time=10", sys.executable, "-c", code, str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        assert torch.equal(a[name]["weight"], b[name]["weight"]), name

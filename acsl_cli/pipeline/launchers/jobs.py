"""A sweep cut into jobs, and what a job does where it runs.

Runs that share a stage-1 key go into one job and run there in turn (their stage-2
variants after one stage 1), so no two jobs ever train, or wait on, the same stage 1. A
job is described by the sweep's own overrides and run indices: the worker plans the sweep
again from them, so it runs exactly what ``launcher=inprocess`` would, under the same run
names; finished runs are reused and stage 1 / stage 2 resume from their last epoch, which
is all a requeued or resubmitted job needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from acsl_cli.errors import AcslError, Terminated, raise_terminated
from acsl_cli.files import atomic_write_text
from acsl_cli.plan import SweepPlan, plan_sweep
from acsl_cli.settings import stage1_key

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


@dataclass(frozen=True)
class JobSpec:
    """One job: the sweep's overrides, the runs it does (indices) and their folder names,
    and the user's command (each run's ``provenance.command``)."""

    overrides: tuple[str, ...]
    runs: tuple[int, ...]
    names: tuple[str, ...]
    command: str | None = None

    @property
    def key(self) -> str:
        """Stable id of the job's runs: a rerun of the sweep finds the job it submitted."""
        return hashlib.sha1(json.dumps(self.names).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return "runs " + ",".join(str(i) for i in self.runs)

    def to_json(self) -> str:
        return json.dumps({"overrides": list(self.overrides), "runs": list(self.runs),
                           "names": list(self.names), "command": self.command})

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(tuple(d["overrides"]), tuple(d["runs"]), tuple(d["names"]),
                   d.get("command"))


def group_runs(plan: SweepPlan, overrides: Sequence[str], names: Sequence[str],
               command: str | None = None) -> list[JobSpec]:
    """One job per stage-1 key, in the order of the sweep's first run of each key."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(plan.runs):
        groups.setdefault(stage1_key(run.settings, 1), []).append(i)
    return [JobSpec(tuple(overrides), tuple(idx), tuple(names[i] for i in idx), command)
            for idx in groups.values()]


@dataclass(frozen=True)
class Failure:
    """A job's own error: its one line (as ``acsl`` would print it) and exit code."""

    line: str
    exit_code: int


def failure_file(folder: Path, job: JobSpec) -> Path:
    return folder / f"job-{job.key}.error.json"


def record_failure(folder: Path, job: JobSpec, error: BaseException) -> Failure:
    """Keep the job's error where the launching command reads it (plain JSON)."""
    text = " ".join(str(error).split())
    if isinstance(error, AcslError):
        f = Failure(text or error.__class__.__name__, getattr(error, "exit_code", 2))
    else:
        f = Failure(f"{error.__class__.__name__}: {text} (traceback in the job's log)", 1)
    try:
        atomic_write_text(failure_file(folder, job),
                          json.dumps({"error": f.line, "exit_code": f.exit_code}) + "\n")
    except OSError:
        pass  # the job's log still has it
    return f


def read_failure(folder: Path, job: JobSpec) -> Failure | None:
    """The job's recorded error, if it failed with one."""
    try:
        d = json.loads(failure_file(folder, job).read_text())
        return Failure(str(d["error"]), int(d["exit_code"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def run_recorded(job: JobSpec, folder: Path) -> int:
    """Run the job; its own error becomes one line in the log and its failure record
    (exit code 2 for bad input, 1 for a diverged run), a bug keeps its traceback."""
    try:
        run_job(job)
    except AcslError as e:
        f = record_failure(folder, job, e)
        print(f"error: {f.line}", file=sys.stderr, flush=True)
        return f.exit_code
    except Exception as e:
        record_failure(folder, job, e)
        raise
    return 0


def stoppable(fn: Callable[[], int]) -> int:
    """A job process: SIGTERM stops it as Ctrl-C does; either ends in one line, no
    traceback (nothing half-written is left: run folders are published whole)."""
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return fn()
    except KeyboardInterrupt:
        _quiet()
        print("interrupted: the job stopped; nothing half-written was left behind",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Terminated:
        _quiet()
        print("terminated (SIGTERM): the job stopped; nothing half-written was left behind",
              file=sys.stderr, flush=True)
        return EXIT_TERMINATED


def _quiet() -> None:
    """A second signal while the job reports the first must not add a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_overrides(overrides: Sequence[str], base: str) -> list[str]:
    """The sweep's overrides as a job replays them: its run name fixed (a default name is
    drawn from the clock), launcher choices dropped (the job runs its runs in process)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0]
            not in ("launcher", "run_name", "out")]
    return [*keep, f"run_name={base}"]


def run_job(job: JobSpec) -> list[str]:
    """Run the job's runs in turn (in this process, or this rank of a DDP group); returns
    their folders. Called by the local worker and inside a Slurm job."""
    from acsl_cli.pipeline.provenance import set_command
    from acsl_cli.pipeline.reuse import reuse_or_train  # torch: only where a job runs

    set_command(job.command)
    plan = plan_sweep(list(job.overrides))
    return [str(reuse_or_train(plan.runs[i], name).run_dir)
            for i, name in zip(job.runs, job.names, strict=True)]


def slurm_distributed_env() -> None:
    """torch.distributed's env:// variables from Slurm's task environment (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID, the node list), for jobs with several tasks. Every task
    keeps all of its node's GPUs; LOCAL_RANK picks one (``engine.distributed``)."""
    env = os.environ
    tasks = int(env.get("SLURM_NTASKS", "1"))
    if tasks <= 1 or "RANK" in env:
        return
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    nodes = max(1, int(env.get("SLURM_NNODES", "1")))
    port = 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000  # the same in every task
    env.update({"MASTER_ADDR": env.get("MASTER_ADDR", hosts[0]),
                "MASTER_PORT": env.get("MASTER_PORT", str(port)),
                "RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(tasks),
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "LOCAL_WORLD_SIZE": str(tasks // nodes)})


class SlurmJob:
    """What submitit runs: the job, and on timeout or preemption (submitit's checkpoint
    signal) a requeue of the same job, which resumes from the last finished epoch."""

    def __init__(self, job: JobSpec, folder: Path) -> None:
        self.job, self.folder = job, folder

    def __call__(self) -> list[str]:
        slurm_distributed_env()
        try:
            return run_job(self.job)
        except Exception as e:
            f = record_failure(self.folder, self.job, e)  # what the launching command shows
            if isinstance(e, AcslError):
                print(f"error: {f.line}", file=sys.stderr, flush=True)
            raise

    def checkpoint(self) -> object:
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmJob(self.job, self.folder))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m acsl_cli.pipeline.launchers.jobs JOB.json``: a local job (or one rank
    of it under torchrun)."""
    args = list(sys.argv[1:] if argv is None else argv)
    spec = Path(args[0])
    job = JobSpec.from_json(spec.read_text())
    return stoppable(lambda: run_recorded(job, spec.parent))


if __name__ == "__main__":
    sys.exit(main())

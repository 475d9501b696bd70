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
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acsl_cli.plan import SweepPlan, plan_sweep
from acsl_cli.settings import stage1_key


@dataclass(frozen=True)
class JobSpec:
    """One job: the sweep's overrides, the runs it does (indices) and their folder names."""

    overrides: tuple[str, ...]
    runs: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def key(self) -> str:
        """Stable id of the job's runs: a rerun of the sweep finds the job it submitted."""
        return hashlib.sha1(json.dumps(self.names).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return "runs " + ",".join(str(i) for i in self.runs)

    def to_json(self) -> str:
        return json.dumps({"overrides": list(self.overrides), "runs": list(self.runs),
                           "names": list(self.names)})

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(tuple(d["overrides"]), tuple(d["runs"]), tuple(d["names"]))


def group_runs(plan: SweepPlan, overrides: Sequence[str], names: Sequence[str]) -> list[JobSpec]:
    """One job per stage-1 key, in the order of the sweep's first run of each key."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(plan.runs):
        groups.setdefault(stage1_key(run.settings, 1), []).append(i)
    return [JobSpec(tuple(overrides), tuple(idx), tuple(names[i] for i in idx))
            for idx in groups.values()]


def worker_overrides(overrides: Sequence[str], base: str) -> list[str]:
    """The sweep's overrides as a job replays them: its run name fixed (a default name is
    drawn from the clock), launcher choices dropped (the job runs its runs in process)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0]
            not in ("launcher", "run_name", "out")]
    return [*keep, f"run_name={base}"]


def run_job(job: JobSpec) -> list[str]:
    """Run the job's runs in turn (in this process, or this rank of a DDP group); returns
    their folders. Called by the local worker and inside a Slurm job."""
    from acsl_cli.layout import OutputLayout
    from acsl_cli.pipeline.sweep import finished_run
    from acsl_cli.pipeline.train import train

    plan = plan_sweep(list(job.overrides))
    done = []
    for i, name in zip(job.runs, job.names, strict=True):
        run = plan.runs[i]
        folder = OutputLayout.at(run.settings.output_root).run(name)
        result = finished_run(folder, run) or train(run, name)
        done.append(str(result.run_dir))
    return done


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

    def __init__(self, job: JobSpec) -> None:
        self.job = job

    def __call__(self) -> list[str]:
        slurm_distributed_env()
        return run_job(self.job)

    def checkpoint(self) -> object:
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmJob(self.job))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m acsl_cli.pipeline.launchers.jobs JOB.json``: a local job (or one rank
    of it under torchrun)."""
    args = list(sys.argv[1:] if argv is None else argv)
    job = JobSpec.from_json(Path(args[0]).read_text())
    from acsl_cli.errors import AcslError

    try:
        run_job(job)
    except AcslError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

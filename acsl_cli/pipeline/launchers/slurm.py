"""``launcher=slurm``: one Slurm job per job spec, submitted through submitit.

Job states come from ``squeue`` (a job is alive while it is queued, running or requeued),
not from ``sacct``, so clusters without an accounting database work too; how a job ended
(cancelled, failed, node failure) from ``scontrol show job`` while Slurm still remembers
it; whether a job did its work is read from its run folders. When ``squeue`` does not
answer, the jobs' state is unknown (``SchedulerSilent``), never taken as ended. A job
with several tasks (``nodes`` x ``gpus_per_node``) runs DDP with torch.distributed set up
from Slurm's variables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from acsl_cli.errors import ConfigError
from acsl_cli.pipeline.launchers.backend import SchedulerSilent
from acsl_cli.pipeline.launchers.jobs import JobSpec, SlurmJob
from acsl_cli.settings import SlurmLauncherSettings

#: what the launcher calls, and srun, which every submitit job script starts its task with
COMMANDS = ("sbatch", "squeue", "sinfo", "scontrol", "srun")


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def _stderr_to(file: IO[bytes]) -> Iterator[None]:
    """This process's stderr (file descriptor 2, which sbatch inherits) into ``file``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")


class SlurmBackend:
    """Submits with submitit's AutoExecutor; a job id is Slurm's."""

    kind = "slurm"

    def __init__(self, s: SlurmLauncherSettings, folder: Path, name: str) -> None:
        self.s, self.folder, self.name = s, folder, name

    def check(self) -> None:
        """Slurm reachable, the partition known, submitit installed: before any submit."""
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if len(missing) == len(COMMANDS):
            raise ConfigError(f"launcher=slurm: no Slurm on this machine ({missing[0]} is "
                              "not on PATH)")
        if missing:
            raise ConfigError(f"launcher=slurm: {missing[0]} is not on PATH on this machine "
                              "(its jobs are submitted from here; "
                              f"{', '.join(c for c in COMMANDS if c not in missing)} are)")
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("launcher=slurm needs submitit: pip install 'acsl-cli[slurm]'"
                              ) from None
        try:
            r = _run(["sinfo", "-h", "-o", "%P"], timeout=30)
        except subprocess.TimeoutExpired:
            raise ConfigError("launcher=slurm: the Slurm controller does not answer (sinfo "
                              "timed out)") from None
        if r.returncode != 0:
            raise ConfigError("launcher=slurm: cannot reach the Slurm controller (sinfo: "
                              f"{_first_line(r.stderr + r.stdout)})")
        parts = [p.rstrip("*") for p in r.stdout.split()]
        if self.s.partition is not None and self.s.partition not in parts:
            raise ConfigError(f"launcher.partition={self.s.partition}: no such partition "
                              f"(this cluster has {', '.join(parts) or 'none'})")

    def parameters(self) -> dict[str, Any]:
        """submitit's AutoExecutor parameters (only the ones set: the cluster's defaults
        apply to the rest)."""
        s = self.s
        p: dict[str, Any] = {"name": f"acsl-{self.name}", "nodes": s.nodes,
                             "tasks_per_node": max(1, s.gpus_per_node),
                             "cpus_per_task": s.cpus_per_task, "timeout_min": s.time_min}
        optional = {"gpus_per_node": s.gpus_per_node or None, "mem_gb": s.mem_gb,
                    "slurm_partition": s.partition, "slurm_account": s.account,
                    "slurm_qos": s.qos, "slurm_constraint": s.constraint,
                    "slurm_additional_parameters": dict(s.additional) if s.additional
                    else None}
        p.update({k: v for k, v in optional.items() if v is not None})
        return p

    def submit(self, job: JobSpec) -> str:
        import submitit

        where = self.folder / "slurm"
        before = set(where.iterdir()) if where.is_dir() else set()
        executor = submitit.AutoExecutor(folder=where, cluster="slurm")
        executor.update_parameters(**self.parameters())
        with tempfile.TemporaryFile() as said, _stderr_to(said):  # sbatch's own words
            try:
                submitted = executor.submit(SlurmJob(job, self.folder))
                refused = None
            except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
                refused = e
            said.seek(0)
            words = said.read().decode(errors="replace")
        if refused is not None:
            for left in set(where.iterdir()) - before:  # its script and pickle: not a job
                left.unlink(missing_ok=True)
            why = _first_line(words) if words.strip() else " ".join(str(refused).split())
            raise ConfigError(f"launcher=slurm: sbatch refused the job ({why[:300]})")
        return str(submitted.job_id)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """Jobs still in the queue -> their state (pending with its reason, running,
        requeued, completing). Raises SchedulerSilent when squeue does not answer."""
        if not ids:
            return {}
        try:
            r = _run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(ids)])
        except subprocess.TimeoutExpired:
            raise SchedulerSilent("squeue timed out") from None
        if r.returncode != 0:
            if "Invalid job id" in r.stderr:
                return {}
            raise SchedulerSilent(f"squeue: {_first_line(r.stderr + r.stdout)}")
        live = {}
        for line in r.stdout.splitlines():
            job_id, state, reason = [*line.strip().split("|"), "", ""][:3]
            if job_id in ids:
                live[job_id] = state.lower() + (f" ({reason})" if state == "PENDING"
                                                and reason not in ("", "None") else "")
        return live

    def ended(self, job_id: str) -> str | None:
        """Slurm's final state of a job that left the queue (CANCELLED, FAILED with its
        exit code, NODE_FAIL, TIMEOUT, ...), while scontrol still remembers it."""
        try:
            r = _run(["scontrol", "-o", "show", "job", job_id], timeout=30)
        except subprocess.TimeoutExpired:
            return None
        fields = dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
        state = fields.get("JobState")
        if r.returncode != 0 or not state:
            return None
        code = fields.get("ExitCode", "0:0")
        return state + (f" (exit code {code})" if code != "0:0" else "")

    def stop(self, ids: Sequence[str], sig: int) -> str:
        """Slurm jobs are the cluster's: they are left running, and said so."""
        listed = " ".join(ids)
        return (f"slurm job(s) {listed} keep running (not cancelled); the same command, run "
                f"again, waits for them; scancel {listed} stops them")

    def log(self, job: JobSpec, job_id: str) -> Path:
        return self.folder / "slurm" / f"{job_id}_0_log.err"

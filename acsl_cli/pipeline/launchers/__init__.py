"""``acsl sweep`` outside this process: ``launcher=local`` (processes on this machine) or
``launcher=slurm`` (Slurm jobs through submitit).

The run folders are the truth: a job is needed while one of its runs has no finished
folder. Submitted job ids are kept in ``<output_root>/launcher/<sweep>/jobs.json``, so the
same command run again waits for the jobs still queued or running, submits again the
ones that ended without finishing (cancelled, failed, killed) and collects the rest.

Every job is reported as what it is: submitted, queued or running (Slurm's state),
finished, failed with its own error line (``job-<key>.error.json``, written by the job),
ended without finishing (how, where the scheduler still knows), or unknown because the
scheduler did not answer, which is never taken as ended. A signal that stops the
waiting command is forwarded to local jobs (they stop with it) and leaves Slurm jobs
running (said so in the command's last line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from acsl_cli.errors import AcslError, ConfigError, Terminated
from acsl_cli.files import atomic_write_text
from acsl_cli.layout import OutputLayout
from acsl_cli.layout import finished as run_finished
from acsl_cli.locks import lock_owner, locks_enabled, os_lock, release, try_lock
from acsl_cli.pipeline.launchers.backend import Backend, SchedulerSilent
from acsl_cli.pipeline.launchers.jobs import (
    JobSpec,
    failure_file,
    group_runs,
    read_failure,
    worker_overrides,
)
from acsl_cli.plan import SweepPlan
from acsl_cli.progress import console, progress_bar
from acsl_cli.settings import LauncherSettings, LocalLauncherSettings, SlurmLauncherSettings

log = logging.getLogger("acsl")
POLL_S = 1.0
#: how long a waiting command keeps the last known states while squeue does not answer
SILENT_LIMIT_S = 600.0


class JobsFailed(AcslError):
    """Jobs ended without finishing their runs: exit 1 (or a failed job's own exit code);
    the same command resubmits them."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class JobsUnknown(AcslError):
    """The scheduler did not answer: the jobs' state is unknown, nothing was submitted."""

    exit_code = 1


@dataclass
class Launched:
    """The jobs of this command (id -> spec) and whether every run is finished."""

    jobs: dict[str, JobSpec]
    complete: bool


def backend_for(s: LauncherSettings, folder: Path, name: str) -> Backend:
    """The backend of the chosen launcher, given its own section."""
    if isinstance(s, LocalLauncherSettings):
        from acsl_cli.pipeline.launchers.local import LocalBackend

        return LocalBackend(s, folder)
    if isinstance(s, SlurmLauncherSettings):
        from acsl_cli.pipeline.launchers.slurm import SlurmBackend

        return SlurmBackend(s, folder, name)
    raise ValueError(f"launcher={s.name} runs no jobs of its own")


def prepare(plan: SweepPlan, base: str) -> Backend:
    """The launcher's checks (settings, Slurm reachable, GPUs there): before any folder
    is created, so a refused sweep leaves nothing behind."""
    s = plan.runs[0].settings
    if not s.launcher.wait and not s.run_name:
        raise ConfigError("launcher.wait=false needs run_name=NAME: the same command, run "
                          "again, collects the sweep by its name")
    backend = backend_for(s.launcher, OutputLayout.at(s.output_root).launcher(base), base)
    backend.check()
    return backend


@contextlib.contextmanager
def sweep_lock(plan: SweepPlan, base: str) -> Iterator[None]:
    """One command at a time per sweep name: a second identical sweep is refused at once
    instead of waiting on the same jobs and writing a second summary."""
    s = plan.runs[0].settings
    folder = OutputLayout.at(s.output_root).launcher(base)
    if not locks_enabled():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = os_lock(folder / "sweep.lock")
    if not try_lock(lock):
        owner = lock_owner(folder / "sweep.lock")[0]
        raise ConfigError(f"run_name={base}: another acsl sweep of this name is running "
                          f"(pid {owner}); run this command again when it has ended")
    try:
        yield
    finally:
        release(lock)


def finished(runs_root: Path, job: JobSpec) -> bool:
    return all(run_finished(runs_root / n) for n in job.names)


def launch(plan: SweepPlan, overrides: Sequence[str], base: str, names: Sequence[str],
           backend: Backend, command: str | None = None) -> Launched:
    """Submit the jobs whose runs are not finished (or adopt the ones still queued), then,
    with ``launcher.wait``, wait for them with a progress bar over jobs."""
    s = plan.runs[0].settings
    layout = OutputLayout.at(s.output_root)
    folder = layout.launcher(base)
    jobs = group_runs(plan, worker_overrides(overrides, base), names, command)
    state_file = folder / "jobs.json"
    state = _read_state(state_file)
    todo = []
    for job in jobs:
        if not finished(layout.runs, job):
            todo.append(job)
        elif job.key in state:
            console.print(f"{backend.kind} job {state[job.key]} ({job.label}): finished")
    known = [state[j.key] for j in todo if j.key in state]
    try:
        live = backend.states(known)
    except SchedulerSilent as e:
        raise JobsUnknown(_unknown(backend, known, str(e)) + "; nothing was submitted") from None
    mine: dict[str, JobSpec] = {}
    for job in todo:
        old = state.get(job.key)
        if old in live:
            console.print(f"{backend.kind} job {old} ({job.label}): {live[old]}")
            mine[old] = job
            continue
        if old is not None:
            console.print(f"{backend.kind} job {old} ({job.label}) "
                          f"{_how_it_ended(backend, folder, job, old)}; submitting it again")
        failure_file(folder, job).unlink(missing_ok=True)
        job_id = backend.submit(job)
        state[job.key] = job_id
        atomic_write_text(state_file, json.dumps(state, indent=1) + "\n")
        mine[job_id] = job
        console.print(f"{backend.kind} job {job_id} ({job.label}) submitted; log "
                      f"{backend.log(job, job_id)}")
    if mine:
        console.print(f"jobs: {' '.join(mine)}")
    if not s.launcher.wait:
        return Launched(mine, not mine)
    try:
        _wait(backend, mine, s.progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(backend.stop(list(mine), signal.SIGINT)) from None
    except Terminated:
        raise Terminated(backend.stop(list(mine), signal.SIGTERM)) from None
    failed = [(i, j) for i, j in mine.items() if not finished(layout.runs, j)]
    if failed:
        i, j = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        own = read_failure(folder, j)
        if own is not None:
            raise JobsFailed(f"{backend.kind} job {i} ({j.label}) failed: {own.line}{more}; "
                             f"log {backend.log(j, i)}", own.exit_code)
        raise JobsFailed(f"{backend.kind} job {i} ({j.label}) "
                         f"{_how_it_ended(backend, folder, j, i)}{more}; log "
                         f"{backend.log(j, i)}; run the same command again to submit it again")
    return Launched(mine, True)


def _how_it_ended(backend: Backend, folder: Path, job: JobSpec, job_id: str) -> str:
    """'failed: <its error line>', or 'ended <how> without finishing <run>'."""
    own = read_failure(folder, job)
    if own is not None:
        return f"failed: {own.line}"
    how = backend.ended(job_id)
    return f"ended{' ' + how if how else ''} without finishing {job.names[0]}"


def _unknown(backend: Backend, ids: Sequence[str], why: str) -> str:
    return (f"{backend.kind} job(s) {' '.join(ids)}: state unknown because the scheduler did "
            f"not answer ({why}); they may still be queued or running")


def _wait(backend: Backend, jobs: dict[str, JobSpec], progress: bool) -> None:
    """Until every job has left the queue. While the scheduler does not answer, the last
    known states stand, for at most SILENT_LIMIT_S."""
    pending = set(jobs)
    silent_since: float | None = None
    with progress_bar(f"{backend.kind} jobs", len(jobs), progress) as bar:
        while pending:
            try:
                live = set(backend.states(sorted(pending)))
                silent_since = None
            except SchedulerSilent as e:
                now = time.monotonic()
                if silent_since is None:
                    silent_since = now
                    log.warning("%s: the scheduler does not answer (%s); waiting", backend.kind,
                                e)
                elif now - silent_since > SILENT_LIMIT_S:
                    raise JobsUnknown(_unknown(backend, sorted(pending), str(e)) + "; the same "
                                      "command, run again, waits for them") from None
                live = pending
            gone = pending - live
            if gone:
                bar.advance(len(gone))
                pending = live
            if pending:
                time.sleep(POLL_S)


def _read_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

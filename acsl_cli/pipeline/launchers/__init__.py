"""``acsl sweep`` outside this process: ``launcher=local`` (processes on this machine) or
``launcher=slurm`` (Slurm jobs through submitit).

The run folders are the truth: a job is needed while one of its runs has no finished
folder. Submitted job ids are kept in ``<output_root>/launcher/<sweep>/jobs.json``, so the
same command run again waits for the jobs still queued or running, submits again the
ones that ended without finishing (cancelled, failed, killed) and collects the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from acsl_cli.errors import AcslError, ConfigError
from acsl_cli.files import atomic_write_text
from acsl_cli.layout import OutputLayout
from acsl_cli.pipeline.launchers.jobs import JobSpec, group_runs, worker_overrides
from acsl_cli.plan import SweepPlan
from acsl_cli.progress import console, progress_bar
from acsl_cli.settings import LauncherSettings

log = logging.getLogger("acsl")
POLL_S = 1.0


class JobsFailed(AcslError):
    """Jobs ended without finishing their runs: exit 1; the same command resubmits them."""

    exit_code = 1


class Backend(Protocol):
    kind: str

    def check(self) -> None: ...
    def submit(self, job: JobSpec) -> str: ...
    def alive(self, ids: Sequence[str]) -> set[str]: ...
    def log(self, job: JobSpec, job_id: str) -> Path: ...


@dataclass
class Launched:
    """The jobs of this command (id -> spec) and whether every run is finished."""

    jobs: dict[str, JobSpec]
    complete: bool


def backend_for(s: LauncherSettings, folder: Path, name: str) -> Backend:
    if s.name == "local":
        from acsl_cli.pipeline.launchers.local import LocalBackend

        return LocalBackend(s, folder)
    from acsl_cli.pipeline.launchers.slurm import SlurmBackend

    return SlurmBackend(s, folder, name)


def finished(runs_root: Path, job: JobSpec) -> bool:
    return all((runs_root / n / "metrics.json").is_file() for n in job.names)


def launch(plan: SweepPlan, overrides: Sequence[str], base: str,
           names: Sequence[str]) -> Launched:
    """Submit the jobs whose runs are not finished (or adopt the ones still queued), then,
    with ``launcher.wait``, wait for them with a progress bar over jobs."""
    s = plan.runs[0].settings
    layout = OutputLayout.at(s.output_root)
    folder = layout.launcher(base)
    if not s.launcher.wait and not s.run_name:
        raise ConfigError("launcher.wait=false needs run_name=NAME: the same command, run "
                          "again, collects the sweep by its name")
    backend = backend_for(s.launcher, folder, base)
    backend.check()  # before anything is submitted
    jobs = group_runs(plan, worker_overrides(overrides, base), names)
    todo = [j for j in jobs if not finished(layout.runs, j)]
    state_file = folder / "jobs.json"
    state = _read_state(state_file)
    live = backend.alive([state[j.key] for j in todo if j.key in state])
    mine: dict[str, JobSpec] = {}
    for job in todo:
        old = state.get(job.key)
        if old in live:
            console.print(f"{backend.kind} job {old} ({job.label}): still queued or running")
            mine[old] = job
            continue
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
    _wait(backend, mine, s.progress)
    failed = [(i, j) for i, j in mine.items() if not finished(layout.runs, j)]
    if failed:
        i, j = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise JobsFailed(f"{backend.kind} job {i} ({j.label}) ended without finishing "
                         f"{j.names[0]}{more}; log {backend.log(j, i)}; run the same command "
                         "again to submit it again")
    return Launched(mine, True)


def _wait(backend: Backend, jobs: dict[str, JobSpec], progress: bool) -> None:
    """Until every job has left the queue."""
    pending = set(jobs)
    with progress_bar(f"{backend.kind} jobs", len(jobs), progress) as bar:
        while pending:
            live = backend.alive(sorted(pending))
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

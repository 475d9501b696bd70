"""What a launcher backend is (``local.py``, ``slurm.py``): the contract the waiting
command (``__init__.py``) drives, kept apart so that no backend imports the package that
chooses it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from acsl_cli.pipeline.launchers.jobs import JobSpec


class SchedulerSilent(Exception):
    """Raised by ``Backend.states`` when the scheduler gives no answer."""


class Backend(Protocol):
    kind: str

    def check(self) -> None: ...
    def submit(self, job: JobSpec) -> str: ...
    def states(self, ids: Sequence[str]) -> dict[str, str]: ...
    def ended(self, job_id: str) -> str | None: ...
    def stop(self, ids: Sequence[str], sig: int) -> str: ...
    def log(self, job: JobSpec, job_id: str) -> Path: ...

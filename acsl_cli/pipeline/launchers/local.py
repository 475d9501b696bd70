"""``launcher=local``: each job a separate process on this machine.

At most ``launcher.max_parallel`` jobs run at once: every job process first takes one of
that many slot locks (``locks.os_lock`` in the sweep's launcher folder; the kernel frees a slot
when its holder dies), so the limit holds whether this command waits or returns. Slot k
owns GPUs ``[k * gpus_per_run, (k + 1) * gpus_per_run)`` of the ones this machine shows,
given to the job as CUDA_VISIBLE_DEVICES; with more than one, the job runs DDP over them
under torchrun.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import UnixFileLock

from acsl_cli.errors import ConfigError
from acsl_cli.locks import os_lock, release, try_lock
from acsl_cli.pipeline.launchers.jobs import JobSpec, run_recorded, stoppable
from acsl_cli.settings import LocalLauncherSettings

MODULE = "acsl_cli.pipeline.launchers.local"
STOP_WAIT_S = 60.0  # a stopped job's grace before SIGKILL


def visible_gpus() -> tuple[list[str], str]:
    """The GPU ids this process may hand out: the ones CUDA finds, named as in
    CUDA_VISIBLE_DEVICES (when set); and a note when that variable names GPUs CUDA
    does not find (it is a list of names, not a proof that they exist)."""
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(found)], ""
    named = [g.strip() for g in env.split(",") if g.strip()]
    note = (f" (CUDA_VISIBLE_DEVICES={env} names {len(named)}, CUDA finds {found})"
            if len(named) != found else "")
    return named[:found], note


class LocalBackend:
    """Starts job processes; a job id is the process id."""

    kind = "local"

    def __init__(self, s: LocalLauncherSettings, folder: Path) -> None:
        self.s, self.folder = s, folder
        self.children: dict[str, subprocess.Popen] = {}
        self.gpus: list[str] = []

    def check(self) -> None:
        k = self.s.gpus_per_run
        if k:
            self.gpus, note = visible_gpus()
            if len(self.gpus) < k:
                raise ConfigError(f"launcher.gpus_per_run={k}: this machine has "
                                  f"{len(self.gpus)} usable GPU(s){note}")

    def submit(self, job: JobSpec) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        spec = self.folder / f"job-{job.key}.json"
        spec.write_text(job.to_json())
        slots = self.s.max_parallel
        if self.s.gpus_per_run:
            slots = max(1, min(slots, len(self.gpus) // self.s.gpus_per_run))
        cmd = [sys.executable, "-m", MODULE, str(spec), "--slots", str(slots),
               "--gpus-per-run", str(self.s.gpus_per_run), "--gpus", ",".join(self.gpus)]
        with open(self.folder / f"job-{job.key}.log", "ab") as out:
            # without wait the jobs outlive this command (own session, no Ctrl-C from it)
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=not self.s.wait)
        self.children[str(p.pid)] = p
        return str(p.pid)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The jobs still running (or waiting for a slot): always known here."""
        live = {}
        for i in ids:
            p = self.children.get(i)
            if p is not None:
                if p.poll() is None:
                    live[i] = "running"
            elif i.isdigit() and _is_job_process(int(i)):  # started by an earlier command
                live[i] = "running"
        return live

    def ended(self, job_id: str) -> str | None:
        """How a job of this command ended (its exit status), if it is known."""
        p = self.children.get(job_id)
        if p is None or p.returncode is None:
            return None
        if p.returncode < 0:
            try:
                return f"killed by {signal.Signals(-p.returncode).name}"
            except ValueError:
                return f"killed by signal {-p.returncode}"
        return f"with exit code {p.returncode}"

    def stop(self, ids: Sequence[str], sig: int) -> str:
        """Forward the signal that stopped this command to its jobs and wait for them (a
        Ctrl-C at the terminal reached them already: they get it once more only if they
        are still running after a moment); SIGKILL after STOP_WAIT_S."""
        pids = [int(i) for i in ids if i.isdigit()]
        if sig == signal.SIGINT:
            _wait_gone(pids, 2.0, self._alive)
        for pid in pids:
            if self._alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        left = _wait_gone(pids, STOP_WAIT_S, self._alive)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        _wait_gone(left, 10.0, self._alive)
        return (f"local job(s) {' '.join(ids)} stopped with this command (nothing "
                "half-written was left behind); the same command, run again, resumes them")

    def _alive(self, pid: int) -> bool:
        p = self.children.get(str(pid))
        return p.poll() is None if p is not None else _is_job_process(pid)

    def log(self, job: JobSpec, job_id: str) -> Path:
        return self.folder / f"job-{job.key}.log"


def _wait_gone(pids: Sequence[int], timeout: float, alive: Callable[[int], bool]
               ) -> list[int]:
    """Wait until none of ``pids`` is alive (or the timeout); the ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _is_job_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return MODULE.encode() in cmdline and state != "Z"


def take_slot(folder: Path, slots: int) -> tuple[int, UnixFileLock]:
    """Block until one of ``slots`` slot locks is free; returns (slot, the lock held)."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(slots):
            lock = os_lock(folder / f"slot-{k}.lock")
            if try_lock(lock):
                return k, lock
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """One local job: take a slot, then run the job here, or under torchrun over the
    slot's GPUs."""
    p = argparse.ArgumentParser(prog=MODULE)
    p.add_argument("spec")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--gpus-per-run", type=int, default=0)
    p.add_argument("--gpus", default="")
    a = p.parse_args(argv)
    return stoppable(lambda: _run_in_slot(Path(a.spec), a.slots, a.gpus_per_run, a.gpus))


def _run_in_slot(spec: Path, slots: int, gpus_per_run: int, gpus: str) -> int:
    slot, lock = take_slot(spec.parent, slots)
    try:
        env = dict(os.environ)
        if gpus_per_run:
            mine = gpus.split(",")[slot * gpus_per_run:(slot + 1) * gpus_per_run]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        print(f"slot {slot}" + (f", GPUs {env['CUDA_VISIBLE_DEVICES']}" if gpus_per_run
                                else ""), flush=True)
        if gpus_per_run > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={gpus_per_run}", "-m",
                   "acsl_cli.pipeline.launchers.jobs", str(spec)]
            with subprocess.Popen(cmd, env=env) as p:
                try:
                    return p.wait()
                except BaseException:  # stopped: torchrun passes the signal to its ranks
                    p.send_signal(signal.SIGTERM)
                    p.wait()
                    raise
        os.environ.update(env)
        return run_recorded(JobSpec.from_json(spec.read_text()), spec.parent)
    finally:
        release(lock)


if __name__ == "__main__":
    sys.exit(main())

"""``launcher=local``: each job a separate process on this machine.

At most ``launcher.max_parallel`` jobs run at once: every job process first takes one of
that many slot locks (``flock`` in the sweep's launcher folder; the kernel frees a slot
when its holder dies), so the limit holds whether this command waits or returns. Slot k
owns GPUs ``[k * gpus_per_run, (k + 1) * gpus_per_run)`` of the ones this machine shows,
given to the job as CUDA_VISIBLE_DEVICES; with more than one, the job runs DDP over them
under torchrun.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from acsl_cli.errors import ConfigError
from acsl_cli.pipeline.launchers.jobs import JobSpec
from acsl_cli.settings import LauncherSettings

MODULE = "acsl_cli.pipeline.launchers.local"


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out (CUDA_VISIBLE_DEVICES, else every device)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class LocalBackend:
    """Starts job processes; a job id is the process id."""

    kind = "local"

    def __init__(self, s: LauncherSettings, folder: Path) -> None:
        self.s, self.folder = s, folder
        self.children: dict[str, subprocess.Popen] = {}
        self.gpus: list[str] = []

    def check(self) -> None:
        k = self.s.gpus_per_run
        if k:
            self.gpus = visible_gpus()
            if len(self.gpus) < k:
                raise ConfigError(f"launcher.gpus_per_run={k}: this machine shows "
                                  f"{len(self.gpus)} GPU(s)")

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

    def alive(self, ids: Sequence[str]) -> set[str]:
        live = set()
        for i in ids:
            p = self.children.get(i)
            if p is not None:
                if p.poll() is None:
                    live.add(i)
            elif _is_job_process(int(i)):  # started by an earlier command
                live.add(i)
        return live

    def log(self, job: JobSpec, job_id: str) -> Path:
        return self.folder / f"job-{job.key}.log"


def _is_job_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return MODULE.encode() in cmdline and state != "Z"


def take_slot(folder: Path, slots: int) -> tuple[int, int]:
    """Block until one of ``slots`` slot locks is free; returns (slot, fd holding it)."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(slots):
            fd = os.open(folder / f"slot-{k}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return k, fd
            except BlockingIOError:
                os.close(fd)
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
    spec = Path(a.spec)
    slot, fd = take_slot(spec.parent, a.slots)
    try:
        env = dict(os.environ)
        if a.gpus_per_run:
            mine = a.gpus.split(",")[slot * a.gpus_per_run:(slot + 1) * a.gpus_per_run]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        print(f"slot {slot}" + (f", GPUs {env['CUDA_VISIBLE_DEVICES']}" if a.gpus_per_run
                                else ""), flush=True)
        if a.gpus_per_run > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={a.gpus_per_run}", "-m",
                   "acsl_cli.pipeline.launchers.jobs", str(spec)]
            return subprocess.call(cmd, env=env)
        os.environ.update(env)
        from acsl_cli.pipeline.launchers.jobs import main as run_spec

        return run_spec([str(spec)])
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())

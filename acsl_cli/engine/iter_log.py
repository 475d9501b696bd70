"""The training line written every ``schedule.log_every`` iterations: iteration, seconds per
iteration, ETA, memory and the losses. It goes to the run's log (``train.log``, events,
trackers) and, when no progress bar is live (stderr not a terminal: ``nohup``, a job's log
file, a pipe; or ``progress=false``), to stderr as well, so a run is never silent."""

from __future__ import annotations

import logging
import resource
import sys
import time

import torch

from acsl_cli.progress import status

log = logging.getLogger("acsl")

#: lines to print once before the first training line (the live log's path): printed when
#: training starts, not at the run's start, so that a run refused for bad input prints its
#: one error line and nothing else
_pending: list[str] = []


def announce(text: str) -> None:
    """Print ``text`` on stderr right before the next training line."""
    _pending.append(text)


def retract(text: str) -> None:
    """Drop ``text`` if it was never printed (its run ended before training)."""
    if text in _pending:
        _pending.remove(text)


def memory_text(device: str) -> str:
    """Peak CUDA memory allocated on a GPU, else this process's peak resident memory."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"cuda peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"peak rss {peak_kib / 2**20:.2f} GiB"


def eta_text(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s`` / ``3s``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class IterationLog:
    """Logs iteration ``it`` (0-based) when ``it % every == 0`` or it is the last one; the
    time per iteration is measured since the previous logged line (since ``start`` for the
    first), the ETA is that pace over the iterations left."""

    def __init__(self, stage: str, total: int, every: int, device: str, start: int,
                 to_stderr: bool) -> None:
        self.stage, self.total, self.every, self.device = stage, total, max(1, every), device
        self.to_stderr = to_stderr
        self._last_it, self._last_t = start, time.perf_counter()

    def due(self, it: int) -> bool:
        return it % self.every == 0 or it == self.total - 1

    def write(self, it: int, epoch: int, epochs: int, lr: float,
              losses: dict[str, float]) -> None:
        now = time.perf_counter()
        done = it + 1 - self._last_it
        per_it = (now - self._last_t) / done if done > 0 else 0.0
        self._last_it, self._last_t = it + 1, now
        eta = eta_text(per_it * (self.total - it - 1))
        text = (f"{self.stage.replace(' ', '')} it {it + 1}/{self.total} epoch "
                f"{epoch + 1}/{epochs} lr {lr:.5g} {per_it:.3f} s/it eta {eta} "
                f"{memory_text(self.device)} "
                + " ".join(f"{k} {v:.5g}" for k, v in losses.items()))
        while _pending:
            status.print(_pending.pop(0), markup=False, highlight=False, soft_wrap=True)
        log.info("%s", text, extra={"event": {"type": "train", "stage": self.stage,
                                                "iter": it, "epoch": epoch, "lr": lr,
                                                **losses}})
        if self.to_stderr:
            print(text, file=sys.stderr, flush=True)

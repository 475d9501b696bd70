"""The one training loop: both stages are a ``Step`` run by ``fit``.

``fit`` owns what the stages share: the iteration count and the learning rate (torch's
``LambdaLR`` on the step's optimizers, ``schedule``), the loss guard (non-finite or
exploding losses stop the run with one line), logging (every ``log_every`` iterations,
``iter_log``), the progress bar, and resumable state. With ``resume=PATH`` the state
after every epoch (the step's weights and optimizers, the lr schedulers, iteration,
history, and the RNG states of torch and of the given generators: sampler order, flips,
loss draws) is written there, and a later call with the same file continues exactly where
it stopped. A step keeps only its own arithmetic.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from acsl_cli.engine import distributed as dist
from acsl_cli.engine.checkpoint import load_state_file, save_state_file
from acsl_cli.engine.iter_log import IterationLog
from acsl_cli.engine.loaders import set_epoch, stage_iters, to_device
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.errors import DataError, TrainingDiverged
from acsl_cli.progress import bar_is_live, progress_bar
from acsl_cli.settings.sections import ScheduleSettings

log = logging.getLogger("acsl")


class Step(Protocol):
    """One stage's training step over a batch, plus the state that resuming needs."""

    stage: str  # "stage 1" / "stage 2", for messages
    optimizers: list[torch.optim.Optimizer]  # their lr is set by fit's schedulers

    def __call__(self, images: list, targets: list, it: int, guard: LossGuard
                 ) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossGuard:
    """Stops training when a loss is not finite or explodes, from the first iteration on.

    A non-finite value stops the run at once. Exploding means more than ``factor`` times
    the median of the last ``window`` values (the lower median: an explosion in progress
    cannot raise its own bar) for ``patience`` iterations in a row: a single batch may
    legitimately cost 20x the median (BAGS with a five-instance tail group does, when the
    batch holds one of its rare boxes), a diverging loss stays up. While fewer than
    ``steady`` values have been seen the bar is ``early_factor`` and one value is enough:
    no normal first iterations grow a loss a hundredfold, and a diverging one (lr far too
    high) does so within two or three steps, long before a short run ends.
    """

    def __init__(self, stage: str, factor: float = 20.0, window: int = 100, steady: int = 20,
                 early_factor: float = 100.0, patience: int = 5) -> None:
        self.stage, self.factor, self.steady, self.early_factor = stage, factor, steady, \
            early_factor
        self.patience = patience
        self.epoch = 0
        self._recent: dict[str, deque[float]] = {}
        self._above: dict[str, int] = {}  # per track: iterations in a row above the bar
        self._window = window

    def check(self, track: str, value: float, it: int) -> None:
        """Raise ``TrainingDiverged`` naming stage, track (head) and iteration."""
        where = f"{self.stage}{', head ' + track if track else ''}"
        when = f"at iteration {it + 1} (epoch {self.epoch + 1})"
        if not math.isfinite(value):
            raise TrainingDiverged(f"{where}: loss is {value} {when}; training stopped")
        recent = self._recent.setdefault(track, deque(maxlen=self._window))
        if recent:
            median = sorted(recent)[(len(recent) - 1) // 2]
            steady = len(recent) >= min(self.steady, self._window)
            factor = self.factor if steady else self.early_factor
            above = median > 0 and value > factor * median
            self._above[track] = self._above.get(track, 0) + 1 if above else 0
            if above and (not steady or self._above[track] >= self.patience):
                times = "" if not steady else f" for {self.patience} iterations in a row"
                raise TrainingDiverged(
                    f"{where}: loss exploded to {value:.4g} {when}, more than "
                    f"{factor:g} x its running median {median:.4g}{times}; training stopped"
                )
        recent.append(value)


def fit(
    step: Step, loader: DataLoader, sched: StageSchedule, device: str,
    max_iters: int | None = None, show_progress: bool = True, resume: Path | None = None,
    generators: Sequence[torch.Generator] = (), bar_label: str | None = None,
    after_epoch: Callable[[int], None] | None = None, log_every: int = ScheduleSettings.log_every,
) -> list[dict[str, float]]:
    """Run ``step`` over ``sched.epochs`` epochs of ``loader``; returns the history rows.
    ``after_epoch(n)`` runs after the n-th epoch (1-based) is saved (validation). Every
    ``log_every`` iterations a line is logged (``IterationLog``); it is also printed to
    stderr when no progress bar is live there."""
    start_epoch, it, history, saved = 0, 0, [], None
    if resume is not None and resume.is_file():
        restored = _restore(resume, step, generators)
        if restored is not None:
            start_epoch, it, history, saved = restored
    total = stage_iters(loader, sched.epochs, max_iters)
    schedulers = [sched.scheduler(o, total, it) for o in step.optimizers]
    if resume is not None and saved is not None:
        _load_schedulers(resume, schedulers, saved, it)
    guard = LossGuard(step.stage)
    label = bar_label or step.stage
    lines = IterationLog(step.stage, total, log_every, device, it,
                         to_stderr=dist.is_main() and not bar_is_live(show_progress))
    with progress_bar(label, total, show_progress and dist.is_main()) as bar:
        bar.advance(it)
        for epoch in range(start_epoch, sched.epochs):
            guard.epoch = epoch
            set_epoch(loader, epoch)
            for images, targets in loader:
                if it >= total:
                    break
                lr = float(schedulers[0].get_last_lr()[0])
                images, targets = to_device(images, targets, device)
                losses = step(images, targets, it, guard)
                _advance(schedulers)
                history.append({"iter": it, "epoch": epoch, "lr": lr, **losses})
                shown = {"loss": losses.get("loss", next(iter(losses.values())))} \
                    if "loss" in losses or len(losses) == 1 else {}
                bar.advance(lr=lr, epoch=f"{epoch + 1}/{sched.epochs}", **shown)
                if lines.due(it):
                    lines.write(it, epoch, sched.epochs, lr, losses)
                it += 1
            if resume is not None and dist.is_main():
                save_state_file(resume, {
                    "step": step.state_dict(), "epoch": epoch + 1, "iter": it,
                    "schedulers": [s.state_dict() for s in schedulers],
                    "history": history, "torch_rng": torch.get_rng_state(),
                    "generators": [g.get_state() for g in generators],
                })
            if after_epoch is not None:
                after_epoch(epoch + 1)
            if it >= total:
                break
    return history


def _advance(schedulers: Sequence[LRScheduler]) -> None:
    """Step the schedulers after an iteration. torch warns when the first step comes
    before any ``optimizer.step()``: here only because fp16's scaler skipped the step of
    an overflowing iteration, which is as intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
        for s in schedulers:
            s.step()


def _load_schedulers(path: Path, schedulers: Sequence[LRScheduler], saved: list,
                     it: int) -> None:
    """The schedulers' saved states; a resume file written before they were saved has
    none, and its schedulers are already set by its iteration count."""
    if not saved:
        return
    fits = len(saved) == len(schedulers) and all(
        isinstance(x, dict) and x.get("last_epoch") == it
        and len(x.get("base_lrs", ())) == len(s.base_lrs)
        for s, x in zip(schedulers, saved, strict=False))
    if not fits:
        path.unlink(missing_ok=True)
        raise DataError(f"{path}: resume state does not fit this run (lr schedulers); "
                        "removed it, run again")
    for s, state in zip(schedulers, saved, strict=True):
        s.load_state_dict(state)


def _restore(path: Path, step: Step, generators: Sequence[torch.Generator]
             ) -> tuple[int, int, list, list] | None:
    """Apply a resume file; an unreadable or foreign one is reported, removed and ignored.
    Returns (epoch, iteration, history, the schedulers' states: [] in an older file)."""
    try:
        state = load_state_file(path)
        ok = (isinstance(state, dict) and {"step", "epoch", "iter", "history", "torch_rng",
                                           "generators"} <= state.keys()
              and len(state["generators"]) == len(generators))
        if not ok:
            raise DataError(f"{path}: not a resume file of this stage")
    except DataError as e:
        log.warning("%s; starting the stage afresh", e)
        path.unlink(missing_ok=True)
        return None
    try:
        step.load_state_dict(state["step"])
        for g, g_state in zip(generators, state["generators"], strict=True):
            g.set_state(g_state)
        torch.set_rng_state(state["torch_rng"])
        start = (int(state["epoch"]), int(state["iter"]), list(state["history"]),
                 list(state.get("schedulers", [])))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        path.unlink(missing_ok=True)
        raise DataError(f"{path}: resume state does not fit this run "
                        f"({e.__class__.__name__}); removed it, run again") from None
    log.info("%s: resuming from %s at epoch %d (iteration %d)", step.stage, path,
             start[0] + 1, start[1])
    return start

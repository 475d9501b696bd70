"""Stage 1: train the whole detector with its loss (softmax CE, or ``schedule.stage1.loss``;
its statistics are part of the model's state, so resumed with it), plain SGD."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loop import LossGuard, fit
from acsl_cli.engine.mixed_precision import MixedPrecision, optimizer_step
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.settings.sections import ScheduleSettings


class DetectorStep:
    """One SGD iteration of the whole detector (wrapped in DDP under torchrun)."""

    stage = "stage 1"

    def __init__(self, model: nn.Module, sched: StageSchedule, device: str, amp: str) -> None:
        self.amp = MixedPrecision(amp, device)
        self.model = model.to(device).train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=sched.lr, momentum=sched.momentum,
                                   weight_decay=sched.weight_decay)
        self.optimizers = [self.opt]  # fit's lr scheduler sets their lr
        self.scaler = self.amp.new_scaler()
        self.grad_clip = sched.grad_clip
        self.net = model
        if dist.world_size() > 1:
            ids = [torch.cuda.current_device()] if device == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def __call__(self, images: list, targets: list, it: int, guard: LossGuard
                 ) -> dict[str, float]:
        with self.amp.autocast():
            losses = self.net(images, targets)
            loss = sum(losses.values())
        guard.check("", loss.item(), it)  # the unscaled loss: a skipped fp16 step passes
        optimizer_step(loss, self.opt, self.params, self.grad_clip, self.scaler)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


def train_detector(
    model: nn.Module, loader: DataLoader, sched: StageSchedule, device: str,
    max_iters: int | None = None, show_progress: bool = True, resume: Path | None = None,
    generators: Sequence[torch.Generator] = (), *, amp: str,
    after_epoch: Callable[[int], None] | None = None, log_every: int = ScheduleSettings.log_every,
) -> list[dict[str, float]]:
    """Train every parameter of ``model``; returns the per-iteration loss history."""
    return fit(DetectorStep(model, sched, device, amp), loader, sched, device, max_iters,
               show_progress, resume, generators, after_epoch=after_epoch,
               log_every=log_every)

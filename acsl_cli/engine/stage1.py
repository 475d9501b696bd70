"""Stage 1: train the whole detector with softmax cross-entropy (plain SGD).

Also home of ``MixedPrecision``, the one place that turns the ``amp`` setting into an
autocast context and (fp16) a gradient scaler; stage 2 and inference use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loop import LossGuard, fit
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Device types fp16 training runs on (its gradient scaler and speed are CUDA's).
FP16_DEVICES = ("cuda",)


class MixedPrecision:
    """``amp=off|bf16|fp16`` for one device: autocast for forwards, a scaler for fp16.

    ``off`` uses no autocast context at all, so full precision is exactly the code path it
    always was. bf16 keeps float32's exponent range and needs no scaler; fp16 does.
    """

    def __init__(self, amp: str, device: str) -> None:
        if amp != "off" and amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be off, bf16 or fp16, got {amp!r}")
        self.amp = amp
        self.device_type = torch.device(device).type
        if amp == "fp16" and self.device_type not in FP16_DEVICES:
            raise ConfigError("amp=fp16 needs CUDA (use amp=bf16 or amp=off on this device)")

    @property
    def enabled(self) -> bool:
        return self.amp != "off"

    def autocast(self) -> AbstractContextManager:
        """Context for forward passes (and the losses, which upcast to float32 themselves)."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.amp])

    def new_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for one optimizer under fp16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.amp == "fp16" else None


def optimizer_step(
    loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.Tensor],
    grad_clip: float | None, scaler: torch.amp.GradScaler | None,
    reduce: Callable[[list[torch.Tensor]], None] | None = None,
) -> None:
    """Backward, optional gradient ``reduce`` (across ranks), clip, step.

    With a scaler the loss is scaled for backward and gradients are unscaled before
    clipping; a step whose gradients hold inf/nan is skipped by the scaler and the scale
    backs off. Reducing before unscaling makes every rank see the same inf and skip alike.
    """
    opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if reduce is not None:
        reduce(params)
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


class DetectorStep:
    """One SGD iteration of the whole detector (wrapped in DDP under torchrun)."""

    stage = "stage 1"

    def __init__(self, model: nn.Module, sched: StageSchedule, device: str, amp: str = "off"
                 ) -> None:
        self.amp = MixedPrecision(amp, device)
        self.model = model.to(device).train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=sched.lr, momentum=sched.momentum,
                                   weight_decay=sched.weight_decay)
        self.scaler = self.amp.new_scaler()
        self.grad_clip = sched.grad_clip
        self.net = model
        if dist.world_size() > 1:
            ids = [torch.cuda.current_device()] if device == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def __call__(self, images: list, targets: list, it: int, lr: float, guard: LossGuard
                 ) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = lr
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
    generators: Sequence[torch.Generator] = (), amp: str = "off",
) -> list[dict[str, float]]:
    """Train every parameter of ``model``; returns the per-iteration loss history."""
    return fit(DetectorStep(model, sched, device, amp), loader, sched, device, max_iters,
               show_progress, resume, generators)

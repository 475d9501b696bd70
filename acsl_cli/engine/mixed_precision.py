"""Mixed precision and the optimiser step: the one place that turns the ``amp`` setting
into an autocast context and (fp16) a gradient scaler, and that scales, reduces, clips and
steps; stage 1, stage 2 and inference use it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from acsl_cli.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Device types fp16 training runs on (its gradient scaler and speed are CUDA's).
FP16_DEVICES = ("cuda",)


def check_device(amp: str, device_type: str) -> None:
    """fp16 trains on CUDA only (its gradient scaler); checked before a run starts
    (``pipeline.preflight``) and where the precision is set up."""
    if amp == "fp16" and device_type not in FP16_DEVICES:
        raise ConfigError("amp=fp16 needs CUDA (use amp=bf16 or amp=off on this device)")


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
        check_device(amp, self.device_type)

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

"""Stage 2: fine-tune classifier heads on the frozen stage-1 detector.

Everything but the classification layer is frozen (paper 4.2), so the detector's work up
to the RoI features is the same for every loss. Several heads (losses, xi values) share
one pass: per batch the ``FrozenTrunk`` runs once, and each head trains its own
``cls_score`` on the same sampled RoIs. A sweep over six xi values costs about one
stage-2 run, and every head sees exactly the same RoIs, which makes the comparison
between losses a paired one.

With ``amp`` on, the trunk pass and each head's forward and loss run under autocast (the
losses reduce in float32); fp16 gives every head its own gradient scaler, so an overflow
in one head skips only that head's step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loaders import loader_generators
from acsl_cli.engine.loop import LossGuard, fit
from acsl_cli.engine.mixed_precision import MixedPrecision, optimizer_step
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.losses import ClassificationLoss
from acsl_cli.models.trunk import FrozenTrunk


@dataclass
class ClassifierHead:
    """A stage-2 candidate: its loss (which also scores) and its own ``cls_score`` layer.

    ``name`` identifies the head (folder-safe, unique in a run); labels for tables are the
    caller's business.
    """

    name: str
    loss: ClassificationLoss
    classifier: nn.Linear
    history: list[dict[str, float]] = field(default_factory=list)


def new_head(name: str, loss: ClassificationLoss, stage1: nn.Linear, num_classes: int
             ) -> ClassifierHead:
    """A head whose layer is initialised (by its loss) from the stage-1 ``cls_score``."""
    layer = nn.Linear(stage1.in_features, loss.num_outputs(num_classes))
    loss.init_classifier(layer, stage1)
    return ClassifierHead(name, loss, layer.to(stage1.weight.device))


class HeadsStep:
    """One pass of the frozen trunk, then one SGD step per head on the same RoIs."""

    stage = "stage 2"

    def __init__(self, trunk: FrozenTrunk, heads: list[ClassifierHead], sched: StageSchedule,
                 device: str, amp: str = "off") -> None:
        self.amp = MixedPrecision(amp, device)
        self.trunk, self.heads, self.grad_clip = trunk, heads, sched.grad_clip
        self.opts = []
        for h in heads:
            h.classifier.to(device).train()
            h.loss.to(device)
            self.opts.append(torch.optim.SGD(h.classifier.parameters(), lr=sched.lr,
                                             momentum=sched.momentum,
                                             weight_decay=sched.weight_decay))
        self.scalers = [self.amp.new_scaler() for _ in heads]

    def __call__(self, images: list, targets: list, it: int, lr: float, guard: LossGuard
                 ) -> dict[str, float]:
        with self.amp.autocast():
            feats, labels = self.trunk.sampled_rois(images, targets)
        row = {}
        for h, opt, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            for g in opt.param_groups:
                g["lr"] = lr
            with self.amp.autocast():
                loss = h.loss(h.classifier(feats), labels)
            guard.check(h.name, loss.item(), it)  # unscaled: a skipped fp16 step passes
            optimizer_step(loss, opt, list(h.classifier.parameters()), self.grad_clip, scaler,
                           reduce=dist.average_gradients)
            row[h.name] = loss.item()
        return row

    def state_dict(self) -> dict[str, Any]:
        state = {}
        for h, o, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            state[h.name] = {"classifier": h.classifier.state_dict(), "optimizer": o.state_dict(),
                             "loss": h.loss.state_dict()}  # online statistics (EQLv2, Seesaw)
            if scaler is not None:
                state[h.name]["scaler"] = scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for h, o, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            h.classifier.load_state_dict(state[h.name]["classifier"])
            o.load_state_dict(state[h.name]["optimizer"])
            h.loss.load_state_dict(state[h.name]["loss"])
            if scaler is not None:
                scaler.load_state_dict(state[h.name]["scaler"])


def finetune_heads(
    trunk: FrozenTrunk, heads: list[ClassifierHead], loader: DataLoader,
    sched: StageSchedule, device: str, max_iters: int | None = None,
    show_progress: bool = True, resume: Path | None = None, amp: str = "off",
) -> None:
    """Train every head's classifier with its loss on the frozen trunk; fills histories.

    With ``resume``, the heads' layers, optimizers and loss generators resume exactly.
    """
    trunk.detector.to(device)
    generators = [g for h in heads if (g := getattr(h.loss, "generator", None)) is not None]
    generators += loader_generators(loader)
    label = f"stage 2 ({len(heads)} head{'s' * (len(heads) > 1)})"
    history = fit(HeadsStep(trunk, heads, sched, device, amp), loader, sched, device, max_iters,
                  show_progress, resume, generators, bar_label=label)
    for h in heads:
        h.history = [{"iter": r["iter"], "epoch": r["epoch"], "lr": r["lr"], "loss": r[h.name]}
                     for r in history]
        h.classifier.eval()


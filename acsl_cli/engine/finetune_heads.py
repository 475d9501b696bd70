"""Stage 2: fine-tune classifier heads on the frozen stage-1 detector.

Everything but the classification layer is frozen (paper 4.2), so the detector's work up
to the RoI features is the same for every loss. Several heads (losses, xi values) share
one pass: per batch the ``FrozenTrunk`` runs once, and each head trains its own
``cls_score`` on the same sampled RoIs. A sweep over six xi values costs about one
stage-2 run, and every head sees exactly the same RoIs, which makes the comparison
between losses a paired one. On a Cascade R-CNN a head has one layer and one loss per
stage, each trained on its stage's RoIs, the stage losses weighted as in stage 1.

With ``amp`` on, the trunk pass and each head's forward and loss run under autocast (the
losses reduce in float32); fp16 gives every head its own gradient scaler, so an overflow
in one head skips only that head's step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from acsl_cli.models.classifier import LINEAR, ClassifierSpec
from acsl_cli.models.trunk import FrozenTrunk, Scorer
from acsl_cli.settings.sections import ScheduleSettings


@dataclass
class ClassifierHead:
    """A stage-2 candidate: its loss (which also scores) and its own ``cls_score`` layer;
    on a cascade, a layer and a loss per detector stage (``classifier`` a ModuleList).

    ``name`` identifies the head (folder-safe, unique in a run); labels for tables are the
    caller's business. ``classifier`` is what a lean checkpoint saves.
    """

    name: str
    losses: list[ClassificationLoss]
    classifier: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def loss(self) -> ClassificationLoss:
        """The first stage's loss (the only one on Faster R-CNN)."""
        return self.losses[0]

    @property
    def layers(self) -> list[nn.Module]:
        c = self.classifier
        return list(c) if isinstance(c, nn.ModuleList) else [c]

    @property
    def scorer(self) -> Scorer:
        return self.layers, self.losses

    @property
    def loss_module(self) -> nn.Module:
        """The losses' state holder (online statistics, generators) as one module."""
        return self.losses[0] if len(self.losses) == 1 else nn.ModuleList(self.losses)


def new_head(name: str, loss: ClassificationLoss | Sequence[ClassificationLoss],
             stage1: nn.Module, num_classes: int,
             classifier: ClassifierSpec = LINEAR) -> ClassifierHead:
    """A head whose layer is initialised (by its loss) from the stage-1 ``cls_score``; with
    a cascade's stage-1 layers (a ModuleList) and one loss per stage, a layer per stage.

    ``classifier``: the layer's kind (``loss.classifier``). A normalised layer is made with
    the release's init, then its loss's ``init_classifier`` runs on its ``weight`` and
    ``bias`` as on a plain layer's: rows the loss copies from stage 1 (every loss's
    default, Seesaw's class rows, BAGS's ``stage1_rows``) give the head the stage-1 rows'
    directions, all a normalised layer reads of a row, and their biases; rows a loss draws
    afresh (BAGS's ``fresh``) are the release's N(0, 0.01^2) with zero bias."""
    old = list(stage1) if isinstance(stage1, nn.ModuleList) else [stage1]
    losses = [loss] if isinstance(loss, ClassificationLoss) else list(loss)
    if len(losses) != len(old):
        raise ValueError(f"head {name}: {len(losses)} losses for {len(old)} detector stages")
    layers = []
    for stage_loss, s1 in zip(losses, old, strict=True):
        layer = classifier.layer(s1.in_features, stage_loss.num_outputs(num_classes))
        stage_loss.init_classifier(layer, s1)
        layers.append(layer.to(s1.weight.device))
    return ClassifierHead(name, losses, layers[0] if len(layers) == 1 else nn.ModuleList(layers))


class HeadsStep:
    """One pass of the frozen trunk, then one SGD step per head on the same RoIs."""

    stage = "stage 2"

    def __init__(self, trunk: FrozenTrunk, heads: list[ClassifierHead], sched: StageSchedule,
                 device: str, amp: str) -> None:
        self.amp = MixedPrecision(amp, device)
        self.trunk, self.heads, self.grad_clip = trunk, heads, sched.grad_clip
        self.opts = []
        for h in heads:
            h.classifier.to(device).train()
            h.loss_module.to(device)
            self.opts.append(torch.optim.SGD(h.classifier.parameters(), lr=sched.lr,
                                             momentum=sched.momentum,
                                             weight_decay=sched.weight_decay))
        self.optimizers = self.opts  # fit's lr schedulers set their lr
        self.scalers = [self.amp.new_scaler() for _ in heads]

    def __call__(self, images: list, targets: list, it: int, guard: LossGuard
                 ) -> dict[str, float]:
        with self.amp.autocast():
            stages = self.trunk.sampled_rois(images, targets)
        weights = self.trunk.stage_weights
        row = {}
        for h, opt, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            with self.amp.autocast():
                terms = [w * loss(layer(feats), labels) for w, loss, layer, (feats, labels)
                         in zip(weights, h.losses, h.layers, stages, strict=True)]
                loss = terms[0] if len(terms) == 1 else sum(terms)
            guard.check(h.name, loss.item(), it)  # unscaled: a skipped fp16 step passes
            optimizer_step(loss, opt, list(h.classifier.parameters()), self.grad_clip, scaler,
                           reduce=dist.average_gradients)
            row[h.name] = loss.item()
        return row

    def state_dict(self) -> dict[str, Any]:
        state = {}
        for h, o, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            state[h.name] = {"classifier": h.classifier.state_dict(), "optimizer": o.state_dict(),
                             # online statistics (EQLv2, Seesaw)
                             "loss": h.loss_module.state_dict()}
            if scaler is not None:
                state[h.name]["scaler"] = scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for h, o, scaler in zip(self.heads, self.opts, self.scalers, strict=True):
            h.classifier.load_state_dict(state[h.name]["classifier"])
            o.load_state_dict(state[h.name]["optimizer"])
            h.loss_module.load_state_dict(state[h.name]["loss"])
            if scaler is not None:
                scaler.load_state_dict(state[h.name]["scaler"])


def finetune_heads(
    trunk: FrozenTrunk, heads: list[ClassifierHead], loader: DataLoader,
    sched: StageSchedule, device: str, max_iters: int | None = None,
    show_progress: bool = True, resume: Path | None = None, *, amp: str,
    after_epoch: Callable[[int], None] | None = None, log_every: int = ScheduleSettings.log_every,
) -> None:
    """Train every head's classifier with its loss on the frozen trunk; fills histories.

    With ``resume``, the heads' layers, optimizers and loss generators resume exactly.
    """
    trunk.detector.to(device)
    generators = [g for h in heads for loss in h.losses
                  if (g := getattr(loss, "generator", None)) is not None]
    generators += loader_generators(loader)
    label = f"stage 2 ({len(heads)} head{'s' * (len(heads) > 1)})"
    history = fit(HeadsStep(trunk, heads, sched, device, amp), loader, sched, device, max_iters,
                  show_progress, resume, generators, bar_label=label, after_epoch=after_epoch,
                  log_every=log_every)
    for h in heads:
        h.history = [{"iter": r["iter"], "epoch": r["epoch"], "lr": r["lr"], "loss": r[h.name]}
                     for r in history]
        h.classifier.eval()


"""Stage 2: fine-tune classifier heads on a frozen stage-1 detector.

Everything but the classification layer is frozen (paper 4.2), so the detector's work up
to the RoI features is the same for every loss. Several heads (losses, xi values) share
one pass: per batch the frozen detector runs once, under ``no_grad``, and each head
trains its own ``cls_score`` on the same sampled RoIs. A sweep over six xi values costs
about one stage-2 run, and every head sees exactly the same RoIs, which makes the
comparison between losses a paired one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from acsl_cli.engine import distributed as dist
from acsl_cli.engine.lr_schedule import learning_rate
from acsl_cli.engine.train import StageSchedule, iterate, stage_iters, to_device
from acsl_cli.losses import ClassificationLoss
from acsl_cli.progress import progress_bar

log = logging.getLogger("acsl")


@dataclass
class ClassifierHead:
    """A stage-2 candidate: its loss (which also scores) and its own ``cls_score`` layer."""

    name: str
    loss: ClassificationLoss
    classifier: nn.Linear
    history: list[dict[str, float]] = field(default_factory=list)


def new_head(name: str, loss: ClassificationLoss, detector: nn.Module, num_classes: int
             ) -> ClassifierHead:
    """A head whose layer is initialised from the detector's stage-1 ``cls_score``."""
    stage1 = detector.roi_heads.box_predictor.cls_score
    layer = nn.Linear(stage1.in_features, loss.num_outputs(num_classes))
    loss.init_classifier(layer, stage1)
    return ClassifierHead(name, loss, layer.to(stage1.weight.device))


def freeze_detector(model: nn.Module) -> None:
    """Freeze all detector parameters and put BatchNorm in eval mode.

    A trunk with ordinary BatchNorm keeps updating running statistics in train mode even
    with ``requires_grad=False``; "frozen" must mean eval mode too.
    """
    model.requires_grad_(False)
    model.eval()


@torch.no_grad()
def sampled_roi_features(model: nn.Module, images: list[Tensor], targets: list[dict]
                         ) -> tuple[Tensor, Tensor]:
    """Run the frozen detector once: RoI features and labels of the sampled RoIs.

    The RPN runs in training mode so proposal counts follow the training settings, like
    the authors' stage 2; its losses are computed and discarded.
    """
    model.rpn.train()
    try:
        images_t, targets_t = model.transform(images, targets)
        features = model.backbone(images_t.tensors)
        proposals, _ = model.rpn(images_t, features, targets_t)
        proposals, _, labels, _ = model.roi_heads.select_training_samples(proposals, targets_t)
        feats = model.roi_heads.box_features(features, proposals, images_t.image_sizes)
    finally:
        model.rpn.eval()
    return feats, torch.cat(labels)


def finetune_heads(
    model: nn.Module, heads: list[ClassifierHead], loader: DataLoader, sched: StageSchedule,
    device: str, max_iters: int | None = None, show_progress: bool = True,
) -> None:
    """Train every head's classifier with its loss on the frozen ``model``."""
    model.to(device)
    freeze_detector(model)
    opts = []
    for h in heads:
        h.classifier.to(device).train()
        h.loss.to(device)
        opts.append(torch.optim.SGD(h.classifier.parameters(), lr=sched.lr,
                                    momentum=sched.momentum, weight_decay=sched.weight_decay))
    total = stage_iters(loader, sched.epochs, max_iters)
    with progress_bar(f"stage 2 ({len(heads)} head{'s' * (len(heads) > 1)})", total,
                      show_progress and dist.is_main()) as bar:
        for it, (epoch, (images, targets)) in enumerate(
            iterate(loader, sched.epochs, max_iters)
        ):
            lr = learning_rate(it, total, sched.lr, sched.warmup_iters, sched.warmup_ratio,
                               sched.steps)
            images, targets = to_device(images, targets, device)
            feats, labels = sampled_roi_features(model, images, targets)
            shown = {}
            for h, opt in zip(heads, opts, strict=True):
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = h.loss(h.classifier(feats), labels)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"stage 2 head {h.name}: loss is {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                params = list(h.classifier.parameters())
                dist.average_gradients(params)
                if sched.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, sched.grad_clip)
                opt.step()
                h.history.append({"iter": it, "epoch": epoch, "lr": lr, "loss": loss.item()})
                shown[h.name] = loss.item()
            bar.advance(lr=lr, epoch=f"{epoch + 1}/{sched.epochs}",
                        **({"loss": next(iter(shown.values()))} if len(shown) == 1 else {}))
            if it % 50 == 0 or it == total - 1:
                log.info("stage2 it %d/%d lr %.5f %s", it + 1, total, lr,
                         " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    for h in heads:
        h.classifier.eval()


"""Stage 1: train the whole detector with softmax cross-entropy (plain SGD loop)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from acsl_cli.data.lvis_dataset import collate
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.lr_schedule import learning_rate
from acsl_cli.progress import progress_bar

log = logging.getLogger("acsl")


@dataclass
class StageSchedule:
    """One stage's optimisation recipe (a ``schedule.stage1`` / ``stage2`` node)."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_ratio: float
    steps: list[float]
    grad_clip: float

    @classmethod
    def from_cfg(cls, node: Any) -> StageSchedule:
        return cls(**{k: node[k] for k in cls.__dataclass_fields__})


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Shuffled loader; the sampler is injectable (repeat-factor, class-aware, ...).

    Under torchrun each process gets a ``DistributedSampler`` shard of the same seeded order.
    """
    if sampler is None:
        if dist.world_size() > 1:
            sampler = DistributedSampler(dataset, seed=seed, shuffle=True)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=False)


def iterate(loader: DataLoader, epochs: int, max_iters: int | None) -> Iterator[tuple[int, Any]]:
    """(epoch, batch) for the whole stage, stopping early at ``max_iters``."""
    it = 0
    for epoch in range(epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            if max_iters is not None and it >= max_iters:
                return
            yield epoch, batch
            it += 1


def stage_iters(loader: DataLoader, epochs: int, max_iters: int | None) -> int:
    total = len(loader) * epochs
    return min(total, max_iters) if max_iters is not None else total


def to_device(images: list, targets: list, device: str) -> tuple[list, list]:
    return ([im.to(device) for im in images],
            [{k: v.to(device) for k, v in t.items()} for t in targets])


def train_detector(
    model: nn.Module, loader: DataLoader, sched: StageSchedule, device: str,
    max_iters: int | None = None, show_progress: bool = True, resume: Path | None = None,
    generators: Sequence[torch.Generator] = (),
) -> list[dict[str, float]]:
    """Train every parameter of ``model``; returns the per-iteration loss history.

    With ``resume``, the state after each epoch (weights, optimizer, iteration, history,
    and the RNG states of torch and of ``generators``: sampler order, flips) is written
    there, and a later call with the same file continues exactly where it stopped.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum,
                          weight_decay=sched.weight_decay)
    start_epoch, it, history = 0, 0, []
    if resume is not None and resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, it, history = state["epoch"], state["iter"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        for g, g_state in zip(generators, state["generators"], strict=True):
            g.set_state(g_state)
        log.info("stage 1: resuming from %s at epoch %d (iteration %d)", resume,
                 start_epoch + 1, it)
    net = model
    if dist.world_size() > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None
        )
    total = stage_iters(loader, sched.epochs, max_iters)
    with progress_bar("stage 1", total, show_progress and dist.is_main()) as bar:
        bar.advance(it)
        for epoch in range(start_epoch, sched.epochs):
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            for images, targets in loader:
                if it >= total:
                    break
                row = _step(net, opt, params, sched, images, targets, device, it, total)
                row["epoch"] = epoch
                history.append(row)
                bar.advance(loss=row["loss"], lr=row["lr"], epoch=f"{epoch + 1}/{sched.epochs}")
                if it % 50 == 0 or it == total - 1:
                    log.info("stage1 it %d/%d epoch %d %s", it + 1, total, epoch + 1,
                             " ".join(f"{k} {v:.5g}" for k, v in row.items()
                                      if k not in ("iter", "epoch")))
                it += 1
            if resume is not None and dist.is_main():
                _save_resume(resume, model, opt, epoch + 1, it, history, generators)
            if it >= total:
                break
    return history


def _step(net, opt, params, sched: StageSchedule, images, targets, device: str, it: int,
          total: int) -> dict[str, float]:
    """One SGD iteration at the scheduled learning rate."""
    lr = learning_rate(it, total, sched.lr, sched.warmup_iters, sched.warmup_ratio, sched.steps)
    for g in opt.param_groups:
        g["lr"] = lr
    images, targets = to_device(images, targets, device)
    losses = net(images, targets)
    loss = sum(losses.values())
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"stage 1: loss is {loss.item()} at iteration {it}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sched.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, sched.grad_clip)
    opt.step()
    return {"iter": it, "lr": lr, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}


def _save_resume(path: Path, model, opt, epoch: int, it: int, history: list,
                 generators: Sequence[torch.Generator]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "iter": it, "history": history, "torch_rng": torch.get_rng_state(),
                "generators": [g.get_state() for g in generators]}, tmp)
    os.replace(tmp, path)

"""Training data loaders: seeded order, sharded under torchrun, batches moved to a device."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from acsl_cli.data.lvis_dataset import collate
from acsl_cli.engine import distributed as dist


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


def loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The generators behind a loader's randomness (flips, then order): resume state."""
    flip = getattr(getattr(loader.dataset, "transform", None), "generator", None)
    order = getattr(loader.sampler, "generator", None)
    return [g for g in (flip, order) if g is not None]


def stage_iters(loader: DataLoader, epochs: int, max_iters: int | None) -> int:
    total = len(loader) * epochs
    return min(total, max_iters) if max_iters is not None else total


def to_device(images: list, targets: list, device: str) -> tuple[list, list]:
    return ([im.to(device) for im in images],
            [{k: v.to(device) for k, v in t.items()} for t in targets])

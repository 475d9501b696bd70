"""Training data loaders: seeded order, aspect-ratio batches, sharded under torchrun.

Batches group images by orientation (w/h >= 1 or < 1), as torchvision's detection
references do, so a GPU batch pads little; with one orientation (the embedded benchmark)
the batches are exactly those of a plain loader. With workers, images are decoded in the
workers (``LvisDetection.__getitem__``), workers persist across epochs, and every batch
carries a seed drawn in the main process from the flip generator: the worker reseeds its
copy with it, so flips depend neither on which worker loads a batch nor on how many there
are, and a resumed run (which restores that generator) flips as a straight one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from acsl_cli.data.lvis_dataset import collate
from acsl_cli.engine import distributed as dist


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``sampler``'s indices, each from one group (in sampler order).

    A batch is emitted when its group holds ``batch_size`` indices. At the end, leftovers
    that fit one batch form one (mixed) batch, else each group's leftover is a batch: an
    epoch then always has ``ceil(n / batch_size)`` batches, as a plain loader would, so
    torchrun ranks with equal shards run equal numbers of steps.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[tuple[int, int]]] = {}
        for pos, idx in enumerate(self.sampler):
            buf = buffers.setdefault(self.group_ids[idx], [])
            buf.append((pos, idx))
            if len(buf) == self.batch_size:
                yield [i for _, i in buf]
                buf.clear()
        rest = sorted((b for b in buffers.values() if b), key=lambda b: b[0][0])
        if sum(len(b) for b in rest) <= self.batch_size:
            if rest:
                yield [i for _, i in sorted(x for b in rest for x in b)]
        else:
            yield from ([i for _, i in b] for b in rest)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]


class _TrainLoader(DataLoader):
    """A DataLoader fed by a batch sampler whose ``sampler`` still names the order sampler,
    where the training loop (``set_epoch``) and resume (``loader_generators``) look."""

    def __init__(self, dataset: Dataset, batches: Sampler, order: Sampler, **kw: Any) -> None:
        super().__init__(dataset, batch_sampler=batches, **kw)
        object.__setattr__(self, "sampler", order)  # DataLoader forbids plain assignment


class _SeededBatches(Sampler[list[tuple[int, int, int]]]):
    """Batches of (index, seed, position): one seed per batch from ``generator``."""

    def __init__(self, batches: Sampler[list[int]], generator: torch.Generator) -> None:
        self.batches, self.generator = batches, generator

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.batches:
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            yield [(idx, seed, k) for k, idx in enumerate(batch)]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class _WorkerSeeded(Dataset):
    """Reseeds the (worker's copy of the) flip generator at the first item of each batch;
    a batch is loaded by one worker, in order, so its flips follow from its seed alone."""

    def __init__(self, dataset: Dataset, generator: torch.Generator) -> None:
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int, int]) -> Any:
        idx, seed, k = item
        if k == 0:
            self.generator.manual_seed(seed)
        return self.dataset[idx]


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Shuffled loader; the sampler is injectable (repeat-factor, class-aware, ...).

    Without one: a ``RandomSampler`` on ``torch.Generator().manual_seed(seed)``, or under
    torchrun a ``DistributedSampler`` shard of the same seeded order.
    """
    if sampler is None:
        if dist.world_size() > 1:
            sampler = DistributedSampler(dataset, seed=seed, shuffle=True)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    groups = aspect_groups(dataset)
    batches: Sampler = GroupedBatchSampler(sampler, groups or [0] * len(dataset), batch_size)
    kw: dict[str, Any] = {"collate_fn": collate, "pin_memory": torch.cuda.is_available()}
    flip = _flip_generator(dataset)
    if workers > 0:
        # the loader's own generator seeds the workers, leaving the global RNG (RoI
        # sampling) alone, so persistent workers do not shift it on resume
        kw.update(num_workers=workers, persistent_workers=True,
                  generator=torch.Generator().manual_seed(seed))
        if flip is not None:
            dataset, batches = _WorkerSeeded(dataset, flip), _SeededBatches(batches, flip)
    return _TrainLoader(dataset, batches, sampler, **kw)


def aspect_groups(dataset: Dataset) -> list[int] | None:
    """0 for landscape or square (w/h >= 1), 1 for portrait, from the annotation file's
    image sizes (no decoding); None when some image has no size."""
    images = getattr(_innermost(dataset), "images", None)
    if images is None:
        return None
    try:
        return [0 if im["width"] >= im["height"] else 1 for im in images]
    except (KeyError, TypeError):
        return None


def _innermost(dataset: Any) -> Any:
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def _flip_generator(dataset: Any) -> torch.Generator | None:
    """The generator of the first transform in a chain of dataset views that has one."""
    while dataset is not None:
        g = getattr(getattr(dataset, "transform", None), "generator", None)
        if isinstance(g, torch.Generator):
            return g
        dataset = getattr(dataset, "dataset", None)
    return None


def loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The generators behind a loader's randomness (flips, then order): resume state."""
    flip = _flip_generator(loader.dataset)
    order = getattr(loader.sampler, "generator", None)
    return [g for g in (flip, order) if g is not None]


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler the epoch, if it takes one (``DistributedSampler``)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def stage_iters(loader: DataLoader, epochs: int, max_iters: int | None) -> int:
    total = len(loader) * epochs
    return min(total, max_iters) if max_iters is not None else total


def to_device(images: list, targets: list, device: str) -> tuple[list, list]:
    """Copy a batch to ``device``; asynchronous from pinned memory on CUDA."""
    nb = device != "cpu"
    return ([im.to(device, non_blocking=nb) for im in images],
            [{k: v.to(device, non_blocking=nb) for k, v in t.items()} for t in targets])

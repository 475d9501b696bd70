"""Long-tail samplers: repeat-factor sampling (LVIS) and class-aware sampling.

Every draw of an epoch comes from the sampler's own ``generator``, in order, when the
epoch's iteration starts. The training loop saves that generator's state after each epoch,
so a resumed run draws the same next epochs as a straight one, and no ``set_epoch`` call is
needed for epochs to differ. Under torchrun every rank holds an identically seeded
generator, draws the same whole-epoch list and takes its own interleaved slice of it
(padded by wrapping to a multiple of the world size, as ``DistributedSampler`` does), so
ranks see disjoint parts and the same number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as tdist
from torch.utils.data import Sampler

from acsl_cli.data.stats import repeat_factors, rfs_epoch_images
from acsl_cli.errors import DataError

__all__ = ["ClassAwareSampler", "RepeatFactorSampler", "repeat_factors", "rfs_epoch_images"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """The shard this process reads: given, else torchrun's process group, else (1, 0)."""
    on = tdist.is_available() and tdist.is_initialized()
    world = num_replicas if num_replicas is not None else (tdist.get_world_size() if on else 1)
    r = rank if rank is not None else (tdist.get_rank() if on else 0)
    if world < 1 or not 0 <= r < world:
        raise ValueError(f"rank {r} is not in a world of {world} processes")
    return world, r


class _EpochSampler(Sampler[int]):
    """Shared part: seeded generator, epoch counter, sharding of the epoch's index list."""

    def __init__(self, seed: int, num_replicas: int | None, rank: int | None) -> None:
        self.seed = seed
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch (for logs). The draws do not depend on it: they come from the
        generator in order, which resuming restores."""
        self.epoch = epoch

    def epoch_indices(self) -> list[int]:
        """The whole epoch's index list (all ranks); advances the generator."""
        raise NotImplementedError

    def _expected_total(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        # a generator function: nothing is drawn until the first index is asked for, so an
        # iterator that a DataLoader creates and drops does not advance the generator
        indices = self.epoch_indices()
        if not indices:
            return
        per_rank = math.ceil(len(indices) / self.num_replicas)
        padded = indices * math.ceil(per_rank * self.num_replicas / len(indices))
        yield from padded[: per_rank * self.num_replicas][self.rank:: self.num_replicas]

    def __len__(self) -> int:
        return math.ceil(self._expected_total() / self.num_replicas)


class RepeatFactorSampler(_EpochSampler):
    """Each epoch holds floor(r_i) + Bernoulli(frac(r_i)) copies of image i, shuffled.

    The epoch length varies with the rounding draws; ``len`` is its expectation (rounded),
    per rank, which the training loop uses to plan the learning-rate schedule.
    """

    def __init__(self, repeat: Sequence[float], seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        super().__init__(seed, num_replicas, rank)
        self.repeat = torch.tensor(list(repeat), dtype=torch.float64)
        if len(self.repeat) and not bool((self.repeat >= 1).all()):
            raise ValueError("repeat factors must be >= 1")

    @classmethod
    def from_categories(cls, image_categories: Sequence[Sequence[int]], t: float,
                        seed: int = 0, num_replicas: int | None = None,
                        rank: int | None = None) -> RepeatFactorSampler:
        return cls(repeat_factors(image_categories, t), seed, num_replicas, rank)

    def epoch_indices(self) -> list[int]:
        whole = torch.floor(self.repeat)
        u = torch.rand(len(self.repeat), generator=self.generator, dtype=torch.float64)
        copies = (whole + (u < self.repeat - whole).to(torch.float64)).long()
        order = torch.repeat_interleave(torch.arange(len(self.repeat)), copies)
        perm = torch.randperm(len(order), generator=self.generator)
        return order[perm].tolist()

    def _expected_total(self) -> int:
        return round(float(self.repeat.sum()))


class ClassAwareSampler(_EpochSampler):
    """Each draw: a class uniformly among those with images, then one of its images
    uniformly; an epoch has as many draws as there are images."""

    def __init__(self, image_categories: Sequence[Sequence[int]], seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(seed, num_replicas, rank)
        by_class: dict[int, list[int]] = {}
        for i, cats in enumerate(image_categories):
            for c in sorted(set(cats)):
                by_class.setdefault(c, []).append(i)
        classes = sorted(by_class)
        if not classes:
            raise ValueError("class-aware sampling needs at least one annotated image")
        self.classes = classes
        self.num_images = len(image_categories)
        self._flat = torch.tensor([i for c in classes for i in by_class[c]], dtype=torch.long)
        sizes = torch.tensor([len(by_class[c]) for c in classes], dtype=torch.long)
        self._sizes = sizes
        self._offsets = torch.cumsum(sizes, 0) - sizes

    def epoch_indices(self) -> list[int]:
        n = self.num_images
        cls = torch.randint(len(self.classes), (n,), generator=self.generator)
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        pos = torch.minimum((u * self._sizes[cls]).long(), self._sizes[cls] - 1)
        return self._flat[self._offsets[cls] + pos].tolist()

    def _expected_total(self) -> int:
        return self.num_images


SAMPLERS = ("random", "rfs", "class_aware")


def make_sampler(name: str, image_categories: Sequence[Sequence[int]], seed: int,
                 t: float | None = None) -> Sampler[int] | None:
    """The sampler called ``name`` over images with these categories (dataset order);
    None for ``random``, whose order the loader itself provides (``train_loader``)."""
    if name == "random":
        return None
    if name == "rfs":
        if t is None:
            raise ValueError("repeat-factor sampling needs its threshold t")
        return RepeatFactorSampler.from_categories(image_categories, t, seed)
    if name == "class_aware":
        if not any(image_categories):
            raise DataError("sampler=class_aware: no train image has an annotation")
        return ClassAwareSampler(image_categories, seed)
    raise ValueError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")

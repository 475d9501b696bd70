"""Run under torchrun by tests/test_samplers.py: each rank draws two epochs of every
sampler (rank and world from the process group) and saves its indices and batch counts."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from acsl_cli.data.samplers import ClassAwareSampler, RepeatFactorSampler
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loaders import train_loader

# 7 images: an odd count, so that 2 ranks need padding
CATEGORIES = [[1], [1, 2], [1], [3], [], [1, 3], [2]]


class Ids(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(CATEGORIES)

    def __getitem__(self, i: int):
        return torch.zeros(3, 2, 2), {"image_id": torch.tensor(i)}


def main(out: Path) -> None:
    dist.init_distributed("cpu")
    result = {}
    for name, sampler in (
        ("rfs", RepeatFactorSampler.from_categories(CATEGORIES, t=0.9, seed=4)),
        ("class_aware", ClassAwareSampler(CATEGORIES, seed=4)),
    ):
        epochs = [list(sampler) for _ in range(2)]
        loader = train_loader(Ids(), 2, seed=0, sampler=sampler)
        batches = [[int(t["image_id"]) for t in targets] for _, targets in loader]
        result[name] = {"epochs": epochs, "len": len(sampler), "loader_len": len(loader),
                        "batches": batches}
    torch.save(result, out / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

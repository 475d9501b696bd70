"""Training-time augmentation (the paper's only one: horizontal flip with p = 0.5)."""

from __future__ import annotations

import torch


class RandomHorizontalFlip:
    """Flip image and boxes; draws come from its own generator so runs repeat exactly."""

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.p <= 0 or torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image, {**target, "boxes": boxes}


class Transformed(torch.utils.data.Dataset):
    """A dataset view with a transform applied to each (image, target) pair."""

    def __init__(self, dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.transform(*self.dataset[i])

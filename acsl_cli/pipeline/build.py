"""Config -> the objects a run is made of: device, datasets, losses, detector."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from acsl_cli.data.build import (
    GENERATED_KINDS,
    OPENIMAGES_KINDS,
    DatasetBundle,
    build_datasets,
    generated_folder,
)
from acsl_cli.data.transforms import RandomHorizontalFlip, Transformed
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loaders import train_loader
from acsl_cli.errors import DataError
from acsl_cli.losses import ClassificationLoss, LossContext, build_loss
from acsl_cli.models.detector import build_detector
from acsl_cli.pipeline.rundir import CacheEntry, FileLock
from acsl_cli.progress import progress_callback, status


def setup_torch(cfg: DictConfig) -> str:
    """The device, the process group under torchrun, and the global seed."""
    device = dist.resolve_device(cfg.device)
    dist.init_distributed(device)
    torch.manual_seed(cfg.seed)
    return device


def data_root(cfg: DictConfig) -> Path:
    return Path(cfg.output_root) / "cache" / "data"


def load_data(cfg: DictConfig) -> DatasetBundle:
    """Datasets. Generating the embedded benchmark is serialised by a lock file (other
    processes wait, then reuse it); under torchrun rank 0 works while the others wait."""
    if not dist.is_main():
        dist.barrier()
    generated = cfg.dataset.get("kind") in GENERATED_KINDS
    cached = generated or cfg.dataset.get("kind") in OPENIMAGES_KINDS  # writes a cache
    lock = FileLock(data_root(cfg) / "generate", on_wait=_waiting) if cached else None
    with lock or nullcontext(), progress_callback(
            "generating benchmark", cfg.progress and dist.is_main()) as tick:
        try:
            data = build_datasets(cfg.dataset, data_root(cfg), tick)
        except DataError as e:
            if not generated:
                raise
            # a damaged cache entry (missing image, broken json) is rebuilt, not kept
            folder = generated_folder(cfg.dataset, data_root(cfg))
            CacheEntry(folder, ()).invalidate(" ".join(str(e).split()))
            data = build_datasets(cfg.dataset, data_root(cfg), tick)
    if dist.is_main():
        dist.barrier()
    return data


def _waiting(message: str) -> None:
    if dist.is_main():
        status.print(f"[dim]{message}[/dim]")


def loss_context(data: DatasetBundle, seed: int) -> LossContext:
    s = data.stats
    return LossContext(data.cmap.num_classes, seed, tuple(s.frequencies), tuple(s.image_counts),
                       tuple(s.instance_counts), s.num_images, data.ancestors)


def make_loss(node: Any, context: LossContext) -> ClassificationLoss:
    """A loss from a ``loss`` config node (its name plus parameters) and the context."""
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}
    return build_loss(node.name, context, **params)


def build_model(cfg: DictConfig, data: DatasetBundle, loss: ClassificationLoss):
    return build_detector(cfg.backbone, data.cmap.num_classes, loss, cfg.dataset.min_size,
                          cfg.dataset.max_size)


def train_image_categories(data: DatasetBundle) -> list[frozenset[int]]:
    """Category ids present in each train image, in dataset order."""
    from acsl_cli.data.stats import image_categories

    own = getattr(data.train, "image_categories", None)  # array-backed (Open Images)
    return own() if own is not None else image_categories(data.train.data)


def train_data_loader(cfg: DictConfig, data: DatasetBundle, seed: int):
    """The training loader of a stage: flips and order (``sampler``) drawn from ``seed``."""
    from acsl_cli.data.samplers import make_sampler

    flip = RandomHorizontalFlip(cfg.schedule.flip, seed)
    node = cfg.get("sampler")
    name = "random" if node is None else node.name
    sampler = None if name == "random" else make_sampler(
        name, train_image_categories(data), seed, node.get("t"))
    return train_loader(Transformed(data.train, flip), cfg.schedule.batch_size, seed,
                        cfg.schedule.workers, sampler)

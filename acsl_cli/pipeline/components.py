"""Settings -> the objects a run is made of: device, datasets, losses, detector."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.data.datasets import (
    GENERATED_KINDS,
    build_datasets,
    generated_folder,
)
from acsl_cli.data.transforms import RandomHorizontalFlip, Transformed
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.loaders import train_loader
from acsl_cli.errors import DataError
from acsl_cli.layout import OutputLayout
from acsl_cli.losses import ClassificationLoss, LossContext, build_loss
from acsl_cli.models.classifier import LINEAR, ClassifierSpec
from acsl_cli.models.detectors import detector_from
from acsl_cli.pipeline.rundir import CacheEntry, FileLock
from acsl_cli.progress import progress_callback, status
from acsl_cli.settings import LossSettings, Settings
from acsl_cli.settings.datasets import OPENIMAGES_KINDS


def setup_torch(s: Settings) -> str:
    """The device, the process group under torchrun, and the global seed."""
    device = dist.resolve_device(s.device)
    dist.init_distributed(device)
    torch.manual_seed(s.seed)
    return device


def data_root(s: Settings) -> Path:
    return OutputLayout.at(s.output_root).data_cache


def load_data(s: Settings) -> DatasetBundle:
    """Datasets. Generating the embedded benchmark is serialised by a lock file (other
    processes wait, then reuse it); under torchrun rank 0 works while the others wait."""
    if not dist.is_main():
        dist.barrier()
    generated = s.dataset.kind in GENERATED_KINDS
    cached = generated or s.dataset.kind in OPENIMAGES_KINDS  # writes a cache
    root = data_root(s)
    lock = FileLock(root / "generate", on_wait=_waiting) if cached else None
    with lock or nullcontext(), progress_callback(
            "generating benchmark", s.progress and dist.is_main()) as tick:
        try:
            data = build_datasets(s.dataset, root, tick)
        except DataError as e:
            if not generated:
                raise
            # a damaged cache entry (missing image, broken json) is rebuilt, not kept
            folder = generated_folder(s.dataset, root)
            CacheEntry(folder, ()).invalidate(" ".join(str(e).split()))
            data = build_datasets(s.dataset, root, tick)
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


def make_loss(loss: LossSettings, context: LossContext) -> ClassificationLoss:
    """A loss from its settings (its name plus parameters) and the context."""
    return build_loss(loss.name, context, **_plain(loss.params))


def _plain(params) -> dict:
    """Loss parameters as the constructors take them (lists, not tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


#: seed offset of a cascade stage's loss (far from the seeds of neighbouring runs)
STAGE_SEED = 1_000_003


def classifier_spec(loss: LossSettings) -> ClassifierSpec:
    """The classifier layer a loss's settings ask for (``loss.classifier``,
    ``loss.temperature``): a stage-2 head's, or a detector's whose box head trains with it."""
    return ClassifierSpec(loss.classifier, loss.temperature)


def build_model(s: Settings, data: DatasetBundle,
                loss: ClassificationLoss | list[ClassificationLoss],
                classifier: ClassifierSpec = LINEAR):
    """The detector of ``s`` around ``loss`` (one for every stage, or one per stage), with
    ``classifier`` as its ``cls_score`` layers (``classifier_spec(loss settings)``; plain
    linear by default)."""
    return detector_from(s.detector, s.backbone, data.cmap.num_classes, loss,
                         s.dataset.min_size, s.dataset.max_size, classifier)


def stage1_model(s: Settings, data: DatasetBundle, context: LossContext):
    """The detector stage 1 trains: one ``schedule.stage1.loss`` per detector stage, each
    classifier initialised by its loss the way the loss's release starts it (a loss without
    its own init keeps the layer's; softmax CE's draws nothing more)."""
    losses = stage_losses(make_loss(s.stage1_loss, context), s.stage1_loss, context,
                          s.detector.num_stages)
    model = build_model(s, data, losses, classifier_spec(s.stage1_loss))
    for loss, layer in zip(losses, model.roi_heads.classifiers, strict=True):
        loss.init_classifier(layer, None)
    return model


def stage_losses(first: ClassificationLoss, loss: LossSettings, context: LossContext,
                 stages: int) -> list[ClassificationLoss]:
    """One loss per detector stage (``first`` and fresh ones): BAGS, EQLv2 and Seesaw keep
    state (groups, online statistics), which a cascade's classifiers must not share, and a
    seeded loss's later stages draw their own streams (BAGS's "others", Federated's
    classes, ACSL's background), not copies of the first stage's."""
    out = [first]
    for i in range(1, stages):
        offset = i * STAGE_SEED
        params = dict(loss.params)
        if isinstance(params.get("seed"), int):  # conf/loss: seed: ${seed}
            params["seed"] += offset
        out.append(make_loss(LossSettings(loss.name, params),
                             replace(context, seed=context.seed + offset)))
    return out


def train_image_categories(data: DatasetBundle) -> list[frozenset[int]]:
    """Category ids present in each train image, in dataset order."""
    from acsl_cli.data.stats import image_categories

    own = getattr(data.train, "image_categories", None)  # array-backed (Open Images)
    return own() if own is not None else image_categories(data.train.data)


def train_data_loader(s: Settings, data: DatasetBundle, seed: int):
    """The training loader of a stage: flips and order (``sampler``) drawn from ``seed``."""
    from acsl_cli.data.samplers import make_sampler

    flip = RandomHorizontalFlip(s.schedule.flip, seed)
    name = s.sampler.name
    sampler = None if name == "random" else make_sampler(
        name, train_image_categories(data), seed, s.sampler.t)
    return train_loader(Transformed(data.train, flip), s.schedule.batch_size, seed,
                        s.schedule.workers, sampler)

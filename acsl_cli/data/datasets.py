"""A dataset's typed section -> datasets: the one place that builds each kind (the kinds
and their keys: ``settings.datasets.KINDS``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.data.groups import (
    apply_train_info,
    describe_groups,
    never_in_train,
    train_category_info,
)
from acsl_cli.data.lvis_dataset import (
    LvisDetection,
    category_map,
    category_stats,
    read_annotations,
)
from acsl_cli.data.synthetic.lvis_like import SyntheticLvisSpec
from acsl_cli.data.synthetic.lvis_like import ensure_generated as ensure_generated_lvis
from acsl_cli.data.synthetic.shapes import SyntheticSpec, ensure_generated
from acsl_cli.errors import ConfigError
from acsl_cli.settings.datasets import (
    DATASET_KINDS,
    DatasetSettings,
    LvisDataset,
    OpenImagesScored,
    SyntheticDataset,
    SyntheticLvisDataset,
)

GENERATED_KINDS = ("synthetic", "synthetic_lvis")  # embedded benchmarks, generated and cached


def synthetic_spec(dataset: SyntheticDataset) -> SyntheticSpec:
    return SyntheticSpec.of(dataset)


def synthetic_lvis_spec(dataset: SyntheticLvisDataset) -> SyntheticLvisSpec:
    return SyntheticLvisSpec.of(dataset)


def generated_folder(dataset: DatasetSettings, data_root: Path,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """The cached folder of a generated (``GENERATED_KINDS``) dataset, generating it if
    needed."""
    if isinstance(dataset, SyntheticLvisDataset):
        return ensure_generated_lvis(synthetic_lvis_spec(dataset), Path(data_root), progress)
    if isinstance(dataset, SyntheticDataset) and dataset.kind == "synthetic":
        return ensure_generated(synthetic_spec(dataset), Path(data_root), progress)
    raise ConfigError(f"dataset.kind={dataset.kind}: not one of the generated kinds "
                      f"({', '.join(GENERATED_KINDS)})")


def build_datasets(
    dataset: DatasetSettings, data_root: Path, progress: Callable[[int, int], None] | None = None
) -> DatasetBundle:
    """Build train/val splits from a dataset's typed section.

    Frequency groups and counts are computed once, from train, and written onto the
    categories of BOTH splits: evaluation (APr/APc/APf), losses and reports then agree, and
    a plain COCO-format val file cannot give groups from its own counts.
    """
    if isinstance(dataset, OpenImagesScored):
        from acsl_cli.data.openimages.bundle import openimages_bundle

        return openimages_bundle(dataset, data_root, progress)
    if dataset.kind in GENERATED_KINDS:
        folder = generated_folder(dataset, data_root, progress)
        train_ann, val_ann = folder / "train.json", folder / "val.json"
        train_root = val_root = folder
        cache = True
    elif isinstance(dataset, LvisDataset):
        train_ann, val_ann = Path(str(dataset.train_ann)), Path(str(dataset.val_ann))
        train_root = Path(str(dataset.train_images))
        val_root = Path(str(dataset.val_images))
        cache = dataset.cache_images
    else:
        raise ConfigError(f"dataset.kind: unknown kind '{dataset.kind}' (choose from "
                          f"{', '.join(DATASET_KINDS)})")
    train_data = read_annotations(train_ann)
    val_data = read_annotations(val_ann)
    cmap = category_map(train_data)
    if category_map(val_data) != cmap:
        raise ConfigError(f"{val_ann}: its categories differ from those of {train_ann}")
    info = train_category_info(train_data)
    for data in (train_data, val_data):
        apply_train_info(data, info)
    missing = never_in_train(info)
    note = describe_groups({cid: str(row["frequency"]) for cid, row in info.items()}, missing)
    train = LvisDetection(train_ann, train_root, "train", cmap, train_data, cache_images=cache)
    val = LvisDetection(val_ann, val_root, "val", cmap, val_data, cache_images=cache)
    return DatasetBundle(train, val, cmap, category_stats(train_data, cmap), note, missing)

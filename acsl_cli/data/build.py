"""Config -> datasets: the one place that knows which kinds of dataset exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acsl_cli.data.lvis_dataset import (
    CategoryMap,
    CategoryStats,
    LvisDetection,
    category_map,
    category_stats,
    read_annotations,
)
from acsl_cli.data.synthetic import SyntheticSpec, ensure_generated
from acsl_cli.errors import ConfigError

DATASET_KINDS = ("synthetic", "lvis")


@dataclass
class DatasetBundle:
    """Everything downstream needs: splits, the label map, train statistics, val GT."""

    train: LvisDetection
    val: LvisDetection
    cmap: CategoryMap
    stats: CategoryStats

    @property
    def val_gt(self) -> dict:
        return self.val.data


def synthetic_spec(cfg: Any) -> SyntheticSpec:
    fields = SyntheticSpec.__dataclass_fields__
    return SyntheticSpec(**{k: cfg[k] for k in fields if k in cfg})


def build_datasets(
    cfg: Any, data_root: Path, progress: Callable[[int, int], None] | None = None
) -> DatasetBundle:
    """Build train/val splits from a ``dataset`` config node."""
    kind = cfg.get("kind")
    if kind == "synthetic":
        folder = ensure_generated(synthetic_spec(cfg), Path(data_root), progress)
        train_ann, val_ann = folder / "train.json", folder / "val.json"
        train_root = val_root = folder
        cache = True
    elif kind == "lvis":
        train_ann, val_ann = Path(cfg.train_ann), Path(cfg.val_ann)
        train_root, val_root = Path(cfg.train_images), Path(cfg.val_images)
        cache = bool(cfg.get("cache_images", False))
    else:
        raise ConfigError(f"dataset.kind: unknown kind '{kind}' (choose from "
                          f"{', '.join(DATASET_KINDS)})")
    train_data = read_annotations(train_ann)
    val_data = read_annotations(val_ann)
    cmap = category_map(train_data)
    if category_map(val_data) != cmap:
        raise ConfigError(f"{val_ann}: its categories differ from those of {train_ann}")
    train = LvisDetection(train_ann, train_root, "train", cmap, train_data, cache_images=cache)
    val = LvisDetection(val_ann, val_root, "val", cmap, val_data, cache_images=cache)
    return DatasetBundle(train, val, cmap, category_stats(train_data, cmap))

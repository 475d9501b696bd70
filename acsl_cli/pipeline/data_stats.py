"""``acsl data stats``: sizes, groups, per-category counts and the RFS epoch size of a
train split, from ``ann=PATH`` or a dataset config (torch only for the embedded set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acsl_cli.config import load_config, parse_overrides
from acsl_cli.data.annotations import read_annotations
from acsl_cli.data.build import OPENIMAGES_KINDS
from acsl_cli.data.stats import counts_stats, dataset_stats
from acsl_cli.errors import ConfigError
from acsl_cli.files import atomic_write_json
from acsl_cli.pipeline.rundir import check_out_file


@dataclass(frozen=True)
class DataStats:
    stats: dict[str, Any]
    title: str
    out: str | None


def run_data_stats(overrides: list[str] | tuple[str, ...]) -> DataStats:
    """The stats of the configured train split; ``out=`` written as strict JSON."""
    args = list(overrides)
    if not any(o.key == "sampler" for o in parse_overrides(args)):
        args.insert(0, "sampler=rfs")  # its t is the threshold the stats report
    cfg = load_config(args)
    if cfg.sampler.get("t") is None:
        raise ConfigError(f"sampler={cfg.sampler.name}: data stats reports repeat factors; "
                          "use sampler=rfs [sampler.t=T]")
    if cfg.out:
        check_out_file(Path(cfg.out))
    if not cfg.ann and cfg.dataset.get("kind") in OPENIMAGES_KINDS:
        stats, title = _openimages_stats(cfg)
    else:
        train, title = _train_annotations(cfg)
        stats = dataset_stats(train, float(cfg.sampler.t))
    if cfg.out:
        atomic_write_json(Path(cfg.out), stats)
    return DataStats(stats, title, cfg.out)


def _train_annotations(cfg: Any) -> tuple[dict, str]:
    """``ann=PATH``, else the dataset's train file (the embedded set is generated first)."""
    if cfg.ann:
        return read_annotations(cfg.ann), str(cfg.ann)
    if cfg.dataset.get("kind") == "lvis":
        return read_annotations(cfg.dataset.train_ann), str(cfg.dataset.train_ann)
    from acsl_cli.pipeline.build import load_data  # torch: only for the embedded set

    return load_data(cfg).train.data, f"dataset={cfg.dataset.name} (train)"


def _openimages_stats(cfg: Any) -> tuple[dict[str, Any], str]:
    """An Open Images train split's stats, with the counts and groups that training uses
    (a box counted for its class's ancestors when ``dataset.expand_labels``)."""
    from acsl_cli.pipeline.build import load_data

    data = load_data(cfg)
    s, C = data.stats, data.cmap.num_classes
    labels = range(1, C + 1)
    stats = counts_stats(data.train.image_categories(), dict(zip(labels, data.openimages.names,
                                                                 strict=True)),
                         dict(zip(labels, s.frequencies, strict=True)),
                         dict(zip(labels, s.image_counts, strict=True)),
                         dict(zip(labels, s.instance_counts, strict=True)),
                         int(data.train.split.box_offsets[-1]), float(cfg.sampler.t))
    return stats, f"dataset={cfg.dataset.name} (train)"

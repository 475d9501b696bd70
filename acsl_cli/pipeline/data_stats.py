"""``acsl data stats``: sizes, groups, per-category counts and the RFS epoch size of a
train split, from ``ann=PATH`` or a dataset config (torch only for the embedded set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acsl_cli.config import load_settings, parse_overrides
from acsl_cli.data.annotations import read_annotations
from acsl_cli.data.stats import counts_stats, dataset_stats
from acsl_cli.errors import ConfigError
from acsl_cli.files import atomic_write_json
from acsl_cli.pipeline.rundir import check_out_file
from acsl_cli.settings import Settings
from acsl_cli.settings.datasets import OPENIMAGES_KINDS, LvisDataset


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
    s = load_settings(args)
    if s.sampler.t is None:
        raise ConfigError(f"sampler={s.sampler.name}: data stats reports repeat factors; "
                          "use sampler=rfs [sampler.t=T]")
    if s.out:
        check_out_file(Path(s.out))
    if not s.ann and s.dataset.kind in OPENIMAGES_KINDS:
        stats, title = _openimages_stats(s)
    else:
        train, title = _train_annotations(s)
        stats = dataset_stats(train, float(s.sampler.t))
    if s.out:
        atomic_write_json(Path(s.out), stats)
    return DataStats(stats, title, s.out)


def _train_annotations(s: Settings) -> tuple[dict, str]:
    """``ann=PATH``, else the dataset's train file (the embedded set is generated first)."""
    if s.ann:
        return read_annotations(s.ann), str(s.ann)
    if isinstance(s.dataset, LvisDataset):
        return read_annotations(str(s.dataset.train_ann)), str(s.dataset.train_ann)
    from acsl_cli.pipeline.components import load_data  # torch: only for the embedded set

    return load_data(s).train.data, f"dataset={s.dataset.name} (train)"


def _openimages_stats(s: Settings) -> tuple[dict[str, Any], str]:
    """An Open Images train split's stats, with the counts and groups that training uses
    (a box counted for its class's ancestors when ``dataset.expand_labels``)."""
    from acsl_cli.pipeline.components import load_data

    data = load_data(s)
    st, C = data.stats, data.cmap.num_classes
    labels = range(1, C + 1)
    stats = counts_stats(data.train.image_categories(), dict(zip(labels, data.openimages.names,
                                                                 strict=True)),
                         dict(zip(labels, st.frequencies, strict=True)),
                         dict(zip(labels, st.image_counts, strict=True)),
                         dict(zip(labels, st.instance_counts, strict=True)),
                         int(data.train.split.box_offsets[-1]), float(s.sampler.t))
    return stats, f"dataset={s.dataset.name} (train)"

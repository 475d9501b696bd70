"""Which runs one table may hold: runs are compared only on the same dataset under the same
metric. A report of an LVIS-rules sweep and an Open Images run is two comparisons, each
with its own table, figures and baselines; a difference is never taken across datasets,
and per-category AP never merges two datasets' categories by id.

A run's dataset is its name and the dataset keys that decide its categories, images and
annotations (a generated set's generator settings, a real set's annotation files), with
the declared defaults filled in as pooling does (``settings.pooling``). Not part of it:
the detector's input size, the loss defaults and where images are read from. Its metric
follows from its kind: Open Images sets are scored by the challenge metric, the rest under
LVIS rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.reporting.compare import Comparison, compare
from acsl_cli.reporting.runs import Run
from acsl_cli.settings.datasets import OPENIMAGES_KINDS
from acsl_cli.settings.pooling import outcome_values

#: dataset keys that do not change what is measured: input size, loss parameters, caching,
#: where the images are
NOT_DATA = frozenset({"min_size", "max_size", "loss_defaults", "cache_images", "root",
                      "train_images", "val_images"})
LVIS_RULES = "LVIS rules"
OPENIMAGES_METRIC = "Open Images challenge AP"
UNKNOWN = "dataset unknown (no config.yaml)"


@dataclass(frozen=True)
class RunGroup:
    """Runs on one dataset under one metric."""

    dataset: str  # the dataset's name, with the keys that tell it from another of that name
    metric: str
    suffix: str  # added to its figure files ("" when the report has one group)
    runs: list[Run]

    @property
    def title(self) -> str:
        return f"{self.dataset} ({self.metric})"


def dataset_of(run: Run) -> dict[str, Any] | None:
    """The run's dataset keys that decide what is measured (None without config.yaml)."""
    if not run.config:
        return None
    values = outcome_values(run.config)
    return {k[len("dataset."):]: v for k, v in values.items()
            if k.startswith("dataset.") and k.split(".")[1] not in NOT_DATA}


def metric_of(dataset: dict[str, Any] | None) -> str:
    if dataset is None:
        return "metric unknown"
    return OPENIMAGES_METRIC if dataset.get("kind") in OPENIMAGES_KINDS else LVIS_RULES


def group_runs(runs: Sequence[Run]) -> list[RunGroup]:
    """The runs by (dataset, metric), groups in the order their first run was given."""
    found: list[tuple[dict[str, Any] | None, list[Run]]] = []
    for run in runs:
        dataset = dataset_of(run)
        same = next((members for d, members in found if _same(d, dataset)), None)
        if same is None:
            found.append((dataset, [run]))
        else:
            same.append(run)
    datasets = [d for d, _ in found]
    names = [_name(d, datasets) for d in datasets]
    suffixes = _suffixes(names) if len(names) > 1 else [""] * len(names)
    return [RunGroup(name, metric_of(d), suffix, members)
            for (d, members), name, suffix in zip(found, names, suffixes, strict=True)]


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal in every key both hold (a kind's key that only one config holds is an option
    added since: pooling's rule); runs without config.yaml are one unknown dataset."""
    if a is None or b is None:
        return a is b
    return all(_text(a[k]) == _text(b[k]) for k in a.keys() & b.keys())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _name(dataset: dict[str, Any] | None, datasets: list[dict[str, Any] | None]) -> str:
    """The dataset's name, plus the keys in which it differs from another dataset of the
    same name (``synthetic [dataset.num_classes=8]``)."""
    if dataset is None:
        return UNKNOWN
    name = str(dataset.get("name", "?"))
    twins = [d for d in datasets if d is not None and d is not dataset
             and str(d.get("name", "?")) == name]
    keys = sorted(k for k in dataset if any(k in t and _text(t[k]) != _text(dataset[k])
                                            for t in twins))
    extra = " ".join(f"dataset.{k}={_text(dataset[k])}" for k in keys)
    return f"{name} [{extra}]" if extra else name


def _suffixes(names: list[str]) -> list[str]:
    """File-name suffixes: ``-<name, folder-safe>``, numbered where two would be equal."""
    out: list[str] = []
    for name in names:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.")[:60] or "group"
        base, n = f"-{slug}", 2
        while base in out:
            base, n = f"-{slug}-{n}", n + 1
        out.append(base)
    return out


def compare_groups(runs: Sequence[Run], baseline: str | None = None, resamples: int = 1000,
                   bootstrap_seed: int = 0) -> list[Comparison]:
    """One comparison per dataset and metric (``compare``'s arguments). A baseline row
    that a group lacks leaves that group without differences and with a note saying so;
    one that no group has is an error."""
    groups = group_runs(runs)
    several = len(groups) > 1
    out = []
    for g in groups:
        c = compare(g.runs, baseline, resamples, bootstrap_seed, missing_ok=several)
        c.title, c.suffix = g.title, g.suffix
        out.append(c)
    if several and all(c.note for c in out):
        rows = "; ".join(f"{c.title}: {', '.join(r.name for r in c.rows)}" for c in out)
        raise ConfigError(f"baseline={out[0].baseline}: no such row in any dataset "
                          f"(rows: {rows})")
    return out

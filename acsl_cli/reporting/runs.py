"""Saved runs and sweep folders, read back (torch-free) into one tidy structure.

``acsl report`` compares runs made at different times, so everything it needs must come
from the folders alone: metrics.json (rows), config.yaml (seed, heads: loss and xi),
per_category_ap.csv (per-category AP), and train counts for the label distribution. Every
unreadable or malformed file is a ``DataError`` naming it, in one line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from acsl_cli.data.annotations import load_json
from acsl_cli.errors import DataError
from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.evaluation.lvis_protocols import split_protocol
from acsl_cli.evaluation.openimages_scoring import count_value
from acsl_cli.layout import (
    CONFIG,
    METRICS,
    PER_CATEGORY,
    RUNS_LIST,
    STAGE1_ROW,  # noqa: F401 - re-exported (reporting reads it from here)
    OutputLayout,
    finished,
    is_stage1_row,
)
from acsl_cli.untrusted import load_yaml_mapping, read_text

_META = {"category_id", "name", "frequency", "group", "num_gt", "train_images",
         "train_instances"}


@dataclass(frozen=True)
class ModelRow:
    """One row of a run's metrics table: the stage-1 baseline or one stage-2 head."""

    label: str
    loss: str
    xi: float | None
    loss_cfg: Mapping[str, Any]
    metrics: Mapping[str, float | None]
    #: the LVIS protocol of the row (metrics.json labels ``label [fixed]``, ``[pooled]``)
    protocol: str = "standard"


@dataclass(frozen=True)
class CategoryAP:
    """One category of per_category_ap.csv; train counts are None where the CSV lacks them."""

    category_id: int
    name: str
    group: str
    num_gt: float  # Open Images: group-of boxes may weigh less than 1
    train_images: int | None
    train_instances: int | None
    ap: Mapping[str, float]  # row label -> AP (nan where missing)


@dataclass
class Run:
    path: Path
    seed: int | None
    setting: str  # the sweep's setting line (e.g. "seed=0"), "" for a lone run
    config: dict[str, Any]
    models: dict[str, ModelRow]  # label -> row, in metrics.json order
    categories: list[CategoryAP] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def load_runs(folders: Iterable[str | Path]) -> list[Run]:
    """Every run of the given run and sweep folders, each once, in the order given."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for folder in folders:
        for path, setting in _expand(Path(folder)):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(path, setting))
    if not runs:
        raise DataError("no run folders given")
    return runs


def _expand(folder: Path) -> list[tuple[Path, str]]:
    """A sweep folder -> its runs (runs.txt); a run folder -> itself."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    listing = folder / RUNS_LIST
    if listing.is_file():
        return _sweep_runs(listing)
    if finished(folder):
        return [(folder, "")]
    raise DataError(f"{folder}: neither a run folder (metrics.json) nor a sweep folder "
                    "(runs.txt)")


def _sweep_runs(listing: Path) -> list[tuple[Path, str]]:
    """runs.txt lines are ``setting<TAB>run path``, the path relative to the sweep folder
    (``../<name>-sweep-0``). The listing is untrusted data: a path must name a run inside
    the sweep's own runs folder, so a copied or moved sweep reads its own runs, never the
    original tree's. An absolute path (older sweeps wrote them) is read as the run of that
    name beside the sweep."""
    runs_folder = listing.parent.parent
    out = []
    for n, line in enumerate(_read_text(listing).splitlines(), 1):
        if not line.strip():
            continue
        setting, sep, where = line.rpartition("\t")
        where = where.strip()
        beside = runs_folder / Path(where).name
        tries = [beside] if Path(where).is_absolute() else [listing.parent / where, beside]
        path = next((p for p in tries if where and _run_inside(p, runs_folder)), None)
        if not sep or path is None:
            raise DataError(f"{listing}: line {n}: no run folder at '{where}' in "
                            f"{runs_folder}")
        out.append((path, setting.strip()))
    if not out:
        raise DataError(f"{listing}: lists no runs")
    return out


def _run_inside(path: Path, runs_folder: Path) -> bool:
    try:
        inside = runs_folder.resolve() in path.resolve().parents
    except (OSError, RuntimeError):
        return False
    return inside and finished(path)


def load_run(folder: Path, setting: str = "") -> Run:
    """One run folder: metrics.json is required, config.yaml and the CSV are used if there."""
    metrics = read_metrics(folder / METRICS)
    config = read_config(folder / CONFIG) if (folder / CONFIG).is_file() else {}
    seed = config.get("seed")
    heads = {h.get("label"): h.get("loss") or {} for h in
             (config.get("heads") or {}).values() if isinstance(h, Mapping)}
    models = {}
    for label, m in metrics.items():
        plain, protocol = split_protocol(label)
        row = _model_row(plain, heads.get(plain), m)
        models[label] = replace(row, protocol=protocol)
    csv_path = folder / PER_CATEGORY
    cats = read_per_category(csv_path, list(metrics)) if csv_path.is_file() else []
    return Run(folder, seed if isinstance(seed, int) else None, setting, config, models, cats)


def _model_row(label: str, loss_cfg: Mapping[str, Any] | None,
               metrics: Mapping[str, float | None]) -> ModelRow:
    """Loss name and xi from the run's ``heads:`` section, else from the label itself."""
    if is_stage1_row(label):
        return ModelRow(label, "stage1", None, {"name": "stage1"}, metrics)
    loss = dict(loss_cfg or {})
    if not loss:  # a run without config.yaml: labels read "acsl xi=0.7 bg=official"
        words = label.split()
        loss = {"name": words[0] if words else label}
        loss.update(w.split("=", 1) for w in words[1:] if "=" in w)
    xi = loss.get("xi") if loss.get("name") == "acsl" else None
    try:
        xi = None if xi is None else float(xi)
    except (TypeError, ValueError):
        xi = None
    return ModelRow(label, str(loss.get("name", label)), xi, loss, metrics)


def read_metrics(path: Path) -> dict[str, dict[str, float | None]]:
    """metrics.json: {row label: {metric: value in [0, 1] or null}}, checked."""
    data = load_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a JSON object of rows {{label: {{AP: ...}}}}")
    rows = {}
    for label, row in data.items():
        if not isinstance(row, dict):
            raise DataError(f"{path}: row '{label}' is not an object of metrics")
        rows[label] = {k: _metric(path, label, k, row.get(k)) for k in METRIC_KEYS}
    return rows


def _metric(path: Path, label: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 <= value <= 1.0):
        raise DataError(f"{path}: row '{label}': {key} must be a number in [0, 1] or null, "
                        f"got {value!r}")
    return float(value)


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml as plain data (``untrusted``: the one loader of such files)."""
    return load_yaml_mapping(path)


def read_per_category(path: Path, labels: Sequence[str]) -> list[CategoryAP]:
    """per_category_ap.csv; model columns are the metrics.json labels, the rest is metadata."""
    reader = csv.DictReader(_read_text(path).splitlines())
    header = reader.fieldnames or []
    if "category_id" not in header:
        raise DataError(f"{path}: no category_id column")
    models = [c for c in header if c in labels and c not in _META]
    out = []
    for n, row in enumerate(reader, 2):
        try:
            out.append(CategoryAP(
                int(row["category_id"]), row.get("name") or "",
                (row.get("group") or row.get("frequency") or "").strip(),
                count_value(float(row.get("num_gt") or 0)), _opt_int(row.get("train_images")),
                _opt_int(row.get("train_instances")),
                {m: _opt_float(row.get(m)) for m in models}))
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: line {n}: {e}") from None
    return out


def _opt_int(text: str | None) -> int | None:
    return None if text is None or text.strip() == "" else int(float(text))


def _opt_float(text: str | None) -> float:
    return math.nan if text is None or text.strip() == "" else float(text)


_read_text = read_text


@dataclass(frozen=True)
class TrainCounts:
    """Train images per category (and its group), for the label-distribution figure."""

    images: Mapping[int, int]
    groups: Mapping[int, str]
    source: Path


def train_counts(run: Run) -> TrainCounts:
    """From the train annotation file the run's config points at (every category, the
    generated set under its output root), else from per_category_ap.csv's train_images
    column (only the categories with ground truth in the evaluated val images)."""
    try:
        path = train_annotation_file(run)
    except DataError:
        if run.categories and all(c.train_images is not None for c in run.categories):
            return TrainCounts({c.category_id: int(c.train_images or 0)
                                for c in run.categories},
                               {c.category_id: c.group for c in run.categories},
                               run.path / PER_CATEGORY)
        raise
    from acsl_cli.data.groups import train_category_info  # torch-free, the one r/c/f rule

    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or \
            not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: not an LVIS/COCO-format annotation file")
    try:
        info = train_category_info(data)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed annotations ({e.__class__.__name__}: {e})") from None
    return TrainCounts({cid: int(i["image_count"]) for cid, i in info.items()},
                       {cid: str(i["frequency"]) for cid, i in info.items()}, path)


def train_annotation_file(run: Run) -> Path:
    """The train json of the run's dataset; relative paths are tried from the current
    folder and from the run's output root (``<output_root>/runs/<run>``)."""
    dataset = run.config.get("dataset")
    if not isinstance(dataset, Mapping):
        raise DataError(f"{run.path / 'config.yaml'}: no dataset section, so no train counts")
    roots = [run.path.parent.parent]
    if run.config.get("output_root"):
        roots.append(Path(str(run.config["output_root"])))
    if dataset.get("kind") in ("synthetic", "synthetic_lvis"):
        found = _synthetic_train(dataset, roots)
    else:
        ann = Path(str(dataset.get("train_ann", "")))
        tries = [ann] if ann.is_absolute() else [ann, *(r / ann for r in roots)]
        found = next((p for p in tries if p.is_file()), None)
    if found is None:
        raise DataError(f"{run.path / 'config.yaml'}: the train annotations of dataset "
                        f"'{dataset.get('name')}' are not found (looked under "
                        f"{', '.join(str(r) for r in roots)})")
    return found


def _synthetic_train(dataset: Mapping[str, Any], roots: Sequence[Path]) -> Path | None:
    """The generated set's folder is named by its spec's hash; if the spec cannot be
    rebuilt (an older version), the one generated set with the same classes is taken."""
    from acsl_cli.data.synthetic.lvis_like import SyntheticLvisSpec
    from acsl_cli.data.synthetic.shapes import SyntheticSpec

    kind = str(dataset.get("kind"))
    spec = SyntheticLvisSpec if kind == "synthetic_lvis" else SyntheticSpec
    fields = spec.__dataclass_fields__
    try:
        made = spec(**{k: dataset[k] for k in fields if k in dataset})
    except TypeError:
        made = None
    for root in roots:
        exact = made.folder(OutputLayout.at(root).data_cache) / "train.json" if made else None
        if exact is not None and exact.is_file():
            return exact
    for root in roots:
        candidates = sorted(OutputLayout.at(root).data_cache.glob(f"{kind}-*/train.json"))
        matching = [p for p in candidates if _num_categories(p) == dataset.get("num_classes")]
        if len(matching) == 1:
            return matching[0]
    return None


def _num_categories(path: Path) -> int | None:
    try:
        data = load_json(path)
    except DataError:
        return None
    cats = data.get("categories") if isinstance(data, dict) else None
    return len(cats) if isinstance(cats, list) else None



"""The paper's Figure 3 on real runs: which class columns ACSL suppressed for each class.

During stage 2 an ACSL loss counts, per foreground RoI of class k, every column j != k
with W = 1 (``ACSL.suppression()``); the head's folder keeps that record as
``suppression.npz`` (plain integer arrays, read with ``allow_pickle=False``). ``acsl
report`` draws the share of class k's RoIs that suppressed column j as a heat map, classes
sorted by train images (frequent first), with a readable panel of the rare classes
(``suppression_figure``), and computes the claim's numbers from the records
(``lookalikes``). For each rare class it lists the columns suppressed most often: the
look-alikes ACSL keeps discriminating against. Sigmoid BCE suppresses every negative
column by definition and keeps no record: it is not drawn.

Torch-free (``acsl report`` must stay fast to import): the writer only calls the loss.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.errors import DataError
from acsl_cli.files import atomic_write_bytes, atomic_write_json
from acsl_cli.reporting.compare import Comparison
from acsl_cli.reporting.runs import Run, TrainCounts

SUPPRESSION_FILE = "suppression.npz"
FIGURE = "suppression.png"
SUMMARY = "suppression.json"
TOP_COLUMNS = 3  # look-alikes listed per rare class
MAX_RARE = 20  # rare classes listed per model


@dataclass(frozen=True)
class Suppression:
    """counts[k, j]: foreground RoIs of class ``category_ids[k]`` that suppressed column j;
    rois[k]: foreground RoIs of that class (stage 2, summed over the pooled runs)."""

    category_ids: np.ndarray  # (C,) int64
    counts: np.ndarray  # (C, C) int64
    rois: np.ndarray  # (C,) int64

    def rates(self) -> np.ndarray:
        """counts / rois per row; NaN on rows without RoIs and on the diagonal (target)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.counts / self.rois[:, None].astype(np.float64)
        out[self.rois == 0] = np.nan
        np.fill_diagonal(out, np.nan)
        return out

    def __add__(self, other: Suppression) -> Suppression:
        return Suppression(self.category_ids, self.counts + other.counts, self.rois + other.rois)


def write_suppression(folder: Path, loss: Any, category_ids: Sequence[int]) -> None:
    """``folder/suppression.npz`` from a loss that keeps a record (ACSL); others: nothing."""
    record = getattr(loss, "suppression", None)
    got = record() if callable(record) else None
    if got is None:
        return
    counts, rois = (np.asarray(t.detach().cpu().numpy(), dtype=np.int64) for t in got)
    buf = io.BytesIO()
    np.savez_compressed(buf, category_ids=np.asarray(category_ids, dtype=np.int64),
                        counts=counts, rois=rois)
    atomic_write_bytes(Path(folder) / SUPPRESSION_FILE, buf.getvalue())


def read_suppression(path: Path) -> Suppression:
    """One head's record, checked; anything malformed is a one-line ``DataError``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("category_ids", "counts", "rois")}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"{path}: not a suppression record ({e.__class__.__name__})") from None
    ids, counts, rois = arrays["category_ids"], arrays["counts"], arrays["rois"]
    c = ids.shape[0] if ids.ndim == 1 else -1
    if c < 0 or counts.shape != (c, c) or rois.shape != (c,) or any(
            a.dtype.kind not in "iu" or (a.size and a.min() < 0) for a in (ids, counts, rois)):
        raise DataError(f"{path}: expected non-negative integer arrays category_ids (C,), "
                        "counts (C, C) and rois (C,)")
    if (counts > rois[:, None]).any():
        raise DataError(f"{path}: a class suppressed a column more often than it had RoIs")
    return Suppression(ids.astype(np.int64), counts.astype(np.int64), rois.astype(np.int64))


def pooled_records(c: Comparison) -> tuple[dict[str, Suppression], list[str]]:
    """Per row whose heads kept a record (ACSL's), the records summed over the row's runs;
    and notes for ACSL rows that have none (runs made before heads kept one)."""
    out: dict[str, Suppression] = {}
    notes: list[str] = []
    for row in c.rows:
        if row.protocol != "standard":  # the same heads as the standard row: drawn once
            continue
        for run in (r for r in c.runs if r.name in row.runs and row.label in r.models):
            path = _head_folder(run, row.label)
            if path is None or not (path / SUPPRESSION_FILE).is_file():
                continue
            rec = read_suppression(path / SUPPRESSION_FILE)
            if row.name in out and not np.array_equal(out[row.name].category_ids,
                                                      rec.category_ids):
                notes.append(f"{path / SUPPRESSION_FILE}: other classes than the row's first "
                             "run; left out of the suppression map")
                continue
            out[row.name] = out[row.name] + rec if row.name in out else rec
        if row.name not in out and row.loss == "acsl":
            notes.append(f"Suppression map of '{row.name}' not drawn: its heads have no "
                         f"{SUPPRESSION_FILE}")
    return out, notes


def _head_folder(run: Run, label: str) -> Path | None:
    heads = run.config.get("heads")
    if not isinstance(heads, Mapping):
        return None
    ids = [hid for hid, h in heads.items() if isinstance(h, Mapping) and h.get("label") == label]
    return run.path / "heads" / str(ids[0]) if ids else None


def class_order(rec: Suppression, counts: TrainCounts | None) -> list[int]:
    """Row indices by train images, most first (ties by id); by RoIs without train counts."""
    key = (lambda i: -counts.images.get(int(rec.category_ids[i]), 0)) if counts is not None \
        else (lambda i: -int(rec.rois[i]))
    return sorted(range(len(rec.category_ids)), key=lambda i: (key(i), int(rec.category_ids[i])))


def lookalikes_markdown(records: Mapping[str, Suppression], counts: TrainCounts | None,
                        names: Mapping[int, str]) -> str:
    """Per model and rare class: the ``TOP_COLUMNS`` columns suppressed most often."""
    lines = ["| model | class | train images | RoIs | most suppressed columns (share of RoIs) |",
             "|---|---|---:|---:|---|"]
    for model, rec in records.items():
        rates = rec.rates()
        for i in _rare_rows(rec, counts):
            cid = int(rec.category_ids[i])
            top = [j for j in np.argsort(-np.nan_to_num(rates[i], nan=-1.0), kind="stable")
                   if rec.counts[i, j] > 0][:TOP_COLUMNS]
            cells = ", ".join(f"{names.get(int(rec.category_ids[j]), rec.category_ids[j])} "
                              f"{100 * rates[i, j]:.1f} %" for j in top) or "none"
            images = "-" if counts is None else str(counts.images.get(cid, 0))
            lines.append(f"| {model} | {names.get(cid, str(cid))} | {images} | "
                         f"{int(rec.rois[i])} | {cells} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _rare_rows(rec: Suppression, counts: TrainCounts | None) -> list[int]:
    """Rare-group classes with RoIs, rarest first; the 10 classes with fewest RoIs without
    train counts."""
    with_rois = [i for i in range(len(rec.rois)) if rec.rois[i] > 0]
    if counts is None:
        return sorted(with_rois, key=lambda i: (int(rec.rois[i]), i))[:10]
    rare = [i for i in with_rois if counts.groups.get(int(rec.category_ids[i])) == "r"]
    return sorted(rare, key=lambda i: (counts.images.get(int(rec.category_ids[i]), 0),
                                       int(rec.category_ids[i])))[:MAX_RARE]


def suppression_report(c: Comparison, out_dir: Path) -> tuple[list[Path], str]:
    """The figure, ``suppression.json`` (the claim's numbers per model, from the records)
    and the report's Markdown section ("" when no row has a record)."""
    from acsl_cli.reporting.figures import _first_counts, suffixed
    from acsl_cli.reporting.lookalikes import category_traits, summary, summary_markdown
    from acsl_cli.reporting.suppression_figure import suppression_figure

    records, notes = pooled_records(c)
    if not records:
        return [], "".join(f"\n{n}\n" for n in notes)
    counts = _first_counts(c.runs)[0]
    names = {cat.category_id: cat.name for run in c.runs for cat in run.categories}
    traits = category_traits(c.runs)
    summary_file = suffixed(SUMMARY, c.suffix)
    path = Path(out_dir) / suffixed(FIGURE, c.suffix)
    figure = suppression_figure(records, counts, names, path, traits, rare_rows=_rare_rows,
                                class_order=class_order)
    stats = {model: summary(rec, traits) for model, rec in records.items()}
    atomic_write_json(Path(out_dir) / summary_file, stats)
    table = lookalikes_markdown(records, counts, names)
    text = ("\n## ACSL suppression (Figure 3)\n\n"
            f"![suppression]({figure.name})\n\nShare of each class's foreground RoIs in "
            "stage 2 for which ACSL suppressed a column (W = 1), summed over each row's runs "
            "(only measured records are drawn; sigmoid BCE keeps none: it suppresses every "
            f"column by definition). From the records ({summary_file}):\n\n"
            + summary_markdown(stats)
            + ("" if traits else "\nLook-alikes are not marked: the train annotations give no "
               "shape, colour and pattern per class.\n")
            + (f"\nRare classes' most suppressed columns:\n\n{table}" if table else "")
            + "".join(f"\n{n}\n" for n in notes))
    return [figure, Path(out_dir) / summary_file], text

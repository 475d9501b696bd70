"""A sweep of saved runs written as plain files (no training): what ``acsl report`` reads.

Built for the figure and HTML report tests: long head labels (as real sweeps name them),
two detectors (each row's name gets ``[detector.name=...]``), seeds 0 and 1 or one seed,
per-category AP for every class, validation events, and ACSL suppression records. Every
value comes from one seeded generator, so the files are the same on every call.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import yaml

from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.reporting.runs import STAGE1_ROW

SHAPES = ("circle", "diamond", "ring", "cross", "square")
COLOURS = ("green", "red", "blue")
PATTERNS = ("hstripes", "vstripes")
#: head label -> loss settings; labels as long as a real sweep's
HEADS = {
    "softmax_ce": {"name": "softmax_ce"},
    "bce": {"name": "bce"},
    "eqlv2 gamma=12 mu=0.8 alpha=4 (as released)": {"name": "eqlv2", "gamma": 12},
    "seesaw p=0.8 q=2.0 (as released)": {"name": "seesaw", "p": 0.8},
    "bags bins=[10, 100]": {"name": "bags"},
    "acsl xi=0.3 bg=official": {"name": "acsl", "xi": 0.3, "bg": "official"},
    "acsl xi=0.5 bg=official": {"name": "acsl", "xi": 0.5, "bg": "official"},
    "acsl xi=0.7 bg=official": {"name": "acsl", "xi": 0.7, "bg": "official"},
    "acsl xi=0.9 bg=official": {"name": "acsl", "xi": 0.9, "bg": "official"},
}
DETECTORS = ("faster_rcnn", "cascade_rcnn")


def categories(n: int) -> list[dict]:
    """``n`` look-alike classes (colour_pattern_shape), rarest last: r, c and f groups."""
    out = []
    for i in range(n):
        name = (f"{COLOURS[i % 3]}_{PATTERNS[(i // 3) % 2]}_"
                f"{SHAPES[(i // 6) % 5]}{'' if i < 30 else f'_{i // 30}'}")
        images = max(1, int(400 * 0.8 ** i))
        group = "r" if images <= 10 else "c" if images <= 100 else "f"
        out.append({"category_id": 1 + i, "name": name, "group": group, "images": images})
    return out


def make_sweep(root: Path, seeds: tuple[int, ...] = (0, 1), classes: int = 24,
               heads: dict | None = None, detectors: tuple[str, ...] = DETECTORS,
               name: str = "long-names") -> Path:
    """``root/runs/<name>-sweep`` with one run per (detector, seed); returns the sweep."""
    heads = HEADS if heads is None else heads
    rng = np.random.default_rng(0)
    cats = categories(classes)
    runs_dir = root / "runs"
    sweep = runs_dir / f"{name}-sweep"
    sweep.mkdir(parents=True)
    train = root / "train.json"
    train.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": c["category_id"], "name": c["name"], "frequency": c["group"],
         "image_count": c["images"], "instance_count": 2 * c["images"],
         **dict(zip(("colour", "pattern", "shape"), c["name"].split("_")[:3], strict=True))}
        for c in cats]}))
    lines = []
    for d, detector in enumerate(detectors):
        skill = {label: 0.15 + 0.03 * i + 0.1 * d for i, label in enumerate(HEADS)}
        for seed in seeds:
            run = runs_dir / f"{name}-sweep-{len(lines)}"
            _write_run(run, detector, seed, heads, cats, skill, rng, train)
            lines.append(f"detector.name={detector} seed={seed}\t../{run.name}")
    (sweep / "runs.txt").write_text("\n".join(lines) + "\n")
    return sweep


def _write_run(run: Path, detector: str, seed: int, heads: dict, cats: list[dict],
               skill: dict, rng: np.random.Generator, train: Path) -> None:
    run.mkdir()
    head_ids = {label: f"h{i}" for i, label in enumerate(heads)}
    config = {"seed": seed, "detector": {"name": detector},
              "dataset": {"kind": "lvis", "name": "synth", "train_ann": str(train)},
              "heads": {hid: {"label": label, "loss": dict(heads[label])}
                        for label, hid in head_ids.items()}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    labels = [STAGE1_ROW, *heads]
    per_cat = {label: {c["category_id"]: float(np.clip(
        (skill.get(label, 0.1) + (0.35 if c["group"] == "f" else 0.15 if c["group"] == "c"
                                  else 0.0)) + rng.normal(0, 0.08), 0, 1)) for c in cats}
        for label in labels}
    metrics = {}
    for label in labels:
        aps = per_cat[label]
        by = {g: [aps[c["category_id"]] for c in cats if c["group"] == g] for g in "rcf"}
        ap = float(np.mean(list(aps.values())))
        m = {k: float(np.clip(ap + rng.normal(0, 0.02), 0, 1)) for k in METRIC_KEYS}
        m.update(AP=ap, **{f"AP{g}": float(np.mean(v)) if v else None for g, v in by.items()})
        metrics[label] = m
    (run / "metrics.json").write_text(json.dumps(metrics))
    head = "category_id,name,frequency,num_gt,train_images,train_instances," + ",".join(
        f'"{label}"' for label in labels)
    rows = [f"{c['category_id']},{c['name']},{c['group']},{3 + c['images'] // 20},"
            f"{c['images']},{2 * c['images']}," + ",".join(
                repr(per_cat[label][c["category_id"]]) for label in labels) for c in cats]
    (run / "per_category_ap.csv").write_text("\n".join([head, *rows]) + "\n")
    events = [{"type": "eval", "stage": "stage 1", "model": STAGE1_ROW, "epoch": e,
               "AP": 0.05 * e, "APr": 0.01 * e} for e in (1, 2, 3)]
    events += [{"type": "eval", "stage": "stage 2", "model": label, "epoch": e,
                "AP": min(1.0, skill.get(label, 0.1) * e / 2), "APr": 0.02 * e + 0.01 * i}
               for i, label in enumerate(heads) for e in (1, 2)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    for label, hid in head_ids.items():
        if heads[label]["name"] == "acsl":
            _write_suppression(run / "heads" / hid, cats, rng)


def lookalike(a: str, b: str) -> bool:
    """Names colour_pattern_shape that differ in exactly one of the three parts."""
    pa, pb = a.split("_")[:3], b.split("_")[:3]
    return sum(x != y for x, y in zip(pa, pb, strict=True)) == 1


def _write_suppression(folder: Path, cats: list[dict], rng: np.random.Generator) -> None:
    """Look-alike columns are suppressed often, the rest seldom (as in the real runs)."""
    folder.mkdir(parents=True)
    n = len(cats)
    rois = np.array([5 + c["images"] // 4 for c in cats], dtype=np.int64)
    share = np.array([[0.0 if i == j else 0.6 if lookalike(cats[i]["name"], cats[j]["name"])
                       else 0.02 for j in range(n)] for i in range(n)])
    counts = rng.binomial(rois[:, None], share).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, category_ids=np.array([c["category_id"] for c in cats]),
                        counts=counts, rois=rois)
    (folder / "suppression.npz").write_bytes(buf.getvalue())

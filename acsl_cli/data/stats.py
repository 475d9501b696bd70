"""What a train split looks like to a long-tail method: ``acsl data stats``.

Torch-free, so that describing a file is quick. Frequency groups come from the one rule in
``acsl_cli.data.groups``; the repeat-factor numbers from the same functions the sampler
uses, with f_c counted from the file's own annotations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from acsl_cli.data.groups import group_sizes, train_category_info


def image_categories(data: dict) -> list[frozenset[int]]:
    """Categories present in each image, in image-id order (the order of ``LvisDetection``,
    so that index i here is dataset index i)."""
    present: dict[Any, set[int]] = {im["id"]: set() for im in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    return [frozenset(present[i]) for i in sorted(present)]


def repeat_factors(image_cats: Sequence[Iterable[int]], t: float) -> list[float]:
    """Per image r_i = max over its categories of r_c = max(1, sqrt(t / f_c)) (LVIS paper).

    f_c is the fraction of these images that contain c; an image without categories has
    r_i = 1. Here, torch-free, so that stats and the sampler share one rule.
    """
    sets = [set(cats) for cats in image_cats]
    counts: dict[int, int] = {}
    for cats in sets:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    n = len(sets)
    r_cat = {c: max(1.0, math.sqrt(t / (k / n))) for c, k in counts.items()}
    return [max((r_cat[c] for c in cats), default=1.0) for cats in sets]


def rfs_epoch_images(image_cats: Sequence[Iterable[int]], t: float) -> float:
    """Expected number of images in one repeat-factor epoch: the sum of the r_i."""
    return math.fsum(repeat_factors(image_cats, t))


def dataset_stats(train_data: dict, t: float) -> dict[str, Any]:
    """Counts, r/c/f groups (from train), never-seen categories, the expected size of a
    repeat-factor epoch at threshold ``t``, and one row per category."""
    info = train_category_info(train_data)
    names = {c["id"]: str(c.get("name", c["id"])) for c in train_data["categories"]}
    return counts_stats(image_categories(train_data), names,
                        {cid: str(row["frequency"]) for cid, row in info.items()},
                        {cid: int(row["image_count"]) for cid, row in info.items()},
                        {cid: int(row["instance_count"]) for cid, row in info.items()},
                        len(train_data["annotations"]), t)


def counts_stats(image_cats: Sequence[Iterable[int]], names: Mapping[int, str],
                 groups: Mapping[int, str], image_counts: Mapping[int, int],
                 instance_counts: Mapping[int, int], num_instances: int, t: float
                 ) -> dict[str, Any]:
    """``dataset_stats`` from counts already made (array-backed sets such as Open Images,
    whose counts include each box's ancestors)."""
    return {
        "num_images": len(image_cats),
        "num_instances": num_instances,
        "num_categories": len(image_counts),
        "groups": group_sizes(groups),
        "never_in_train": sorted(cid for cid, n in image_counts.items() if n == 0),
        "rfs_t": t,
        "rfs_epoch_images": rfs_epoch_images(image_cats, t),
        "categories": [
            {"id": cid, "name": names[cid], "group": groups[cid],
             "image_count": int(image_counts[cid]),
             "instance_count": int(instance_counts[cid])}
            for cid in sorted(image_counts)
        ],
    }


def print_stats(stats: dict[str, Any], title: str, top: int = 10) -> None:
    """A summary table and the ``top`` most and least frequent categories, with rich."""
    from rich.table import Table

    from acsl_cli.progress import console

    g = stats["groups"]
    summary = Table(title=title, show_header=False)
    for key, value in (
        ("images", stats["num_images"]), ("instances", stats["num_instances"]),
        ("categories", stats["num_categories"]),
        ("groups r / c / f", f"{g['r']} / {g['c']} / {g['f']}"),
        ("never in train", len(stats["never_in_train"])),
        (f"RFS epoch images (t={stats['rfs_t']:g})",
         f"{stats['rfs_epoch_images']:.1f} (x{_ratio(stats):.2f})"),
    ):
        summary.add_row(key, str(value))
    console.print(summary)
    rows = sorted(stats["categories"], key=lambda r: (-r["image_count"], r["id"]))
    shown = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
    table = Table(title="categories by train images"
                  + ("" if shown is rows else f" (top and bottom {top})"))
    for col in ("id", "name", "group", "images", "instances"):
        table.add_column(col, justify="left" if col in ("name", "group") else "right")
    for r in shown:
        table.add_row(str(r["id"]), r["name"], r["group"], str(r["image_count"]),
                      str(r["instance_count"]))
    console.print(table)


def _ratio(stats: dict[str, Any]) -> float:
    return stats["rfs_epoch_images"] / stats["num_images"] if stats["num_images"] else 0.0

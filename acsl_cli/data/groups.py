"""LVIS frequency groups, defined once and always taken from the train split.

Group metrics (APr/APc/APf) and frequency-aware losses are only meaningful when the groups
come from train image counts: a val file's own counts would put classes in other groups.
LVIS files carry the train groups in every category (``frequency``, ``image_count``); a plain
COCO-format file does not, so they are counted from the train file's annotations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

RARE_MAX = 10  # rare: at most 10 train images
COMMON_MAX = 100  # common: 11-100 train images; frequent: more
GROUPS = ("r", "c", "f")
_MAX_LISTED_IDS = 5


def frequency_group(image_count: int) -> str:
    """LVIS group of a category seen in ``image_count`` train images."""
    if image_count <= RARE_MAX:
        return "r"
    return "c" if image_count <= COMMON_MAX else "f"


def train_image_counts(data: dict) -> dict[int, int]:
    """Number of images of ``data`` that contain each category (0 for absent ones)."""
    anns = data["annotations"]
    images, cats = [a["image_id"] for a in anns], [a["category_id"] for a in anns]
    pairs = set(zip(images, cats, strict=True))
    found = Counter(cat for _, cat in pairs)
    return {c["id"]: found[c["id"]] for c in data["categories"]}


def train_instance_counts(data: dict) -> dict[int, int]:
    """Number of annotations of each category in ``data``."""
    found = Counter([a["category_id"] for a in data["annotations"]])
    return {c["id"]: found[c["id"]] for c in data["categories"]}


def _all_have(categories: list[dict], key: str) -> bool:
    return bool(categories) and all(key in c for c in categories)


def has_lvis_groups(data: dict) -> bool:
    """True when every category carries an LVIS ``frequency`` (r, c or f), as real LVIS does."""
    cats = data["categories"]
    return bool(cats) and all(c.get("frequency") in GROUPS for c in cats)


def train_category_info(train_data: dict) -> dict[int, dict[str, object]]:
    """``frequency``, ``image_count``, ``instance_count`` of every category, from train.

    Each field comes from the file when every category has it (LVIS); otherwise counts
    come from the file's annotations and the group from those image counts. One rule for
    the whole file, never a per-category mix.
    """
    cats = train_data["categories"]
    if _all_have(cats, "image_count"):
        images = {c["id"]: int(c["image_count"]) for c in cats}
    else:
        images = train_image_counts(train_data)
    if has_lvis_groups(train_data):
        groups = {c["id"]: c["frequency"] for c in cats}
    else:
        groups = {cid: frequency_group(n) for cid, n in images.items()}
    if _all_have(cats, "instance_count"):
        instances = {c["id"]: int(c["instance_count"]) for c in cats}
    else:
        instances = train_instance_counts(train_data)
    return {
        cid: {"frequency": groups[cid], "image_count": images[cid],
              "instance_count": instances[cid]}
        for cid in groups
    }


def apply_train_info(data: dict, info: Mapping[int, Mapping[str, object]]) -> None:
    """Write train's group and counts onto ``data``'s categories (in place)."""
    for c in data["categories"]:
        c.update(info[c["id"]])


def never_in_train(info: Mapping[int, Mapping[str, object]]) -> tuple[int, ...]:
    """Categories with no train image, sorted: they count as rare and cannot be learnt."""
    return tuple(sorted(cid for cid, row in info.items() if row["image_count"] == 0))


def group_sizes(groups: Mapping[int, str]) -> dict[str, int]:
    """Number of categories per group, always with the keys r, c, f."""
    sizes = dict.fromkeys(GROUPS, 0)
    for group in groups.values():
        if group in sizes:
            sizes[group] += 1
    return sizes


def describe_groups(groups: Mapping[int, str], never_in_train: Iterable[int] = ()) -> str:
    """One line for logs and reports, e.g. ``groups from train: 24 r / 22 c / 14 f``."""
    sizes = group_sizes(groups)
    text = f"groups from train: {sizes['r']} r / {sizes['c']} c / {sizes['f']} f"
    missing = sorted(never_in_train)
    if missing:
        listed = ", ".join(f"id {cid}" for cid in missing[:_MAX_LISTED_IDS])
        more = ", ..." if len(missing) > _MAX_LISTED_IDS else ""
        noun = "category never occurs" if len(missing) == 1 else "categories never occur"
        text += f"; {len(missing)} {noun} in train (counted as rare): {listed}{more}"
    return text

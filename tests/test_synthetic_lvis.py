"""``dataset=synthetic_lvis``: the LVIS-shaped embedded benchmark, and ``synthetic`` unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from acsl_cli.data.groups import frequency_group
from acsl_cli.data.synthetic.lvis_like import (
    LVIS_V05_GROUPS,
    PATTERNS,
    SHAPES,
    SyntheticLvisSpec,
    _paint,
    class_attributes,
    ensure_generated,
    generate,
    group_sizes,
    train_image_counts,
)
from acsl_cli.data.synthetic.shapes import COLOURS, SyntheticSpec
from acsl_cli.data.synthetic.shapes import ensure_generated as ensure_synthetic

FIXTURE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"  # see data/README.md
SMALL = SyntheticLvisSpec(seed=1, num_classes=60, max_images_per_class=110,
                          val_instances_per_class=3)
DEFAULT = SyntheticLvisSpec()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(SMALL, tmp_path_factory.mktemp("lvis") / "set")


def _groups(counts: list[int]) -> list[str]:
    return [frequency_group(n) for n in counts]



def lookalike_pairs(num_classes: int) -> list[tuple[int, int]]:
    """Rank pairs (a, b) of the same shape and pattern whose colours are neighbours in
    COLOURS (close in colour space), a's colour first in COLOURS."""
    attrs = [class_attributes(r, num_classes) for r in range(num_classes)]
    index = {name: i for i, (name, _) in enumerate(COLOURS)}
    where = {(s, index[c], p): r for r, (s, c, p) in enumerate(attrs)}
    return [(r, where[(s, index[c] + 1, p)]) for r, (s, c, p) in enumerate(attrs)
            if (s, index[c] + 1, p) in where]


def test_group_proportions_are_lvis_v05_train_groups():
    cats = json.loads(FIXTURE.read_text())["categories"]
    assert Counter(c["frequency"] for c in cats) == LVIS_V05_GROUPS
    # the fixture's image_count is counted on its 100 val images (0..5), not on train:
    # only ``frequency`` carries LVIS's train distribution, so that is what is matched
    assert max(c["image_count"] for c in cats) <= 10


def test_counts_are_quantile_matched_to_lvis():
    counts = train_image_counts(DEFAULT)
    assert group_sizes(300) == {"f": 77, "c": 112, "r": 111}
    assert Counter(_groups(counts)) == {"f": 77, "c": 112, "r": 111}
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    # group ends sit on LVIS's thresholds; the head is max_images_per_class
    assert (counts[0], counts[76], counts[77], counts[188], counts[189], counts[299]) == \
        (200, 101, 100, 11, 10, 1)
    # hand check: the median class (rank 150) is the 74th of 112 common ones:
    # 100 * (11 / 100) ** (73 / 111) = 23.4
    assert counts[150] == 23 == round(100 * (11 / 100) ** (73 / 111))
    # at any quantile q, the class's group is that of LVIS v0.5's category at q
    lvis = sorted((c["frequency"] for c in json.loads(FIXTURE.read_text())["categories"]),
                  key="fcr".index)
    for q in (0.05, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9, 0.99):
        assert _groups(counts)[int(q * 300)] == lvis[int(q * 1230)], q
    # sizes keep LVIS's proportions (454 r / 461 c / 315 f of 1230) at other class counts
    for n in (10, 60, 137, 240):
        sizes = group_sizes(n)
        assert sum(sizes.values()) == n
        for g, k in sizes.items():
            assert abs(k - n * LVIS_V05_GROUPS[g] / 1230) <= 1, (n, g)


def test_spec_limits():
    with pytest.raises(ValueError, match="max_images_per_class"):
        train_image_counts(SyntheticLvisSpec(max_images_per_class=100))
    with pytest.raises(ValueError, match="num_classes"):
        train_image_counts(SyntheticLvisSpec(num_classes=301))


def test_classes_are_unique_shape_colour_pattern():
    for n in (10, 60, 137, 300):
        attrs = [class_attributes(r, n) for r in range(n)]
        assert len(set(attrs)) == n
    attrs = [class_attributes(r, 300) for r in range(300)]
    assert {a[0] for a in attrs} == set(SHAPES) and {a[2] for a in attrs} == set(PATTERNS)


def test_patterns_render_differently():
    masks = []
    for pattern in PATTERNS:
        img = Image.new("RGB", (32, 32), (0, 0, 0))
        _paint(img, "square", pattern, (4.0, 4.0, 24.0, 24.0), (255, 255, 255))
        masks.append(np.asarray(img)[..., 0] > 0)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() >= 20, (PATTERNS[i], PATTERNS[j])


def test_lookalikes_cross_groups_in_both_directions():
    for n in (60, 300):
        groups = _groups(train_image_counts(SyntheticLvisSpec(num_classes=n)))
        attrs = [class_attributes(r, n) for r in range(n)]
        pairs = lookalike_pairs(n)
        colour = {name: i for i, (name, _) in enumerate(COLOURS)}
        for a, b in pairs:  # same shape and pattern, neighbouring (close) colours
            assert attrs[a][0] == attrs[b][0] and attrs[a][2] == attrs[b][2]
            assert colour[attrs[b][1]] == colour[attrs[a][1]] + 1
        kinds = Counter((groups[a], groups[b]) for a, b in pairs)
        # rare next to frequent and frequent next to rare, whichever colour comes first
        for kind in (("r", "f"), ("f", "r"), ("r", "c"), ("c", "r"), ("c", "f"), ("f", "c")):
            assert kinds[kind] >= 3, (n, kind, kinds)
        # every rare class has a look-alike in a more frequent group
        near = {r: set() for r in range(n)}
        for a, b in pairs:
            near[a].add(groups[b])
            near[b].add(groups[a])
        rare = [r for r in range(n) if groups[r] == "r"]
        assert all(near[r] - {"r"} for r in rare)
        assert sum("f" in near[r] for r in rare) >= len(rare) // 4


def test_generated_set_matches_the_design(small_set):
    train = json.loads((small_set / "train.json").read_text())
    val = json.loads((small_set / "val.json").read_text())
    cats = train["categories"]
    assert cats == val["categories"] and len(cats) == 60
    images: dict[int, set] = {}
    for a in train["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    instances = Counter(a["category_id"] for a in train["annotations"])
    # train image counts are exactly the designed ones, so groups are as documented
    assert [c["image_count"] for c in cats] == train_image_counts(SMALL)
    assert Counter(c["frequency"] for c in cats) == group_sizes(60) == \
        {"f": 15, "c": 23, "r": 22}
    for c in cats:
        assert c["image_count"] == len(images[c["id"]])
        assert c["instance_count"] == instances[c["id"]]
        assert c["frequency"] == frequency_group(c["image_count"])
        assert c["name"] == f"{c['colour']}_{c['pattern']}_{c['shape']}"
    # several instances per image: instance counts differ from image counts for many
    differ = sum(c["instance_count"] != c["image_count"] for c in cats)
    assert differ >= len(cats) // 3
    assert max(Counter((a["image_id"], a["category_id"])
                       for a in train["annotations"]).values()) <= SMALL.max_instances_per_image
    # val: exactly val_instances_per_class of every class, exhaustively labelled
    assert set(Counter(a["category_id"] for a in val["annotations"]).values()) == {3}
    for split in (train, val):
        present: dict[int, set] = {}
        for a in split["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        for im in split["images"]:
            assert set(im["neg_category_ids"]) == set(range(1, 61)) - present.get(im["id"], set())
            assert im["not_exhaustive_category_ids"] == []
    with Image.open(small_set / train["images"][0]["file_name"]) as img:
        assert img.size == (128, 128)


def test_generation_is_deterministic_and_cached_apart(small_set, tmp_path):
    again = generate(SMALL, tmp_path / "again")
    for name in ("train.json", "val.json", "train/000007.png"):
        assert (again / name).read_bytes() == (small_set / name).read_bytes(), name
    other = generate(SyntheticLvisSpec(seed=2, num_classes=60, max_images_per_class=110,
                                       val_instances_per_class=3), tmp_path / "other")
    assert (other / "train.json").read_bytes() != (small_set / "train.json").read_bytes()
    assert SMALL.key() != SyntheticLvisSpec(seed=2).key()
    folder = ensure_generated(SMALL, tmp_path / "root")
    assert folder.name == f"synthetic_lvis-{SMALL.key()}"
    assert not any(p.name.endswith(".partial") for p in folder.parent.iterdir())


def test_synthetic_output_is_unchanged(tmp_path):
    """The embedded benchmark's cache key and files are pinned (shared helpers moved)."""
    assert SyntheticSpec().key() == "b66dfa00a6"
    folder = ensure_synthetic(SyntheticSpec(), tmp_path)
    digest = {n: hashlib.sha1((folder / n).read_bytes()).hexdigest()
              for n in ("train.json", "val.json")}
    assert digest == {"train.json": "1e15e59d30f79f3fbbd2cb1c18ab77bbe0c739f8",
                      "val.json": "73053f644a4b6b7c50707c904c06322b89a8d9ba"}


def test_config_rules_and_self_repair(tmp_path):
    from acsl_cli.config import load_settings
    from acsl_cli.errors import ConfigError
    from acsl_cli.pipeline.components import load_data

    load_settings(["dataset=synthetic_lvis"])  # every rule checked on the way
    for bad in ("dataset.max_images_per_class=100", "dataset.num_classes=301",
                "dataset.classes_per_image=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_settings(["dataset=synthetic_lvis", bad])
    cfg = load_settings(["dataset=synthetic_lvis", "dataset.num_classes=12",
                       "dataset.max_images_per_class=101", "dataset.val_instances_per_class=1",
                       "progress=false", f"output_root={tmp_path}"])
    data = load_data(cfg)
    assert data.groups_note == "groups from train: 4 r / 5 c / 3 f"
    victim = next((tmp_path / "cache" / "data").glob("synthetic_lvis-*/train/*.png"))
    victim.unlink()
    assert load_data(cfg).groups_note == data.groups_note  # a damaged cache is regenerated
    assert victim.is_file()


def test_smoke_train_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "acsl_cli", "train", "dataset=synthetic_lvis", "schedule=smoke",
         "progress=false", f"output_root={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = next((tmp_path / "out" / "runs").glob("*/train.log")).read_text()
    assert "groups from train: 111 r / 112 c / 77 f" in log

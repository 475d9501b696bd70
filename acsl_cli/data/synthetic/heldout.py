"""Held-out images of a generated benchmark: drawn like train, seen by no stage.

Calibration's gamma (``models.calibration``) must not be picked on val. A generated set
can draw more images from its train distribution without touching train, val or any
cache key: the same classes, drawing and packing, a class at ``fraction`` of its train
image count (at least one image, so that every class takes part in the pick), and a
random stream of its own (``[seed, HELDOUT_STREAM]``), independent of the one train and
val were drawn from. Its categories are train's (r/c/f groups from train). The folder is
a sibling of the set's, written atomically like the set itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.data.synthetic import lvis_like, shapes
from acsl_cli.data.synthetic.generation import partial_folder
from acsl_cli.files import writing

HELDOUT_STREAM = 24  # the random stream's second word: no other generator uses [seed, 24]
FIRST_IMAGE_ID = 500_000  # image ids of their own (train from 1, val from 100_000)


def heldout_counts(train_counts: list[int], fraction: float) -> list[int]:
    """Held-out images per class rank: ``fraction`` of its train images, at least one."""
    return [max(1, round(fraction * n)) for n in train_counts]


def heldout_folder(set_folder: Path, fraction: float) -> Path:
    return set_folder.parent / f"{set_folder.name}-heldout-{fraction:g}"


def ensure_heldout(kind: str, spec: Any, set_folder: Path, fraction: float,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """``heldout.json`` (and its PNGs) for the generated set in ``set_folder``, generated
    if missing; returns its path."""
    out = heldout_folder(Path(set_folder), fraction)
    ann = out / "heldout.json"
    if not ann.is_file():
        _generate(kind, spec, Path(set_folder), out, fraction, progress)
    return ann


def _generate(kind: str, spec: Any, set_folder: Path, out: Path, fraction: float,
              progress: Callable[[int, int], None] | None) -> None:
    n = spec.num_classes
    rng = np.random.default_rng([spec.seed, HELDOUT_STREAM])
    if kind == "synthetic_lvis":
        counts = lvis_like.train_image_counts(spec)
        attrs: list = [lvis_like.class_attributes(r, n) for r in range(n)]
        # the set's per-class instance caps: its generator's first draw, repeated
        caps = np.random.default_rng(spec.seed).integers(1, spec.max_instances_per_image + 1,
                                                         size=n)
        slots = [r for r, k in enumerate(heldout_counts(counts, fraction)) for _ in range(k)]
        images = lvis_like._with_instances(shapes.pack(slots, spec.classes_per_image, rng),
                                           caps, rng)
        render = lvis_like._render
    elif kind == "synthetic":
        counts = shapes.train_image_counts(spec)
        attrs = [shapes.class_attributes(r) for r in range(n)]
        slots = [r for r, k in enumerate(heldout_counts(counts, fraction)) for _ in range(k)]
        images = shapes.pack(slots, spec.objects_per_image, rng)
        render = shapes._render
    else:  # pragma: no cover - config_rules allows held-out images for these kinds only
        raise ValueError(f"no held-out images for dataset kind {kind!r}")
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(images))

    train = json.loads((set_folder / "train.json").read_text())
    with partial_folder(out) as tmp:
        imgs, anns = shapes.write_split("heldout", images, spec, rng, tmp, attrs,
                                        FIRST_IMAGE_ID, tick, render)
        data = {"info": {**train.get("info", {}), "split": "heldout", "fraction": fraction},
                "categories": train["categories"], "images": imgs, "annotations": anns}
        with writing(tmp / "heldout.json"):
            (tmp / "heldout.json").write_text(json.dumps(data))
        with writing(out):
            tmp.replace(out)

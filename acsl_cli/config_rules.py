"""Types and ranges of every config value, checked before any work starts.

A rule per key path: ints are ints (not bools, not floats), floats are finite numbers,
counts are positive. Each failure is one ``ConfigError`` line naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from acsl_cli.errors import ConfigError

Rule = Callable[[str, Any], None]


def _fail(key: str, value: Any, what: str) -> None:
    raise ConfigError(f"{key}={value!r}: must be {what}")


def integer(lo: int | None = None, hi: int | None = None, null: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        rng = f" >= {lo}" if lo is not None and hi is None else (
            f" in [{lo}, {hi}]" if lo is not None else "")
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(key, v, f"an integer{rng}" + (" or null" if null else ""))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            _fail(key, v, f"an integer{rng}")
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        lo_s = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        hi_s = f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""
        what = "a finite number" + (f" {lo_s}" if lo_s else "") + (
            f"{' and' if lo_s else ''} {hi_s}" if hi_s else "")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(key, v, what)
        if lo is not None and (v <= lo if lo_open else v < lo):
            _fail(key, v, what)
        if hi is not None and (v >= hi if hi_open else v > hi):
            _fail(key, v, what)
    return check


def boolean(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        _fail(key, v, "true or false")


def text(null: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        if v is None and null:
            return
        if not isinstance(v, str) or not v or "\0" in v:
            _fail(key, v, "a non-empty string" + (" or null" if null else ""))
    return check


def choice(*options: str) -> Rule:
    def check(key: str, v: Any) -> None:
        if v not in options:
            _fail(key, v, "one of " + ", ".join(options))
    return check


def list_of(rule: Rule, nonempty: bool = False) -> Rule:
    def check(key: str, v: Any) -> None:
        if not isinstance(v, list) or (nonempty and not v):
            _fail(key, v, "a " + ("non-empty " if nonempty else "") + "list")
        for i, x in enumerate(v):
            rule(f"{key}[{i}]", x)
    return check


TOP = {
    "xi": number(0, 1, lo_open=True, hi_open=True),
    "seed": integer(0),
    "device": choice("auto", "cpu", "cuda"),
    "output_root": text(),
    "run_name": text(null=True),
    "out": text(null=True),
    "ckpt": text(null=True),
    "dets": text(null=True),
    "ann": text(null=True),
    "train_ann": text(null=True),
    "progress": boolean,
    "amp": choice("off", "bf16", "fp16"),
    "init": text(null=True),
}
TEST = {"scales": list_of(integer(1), nonempty=True), "flip": boolean,
        "max_detections": integer(1), "expand_hierarchy": boolean,
        "unknown_images": choice("ignore", "error")}
STAGE = {
    "epochs": integer(0),
    "lr": number(0, lo_open=True),
    "momentum": number(0, 1, hi_open=True),
    "weight_decay": number(0),
    "warmup_iters": integer(0),
    "warmup_ratio": number(0, 1, lo_open=True),
    "steps": list_of(number(0, 1, lo_open=True, hi_open=True)),
    "grad_clip": number(0),
    "rois_per_image": integer(1, null=True),  # stage 2 only
}
SCHEDULE = {
    "batch_size": integer(1),
    "workers": integer(0),
    "flip": number(0, 1),
    "max_iters": integer(1, null=True),
    "eval_max_images": integer(1, null=True),
}
SAMPLER = {"name": choice("random", "rfs", "class_aware"), "t": number(0, lo_open=True)}
DATASET = {"min_size": integer(1), "max_size": integer(1),
           "kind": choice("synthetic", "synthetic_lvis", "lvis", "openimages",
                          "openimages_synthetic")}
OPENIMAGES = {"expand_labels": boolean, "group_of_weight": number(0, 1), "cache_images": boolean}
OPENIMAGES_SYNTHETIC = {
    "seed": integer(0),
    "num_classes": integer(6, 60),  # leaf classes; every shape keeps one
    "image_size": integer(32, 1024),
    "max_images_per_class": integer(1, 100_000),
    "objects_per_image": integer(1, 5),
    "val_instances_per_class": integer(1, 10_000),
    "min_object_size": integer(4),
    "max_object_size": integer(4),
    "colour_jitter": integer(0, 255),
    "distractors": integer(0, 20),
    "group_of_fraction": number(0, 1),
    "min_cluster_objects": integer(5, 9),  # a group-of box covers >= 5 objects
    "max_cluster_objects": integer(5, 9),
    "cluster_object_size": integer(4),
    "negatives_per_image": integer(0),
    "parent_negative_fraction": number(0, 1),
    "unlabelled_fraction": number(0, 1),
}
SYNTHETIC = {
    "seed": integer(0),
    "num_classes": integer(2, 60),
    "image_size": integer(32, 1024),
    "max_images_per_class": integer(1, 100_000),
    "objects_per_image": integer(1, 20),
    "val_instances_per_class": integer(1, 10_000),
    "min_object_size": integer(4),
    "max_object_size": integer(4),
    "colour_jitter": integer(0, 255),
    "distractors": integer(0, 20),
}
SYNTHETIC_LVIS = {
    "seed": integer(0),
    "num_classes": integer(10, 300),  # 6 shapes x 10 colours x 5 patterns
    "image_size": integer(32, 1024),
    "max_images_per_class": integer(101, 100_000),  # the frequent group needs > 100 images
    "classes_per_image": integer(1, 20),
    "max_instances_per_image": integer(1, 10),
    "val_instances_per_class": integer(1, 10_000),
    "min_object_size": integer(4),
    "max_object_size": integer(4),
    "colour_jitter": integer(0, 255),
    "distractors": integer(0, 20),
}
BACKBONE = {
    "anchor_sizes": list_of(integer(1), nonempty=True),
    "representation_size": integer(1),
    "rpn_pre_nms_top_n_train": integer(1),
    "rpn_post_nms_top_n_train": integer(1),
    "rpn_pre_nms_top_n_test": integer(1),
    "rpn_post_nms_top_n_test": integer(1),
    "roi_batch_size_per_image": integer(1),
    "pre_nms_topk": integer(1),
    "trainable_layers": integer(0, 5),
    "fpn_channels": integer(1),
}


def _apply(node: Any, prefix: str, rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        if key in node:
            value = node[key]
            if isinstance(value, (ListConfig, DictConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            rule(f"{prefix}{key}", value)


def validate(cfg: DictConfig) -> None:
    """Check every value that steers a run; the first problem is a one-line ConfigError."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing value for {', '.join(sorted(missing))}")
    _apply(cfg, "", TOP)
    test = cfg.get("test")
    if test is not None:
        _apply({k: v for k, v in test.items() if v is not None}, "test.", TEST)
    _apply(cfg.schedule, "schedule.", SCHEDULE)
    for stage in ("stage1", "stage2"):
        _apply(cfg.schedule[stage], f"schedule.{stage}.", STAGE)
    # stage 1 may have 0 epochs (the detector, e.g. from init=, is used as it is); stage 2 not
    integer(1)("schedule.stage2.epochs", cfg.schedule.stage2.epochs)
    _apply(cfg.get("sampler") or {}, "sampler.", SAMPLER)
    _apply(cfg.dataset, "dataset.", DATASET)
    kind = cfg.dataset.get("kind")
    if kind in ("openimages", "openimages_synthetic"):
        _apply(cfg.dataset, "dataset.", OPENIMAGES)
    if kind == "openimages_synthetic":
        d = cfg.dataset
        _apply(d, "dataset.", OPENIMAGES_SYNTHETIC)
        if not d.min_cluster_objects <= d.max_cluster_objects:
            raise ConfigError(f"dataset.min_cluster_objects={d.min_cluster_objects}: need <= "
                              f"max_cluster_objects ({d.max_cluster_objects})")
        if not d.cluster_object_size < d.min_object_size <= d.max_object_size <= d.image_size:
            raise ConfigError(
                f"dataset.cluster_object_size={d.cluster_object_size}, min_object_size="
                f"{d.min_object_size}, max_object_size={d.max_object_size}: need cluster < "
                f"min <= max <= image_size ({d.image_size})")
    if kind in ("synthetic", "synthetic_lvis"):
        d = cfg.dataset
        _apply(d, "dataset.", SYNTHETIC if kind == "synthetic" else SYNTHETIC_LVIS)
        if not d.min_object_size <= d.max_object_size <= d.image_size:
            raise ConfigError(
                f"dataset.min_object_size={d.min_object_size}, max_object_size="
                f"{d.max_object_size}: need min <= max <= image_size ({d.image_size})")
    _apply(cfg.backbone, "backbone.", BACKBONE)

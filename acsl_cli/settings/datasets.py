"""Rules for each dataset kind's own keys (the ``dataset`` group's yaml files hold them).

The common keys (``name``, ``kind``, ``min_size``, ``max_size``) are fields of
``DatasetSettings``; a kind's other keys are checked here, and rules that tie two keys
together live in ``config_rules``.
"""

from __future__ import annotations

from acsl_cli.settings.rules import Rule, boolean, integer, number

SEED = integer(0, 2**31 - 1)

GENERATED_COMMON: dict[str, Rule] = {
    "seed": SEED,
    "image_size": integer(32, 1024),
    "max_images_per_class": integer(1, 100_000),
    "val_instances_per_class": integer(1, 10_000),
    "min_object_size": integer(4, 1024),
    "max_object_size": integer(4, 1024),
    "colour_jitter": integer(0, 255),
    "distractors": integer(0, 20),
}
SYNTHETIC = {**GENERATED_COMMON, "num_classes": integer(2, 60),
             "objects_per_image": integer(1, 20)}
SYNTHETIC_LVIS = {
    **GENERATED_COMMON,
    "num_classes": integer(10, 300),  # 6 shapes x 10 colours x 5 patterns
    "max_images_per_class": integer(101, 100_000),  # the frequent group needs > 100 images
    "classes_per_image": integer(1, 20),
    "max_instances_per_image": integer(1, 10),
}
OPENIMAGES = {"expand_labels": boolean, "group_of_weight": number(0, 1), "cache_images": boolean}
OPENIMAGES_SYNTHETIC = {
    **OPENIMAGES,
    **GENERATED_COMMON,
    "num_classes": integer(6, 60),  # leaf classes; every shape keeps one
    "objects_per_image": integer(1, 5),
    "group_of_fraction": number(0, 1),
    "min_cluster_objects": integer(5, 9),  # a group-of box covers >= 5 objects
    "max_cluster_objects": integer(5, 9),
    "cluster_object_size": integer(4, 1024),
    "negatives_per_image": integer(0, 10_000),
    "parent_negative_fraction": number(0, 1),
    "unlabelled_fraction": number(0, 1),
}
LVIS = {"cache_images": boolean}
KIND_RULES: dict[str, dict[str, Rule]] = {
    "synthetic": SYNTHETIC,
    "synthetic_lvis": SYNTHETIC_LVIS,
    "lvis": LVIS,
    "openimages": OPENIMAGES,
    "openimages_synthetic": OPENIMAGES_SYNTHETIC,
}

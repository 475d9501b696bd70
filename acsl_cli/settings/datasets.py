"""Dataset kinds: one typed section per ``dataset.kind``, registered once in ``KINDS``.

A kind's class holds every key its yaml files may set (``conf/dataset/*.yaml``): default,
rule and the caches it enters, declared with ``setting()`` like any other option. A key of
another kind is one line of error. A generated set's fields are tagged ``DATA``: they
determine the generated files, and the data cache key (``data_key``) is computed from them,
so the generators' specs (``data/synthetic``) are these classes with no field of their own.
Every dataset key enters the stage-1 key (the section's tag in ``Settings``).

A dataset yaml's ``name`` is its file name (``conf/dataset/NAME.yaml``): a saved run finds
its dataset's yaml by it (``config.load_config`` checks it), and ``kind`` names the format
(``kind: lvis`` for any COCO/LVIS-format json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from acsl_cli.errors import ConfigError
from acsl_cli.settings.declare import DATA, STAGE1, declared, setting
from acsl_cli.settings.rules import Rule, anything, boolean, choice, integer, number, text


def _kind_check(key: str, value: Any) -> None:
    choice(*KINDS)(key, value)


#: ``dataset.kind``: one of ``KINDS`` (read when checked, so the registry below is the list)
KIND = Rule(_kind_check, lambda v: next(k for k in KINDS if k != v))
PATH = text()  # a path the yaml must give (its default None is refused)
OPTIONAL_PATH = text(null=True)
#: the generators' shared rules (each kind declares its own default)
SEED = integer(0, 2**31 - 1)
IMAGE_SIZE = integer(32, 1024)
IMAGES_PER_CLASS = integer(1, 100_000)
VAL_INSTANCES = integer(1, 10_000)
OBJECT_SIZE = integer(4, 1024)
COLOUR_JITTER = integer(0, 255)
DISTRACTORS = integer(0, 20)


def generator(default: Any, rule: Rule, changed_only: tuple[str, ...] = ()) -> Any:
    """A generated set's field: it shapes the generated files, so it enters the data key
    (and stage 1's). ``changed_only=(DATA,)`` for a field added after a kind's data key
    was fixed: existing caches keep their keys while it keeps its default."""
    return setting(default, rule, caches=(DATA, STAGE1), changed_only=changed_only)


@dataclass(frozen=True)
class DatasetSettings:
    """The keys every dataset has; a kind's class adds its own. ``loss_defaults`` are
    dataset-dependent loss parameters (``bags_bins``, ``eql_lambda``) that losses read by
    interpolation, so they enter the stage-2 key through the heads, and no key here."""

    #: the data key's format held the kind for these kinds (not for ``synthetic``)
    key_names_kind: ClassVar[bool] = True

    name: str | None = setting(None, text())
    kind: str = setting("synthetic", KIND)
    min_size: int = setting(128, integer(1, 100_000))
    max_size: int = setting(128, integer(1, 100_000))
    loss_defaults: Mapping[str, Any] | None = setting(None, anything(), caches=())

    def check(self) -> None:
        """Every field's rule, then the rules across fields: for a section built in code
        (a generator's spec) rather than read from a config."""
        for d in declared(type(self)):
            d.rule(f"dataset.{d.path[0]}", getattr(self, d.path[0]))
        self.check_together()

    def check_together(self) -> None:
        """Rules that tie several of this kind's fields (one ``ConfigError`` line)."""

    def data_fields(self) -> dict[str, Any]:
        """The ``DATA``-tagged fields: what the generated files are made from."""
        out = {}
        for d in declared(type(self)):
            value = getattr(self, d.path[0])
            if DATA in d.caches and (DATA not in d.changed_only or value != d.default):
                out[d.path[0]] = value
        return out

    def data_key(self, version: int) -> str:
        """The data cache key: the ``DATA`` fields and the generator's ``version`` (and
        the kind, where the key's format held it)."""
        node = {**self.data_fields(), "version": version}
        if self.key_names_kind:
            node["kind"] = self.kind
        blob = json.dumps(node, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class LvisDataset(DatasetSettings):
    """LVIS v0.5 / v1, or any COCO-format json (missing LVIS fields are filled in)."""

    kind: str = setting("lvis", KIND)
    min_size: int = setting(800, integer(1, 100_000))
    max_size: int = setting(1333, integer(1, 100_000))
    root: str | None = setting(None, OPTIONAL_PATH)
    train_ann: str | None = setting(None, PATH)
    val_ann: str | None = setting(None, PATH)
    train_images: str | None = setting(None, PATH)
    val_images: str | None = setting(None, PATH)
    cache_images: bool = setting(False, boolean)


@dataclass(frozen=True)
class OpenImagesScored(DatasetSettings):
    """What the Open Images challenge metric and hierarchy-aware training read."""

    #: sigmoid losses also train every ancestor of a box's class (multi-label)
    expand_labels: bool = setting(True, boolean)
    #: weight of a group-of box in the metric (the challenge uses 1)
    group_of_weight: float = setting(1.0, number(0, 1))


@dataclass(frozen=True)
class OpenImagesDataset(OpenImagesScored):
    """An Open Images release (V5/V6 boxable) from its CSVs and class hierarchy."""

    name: str | None = setting("openimages", text())
    kind: str = setting("openimages", KIND)
    min_size: int = setting(800, integer(1, 100_000))
    max_size: int = setting(1333, integer(1, 100_000))
    root: str | None = setting(None, OPTIONAL_PATH)
    classes_csv: str | None = setting(None, PATH)
    hierarchy_json: str | None = setting(None, PATH)
    train_boxes: str | None = setting(None, PATH)
    train_labels: str | None = setting(None, PATH)
    train_images: str | None = setting(None, PATH)
    val_boxes: str | None = setting(None, PATH)
    val_labels: str | None = setting(None, PATH)
    val_images: str | None = setting(None, PATH)
    cache_images: bool = setting(False, boolean)


@dataclass(frozen=True)
class GeneratedDataset(DatasetSettings):
    """A set generated on first use and cached under its data key (no field of its own:
    each generated kind declares its defaults)."""

    @classmethod
    def of(cls, section: DatasetSettings) -> Any:
        """``section``'s values in this class (a generator's spec of its kind's section)."""
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})

    def check_together(self) -> None:
        lo, hi, size = self.min_object_size, self.max_object_size, self.image_size
        if not lo <= hi <= size:
            raise ConfigError(f"dataset.min_object_size={lo}, max_object_size={hi}: need "
                              f"min <= max <= image_size ({size})")


@dataclass(frozen=True)
class SyntheticDataset(GeneratedDataset):
    """The embedded long-tail benchmark (``data/synthetic/shapes.py``)."""

    key_names_kind: ClassVar[bool] = False  # its key's format: the spec and the version

    name: str | None = setting("synthetic", text())
    kind: str = setting("synthetic", KIND)
    loss_defaults: Mapping[str, Any] | None = setting(
        {"eql_lambda": 0.1, "bags_bins": [10, 100]}, anything(), caches=())
    seed: int = generator(0, SEED)
    num_classes: int = generator(60, integer(2, 60))  # 6 shapes x 10 colours
    image_size: int = generator(128, IMAGE_SIZE)
    max_images_per_class: int = generator(400, IMAGES_PER_CLASS)
    objects_per_image: int = generator(4, integer(1, 20))
    val_instances_per_class: int = generator(10, VAL_INSTANCES)
    min_object_size: int = generator(14, OBJECT_SIZE)
    max_object_size: int = generator(40, OBJECT_SIZE)
    colour_jitter: int = generator(18, COLOUR_JITTER)
    distractors: int = generator(2, DISTRACTORS)


@dataclass(frozen=True)
class SyntheticLvisDataset(GeneratedDataset):
    """The LVIS-shaped embedded benchmark (``data/synthetic/lvis_like.py``)."""

    name: str | None = setting("synthetic_lvis", text())
    kind: str = setting("synthetic_lvis", KIND)
    loss_defaults: Mapping[str, Any] | None = setting(
        {"eql_lambda": 0.0374, "bags_bins": [10, 100]}, anything(), caches=())
    seed: int = generator(0, SEED)
    num_classes: int = generator(300, integer(10, 300))  # 6 shapes x 10 colours x 5 patterns
    image_size: int = generator(128, IMAGE_SIZE)
    #: the frequent group needs > 100 images
    max_images_per_class: int = generator(200, integer(101, 100_000))
    classes_per_image: int = generator(6, integer(1, 20))
    max_instances_per_image: int = generator(3, integer(1, 10))
    val_instances_per_class: int = generator(5, VAL_INSTANCES)
    min_object_size: int = generator(12, OBJECT_SIZE)
    max_object_size: int = generator(28, OBJECT_SIZE)
    colour_jitter: int = generator(14, COLOUR_JITTER)
    distractors: int = generator(2, DISTRACTORS)


@dataclass(frozen=True)
class OpenImagesSyntheticDataset(SyntheticDataset, OpenImagesScored):
    """The embedded benchmark written as an Open Images release
    (``data/synthetic/openimages_like.py``): ``synthetic``'s fields and defaults
    (``num_classes`` counts leaf classes) plus the Open Images ones."""

    key_names_kind: ClassVar[bool] = True

    name: str | None = setting("openimages_synthetic", text())
    kind: str = setting("openimages_synthetic", KIND)
    num_classes: int = generator(60, integer(6, 60))  # leaf classes; every shape keeps one
    objects_per_image: int = generator(4, integer(1, 5))
    group_of_fraction: float = generator(0.1, number(0, 1))
    #: a group-of box covers >= 5 objects
    min_cluster_objects: int = generator(5, integer(5, 9))
    max_cluster_objects: int = generator(8, integer(5, 9))
    cluster_object_size: int = generator(8, OBJECT_SIZE)
    negatives_per_image: int = generator(3, integer(0, 10_000))
    parent_negative_fraction: float = generator(0.5, number(0, 1))
    unlabelled_fraction: float = generator(0.15, number(0, 1))
    cache_images: bool = setting(True, boolean)

    def check_together(self) -> None:
        lo, hi, size = self.min_object_size, self.max_object_size, self.image_size
        if not self.min_cluster_objects <= self.max_cluster_objects:
            raise ConfigError(
                f"dataset.min_cluster_objects={self.min_cluster_objects}: need <= "
                f"max_cluster_objects ({self.max_cluster_objects})")
        if not self.cluster_object_size < lo <= hi <= size:
            raise ConfigError(
                f"dataset.cluster_object_size={self.cluster_object_size}, min_object_size="
                f"{lo}, max_object_size={hi}: need cluster < min <= max <= image_size "
                f"({size})")


#: every dataset kind, by its ``kind``: the one list (the ``kind`` rule reads it)
KINDS: dict[str, type[DatasetSettings]] = {
    cls.kind: cls for cls in (SyntheticDataset, SyntheticLvisDataset, LvisDataset,
                              OpenImagesDataset, OpenImagesSyntheticDataset)
}
DATASET_KINDS = tuple(KINDS)
#: the kinds scored by the Open Images challenge metric (the others by LVIS rules)
OPENIMAGES_KINDS = tuple(k for k, cls in KINDS.items() if issubclass(cls, OpenImagesScored))


def kind_keys(kind: str) -> tuple[str, ...]:
    """The keys a dataset of ``kind`` may set."""
    return tuple(f.name for f in dataclasses.fields(KINDS[kind]))


def unknown_key(kind: str, data: Mapping[str, Any]) -> str | None:
    """One line for the first key of ``data`` that ``kind`` does not have (the kinds
    that do have it named), or None."""
    mine = kind_keys(kind)
    extra = sorted(str(k) for k in data if k not in mine)
    if not extra:
        return None
    owners = [k for k in KINDS if extra[0] in kind_keys(k)]
    where = (f"a key of kind {', '.join(owners)}" if owners else "a key of no kind")
    return (f"dataset.{extra[0]}: not a key of dataset kind {kind} (dataset "
            f"{data.get('name')}); {where}")

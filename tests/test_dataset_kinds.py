"""Dataset kinds as typed sections: each yaml documents its kind's declared defaults, a
key of another kind is one line, and the data cache key follows the DATA-tagged fields
while existing caches keep their folders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from acsl_cli.config import load_settings
from acsl_cli.data.datasets import synthetic_lvis_spec, synthetic_spec
from acsl_cli.data.groups import COMMON_MAX
from acsl_cli.data.synthetic import lvis_like, openimages_like, shapes
from acsl_cli.errors import ConfigError
from acsl_cli.settings import DATA, STAGE1, declared
from acsl_cli.settings.datasets import KINDS, SyntheticDataset, generator
from acsl_cli.settings.declare import leaf_default
from acsl_cli.settings.rules import number
from tests.cli_refusals import assert_train_refuses

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "dataset"

#: The data cache folders old caches were written under, for each generated kind's
#: default settings: computed with the code before the kinds were typed sections
#: (``SyntheticSpec().key()`` etc. at commit f2f5cd2). A regression pin: a cache written
#: then must still be found.
OLD_DEFAULT_FOLDERS = {
    "synthetic": "synthetic-b66dfa00a6",
    "synthetic_lvis": "synthetic_lvis-bed94c3233",
    "openimages_synthetic": "openimages_synthetic-ebf8422d1e",
}
#: The old specs' fields (the dataclasses' fields at that commit) and whether their key's
#: format held the kind: the frozen old key, the oracle for non-default settings.
_GEN = ["seed", "num_classes", "image_size", "max_images_per_class",
        "val_instances_per_class", "min_object_size", "max_object_size", "colour_jitter",
        "distractors"]
OLD_SPEC_FIELDS = {
    "synthetic": (_GEN + ["objects_per_image"], False),
    "synthetic_lvis": (_GEN + ["classes_per_image", "max_instances_per_image"], True),
    "openimages_synthetic": (_GEN + ["objects_per_image", "group_of_fraction",
                                     "min_cluster_objects", "max_cluster_objects",
                                     "cluster_object_size", "negatives_per_image",
                                     "parent_negative_fraction", "unlabelled_fraction"], True),
}
SPECS = {"synthetic": shapes.SyntheticSpec, "synthetic_lvis": lvis_like.SyntheticLvisSpec,
         "openimages_synthetic": openimages_like.OpenImagesSyntheticSpec}


def _old_key(kind: str, values: dict) -> str:
    names, with_kind = OLD_SPEC_FIELDS[kind]
    node = {k: values[k] for k in names}
    node["version"] = 1
    if with_kind:
        node["kind"] = kind
    return hashlib.sha1(json.dumps(node, sort_keys=True).encode()).hexdigest()[:10]


def _folder(kind: str, spec) -> str:
    if kind == "openimages_synthetic":  # named by ensure_generated, not by a folder()
        return f"openimages_synthetic-{spec.key()}"
    return spec.folder(Path("root")).name


@pytest.mark.parametrize("kind", sorted(OLD_DEFAULT_FOLDERS))
def test_existing_data_caches_keep_their_folders(kind):
    section = load_settings([f"dataset={kind}"]).dataset
    spec = SPECS[kind].of(section)
    assert _folder(kind, spec) == OLD_DEFAULT_FOLDERS[kind]
    assert _folder(kind, SPECS[kind]()) == OLD_DEFAULT_FOLDERS[kind]  # defaults written once
    # non-default settings too: every DATA field changed, the key is the old format's
    for d in declared(type(section)):
        if DATA in d.caches:
            changed = SPECS[kind].of(dataclasses.replace(
                section, **{d.path[0]: d.rule.example(getattr(section, d.path[0]))}))
            assert changed.key() == _old_key(kind, dataclasses.asdict(changed)), d.path


@pytest.mark.parametrize("kind", sorted(OLD_DEFAULT_FOLDERS))
def test_a_data_field_moves_the_data_key_and_no_other_field_does(kind):
    section = load_settings([f"dataset={kind}"]).dataset
    version = 1
    base = section.data_key(version)
    data, other = set(), set()
    for d in declared(type(section)):
        name = d.path[0]
        value = d.rule.example(getattr(section, name))
        if name == "kind" or value == getattr(section, name):
            continue  # another kind is another section; loss_defaults has no other value
        moved = dataclasses.replace(section, **{name: value}).data_key(version) != base
        assert moved == (DATA in d.caches), (name, value)
        (data if moved else other).add(name)
    assert {"seed", "num_classes", "max_images_per_class"} <= data
    assert {"name", "min_size", "max_size"} <= other
    assert section.data_key(version + 1) != base  # the generator's version enters
    if kind == "openimages_synthetic":
        assert {"expand_labels", "group_of_weight", "cache_images"} <= other


def test_a_data_field_added_later_keeps_old_keys_at_its_default():
    """The docs' example (docs/layout.md): a field added with ``changed_only`` enters the
    data key only when set, so the caches of the old default keep their folder."""

    @dataclass(frozen=True)
    class WithOcclusion(shapes.SyntheticSpec):
        occlusion: float = generator(0.0, number(0, 1), changed_only=(DATA, STAGE1))

    assert WithOcclusion().folder(Path("r")).name == OLD_DEFAULT_FOLDERS["synthetic"]
    assert WithOcclusion(occlusion=0.5).key() != WithOcclusion().key()
    assert "occlusion" not in WithOcclusion().data_fields()


def _yaml_lines(path: Path) -> dict[str, str]:
    """Top-level ``key: value  # comment`` lines of a yaml, by key."""
    return {line.split(":", 1)[0]: line for line in path.read_text().splitlines()
            if line and not line[0].isspace() and not line.startswith("#") and ":" in line}


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_dataset_yaml_documents_its_kinds_declared_defaults(path):
    """A yaml value equals its field's declared default (what a run gets without it), or
    its line says why it differs; fields without a default (paths, loss_defaults) are the
    yaml's to give. Every field with a default is documented there."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert raw["name"] == path.stem  # a saved run finds its yaml by name
    cls = KINDS[raw["kind"]]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(raw) <= set(fields), set(raw) - set(fields)
    lines = _yaml_lines(path)
    for name, f in fields.items():
        default = leaf_default(f)
        if default is None or name in ("name", "kind"):
            continue
        assert name in raw, f"{path.name}: {name} (default {default}) is not documented"
        if raw[name] != default:
            assert "#" in lines[name], f"{path.name}: {name}={raw[name]} differs from the " \
                                       f"default {default} without a comment saying why"


def test_the_default_dataset_is_the_declared_default():
    shipped = load_settings([]).dataset
    assert shipped == SyntheticDataset()  # loss_defaults included
    spec = synthetic_spec(load_settings(["dataset.seed=3"]).dataset)
    assert spec.data_fields() == shapes.SyntheticSpec(seed=3).data_fields()
    assert spec.key() == shapes.SyntheticSpec(seed=3).key() != shapes.SyntheticSpec().key()
    spec = synthetic_lvis_spec(load_settings(["dataset=synthetic_lvis",
                                              "dataset.classes_per_image=4"]).dataset)
    assert spec.classes_per_image == 4 and spec.key() != lvis_like.SyntheticLvisSpec().key()


def test_the_kind_rules_hold_the_generators_limits():
    """Settings cannot import the generators, so their limits are literals there: each
    equals the generator's own constant (the last accepted value, and one more refused)."""
    lvis_like.SyntheticLvisSpec(num_classes=lvis_like.MAX_CLASSES).check()
    with pytest.raises(ConfigError, match="num_classes"):
        lvis_like.SyntheticLvisSpec(num_classes=lvis_like.MAX_CLASSES + 1).check()
    lvis_like.SyntheticLvisSpec(max_images_per_class=COMMON_MAX + 1).check()
    with pytest.raises(ConfigError, match="max_images_per_class"):
        lvis_like.SyntheticLvisSpec(max_images_per_class=COMMON_MAX).check()
    leaves = len(shapes.SHAPES) * len(shapes.COLOURS)
    openimages_like.OpenImagesSyntheticSpec(num_classes=leaves).check()
    with pytest.raises(ConfigError, match="num_classes"):
        openimages_like.OpenImagesSyntheticSpec(num_classes=leaves + 1).check()
    shapes.SyntheticSpec(num_classes=leaves).check()
    with pytest.raises(ConfigError, match="num_classes"):
        shapes.SyntheticSpec(num_classes=leaves + 1).check()
    with pytest.raises(ConfigError, match="objects_per_image"):
        openimages_like.OpenImagesSyntheticSpec(objects_per_image=len(shapes.SHAPES)).check()


def _conf_with(tmp_path: Path, name: str, text: str) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "dataset" / f"{name}.yaml").write_text(text)
    return conf


@pytest.mark.parametrize("args, yaml, expect", [
    (["dataset=synthetic_lvis", "+dataset.objects_per_image=3"], None,
     "dataset.objects_per_image: not a key of dataset kind synthetic_lvis (dataset "
     "synthetic_lvis); a key of kind synthetic, openimages_synthetic"),
    (["dataset=lvis_v0.5", "+dataset.seed=1"], None,
     "dataset.seed: not a key of dataset kind lvis"),
    (["+dataset.colour=red"], None, "dataset.colour: not a key of dataset kind synthetic "
                                    "(dataset synthetic); a key of no kind"),
    (["dataset=mine"], "name: synthetic\nkind: synthetic\n",
     "mine.yaml: name: synthetic must be the file's name (mine)"),
    (["dataset=mine"], "name: mine\nseed: 1\n", "dataset.kind: missing (dataset mine"),
])
def test_a_key_of_another_kind_or_a_misnamed_yaml_is_one_line(args, yaml, expect, tmp_path,
                                                              monkeypatch):
    if yaml is not None:
        monkeypatch.setenv("ACSL_CONF", str(_conf_with(tmp_path, "mine", yaml)))
    assert_train_refuses(args, expect, tmp_path)

"""Typed settings: cache keys follow the declarations, old keys stay, bad input stops in
one line before anything is created, and a moved outputs/ keeps its heads usable."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from acsl_cli import config as config_mod
from acsl_cli.cli import app
from acsl_cli.settings import (
    STAGE1,
    STAGE2,
    LossSettings,
    Settings,
    config_hash,
    declared,
    settings_from,
    stage1_key,
    stage2_key,
)
from acsl_cli.settings.keys import leaves

ROOT = Path(__file__).resolve().parent.parent


def _base(overrides=()) -> dict:
    return OmegaConf.to_container(config_mod.load_config(list(overrides)), resolve=True)


def _changed(source: dict, path: tuple[str, ...], value) -> Settings:
    data = copy.deepcopy(source)
    node = data
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value
    return settings_from(data)


def _key(cache: str, s: Settings) -> str:
    if cache == STAGE1:
        return stage1_key(s, 1)
    return stage2_key(s, [s.loss], "stage1-folder", 1)


@pytest.mark.parametrize("cache", [STAGE1, STAGE2])
@pytest.mark.parametrize("dataset", ["synthetic", "openimages_synthetic"])
def test_exactly_the_fields_tagged_for_a_key_change_it(cache, dataset):
    default_source = _base([f"dataset={dataset}"])
    default_base = settings_from(default_source)
    tagged, seen = set(), set()
    kinds: dict[tuple[str, str], tuple[dict, Settings]] = {}
    for d in leaves(default_base):  # the dataset's leaves are its kind's
        if d.path == ("dataset", "kind"):
            continue  # another kind is another section (its keys differ)
        source, base = default_source, default_base
        section = d.path[0]
        if d.kinds is not None and getattr(base, section).name not in d.kinds:
            # a field of another kind (detector=cascade_rcnn's lists): on that kind
            choice = (section, d.kinds[0])
            if choice not in kinds:
                other = _base([f"dataset={dataset}", f"{section}={d.kinds[0]}"])
                kinds[choice] = other, settings_from(other)
            source, base = kinds[choice]
        value = d.rule.example(_get(base, d.path))
        if value == _get(base, d.path):
            continue  # a rule without another value (loss_defaults: the losses check them)
        seen.add(d.path)
        if d.kinds is not None and d.path[-1] == "name":  # another kind: its group's keys
            changed = settings_from(_base([f"dataset={dataset}", f"{section}={value}"]))
        else:
            changed = _changed(source, d.path, value)
        moved = _key(cache, changed) != _key(cache, base)
        assert moved == (cache in d.caches), (d.path, value)
        if moved:
            tagged.add(d.path)
    dataset_keys = {d.path for d in leaves(default_base) if d.path[0] == "dataset"}
    assert dataset_keys - seen == {("dataset", "loss_defaults"), ("dataset", "kind")}
    if cache == STAGE1:
        for path in [("sampler", "name"), ("amp",), ("init",), ("seed",),
                     ("schedule", "stage1", "lr"), ("backbone", "fpn_channels"),
                     ("detector", "name")]:
            assert path in tagged, path
        assert ("schedule", "stage2", "lr") in seen - tagged
        assert ("test", "max_detections") in seen - tagged
        assert ("test", "cascade_scores") in seen - tagged  # re-scores, never retrains


def _get(s, path):
    for p in path:
        s = getattr(s, p)
    return s


def test_the_heads_are_part_of_the_stage2_key():
    s = config_mod.load_settings([])
    acsl, bce = LossSettings("acsl", {"xi": 0.7}), LossSettings("bce")
    one = stage2_key(s, [acsl], "x", 1)
    assert stage2_key(s, [acsl, bce], "x", 1) != one
    assert stage2_key(s, [LossSettings("acsl", {"xi": 0.5})], "x", 1) != one
    assert stage2_key(s, [acsl], "y", 1) != one  # another stage 1
    assert stage2_key(s, [acsl], "x", 2) != one  # another world size


def _old_stage1_key(cfg) -> str:
    """The stage-1 key as the code before typed settings computed it (a frozen copy, the
    oracle for 'existing cache entries keep their keys')."""
    s = cfg.schedule
    stage1 = OmegaConf.to_container(s.stage1, resolve=True)
    stage1.pop("loss")  # added since, entering only when not softmax CE: old configs lack it
    node = {
        "version": 1,
        "dataset": {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
                    if k != "loss_defaults"},
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "schedule": {"batch_size": s.batch_size, "flip": s.flip, "max_iters": s.max_iters,
                     "stage1": stage1},
        "seed": cfg.seed, "world_size": 1,
    }
    if cfg.sampler.name != "random":
        node["sampler"] = OmegaConf.to_container(cfg.sampler, resolve=True)
    if cfg.amp != "off":
        node["amp"] = cfg.amp
    if cfg.init:
        node["init"] = str(cfg.init)
    return config_hash(node)


def _old_stage2_key(cfg, heads) -> str:
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    schedule.pop("eval_every_epochs")  # added since, tagged for no key: old configs lack it
    schedule.pop("log_every")  # likewise
    schedule["stage1"].pop("loss")  # added since, in the stage-1 key only (stage 1's folder)
    return config_hash({"stage1": "x", "heads": heads, "world_size": 1, "seed": cfg.seed,
                        "schedule": schedule,
                        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
                        "amp": cfg.amp})


@pytest.mark.parametrize("overrides", [
    [], ["schedule=smoke", "seed=3"], ["sampler=rfs"], ["sampler=class_aware"], ["amp=bf16"],
    ["backbone=r50"], ["dataset=synthetic_lvis"], ["dataset=openimages_synthetic"],
    ["dataset=lvis_v0.5"], ["init=/no/such/file.pt"], ["schedule.stage2.rois_per_image=5"],
])
def test_existing_cache_entries_keep_their_keys(overrides):
    cfg = config_mod.load_config(overrides)
    s = config_mod.to_settings(cfg)
    assert stage1_key(s, 1) == _old_stage1_key(cfg)
    assert stage2_key(s, [s.loss], "x", 1) == _old_stage2_key(cfg, [s.loss.as_dict()])


def _bad_conf(tmp_path: Path, line: str) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    text = (conf / "config.yaml").read_text().replace("seed: 0", line, 1)
    (conf / "config.yaml").write_text(text)
    return conf


@pytest.mark.parametrize("args, expect, conf_line", [
    (["train", f"seed={2**70}"], f"seed={2**70}: must be an integer in [0, 2147483647]", None),
    (["sweep", "seed=range(0,0)"], "the list of values is empty", None),
    (["train", "+lsos=bce"], "unknown key lsos", None),
    (["train", "loss=bags", "loss.bins=[100,10]"], "strictly increasing", None),
    (["train", "loss=acsl", "loss.bg_mode=weird"], "bg_mode must be one of", None),
    (["train", "test.cascade_scores=mean"],
     "test.cascade_scores='mean': must be one of mean_logits, mean_probs", None),
    (["train", "loss=bags", "loss.classifier_init=copy"], "classifier_init must be one of",
     None),
    (["train", "loss=seesaw", "loss.classifier=linear,cosine"],
     "loss.classifier='cosine': must be one of linear, normed", None),
    (["train", "sampler=rfs", "sampler.t=1e308"], "sampler.t=1e+308: must be a finite number",
     None),
    (["train", "loss=bce,nope"], "unknown loss 'nope'", None),
    (["train"], "cannot read the config files (ParserError", "seed: [0"),
    (["train"], "could not determine a constructor for the tag",
     'seed: !!python/object/apply:os.system ["touch PWNED"]'),
])
def test_bad_input_is_one_line_and_creates_nothing(args, expect, conf_line, tmp_path,
                                                    monkeypatch):
    if conf_line is not None:
        monkeypatch.setenv("ACSL_CONF", str(_bad_conf(tmp_path, conf_line)))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs"
    res = CliRunner().invoke(app, [*args, f"output_root={root}", "progress=false"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.output
    assert not root.exists() and not (tmp_path / "PWNED").exists()


def test_a_moved_outputs_folder_keeps_its_heads(tmp_path):
    from tests.test_engine import TINY

    first = tmp_path / "first"
    res = CliRunner().invoke(app, ["train", *TINY, f"output_root={first}", "loss=bce",
                                   "run_name=r", "progress=false"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((first / "runs" / "r" / "metrics.json").read_text())["bce"]
    moved = tmp_path / "elsewhere" / "outputs"
    moved.parent.mkdir()
    first.rename(moved)
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", f"ckpt={moved / 'runs/r/heads/bce/checkpoint.pt'}",
                                   f"output_root={moved}", f"out={out}", "progress=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == metrics



def test_schedule_workers_enter_no_key():
    """``schedule.workers`` cannot change a result (``outcome=False``), so no key moves with
    it; the stage-2 key keeps the value its format held (0), so existing entries of the
    default schedule keep their keys (``keys.FIXED``)."""
    base = config_mod.load_settings([])
    four = config_mod.load_settings(["schedule.workers=4"])
    assert stage1_key(four, 1) == stage1_key(base, 1)
    assert stage2_key(four, [four.loss], "x", 1) == stage2_key(base, [base.loss], "x", 1)
    smoke = config_mod.load_config(["schedule=smoke", "schedule.workers=3"])
    s = config_mod.to_settings(smoke)
    smoke.schedule.workers = 0  # the oracle: the key as it was for workers=0
    assert stage2_key(s, [s.loss], "x", 1) == _old_stage2_key(smoke, [s.loss.as_dict()])


def test_a_stage2_only_leaf_under_stage1_is_one_line():
    """``schedule.stage1.rois_per_image`` would be read by nothing and move the stage-1 key:
    stage 1's recipe has no such option."""
    from acsl_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown key schedule.stage1.rois_per_image "):
        config_mod.load_settings(["+schedule.stage1.rois_per_image=5"])
    assert config_mod.load_settings(["schedule.stage2.rois_per_image=5"]
                                    ).schedule.stage2.rois_per_image == 5

#: The default of every ``changed_only`` field, per key and key version. Such a field
#: enters its key only when it differs from its default, so a new default would silently
#: give existing cache entries another experiment's key (or two experiments one key).
#: Changing one is changing the key: bump the key's version (``settings/keys.py``) and add
#: the new version's line here.
CHANGED_ONLY_DEFAULTS = {
    (STAGE1, 1): {
        "amp": "off", "init": None, "sampler.name": "random", "sampler.t": None,
        "schedule.stage1.loss": "softmax_ce",
        "detector.name": "faster_rcnn", "detector.class_agnostic_boxes": False,
        "detector.iou_thresholds": (0.5, 0.6, 0.7), "detector.stage_weights": (1.0, 0.5, 0.25),
        "detector.box_coder_weights": ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                       (30.0, 30.0, 15.0, 15.0)),
    },
}


def test_a_changed_only_default_moves_only_with_its_keys_version():
    from acsl_cli.settings.keys import STAGE1_VERSION

    versions = {STAGE1: STAGE1_VERSION}  # the keys that have a version
    now: dict = {}
    for d in declared(Settings):
        for cache in d.changed_only:
            assert cache in versions, f"{d.path}: changed_only for {cache}, a key without version"
            now.setdefault((cache, versions[cache]), {})[".".join(d.path)] = d.default
    for version, defaults in now.items():
        assert version in CHANGED_ONLY_DEFAULTS, f"{version}: no line in CHANGED_ONLY_DEFAULTS"
        old = CHANGED_ONLY_DEFAULTS[version]
        moved = sorted(k for k in old.keys() | defaults.keys() if old.get(k) != defaults.get(k))
        assert not moved, (
            f"the default of {', '.join(moved)} changed (or it was added or removed) while "
            f"the {version[0]} key's version stayed {version[1]}: such a field enters its key "
            "only when it differs from its default, so old cache entries would now mean "
            "another experiment. Bump the version in acsl_cli/settings/keys.py and add the "
            "new version's line to CHANGED_ONLY_DEFAULTS")


def test_init_enters_the_stage1_key_by_its_files_content(tmp_path):
    """Rule: ``init=PATH`` shapes stage 1 by the file's bytes, not its name: two copies
    share a key, other weights do not, and the key holds the file's sha256."""
    import hashlib

    a, b, c = tmp_path / "a.pt", tmp_path / "sub" / "b.pt", tmp_path / "c.pt"
    b.parent.mkdir()
    for path, data in ((a, b"weights-1"), (b, b"weights-1"), (c, b"weights-2")):
        path.write_bytes(data)

    def key(*overrides: str) -> str:
        return stage1_key(config_mod.load_settings(list(overrides)), 1)

    assert key(f"init={a}") == key(f"init={b}") != key(f"init={c}")
    assert key(f"init={a}") != key()
    digest = hashlib.sha256(b"weights-1").hexdigest()
    assert key(f"init={a}") == _old_stage1_key(config_mod.load_config([f"init={digest}"]))


def test_an_integer_rule_takes_its_upper_bound_and_refuses_one_more():
    """Rule: ``integer(lo, hi)`` is the closed range [lo, hi]."""
    from acsl_cli.errors import ConfigError
    from acsl_cli.settings.rules import integer

    rule = integer(0, 5)
    rule("k", 5)
    rule("k", 0)
    for bad in (6, -1):
        with pytest.raises(ConfigError, match=rf"k={bad}: must be an integer in \[0, 5\]"):
            rule("k", bad)
    s = config_mod.load_settings(["schedule.stage1.epochs=10000", f"seed={2**31 - 1}"])
    assert (s.schedule.stage1.epochs, s.seed) == (10_000, 2**31 - 1)
    with pytest.raises(ConfigError, match="schedule.stage1.epochs=10001"):
        config_mod.load_settings(["schedule.stage1.epochs=10001"])
    with pytest.raises(ConfigError, match=f"seed={2**31}"):
        config_mod.load_settings([f"seed={2**31}"])

"""Command-line overrides -> what to run: runs x stage-2 heads, or what to evaluate.

Comma lists over head keys (``loss``, ``xi``, ``loss.*``) become heads that share one
stage-2 pass; comma lists over any other key become separate runs (``acsl sweep``). A
head has an ``id`` (folder-safe, unique in its run) and a ``label`` (the row name shown
in tables and used as the metrics key); nothing derives one from the other later.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from acsl_cli.config import available, config_dir, load_config, parse_overrides, to_settings
from acsl_cli.data.groups import frequency_group
from acsl_cli.errors import ConfigError
from acsl_cli.layout import CONFIG
from acsl_cli.settings import LossSettings, Settings, loss_settings
from acsl_cli.settings.pooling import variant_names
from acsl_cli.settings.sections import CLASSIFIERS, STAGE1_LOSS
from acsl_cli.untrusted import (
    interpolation_free,
    load_yaml_mapping,
    without_where_to_write,
    yaml_mapping,
)

HEAD_KEYS = ("loss", "xi")
EVAL_KEYS = ("ckpt", "dets", "ann", "train_ann", "out")
#: where a sweep lives and how its jobs run: one value per sweep, never a comma list
SWEEP_KEYS = ("launcher", "run_name", "output_root")




@dataclass(frozen=True)
class HeadSpec:
    id: str
    label: str
    settings: Settings  # the run's settings with this head's loss

    @property
    def loss(self) -> LossSettings:
        return self.settings.loss


@dataclass(frozen=True)
class RunPlan:
    """One ``acsl train``: run-level settings and the heads of its stage 2."""

    heads: tuple[HeadSpec, ...]

    @property
    def settings(self) -> Settings:
        return self.heads[0].settings


@dataclass(frozen=True)
class SweepPlan:
    runs: tuple[RunPlan, ...]
    settings: tuple[str, ...]  # per run, the overrides that make it differ ("seed=1")
    out: str | None  # where the mean of the last head goes
    #: per run, the outcome settings but the seed in which it differs from the others
    #: ("detector.name=cascade_rcnn", ``settings.pooling``): runs of one variant differ
    #: only in the seed, so only they are pooled into a mean and std
    variants: tuple[str, ...]


@dataclass(frozen=True)
class EvalPlan:
    """``acsl eval``: a checkpoint, or a results file with its annotations."""

    ckpt: str | None
    dets: str | None
    ann: str | None
    train_ann: str | None
    out: str | None
    overrides: tuple[str, ...]  # the other overrides (applied to the checkpoint's config)
    settings: Settings | None = None  # for dets=: the settings the overrides give


def head_label(loss: LossSettings) -> str:
    """Readable row name: the loss plus what distinguishes it (xi for ACSL, a classifier
    layer other than the plain linear one)."""
    name = loss.name
    if "xi" in loss.params:
        name += f" xi={loss.params['xi']}"
    if "bg_mode" in loss.params:
        name += f" bg={loss.params['bg_mode']}"
    if "classifier" in loss.as_dict():
        name += f" {loss.classifier} T={loss.temperature:g}"
    return name


def check_loss(loss: LossSettings) -> None:
    """Build the loss on stand-in statistics: its own checks run before any data exists."""
    from acsl_cli.losses import build_loss  # torch: only for commands that plan a run

    build_loss(loss.name, probe_context(loss.params),
               **{k: list(v) if isinstance(v, tuple) else v for k, v in loss.params.items()})


def probe_context(params: Mapping[str, Any]):
    """Stand-in train statistics for checking a loss's parameters: one class in each
    frequency group and one at every count the parameters name (BAGS's bin edges), so
    that no group a parameter defines is empty."""
    counts = {1, 50, 10**9}
    for value in params.values():
        if isinstance(value, (list, tuple)):
            counts.update(v for v in value if isinstance(v, int) and not isinstance(v, bool)
                          and 0 < v < 10**12)
    from acsl_cli.losses import LossContext

    ordered = tuple(sorted(counts))
    groups = tuple(frequency_group(n) for n in ordered)
    return LossContext(len(ordered), 0, groups, ordered, ordered, max(ordered))


def check_stage1(heads: tuple[HeadSpec, ...]) -> None:
    """``schedule.stage1.loss``, before any data: one stage-1 loss for the run (its preset
    may follow a head key such as ``xi``), its parameters checked as a head's are, and
    every head able to start from the classifier it trains (a head that copies stage 1's
    rows needs them of its own width)."""
    first = heads[0].settings.stage1_loss
    key = "schedule.stage1.loss"
    for h in heads[1:]:
        other = h.settings.stage1_loss
        if other != first:
            k = next(k for k in sorted(first.params.keys() | other.params.keys())
                     if first.params.get(k) != other.params.get(k))
            raise ConfigError(f"{key}={first.name}: its {k} follows a head key and differs "
                              f"between the heads ({first.params.get(k)}, "
                              f"{other.params.get(k)}); a run has one stage 1: give that key "
                              "one value (acsl sweep runs several)")
    if first == LossSettings(STAGE1_LOSS):
        return
    check_loss(first)
    from acsl_cli.losses import build_loss  # torch: only for commands that plan a run

    def build(loss: LossSettings, context):
        return build_loss(loss.name, context, **{k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in loss.params.items()})

    for h in heads:
        context = probe_context({**first.params, **h.loss.params})
        c = context.num_classes
        stage1, head = build(first, context), build(h.loss, context)
        have = stage1.num_outputs(c)
        if not _starts(head, c, have):
            fits = [w for w in (c + 1, head.num_outputs(c)) if _starts(head, c, w)]
            needs = f" (it copies those of a C + {fits[0] - c}-wide one)" if fits else ""
            raise ConfigError(
                f"loss={h.loss.name} with {key}={first.name}: the head starts from stage 1's "
                f"classifier rows, and stage 1's C + {have - c} do not fit it{needs}; train "
                "stage 1 with a loss of that width, or give the head a loss that starts "
                "fresh")


def _starts(head, num_classes: int, width: int) -> bool:
    """Whether ``head``'s loss can start its classifier from a stage 1 of ``width`` outputs
    (the loss's own ``init_classifier`` on stand-in layers; the global stream untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        try:
            head.init_classifier(torch.nn.Linear(2, head.num_outputs(num_classes)),
                                 torch.nn.Linear(2, width))
        except ValueError:
            return False
    return True


def head_id(label: str) -> str:
    """Folder-safe id of a label: 'acsl xi=0.7 bg=official' -> 'acsl_xi0.7_bgofficial'."""
    return re.sub(r"[^A-Za-z0-9._-]", "", label.replace(" ", "_"))[:100] or "head"


def plan_train(overrides: list[str] | tuple[str, ...]) -> RunPlan:
    """Heads of one run: the product of comma lists in head overrides.

    ``loss=bce,acsl xi=0.3,0.7`` gives bce (xi does not apply) and acsl at both xi. Heads
    whose loss configs are identical are kept once; heads that share a label but differ in
    some ``loss.*`` value get that value appended (``... bg_factor=True``). Non-head keys
    with comma lists are rejected here; ``sweep`` loops over those.
    """
    fixed, varying = [], []
    for o in parse_overrides(overrides):
        if o.sweep is None:
            fixed.append(o.text)
        elif o.root in HEAD_KEYS:
            varying.append([f"{o.key}={v}" for v in _values(o)])
        else:
            raise ConfigError(f"{o.key}: a list of values needs 'acsl sweep', not 'acsl train'")
    configs, seen = [], set()
    for combo in itertools.product(*varying):
        s = to_settings(load_config(fixed + list(combo)))
        node = s.loss.as_dict()
        key = json.dumps(node, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            check_loss(s.loss)
            configs.append((node, s))
    heads, ids = [], set()
    for node, s in configs:
        label = head_label(s.loss)
        twins = [n for n, o in configs if head_label(o.loss) == label and n is not node]
        extra = sorted(k for k in node if any(t.get(k) != node[k] for t in twins))
        label = " ".join([label, *(f"{k}={node[k]}" for k in extra)])
        hid, n = head_id(label), 2
        while hid in ids:
            hid, n = f"{head_id(label)}-{n}", n + 1
        ids.add(hid)
        heads.append(HeadSpec(hid, label, s))
    check_stage1(tuple(heads))
    return RunPlan(tuple(heads))


def _values(o) -> list[str]:
    if not o.sweep:
        raise ConfigError(f"{o.text}: the list of values is empty")
    return o.sweep


def plan_sweep(overrides: list[str] | tuple[str, ...]) -> SweepPlan:
    """One run per combination of non-head comma lists (e.g. seeds), each with every head
    combination in its stage-2 pass; every run's config is validated before any work."""
    outer, inner, out = [], [], None
    for o in parse_overrides(overrides):
        if o.sweep is not None and o.root in SWEEP_KEYS:
            raise ConfigError(f"{o.text}: {o.key} takes one value per sweep (the sweep's "
                              "jobs and run folders hang on it), not a list")
        if o.key == "out":  # the sweep's mean goes there, not each run's metrics
            out = str(o.value)
        elif o.sweep is not None and o.root not in HEAD_KEYS:
            outer.append([f"{o.key}={v}" for v in _values(o)])
        else:
            inner.append(o.text)
    combos = list(itertools.product(*outer))
    runs = tuple(plan_train(inner + list(c)) for c in combos)
    variants = tuple(variant_names([r.settings.as_dict() for r in runs]))
    return SweepPlan(runs, tuple(" ".join(c) for c in combos), out, variants)


def plan_eval(overrides: list[str] | tuple[str, ...]) -> EvalPlan:
    """Which evaluation ``acsl eval`` asks for; the overrides are checked by the same parser."""
    parsed = parse_overrides(overrides)
    values = {k: None for k in EVAL_KEYS}
    rest = []
    for o in parsed:
        if o.key in EVAL_KEYS:
            if o.sweep is not None or not isinstance(o.value, str) or not o.value:
                raise ConfigError(f"{o.key}={o.value!r}: must be one path")
            values[o.key] = o.value
        else:
            rest.append(o.text)
    ckpt, dets, ann = values["ckpt"], values["dets"], values["ann"]
    if not ((ckpt and not dets and not ann) or (dets and ann and not ckpt)):
        raise ConfigError("acsl eval needs ckpt=PATH, or dets=RESULTS.json ann=ANN.json")
    settings = to_settings(load_config(rest)) if dets else None  # checked as every command
    return EvalPlan(ckpt, dets, ann, values["train_ann"], values["out"], tuple(rest), settings)


def saved_config(ckpt: str | Path) -> DictConfig | None:
    """The config saved beside a checkpoint, if there is one, as plain data
    (``untrusted``: no interpolation, and not where the run was written)."""
    beside = Path(ckpt).parent / CONFIG
    if not beside.is_file():
        return None
    return _plain_config(load_yaml_mapping(beside), str(beside))


def _plain_config(data: Any, source: str) -> DictConfig:
    """Plain data from a file that came with a checkpoint -> a config to update. Keys that
    say where and how a command writes are dropped: the command's own apply."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: not a config mapping")
    plain = without_where_to_write(interpolation_free(data, source))
    try:
        return OmegaConf.create(plain)
    except Exception as e:  # noqa: BLE001 - a broken file is the user's input
        raise ConfigError(f"{source}: not a readable config ({e.__class__.__name__})") from None


def checkpoint_settings(plan: EvalPlan, ckpt: dict) -> tuple[Settings, LossSettings]:
    """``eval ckpt=``: the settings saved beside (or in) the checkpoint, updated by the
    command's overrides, and the checkpoint's own loss with its ``loss.KEY=VALUE``
    overrides (e.g. ``loss.bg_factor=true`` changes how the saved head scores)."""
    assert plan.ckpt is not None
    saved = saved_config(plan.ckpt)
    if saved is None:
        embedded, source = ckpt.get("config") or {}, f"{plan.ckpt} (its saved config)"
        if isinstance(embedded, str):  # what checkpoints hold: the config's YAML text
            embedded = yaml_mapping(embedded, source)
        saved = _plain_config(embedded, source)
    settings = to_settings(load_config(list(plan.overrides), base=saved))
    saved_loss = ckpt.get("loss")
    if not isinstance(saved_loss, Mapping):
        raise ConfigError(f"{plan.ckpt}: its saved loss is not a mapping")
    node = OmegaConf.create(dict(interpolation_free(saved_loss, f"{plan.ckpt} (its loss)")))
    for o in parse_overrides(list(plan.overrides)):
        if o.key.startswith("loss."):
            OmegaConf.update(node, o.key[len("loss."):], o.value, merge=False)
    loss = loss_settings(OmegaConf.to_container(node, resolve=True))
    check_loss(loss)
    trained = saved_loss.get("classifier", CLASSIFIERS[0])
    if loss.classifier != trained:  # a scoring key may change; the layer's kind is the head
        raise ConfigError(f"loss.classifier={loss.classifier}: {plan.ckpt} is a head trained "
                          f"with the {trained} classifier layer; its weights mean nothing in "
                          "another (drop the override; loss.temperature may change)")
    return settings, loss


def saved_run_config(path: Path) -> dict:
    """A finished run's ``config.yaml`` as plain data (safe YAML; errors as ValueError)."""
    return load_yaml_mapping(path)


def loss_presets() -> list[tuple[str, str]]:
    """``loss=NAME`` choices with the description from the head comment of their yaml
    (every leading comment line, joined)."""
    out = []
    for name in available("loss"):
        about = []
        for line in (config_dir() / "loss" / f"{name}.yaml").read_text().splitlines():
            if not line.startswith("#"):
                break
            about.append(line.lstrip("#").strip())
        out.append((name, " ".join(a for a in about if a)))
    return out + plugin_losses()


def plugin_losses() -> list[tuple[str, str]]:
    """The losses that installed plugins register (entry-point group ``acsl.losses``),
    with where each came from and its docstring's first line; nothing imported if none."""
    from importlib.metadata import entry_points

    if not entry_points(group="acsl.losses"):  # metadata only: no torch without plugins
        return []
    from acsl_cli.losses import loss_class
    from acsl_cli.losses.plugins import load_entry_points, origin
    from acsl_cli.losses.registry import available_losses

    load_entry_points()
    out = []
    for name in available_losses():
        if origin(name):
            doc = (loss_class(name).__doc__ or "").strip().splitlines()
            out.append((name, f"[{origin(name)}] {doc[0] if doc else ''}".rstrip()))
    return out


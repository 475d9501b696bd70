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
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from acsl_cli.config import load_config, parse_overrides
from acsl_cli.errors import ConfigError

HEAD_KEYS = ("loss", "xi")
EVAL_KEYS = ("ckpt", "dets", "ann", "train_ann", "out")


@dataclass(frozen=True)
class HeadSpec:
    id: str
    label: str
    cfg: DictConfig  # the full config with this head's loss


@dataclass(frozen=True)
class RunPlan:
    """One ``acsl train``: run-level settings (``cfg``) and the heads of its stage 2."""

    heads: tuple[HeadSpec, ...]

    @property
    def cfg(self) -> DictConfig:
        return self.heads[0].cfg


@dataclass(frozen=True)
class SweepPlan:
    runs: tuple[RunPlan, ...]
    settings: tuple[str, ...]  # per run, the overrides that make it differ ("seed=1")
    out: str | None  # where the mean of the last head goes


@dataclass(frozen=True)
class EvalPlan:
    """``acsl eval``: a checkpoint, or a results file with its annotations."""

    ckpt: str | None
    dets: str | None
    ann: str | None
    train_ann: str | None
    out: str | None
    overrides: tuple[str, ...]  # the other overrides (applied to the checkpoint's config)


def head_label(loss_node: DictConfig) -> str:
    """Readable row name: the loss plus what distinguishes it (xi for ACSL)."""
    name = loss_node.name
    if "xi" in loss_node:
        name += f" xi={loss_node.xi}"
    if "bg_mode" in loss_node:
        name += f" bg={loss_node.bg_mode}"
    return name


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
            varying.append([f"{o.key}={v}" for v in o.sweep])
        else:
            raise ConfigError(f"{o.key}: a list of values needs 'acsl sweep', not 'acsl train'")
    configs, seen = [], set()
    for combo in itertools.product(*varying):
        c = load_config(fixed + list(combo))
        node = OmegaConf.to_container(c.loss, resolve=True)
        key = json.dumps(node, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append((node, c))
    heads, ids = [], set()
    for node, c in configs:
        label = head_label(c.loss)
        twins = [n for n, o in configs if head_label(o.loss) == label and n is not node]
        extra = sorted(k for k in node if any(t.get(k) != node[k] for t in twins))
        label = " ".join([label, *(f"{k}={node[k]}" for k in extra)])
        hid, n = head_id(label), 2
        while hid in ids:
            hid, n = f"{head_id(label)}-{n}", n + 1
        ids.add(hid)
        heads.append(HeadSpec(hid, label, c))
    return RunPlan(tuple(heads))


def plan_sweep(overrides: list[str] | tuple[str, ...]) -> SweepPlan:
    """One run per combination of non-head comma lists (e.g. seeds), each with every head
    combination in its stage-2 pass; every run's config is validated before any work."""
    outer, inner, out = [], [], None
    for o in parse_overrides(overrides):
        if o.key == "out":  # the sweep's mean goes there, not each run's metrics
            out = str(o.value)
        elif o.sweep is not None and o.root not in HEAD_KEYS:
            outer.append([f"{o.key}={v}" for v in o.sweep])
        else:
            inner.append(o.text)
    combos = list(itertools.product(*outer))
    runs = tuple(plan_train(inner + list(c)) for c in combos)
    return SweepPlan(runs, tuple(" ".join(c) for c in combos), out)


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
    if dets:
        load_config(rest)  # same validation as every command (e.g. a badly typed value)
    return EvalPlan(ckpt, dets, ann, values["train_ann"], values["out"], tuple(rest))


def saved_config(ckpt: str | Path) -> DictConfig | None:
    """The config saved beside a checkpoint, if there is one (plain YAML, safe to read)."""
    beside = Path(ckpt).parent / "config.yaml"
    if not beside.is_file():
        return None
    try:
        cfg = OmegaConf.load(beside)
    except Exception as e:  # noqa: BLE001 - a broken file is the user's input
        raise ConfigError(f"{beside}: not a readable config ({e.__class__.__name__})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{beside}: not a config mapping")
    return cfg

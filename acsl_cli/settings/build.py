"""A resolved config (plain data) -> ``Settings``: every value checked, lists as tuples.

Unknown keys are errors (``+lsos=bce`` is a typo, not an option): a dataset's keys are its
kind's (``settings.datasets``); a loss's parameters are checked by its class when it is
built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.settings.datasets import KIND, KINDS, DatasetSettings, unknown_key
from acsl_cli.settings.declare import SELECTOR, leaf_default
from acsl_cli.settings.rules import choice_in
from acsl_cli.settings.sections import LossSettings, Settings

#: Keys a saved run's config.yaml adds to the config it ran with (not settings).
RECORD_KEYS = ("heads", "provenance")


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _section(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got "
                          f"{type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (not an option of "
                          f"{prefix.rstrip('.') or 'the config'})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("kinds"):
            values[f.name] = _kind_section(f.metadata, data.get(f.name, {}),
                                           f"{prefix}{f.name}")
        elif f.metadata.get("section"):
            values[f.name] = _section(f.default_factory, data.get(f.name, {}),  # type: ignore
                                      f"{prefix}{f.name}.")
        elif "rule" in f.metadata:
            value = data[f.name] if f.name in data else leaf_default(f)
            f.metadata["rule"](f"{prefix}{f.name}", value)
            values[f.name] = _frozen(value)
    return cls(**values)


def _kind_section(meta: Mapping[str, Any], data: Any, key: str) -> Any:
    """A section whose class is its chosen kind's (``declare.kinds``): a key that only
    another kind has is refused by name, not ignored."""
    registry = meta["kinds"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {type(data).__name__}")
    chosen = data.get(SELECTOR, meta["default_kind"])
    choice_in(registry)(f"{key}.{SELECTOR}", chosen)
    cls = registry[chosen]
    for k in data:
        if k in cls.__dataclass_fields__:
            continue
        owners = [n for n, c in registry.items() if k in c.__dataclass_fields__]
        if owners:
            raise ConfigError(f"{key}.{k}: a setting of {key}={' or '.join(owners)}, not of "
                              f"{key}={chosen}")
    return _section(cls, data, f"{key}.")


def dataset_settings(data: Any) -> DatasetSettings:
    """The typed section of a ``dataset`` node: its kind's class (``settings.datasets``),
    every key checked; a key of another kind is one line."""
    if not isinstance(data, Mapping):
        raise ConfigError("dataset: must be a mapping")
    if "kind" not in data:
        raise ConfigError(f"dataset.kind: missing (dataset {data.get('name')}: say which "
                          f"kind of dataset it is, one of {', '.join(KINDS)})")
    KIND("dataset.kind", data["kind"])
    unknown = unknown_key(data["kind"], data)
    if unknown:
        raise ConfigError(unknown)
    return _section(KINDS[data["kind"]], data, "dataset.")


def loss_settings(node: Any) -> LossSettings:
    """A loss node (the config's, or a checkpoint's saved one): its name, the classifier
    layer's keys (``LossSettings``' declared fields, checked here), the loss's parameters
    (checked by the loss when it is built)."""
    if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
        raise ConfigError("loss: must be a mapping with a name")
    layer = {}
    for f in dataclasses.fields(LossSettings):
        if "rule" in f.metadata and f.name in node:
            f.metadata["rule"](f"loss.{f.name}", node[f.name])
            layer[f.name] = node[f.name]
    if "temperature" in layer:  # 20 and 20.0 are one head (its id, its stage-2 key)
        layer["temperature"] = float(layer["temperature"])
    return LossSettings(node["name"], {k: v for k, v in node.items()
                                       if k != "name" and k not in layer}, **layer)


def stage1_loss_settings(name: str, config: Mapping[str, Any]) -> LossSettings:
    """Stage 1's loss ``name`` (its rule has checked it) as ``loss=NAME`` would give it: the
    preset's keys with their interpolations resolved against ``config`` (a loss with no
    preset, a plugin's: its constructor's defaults, none written)."""
    from acsl_cli.conf_groups import available
    from acsl_cli.losses.presets import preset_node

    if name not in available("loss"):
        return LossSettings(name)
    node = preset_node(name)
    if any(isinstance(v, str) and "${" in v for v in node.values()):
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        key = "schedule.stage1.loss"
        root = OmegaConf.create({k: v for k, v in config.items() if k != "loss"})
        root["loss"] = node
        try:
            OmegaConf.resolve(root)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}={name}: its preset does not resolve against this "
                              f"config ({' '.join(str(e).split())[:200]})") from None
        node = OmegaConf.to_container(root["loss"])
    return loss_settings({**node, "name": node.get("name", name)})


def settings_from(config: Mapping[str, Any]) -> Settings:
    """Typed, checked settings of a resolved config (``OmegaConf.to_container``)."""
    data = {k: v for k, v in config.items() if k not in RECORD_KEYS}
    typed = {k: v for k, v in data.items() if k not in ("dataset", "loss")}
    base = _section(Settings, typed, "")
    dataset = dataset_settings(data["dataset"]) if "dataset" in data else base.dataset
    return dataclasses.replace(base, dataset=dataset,
                               loss=loss_settings(data.get("loss", {"name": "acsl"})),
                               stage1_loss=stage1_loss_settings(base.schedule.stage1.loss,
                                                                data),
                               source=data)

"""``conf/loss/NAME.yaml`` presets for the Python API: ``detection_loss("acsl_adaptive")``
takes the same names as ``loss=NAME`` (``acsl losses`` lists them).

A preset is a registry name plus parameters. Values that the run's config supplies by
interpolation (``xi: ${xi}``, ``seed: ${seed}``, a dataset's ``bags_bins``) are left out:
the caller passes them as keywords, or the loss's own default applies. So are the keys that
choose the head's classifier layer (``classifier: normed`` in ``seesaw_normed``): the layer
is the caller's box head's (``acsl_cli.models.classifier.NormedLinear``), not the loss's.
"""

from __future__ import annotations

from typing import Any

from acsl_cli.conf_groups import LOSS_LAYER_KEYS, available, config_dir
from acsl_cli.errors import ConfigError


def preset(name: str) -> tuple[str, dict[str, Any]]:
    """(registry name, parameters) of the preset ``name``; ``(name, {})`` if there is none
    (a registry loss without a yaml, e.g. a plugin's)."""
    if name not in available("loss"):
        return name, {}
    node = _merged(name, ())
    loss = node.pop("name", None)
    if not isinstance(loss, str):
        raise ConfigError(f"conf/loss/{name}.yaml: no loss name")
    return loss, {k: v for k, v in node.items() if k not in LOSS_LAYER_KEYS}


def preset_node(name: str) -> dict[str, Any]:
    """The preset ``name`` as ``loss=NAME`` composes it (its ``name`` included), its
    interpolations (``${xi}``, ``${seed}``, a dataset's ``loss_defaults``) kept as text for
    the caller to resolve against a run's config (``schedule.stage1.loss``)."""
    return _merged(name, (), interpolations=True)


def _merged(name: str, seen: tuple[str, ...], interpolations: bool = False
            ) -> dict[str, Any]:
    """The preset's keys after its defaults list (other presets of the group, and
    ``_self_``, last when absent, as Hydra does); interpolated values only if asked."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if name in seen or name not in available("loss"):
        raise ConfigError(f"conf/loss/{name}.yaml: its defaults list names "
                          f"{'itself' if name in seen else 'no loss preset'}")
    cfg = OmegaConf.load(config_dir() / "loss" / f"{name}.yaml")
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"conf/loss/{name}.yaml: not a mapping")
    defaults = cfg.pop("defaults", None)
    entries = list(defaults) if isinstance(defaults, ListConfig) else []
    if "_self_" not in entries:
        entries.append("_self_")
    own = OmegaConf.to_container(cfg, resolve=False)
    if not interpolations:
        own = {k: v for k, v in own.items() if not OmegaConf.is_interpolation(cfg, k)}
    out: dict[str, Any] = {}
    for entry in entries:
        if entry == "_self_":
            out.update(own)
        elif isinstance(entry, str):
            out.update(_merged(entry, (*seen, name), interpolations))
        else:
            raise ConfigError(f"conf/loss/{name}.yaml: defaults entry {entry!r} is not "
                              "another loss preset")
    return out

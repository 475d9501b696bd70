"""The one reader of command lines: Hydra overrides -> a validated config.

Every command goes through here (``eval ckpt=`` too, which starts from the config saved
beside the checkpoint instead of ``conf/``), so a typo or a value of the wrong type gives
the same one-line error everywhere, before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from acsl_cli.conf_groups import GROUPS, LOSS_LAYER_KEYS, available, config_dir
from acsl_cli.config_rules import validate
from acsl_cli.errors import ConfigError, did_you_mean
from acsl_cli.settings import Settings, settings_from
from acsl_cli.settings.declare import SELECTOR
from acsl_cli.settings.sections import LIST_KEYS, PLUGINS_RULE, SHORTHANDS

__all__ = ["GROUPS", "Override", "available", "config_dir", "load_config", "load_settings",
           "parse_overrides", "to_settings", "to_yaml", "validate"]


@dataclass(frozen=True)
class Override:
    """One ``key=value`` argument as Hydra reads it."""

    text: str
    key: str
    value: Any  # typed (int, float, bool, str, list, None); for a sweep, the raw text
    sweep: list[str] | None  # the values of a comma list ``key=a,b``, else None

    @property
    def root(self) -> str:
        return self.key.split(".")[0]


def parse_overrides(args: Sequence[str]) -> list[Override]:
    """Parse ``key=value`` arguments with Hydra's grammar; one-line ConfigError if bad."""
    parser = OverridesParser.create()
    out = []
    for text in args:
        if "=" not in text:
            raise ConfigError(f"argument '{text}' is not of the form key=value")
        try:
            parsed = parser.parse_override(text)
            key = parsed.get_key_element().lstrip("+~")
            if parsed.is_sweep_override():
                o = Override(text, key, text.split("=", 1)[1],
                             list(parsed.sweep_string_iterator()))
            else:
                o = Override(text, key, parsed.value(), None)
        except HydraException as e:
            raise ConfigError(f"bad override '{_short(text)}': "
                              f"{' '.join(str(e).split())[:300]}") from None
        except ValueError as e:  # Python's own limits, e.g. an integer of 5000 digits
            raise ConfigError(f"bad override '{_short(text)}': "
                              f"{' '.join(str(e).split())[:200]}") from None
        out.append(_spelled_out(o, parser))
    return out


def _short(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


#: ``loss.classifier=normed`` under any loss: the layer's keys are in no loss yaml but its
#: preset's, so they are added to the loss node (``++``) or set where a preset has them
LOSS_LAYER_OVERRIDES = tuple(f"loss.{k}" for k in LOSS_LAYER_KEYS)


def _spelled_out(o: Override, parser: OverridesParser) -> Override:
    """The long form of a declared shorthand (``test.calibration=norcal`` sets ``.method``),
    a comma list over a list key as one list value (``gamma=0,0.5,1``, not a sweep), and
    a classifier-layer key of the loss node (``loss.classifier=normed``) added or set."""
    if o.key in LOSS_LAYER_OVERRIDES and o.text.startswith(o.key + "="):
        o = Override("++" + o.text, o.key, o.value, o.sweep)
    if o.key in SHORTHANDS and o.text.startswith(o.key + "=") and not isinstance(o.value, dict):
        o = Override(SHORTHANDS[o.key] + o.text[len(o.key):], SHORTHANDS[o.key], o.value,
                     o.sweep)
    if o.key in LIST_KEYS and o.text.startswith(o.key + "=") and not isinstance(o.value, list):
        raw = o.text.split("=", 1)[1]
        text = f"{o.key}=[{raw if o.sweep is None else ','.join(o.sweep)}]"
        try:
            return Override(text, o.key, parser.parse_override(text).value(), None)
        except HydraException as e:
            raise ConfigError(f"bad override '{o.text}': {' '.join(str(e).split())}") from None
    return o


def load_config(overrides: Sequence[str] = (), base: DictConfig | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` (or update ``base``) with overrides, then validate.

    With ``base`` (a saved run's config) a group choice such as ``dataset=lvis_v0.5``
    replaces that whole group with ``conf/``'s, and ``key=value`` updates one value, as
    Hydra would; keys that do not exist are errors in both cases.
    """
    parsed = parse_overrides(overrides)
    for o in parsed:
        if o.sweep is not None:
            raise ConfigError(f"{o.key}: a list of values needs 'acsl sweep' or head keys")
    plugin_losses = _plugin_losses(parsed, base)
    for o in parsed:
        choices = available(o.key) + (plugin_losses if o.key == "loss" else [])
        if o.key in GROUPS and o.value not in choices:
            raise ConfigError(f"unknown {o.key} '{o.value}' ({did_you_mean(o.value, choices)}"
                              f"choose from {', '.join(sorted(choices))})")
    _check_kind_keys(parsed, base)
    if base is None:
        _check_dataset_name(parsed)
    try:
        if base is None:
            cfg = _compose([o.text for o in parsed])
        else:
            cfg = _update(base, parsed)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = _unknown_key(parsed, base)
        if unknown is not None:
            raise ConfigError(unknown) from None
        msg = " ".join(str(e).split())
        raise ConfigError(f"bad config override: {msg}"[:400]) from None
    to_settings(cfg)  # every value checked before anything runs
    return cfg


def _flat_keys(node: DictConfig, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of ``node`` -> whether it is a section (a mapping of keys)."""
    keys = {}
    for k in node.keys():
        key, child = f"{prefix}{k}", node._get_node(k)
        keys[key] = isinstance(child, DictConfig)
        if keys[key]:
            keys.update(_flat_keys(child, key + "."))
    return keys


def _unknown_key(parsed: list[Override], base: DictConfig | None) -> str | None:
    """The first ``key=value`` whose key the config does not have, as one line with the
    closest key (instead of Hydra's advice to add it with ``+``); None if all exist."""
    try:
        known = base if base is not None else _compose([o.text for o in parsed
                                                         if o.key in GROUPS])
    except (HydraException, OmegaConfBaseException, ConfigError):
        return None
    keys = _flat_keys(known)
    for o in parsed:
        if o.text[:1] in "+~" or o.key in GROUPS or o.key in keys:
            continue
        parts = o.key.split(".")
        if any(keys.get(".".join(parts[:i])) is False for i in range(1, len(parts))):
            continue  # below a value (a free-form mapping such as launcher.additional)
        if o.key == "out_dir":
            return ("out_dir: this command writes one JSON file, given as out=FILE.json "
                    "(out_dir= is the folder of acsl show and acsl report)")
        return (f"unknown key '{o.key}' ({did_you_mean(o.key, sorted(keys))}every key and "
                "its value: acsl train --dry-run)")
    return None


def _plugin_losses(parsed: list[Override], base: DictConfig | None) -> list[str]:
    """Losses from plugins (``losses.plugins``) as ``loss=NAME`` choices, put in Hydra's
    config store before the overrides are checked. Loaded only when ``plugins=`` is set or
    a ``loss=`` is no preset of ``conf/loss/``, so built-in runs never import them."""
    modules = _plugin_modules(parsed, base)
    presets = available("loss")
    if not modules and all(o.value in presets for o in parsed if o.key == "loss"):
        return []
    from hydra.core.config_store import ConfigStore

    from acsl_cli.losses import available_losses, plugins

    plugins.import_plugins(modules)
    plugins.load_entry_points()
    names = [n for n in available_losses() if n not in presets and plugins.origin(n)]
    for name in names:
        ConfigStore.instance().store(group="loss", name=name, node=plugins.config_node(name))
    return names


def _plugin_modules(parsed: list[Override], base: DictConfig | None) -> list[str]:
    """The ``plugins=`` modules: the override's, else ``conf/``'s; checked by the option's
    rule before anything is imported. A saved run (``eval ckpt=``, an untrusted file) names
    no module that is imported on its own: its plugins must be given again."""
    given = [o.value for o in parsed if o.key == "plugins"]
    if given:
        value = given[-1]
    elif base is not None:
        saved = base.get("plugins") or []
        saved = OmegaConf.to_container(saved) if isinstance(saved, ListConfig) else saved
        if saved:
            names = ",".join(str(m) for m in saved) if isinstance(saved, list) else str(saved)
            raise ConfigError(f"the checkpoint's run imported plugins={saved!r}; code named "
                              f"by a checkpoint is not imported on its own: add "
                              f"plugins=[{names}] to import it")
        value = []
    else:
        try:
            value = OmegaConf.load(config_dir() / "config.yaml").get("plugins") or []
            value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        except Exception:  # noqa: BLE001 - the compose step reports a broken config.yaml
            value = []
    PLUGINS_RULE("plugins", value)
    return list(value or [])


def _check_dataset_name(parsed: list[Override]) -> None:
    """The chosen dataset yaml's ``name`` is its file name: a saved run finds its dataset's
    yaml by that name (``_with_new_defaults``), so another name would pick another file."""
    chosen = next((o.value for o in reversed(parsed) if o.key == "dataset"), None)
    try:
        if chosen is None:
            defaults = OmegaConf.load(config_dir() / "config.yaml").get("defaults") or []
            chosen = next((d["dataset"] for d in defaults
                           if isinstance(d, DictConfig) and "dataset" in d), None)
        if not isinstance(chosen, str):
            return
        path = config_dir() / "dataset" / f"{chosen}.yaml"
        name = OmegaConf.load(path).get("name")
    except Exception:  # noqa: BLE001 - composing reports a missing or broken yaml
        return
    if name != chosen:
        raise ConfigError(f"{path}: name: {name} must be the file's name ({chosen}): a "
                          "saved run finds its dataset's yaml by it")


def _check_kind_keys(parsed: list[Override], base: DictConfig | None) -> None:
    """A ``detector.KEY`` (``launcher.KEY``, ``backbone.KEY``) of another kind than the
    chosen one is refused by name (Hydra would suggest ``+detector.KEY``, which the chosen
    kind's settings then refuse with the same line)."""
    for f in dataclasses.fields(Settings):
        if not f.metadata.get("kinds"):
            continue
        section, registry = f.name, f.metadata["kinds"]
        chosen = f.metadata["default_kind"]
        if base is not None and isinstance(base.get(section), DictConfig):
            chosen = base[section].get(SELECTOR, chosen)
        for o in parsed:
            if o.key == section and isinstance(o.value, str):
                chosen = o.value
        mine = registry[chosen].__dataclass_fields__ if chosen in registry else {}
        for o in parsed:
            sub = o.key.split(".")
            if sub[0] != section or len(sub) < 2 or sub[1] in mine:
                continue
            owners = [n for n, c in registry.items() if sub[1] in c.__dataclass_fields__]
            if owners:
                raise ConfigError(f"{section}.{sub[1]}: a setting of {section}="
                                  f"{' or '.join(owners)}, not of {section}={chosen} (choose "
                                  f"{section}={owners[0]})")


def to_settings(cfg: DictConfig) -> Settings:
    """The typed, checked settings of a composed config (rules across fields included)."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing value for {', '.join(sorted(missing))}")
    settings = settings_from(OmegaConf.to_container(cfg, resolve=True))
    validate(settings)
    return settings


def load_settings(overrides: Sequence[str] = (), base: DictConfig | None = None) -> Settings:
    """``load_config`` as typed settings: what everything below the plan reads."""
    return to_settings(load_config(overrides, base))


def _compose(overrides: list[str]) -> DictConfig:
    where = config_dir()
    try:
        with initialize_config_dir(config_dir=str(where), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException):
        raise
    except Exception as e:  # noqa: BLE001 - a broken yaml under ACSL_CONF is user input
        msg = " ".join(str(e).split())[:200]
        raise ConfigError(f"{where}: cannot read the config files ({e.__class__.__name__}: "
                          f"{msg})") from None


def _update(base: DictConfig, parsed: list[Override]) -> DictConfig:
    cfg = _with_new_defaults(OmegaConf.create(OmegaConf.to_container(base, resolve=True)))
    groups = [o for o in parsed if o.key in GROUPS]
    if groups:
        fresh = _compose([o.text for o in groups])
        for o in groups:
            cfg[o.key] = fresh[o.key]
    OmegaConf.set_struct(cfg, True)
    for o in parsed:
        if o.key not in GROUPS:
            OmegaConf.update(cfg, o.key, o.value, merge=False, force_add=o.text[0] == "+")
    OmegaConf.set_struct(cfg, False)
    return cfg


def _with_new_defaults(saved: DictConfig) -> DictConfig:
    """A saved config with the keys added to ``conf/`` since it was saved, at their defaults
    (which keep the old behaviour), so that new options can be overridden on old runs. A
    saved loss node's classifier-layer keys are kept although its loss's yaml has none
    (a ``seesaw_normed`` head's node is ``name: seesaw`` with ``classifier: normed``)."""
    choices = [f"{g}={saved[g].name}" for g in GROUPS
               if isinstance(saved.get(g), DictConfig) and saved[g].get("name") in available(g)]
    fresh = _compose(choices)
    loss = saved.get("loss")
    if isinstance(loss, DictConfig) and isinstance(fresh.get("loss"), DictConfig):
        with open_dict(fresh.loss):
            for k in LOSS_LAYER_KEYS:
                if k in loss:
                    fresh.loss[k] = loss[k]
    return OmegaConf.merge(fresh, saved)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)

"""Where the config groups live and which options each has (no Hydra import: the CLI's
``--help`` lists them without paying for it)."""

from __future__ import annotations

import os
from pathlib import Path

from acsl_cli.errors import ConfigError

GROUPS = ("dataset", "backbone", "detector", "loss", "schedule", "sampler", "launcher")
#: keys of a ``loss`` node that choose the head's classifier layer, not parameters of the
#: loss (declared in ``settings.sections.LossSettings``; any loss takes them)
LOSS_LAYER_KEYS = ("classifier", "temperature")


def config_dir() -> Path:
    """The config groups: $ACSL_CONF, else ``acsl_cli/conf`` (installed wheel), else the
    checkout's top-level ``conf/`` (editable install, running from the repo)."""
    env = os.environ.get("ACSL_CONF")
    here = Path(__file__).resolve().parent
    if env:
        path = Path(env)
    else:
        path = next((p for p in (here / "conf", here.parent / "conf")
                     if (p / "config.yaml").is_file()), here / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: no config.yaml (set ACSL_CONF to the conf/ folder)")
    return path


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def groups_help() -> str:
    """The groups and their options, one line each, for ``--help``."""
    try:
        return "; ".join(f"{g}: {', '.join(available(g))}" for g in GROUPS)
    except ConfigError as e:
        return str(e)

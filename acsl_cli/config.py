"""Compose the Hydra config from ``conf/`` plus command-line overrides, and validate it.

Validation happens before anything is written, so a bad value never leaves a
half-written run behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from acsl_cli.errors import ConfigError

GROUPS = ("dataset", "backbone", "loss", "schedule")


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


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (``key=value``) and validate it."""
    overrides = list(overrides)
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override '{o}' is not of the form key=value")
        key, value = o.split("=", 1)
        key = key.lstrip("+~")
        if key in GROUPS and value not in available(key):
            raise ConfigError(f"unknown {key} '{value}' (choose from {', '.join(available(key))})")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"bad config override: {msg}") from None
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks that must fail fast with a one-line message naming the key."""
    xi = cfg.get("xi")
    if not isinstance(xi, (int, float)) or not 0 < float(xi) < 1:
        raise ConfigError(f"xi={xi}: must be a number strictly between 0 and 1")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed={cfg.get('seed')}: must be an integer")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device}: choose auto, cpu or cuda")
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing value for {', '.join(sorted(missing))}")
    for stage in ("stage1", "stage2"):
        s = cfg.schedule[stage]
        if s.epochs < 1 or s.lr <= 0:
            raise ConfigError(f"schedule.{stage}: epochs must be >= 1 and lr > 0")
    if cfg.schedule.batch_size < 1:
        raise ConfigError("schedule.batch_size must be >= 1")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)

"""Runs saved by an older version: their config lacks the keys added since; ``acsl eval
ckpt=`` must still take overrides of those keys, and the others keep their defaults."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from acsl_cli.config import load_config
from acsl_cli.errors import ConfigError


def _old_config():
    cfg = OmegaConf.to_container(load_config(["loss=bags", "seed=2"]), resolve=True)
    del cfg["test"]["max_detections"]  # both added after this run was "saved"
    del cfg["schedule"]["stage2"]["rois_per_image"]
    return OmegaConf.create(cfg)


def test_a_new_key_can_be_overridden_on_an_old_config():
    cfg = load_config(["test.max_detections=100"], base=_old_config())
    assert cfg.test.max_detections == 100
    assert cfg.schedule.stage2.rois_per_image is None  # the default, the old behaviour
    assert cfg.loss.name == "bags" and cfg.seed == 2  # the saved values win


def test_unknown_keys_are_still_errors_on_an_old_config():
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config(["test.no_such_key=1"], base=_old_config())


def test_eval_ckpt_applies_loss_overrides_to_the_saved_head_loss(tmp_path):
    from acsl_cli.config import to_yaml
    from acsl_cli.plan import checkpoint_settings, plan_eval

    saved = {"name": "acsl", "xi": 0.7, "bg_mode": "official", "bg_factor": False}
    ckpt = {"loss": saved, "config": to_yaml(load_config(["loss=acsl", "seed=2"]))}
    where = f"ckpt={tmp_path / 'checkpoint.pt'}"
    plan = plan_eval([where, "loss.bg_factor=true", "seed=1", "test.max_detections=5"])
    settings, loss = checkpoint_settings(plan, ckpt)
    assert loss.params["bg_factor"] is True and loss.params["xi"] == 0.7
    assert loss.name == "acsl"
    assert settings.seed == 1 and settings.test.max_detections == 5
    assert checkpoint_settings(plan_eval([where]), ckpt)[1].params["bg_factor"] is False

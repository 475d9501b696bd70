"""Shared fixtures: the tiny embedded benchmark that most pipeline tests train on."""

from __future__ import annotations

import pytest
import torch

#: A benchmark of 8 classes and a few images, trained and evaluated in seconds.
TINY = ["dataset.num_classes=8", "dataset.max_images_per_class=12",
        "dataset.val_instances_per_class=2", "schedule=smoke", "progress=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, datasets, an untrained detector) on the tiny benchmark."""
    from acsl_cli import config as config_mod
    from acsl_cli.pipeline.components import build_model, load_data, loss_context, make_loss
    from acsl_cli.settings import LossSettings

    cfg = config_mod.load_settings(TINY + [f"output_root={tmp_path_factory.mktemp('o')}"])
    data = load_data(cfg)
    ce = make_loss(LossSettings("softmax_ce"), loss_context(data, 0))
    torch.manual_seed(0)
    return cfg, data, build_model(cfg, data, ce)

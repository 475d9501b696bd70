"""The paper's larger backbones (Table 3: ResNeXt-101-64x4d; Table 5: ResNet-152) against
torchvision's own networks, and one end-to-end smoke run with the largest of them."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.models import get_model, get_model_weights

from acsl_cli.config import load_config, load_settings
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.models.backbones import build_backbone
from acsl_cli.settings import ResNetBackboneSettings

ARCHS = {"r152": "resnet152", "x101_64x4d": "resnext101_64x4d",
         "x101_32x8d": "resnext101_32x8d"}


@pytest.mark.parametrize("name", ["r152", "x101_64x4d"])
def test_trunk_is_torchvisions_network_without_fc(name):
    arch = ARCHS[name]
    torch.manual_seed(0)
    body = build_backbone(load_settings([f"backbone={name}"]).backbone).body
    reference = get_model(arch, weights=None)
    # learnable numbers: torchvision's parameters but fc; frozen BatchNorm keeps its affine
    # weight and bias as buffers, so they are counted from there
    fc = sum(p.numel() for p in reference.fc.parameters())
    want = sum(p.numel() for p in reference.parameters()) - fc
    frozen = sum(b.numel() for n, b in body.named_buffers() if n.endswith((".weight", ".bias")))
    assert sum(p.numel() for p in body.parameters()) + frozen == want
    # ... which is torchvision's published count for the ImageNet model minus its fc
    assert want == get_model_weights(arch).DEFAULT.meta["num_params"] - fc
    # and the same tensors by name and shape (BatchNorm's step counter aside)
    ours = {k: v.shape for k, v in body.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert ours == theirs


def test_large_configs_inherit_r50():
    r50 = OmegaConf.to_container(load_config(["backbone=r50"]).backbone)
    for name in ARCHS:
        cfg = OmegaConf.to_container(load_config([f"backbone={name}"]).backbone)
        assert cfg == {**r50, "name": name}, name
        assert load_config([f"backbone={name}", "backbone.weights=DEFAULT"]).backbone.weights \
            == "DEFAULT"


def test_x101_32x8d_trunk_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(2)
    state = get_model("resnext101_32x8d", weights=None).state_dict()
    path = tmp_path / "resnext101_32x8d.pth"
    torch.save(state, path)
    cfg = load_settings(["backbone=x101_32x8d", f"backbone.weights={path}"]).backbone
    body = build_backbone(cfg).body.state_dict()
    assert torch.equal(body["layer4.2.conv2.weight"], state["layer4.2.conv2.weight"])
    assert torch.equal(body["bn1.running_var"], state["bn1.running_var"])


def test_weight_names_the_arch_lacks_are_one_line():
    cfg = ResNetBackboneSettings(name="x101_64x4d", weights="IMAGENET1K_V2")
    with pytest.raises(ConfigError, match="no such resnext101_64x4d weights") as err:
        build_backbone(cfg)  # torchvision publishes only IMAGENET1K_V1 for this network
    assert "\n" not in str(err.value) and "IMAGENET1K_V1" in str(err.value)


def test_damaged_download_in_the_cache_is_one_line(monkeypatch, tmp_path):
    """A truncated file where torchvision caches its downloads: one line naming the fix."""
    weights = get_model_weights("resnext101_64x4d").DEFAULT
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / weights.url.rsplit("/", 1)[1]).write_bytes(b"truncated download")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DataError, match="damaged") as err:
        build_backbone(ResNetBackboneSettings(name="x101_64x4d", weights="DEFAULT"))
    assert "\n" not in str(err.value) and "backbone.weights=/path/resnext101_64x4d.pth" in \
        str(err.value)


# Shrunk so that stage 1, stage 2 and evaluation with an 81M-parameter trunk stay within a
# test budget on a CPU: 64 px inputs, 2 images a batch, 2 iterations a stage, small RPN /
# RoI budgets and box head. Measured: ~40 s of CPU time (the schedule=smoke defaults alone:
# ~150 s), see the branch's report.
SHRUNK = ["schedule=smoke", "progress=false", "dataset.num_classes=4",
          "dataset.max_images_per_class=6", "dataset.val_instances_per_class=1",
          "schedule.max_iters=2", "schedule.batch_size=2", "schedule.eval_max_images=4",
          "dataset.min_size=64", "dataset.max_size=64", "backbone.anchor_sizes=[16,32,64,128,256]",
          "backbone.representation_size=128", "backbone.roi_batch_size_per_image=32",
          "backbone.rpn_pre_nms_top_n_train=100", "backbone.rpn_post_nms_top_n_train=50",
          "backbone.rpn_pre_nms_top_n_test=50", "backbone.rpn_post_nms_top_n_test=25"]


def test_smoke_train_with_resnext101_64x4d(tmp_path):
    from typer.testing import CliRunner

    from acsl_cli.cli import app

    start = time.process_time()
    r = CliRunner().invoke(app, ["train", "backbone=x101_64x4d", *SHRUNK,
                                 f"output_root={tmp_path}"])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").iterdir())
    assert (run / "metrics.json").is_file()
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.backbone.name == "x101_64x4d" and saved.backbone.weights is None
    print(f"x101_64x4d smoke: {time.process_time() - start:.1f} s CPU")

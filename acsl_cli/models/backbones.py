"""Backbone registry: ``backbone=NAME`` -> a torchvision FPN backbone.

``small`` is a ResNet-10 (one BasicBlock per stage) with a 64-channel FPN: it trains from
scratch on the embedded benchmark within a CPU budget. The others are the paper's
ResNet / ResNeXt FPN backbones with frozen BatchNorm: ``r50``, ``r101``, ``r152`` (Table 5,
Open Images), ``x101_64x4d`` (Table 3, the paper's ResNeXt-101-64x4d) and ``x101_32x8d``.
Their ImageNet weights come from a local file (``weights=/path/resnet50.pth``), from
torchvision's download (``weights=DEFAULT`` or one of the arch's named weights, e.g.
``IMAGENET1K_V2``), or nowhere (``weights=null``, used by the tests).
"""

from __future__ import annotations

import contextlib
import pickle
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import get_model_weights, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import misc
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from acsl_cli.errors import ConfigError, DataError
from acsl_cli.settings import BackboneSettings, ResNetBackboneSettings, SmallBackboneSettings
from acsl_cli.tensor_file import load_state_dict_file

#: ``backbone.name`` -> builder; the names are the settings' ``BACKBONE_KINDS``
_BACKBONES: dict[str, Callable[[Any], nn.Module]] = {}


def register_backbone(name: str):
    def wrap(fn):
        _BACKBONES[name] = fn
        return fn

    return wrap


def backbone_names() -> tuple[str, ...]:
    return tuple(_BACKBONES)


def build_backbone(cfg: BackboneSettings) -> nn.Module:
    """Build the backbone named ``cfg.name`` (the settings' rule has checked the name); it
    exposes ``out_channels`` for FasterRCNN."""
    return _BACKBONES[cfg.name](cfg)


@register_backbone("small")
def small_resnet_fpn(cfg: SmallBackboneSettings) -> nn.Module:
    body = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], norm_layer=nn.BatchNorm2d)
    return BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[128, 256, 512],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _resnet_fpn(arch: str, cfg: ResNetBackboneSettings) -> nn.Module:
    weights, trainable = cfg.weights, cfg.trainable_layers
    if weights in (None, "", "none", "null"):
        return resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=trainable,
                                   norm_layer=misc.FrozenBatchNorm2d)
    members = get_model_weights(arch).__members__
    key = str(weights).upper()
    if key in members:  # torchvision's normal download path, for users with internet access
        try:
            with _download_notice_held():
                return resnet_fpn_backbone(backbone_name=arch, weights=members[key],
                                           trainable_layers=trainable)
        except (pickle.UnpicklingError, EOFError) as e:  # a damaged file in torch's cache
            raise DataError(
                f"backbone.weights={weights}: the cached {arch} weights under "
                f"{torch.hub.get_dir()}/checkpoints are damaged ({_one_line(e)}); delete that "
                f"file, or pass a local file: backbone.weights=/path/{arch}.pth") from None
        except (OSError, RuntimeError) as e:  # URLError is an OSError; bad download: Runtime
            reason = _one_line(getattr(e, "reason", e))
            raise DataError(
                f"backbone.weights={weights}: cannot download {arch} weights ({reason}); "
                f"offline, pass a local file: backbone.weights=/path/{arch}.pth") from None
    path = _local_weights(arch, weights)
    state = load_state_dict_file(path, "backbone weights")
    model = resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=5,
                                norm_layer=misc.FrozenBatchNorm2d)
    try:
        missing, _ = model.body.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise DataError(f"{path}: not a {arch} state dict ({_one_line(e)})") from None
    if missing:
        raise DataError(f"{path}: not a {arch} state dict (missing {missing[0]}, ...)")
    _freeze_stages(model.body, trainable)
    return model


def _local_weights(arch: str, weights: Any) -> Path:
    """``backbone.weights=`` that is neither null nor torchvision's name: a local file."""
    members = get_model_weights(arch).__members__
    if str(weights).upper().startswith("IMAGENET") and not Path(weights).exists():
        raise ConfigError(f"backbone.weights={weights}: torchvision has no such {arch} weights "
                          f"(choose from {', '.join(members)}, null or a local file)")
    return Path(weights)


ARCHS = {"r50": "resnet50", "r101": "resnet101", "r152": "resnet152",
         "x101_64x4d": "resnext101_64x4d", "x101_32x8d": "resnext101_32x8d"}


def check_weights(cfg: BackboneSettings) -> None:
    """A local ``backbone.weights=`` file read (weights-only) and checked to be a state
    dict: run before any data is generated or folder created."""
    if not isinstance(cfg, ResNetBackboneSettings):
        return
    weights, arch = cfg.weights, ARCHS[cfg.name]
    if weights in (None, "", "none", "null") or \
            str(weights).upper() in get_model_weights(arch).__members__:
        return
    load_state_dict_file(_local_weights(arch, weights), "backbone weights")


class _HeldNotice:
    """stdout/stderr that hold torch.hub's "Downloading: URL to FILE" line until the
    download shows progress (then it is written, before the progress), so that a failed
    download (offline) prints only the one-line error."""

    def __init__(self, stream: Any, held: list[tuple[Any, str]]) -> None:
        self.stream, self.held = stream, held

    def write(self, text: str) -> int:
        if text.startswith("Downloading: ") and not self.held:
            self.held.append((self.stream, text))
            return len(text)
        release(self.held)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def release(held: list[tuple[Any, str]]) -> None:
    while held:
        stream, text = held.pop()
        stream.write(text)


@contextlib.contextmanager
def _download_notice_held() -> Iterator[None]:
    held: list[tuple[Any, str]] = []
    with contextlib.redirect_stdout(_HeldNotice(sys.stdout, held)), \
            contextlib.redirect_stderr(_HeldNotice(sys.stderr, held)):  # type: ignore[type-var]
        yield  # an exception drops the held line; success writes it
    release(held)


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())[:160]


def _freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    keep = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for name, p in body.named_parameters():
        if all(not name.startswith(k) for k in keep):
            p.requires_grad_(False)


@register_backbone("r50")
def r50_fpn(cfg: ResNetBackboneSettings) -> nn.Module:
    return _resnet_fpn("resnet50", cfg)


@register_backbone("r101")
def r101_fpn(cfg: ResNetBackboneSettings) -> nn.Module:
    return _resnet_fpn("resnet101", cfg)


@register_backbone("r152")
def r152_fpn(cfg: ResNetBackboneSettings) -> nn.Module:
    return _resnet_fpn("resnet152", cfg)


@register_backbone("x101_64x4d")
def x101_64x4d_fpn(cfg: ResNetBackboneSettings) -> nn.Module:
    return _resnet_fpn("resnext101_64x4d", cfg)


@register_backbone("x101_32x8d")
def x101_32x8d_fpn(cfg: ResNetBackboneSettings) -> nn.Module:
    return _resnet_fpn("resnext101_32x8d", cfg)

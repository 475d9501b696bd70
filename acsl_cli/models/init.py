"""Start a detector from another one's weights (``init=PATH``).

The release starts LVIS training from a COCO-trained Faster R-CNN. Any torchvision Faster
R-CNN state dict has this project's parameter names (same modules), so weights are copied
by name wherever the shapes agree; the class-dependent layers of a detector trained on
other classes (``cls_score``, ``bbox_pred``) keep their fresh initialisation, and the
caller logs what was re-initialised and what was not used. A Cascade R-CNN takes a Faster
R-CNN's box head and classifier into its first stage (same modules under
``roi_heads.stages.0.``); its class-agnostic regressor has another shape and starts fresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acsl_cli.errors import DataError
from acsl_cli.models.cascade import stage_prefix
from acsl_cli.models.roi_head import is_loss_state

#: Faster R-CNN names -> the same modules in a cascade's first stage
_FIRST_STAGE = ("roi_heads.box_head.", "roi_heads.box_predictor.")


@dataclass(frozen=True)
class InitReport:
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # in the model, absent or of another shape in the file
    unused: tuple[str, ...]  # in the file, not in the model


def detector_state(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    """The parameter dict inside a loaded file: a plain state dict, or one under
    ``model`` / ``state_dict`` (acsl checkpoints, common training scripts)."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DataError(f"{source}: not a detector state dict (a mapping of names to tensors)")
    return obj


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], source: str
                  ) -> InitReport:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s."""
    own = model.state_dict()
    # another run's loss statistics are no weights: the detector's loss starts its own
    state = _first_stage_names({k: v for k, v in state.items() if not is_loss_state(k)}, own)
    own = {k: v for k, v in own.items() if not is_loss_state(k)}
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not any(k.startswith("backbone.") for k in loaded):
        raise DataError(f"{source}: no backbone weight matches this detector (another "
                        "architecture or backbone?)")
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k])
    # BatchNorm's step counter has no meaning for the frozen BatchNorm used here
    unused = tuple(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
    return InitReport(tuple(loaded), tuple(k for k in own if k not in set(loaded)), unused)


def _first_stage_names(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """``state`` with Faster R-CNN head names renamed to a cascade's stage 0 where ``own``
    (the model's state) has the renamed key and not the original."""
    out = {}
    for k, v in state.items():
        for old in _FIRST_STAGE:
            new = stage_prefix(0) + old[len("roi_heads."):] + k[len(old):]
            if k.startswith(old) and k not in own and new in own:
                k = new
                break
        out[k] = v
    return out

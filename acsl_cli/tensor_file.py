"""The one reader of torch files (checkpoints, backbone weights, ``init=``): never
unpickles. ``torch.load(..., weights_only=True)`` accepts only tensors, numbers, strings,
lists and dicts; anything else, and any file torch did not write, is one line naming the
file and what it is, without torch's warnings or the loader's internal error."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from acsl_cli.errors import DataError

_ZIP = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE = b"\x80"  # the legacy format and plain pickles: a protocol-2+ pickle header


def load_tensor_file(path: str | Path, what: str = "checkpoint") -> Any:
    """The content of a torch file, read weights-only; a one-line DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if not (head.startswith(_ZIP) or head.startswith(_PICKLE)):
        raise DataError(f"{path}: not a readable {what}: not a file that torch.save wrote")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: not a readable {what}: it holds something other than "
                        "tensors, numbers, strings, lists and dicts (nothing in it was run)"
                        ) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise DataError(f"{path}: not a readable {what} (a damaged torch file: "
                        f"{e.__class__.__name__})") from None


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A file holding a state dict (or ``{"state_dict": ...}``): names -> tensors."""
    state = load_tensor_file(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(state).__name__
        raise DataError(f"{path}: not a state dict of tensors (it holds a {kind}); "
                        f"{what} must map parameter names to tensors")
    return state

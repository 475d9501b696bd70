"""Checkpoints and state files: atomic writes, reads that never run code, the cache key.

Every read uses ``torch.load(..., weights_only=True)``: a checkpoint is untrusted input,
and a pickle can run arbitrary code on load. What we store is only tensors, numbers,
strings, lists and dicts, which that loader accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name, writing
from acsl_cli.layout import follow

FORMAT = "acsl-detector/1"  # a whole detector
HEAD_FORMAT = "acsl-head/1"  # a stage-2 classifier + pointer to its stage-1 checkpoint


def save_state_file(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a per-process temp name, then rename: never a truncated file. A failed
    write (full disk, file-size limit) is a one-line ``WriteError`` and leaves no temp file.
    """
    path = Path(path)
    tmp = tmp_name(path)  # host and pid in the name: a later run removes it if we die
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:  # a Python file: torch's error then keeps the OSError
                try:
                    torch.save(payload, f)
                except RuntimeError as e:  # torch's zip writer hides the OSError of a write
                    raise _os_error(e) from None
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _os_error(error: RuntimeError) -> BaseException:
    """The ``OSError`` behind torch's RuntimeError ("unexpected pos ...") when a write
    into our file object failed, else ``error`` itself."""
    cause = error.__cause__ or error.__context__
    return cause if isinstance(cause, OSError) else error


def load_state_file(path: str | Path) -> Any:
    """Read a file written by ``save_state_file``; anything else is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: not a readable checkpoint: it holds something other than "
                        "tensors, numbers, strings, lists and dicts (nothing in it was run)"
                        ) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise DataError(f"{path}: not a readable checkpoint ({e.__class__.__name__})") from None


def save_checkpoint(path: Path, payload: dict[str, Any], fmt: str = FORMAT) -> None:
    save_state_file(path, {"format": fmt, **payload})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A detector or head checkpoint (``ckpt["format"]`` says which)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    ckpt = load_state_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, HEAD_FORMAT):
        raise DataError(f"{path}: not an acsl detector checkpoint")
    return ckpt


def file_digest(path: str | Path) -> str:
    """sha256 of a file: ties a lean head to the exact stage-1 checkpoint it was trained on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_head_base(path: str | Path, head: dict[str, Any]) -> dict[str, Any]:
    """The stage-1 checkpoint a lean head points to, checked against the recorded hash."""
    ref = head.get("stage1") or {}
    base = follow(str(ref.get("path", "")), Path(path).parent)  # older heads: absolute
    if not base.is_file():
        raise DataError(f"{path}: its stage-1 checkpoint {base} is missing (a head checkpoint "
                        "holds only the classifier; keep outputs/cache/stage1)")
    if file_digest(base) != ref.get("sha256"):
        raise DataError(f"{path}: its stage-1 checkpoint {base} has changed since the head "
                        "was trained (sha256 differs)")
    return load_checkpoint(base)


def check_classes(path: str | Path, ckpt: dict[str, Any], category_ids: list[int]) -> None:
    """The checkpoint's label map must be the dataset's, or every AP would be garbage."""
    have = list(ckpt.get("category_ids", []))
    if have != list(category_ids):
        raise DataError(
            f"{path}: checkpoint has {len(have)} classes that do not match the dataset's "
            f"{len(category_ids)} categories"
        )


def config_hash(node: Any) -> str:
    """Stable short hash of a JSON-able config subtree."""
    blob = json.dumps(node, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]

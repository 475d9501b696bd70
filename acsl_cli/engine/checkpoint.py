"""Checkpoints and state files: atomic writes, and reads that never run code.

Every read uses ``torch.load(..., weights_only=True)``: a checkpoint is untrusted input,
and a pickle can run arbitrary code on load. What we store is only tensors, numbers,
strings, lists and dicts, which that loader accepts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from acsl_cli.errors import DataError
from acsl_cli.files import file_sha256, tmp_name, writing
from acsl_cli.layout import HEADS, RUNS
from acsl_cli.tensor_file import load_tensor_file
from acsl_cli.untrusted import confined

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
    return load_tensor_file(path, "checkpoint")


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


def head_tree(path: Path) -> Path:
    """The folder tree a head checkpoint came with: the output root of
    ``<root>/runs/<run>/heads/<id>/checkpoint.pt``, else the head's own folder."""
    path = Path(path).absolute()
    parents = path.parents
    if len(parents) > 4 and parents[1].name == HEADS and parents[3].name == RUNS:
        return parents[4]
    return path.parent


def load_head_base(path: str | Path, head: dict[str, Any]) -> dict[str, Any]:
    """The stage-1 checkpoint a lean head points to, checked against the recorded hash.
    The pointer is untrusted data: it must name a file inside the head's output root
    (``untrusted.confined``), so nothing outside it is opened or hashed."""
    ref = head.get("stage1")
    if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
        raise DataError(f"{path}: a head checkpoint without a stage-1 pointer")
    origin = Path(path).absolute().parent
    base = confined(ref["path"], origin, head_tree(Path(path)), "stage-1 pointer", Path(path))
    if not base.is_file():
        raise DataError(f"{path}: its stage-1 checkpoint {ref['path']} is missing (a head "
                        "checkpoint holds only the classifier; keep outputs/cache/stage1)")
    if file_sha256(base) != ref.get("sha256"):
        raise DataError(f"{path}: its stage-1 checkpoint {ref['path']} has changed since the "
                        "head was trained (sha256 differs)")
    return load_checkpoint(base)


def load_head_state(path: str | Path, head: dict[str, Any]) -> dict[str, Any]:
    """A lean head's whole detector state: its stage-1 detector with the head's classifier.
    A classifier of another detector (a Faster R-CNN head pointing at a cascade's stage 1,
    or the reverse) is a one-line DataError."""
    from acsl_cli.models.trunk import with_classifier

    base = load_head_base(path, head)
    try:
        return with_classifier(base["model"], head["classifier"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"{path}: its classifier does not fit the stage-1 detector its "
                        f"pointer names ({head['stage1'].get('path')}: another detector)"
                        ) from None


def check_classes(path: str | Path, ckpt: dict[str, Any], category_ids: list[int]) -> None:
    """The checkpoint's label map must be the dataset's, or every AP would be garbage."""
    have = list(ckpt.get("category_ids", []))
    if have != list(category_ids):
        raise DataError(
            f"{path}: checkpoint has {len(have)} classes that do not match the dataset's "
            f"{len(category_ids)} categories"
        )

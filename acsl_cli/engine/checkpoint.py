"""Checkpoints: atomic writes, validated reads, and the stage-1 cache key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from acsl_cli.errors import DataError

FORMAT = "acsl-detector/1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file and rename, so a crash never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise DataError(f"{path}: not a readable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not an acsl detector checkpoint")
    return ckpt


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

"""Checks that run before any data generation or training, and the last write of a run.

A mistake that would only surface after minutes of training (an unwritable ``out=``, a
full disk, a ``run_name`` with a slash) fails first, in one line, with nothing written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acsl_cli.data.datasets import GENERATED_KINDS
from acsl_cli.engine.distributed import resolve_device
from acsl_cli.engine.mixed_precision import check_device
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.layout import OutputLayout
from acsl_cli.models.backbones import check_weights
from acsl_cli.pipeline.rundir import (
    atomic_write_json,
    check_free_disk,
    check_out_file,
    check_output_root,
    check_run_name,
)
from acsl_cli.reporting.tables import metrics_json
from acsl_cli.reporting.trackers import check_tracker
from acsl_cli.settings import Settings
from acsl_cli.settings.datasets import OPENIMAGES_KINDS, SyntheticDataset, SyntheticLvisDataset

# Parameters of the detector without its class-dependent layers, per backbone (measured
# from the built models); each class adds (1 + 4) x representation_size weights.
BACKBONE_PARAMS = {"small": 5.9e6, "r50": 41.1e6, "r101": 60.1e6, "r152": 75.8e6,
                   "x101_64x4d": 99.1e6, "x101_32x8d": 104.5e6}
BYTES_PER_PARAM = 4
MARGIN = 1.25


def checkpoint_bytes(s: Settings) -> int:
    """Estimated size of one detector checkpoint of these settings."""
    d = s.dataset
    kind = d.kind
    if kind in GENERATED_KINDS and isinstance(d, (SyntheticDataset, SyntheticLvisDataset)):
        classes = d.num_classes
    elif kind in OPENIMAGES_KINDS:
        classes = 601  # an upper bound: the 600 boxable classes (the embedded set has 66)
    else:
        classes = 1231  # LVIS and COCO-format sets: an upper bound, LVIS's
    params = BACKBONE_PARAMS.get(s.backbone.name, 60.1e6)
    params += (classes + 1) * 5 * s.backbone.representation_size
    return int(params * BYTES_PER_PARAM)


def disk_needed(s: Settings, num_heads: int) -> int:
    """Stage-1 checkpoint + its resume file (weights and momentum) + one per head."""
    return int(checkpoint_bytes(s) * (3 + num_heads) * MARGIN)


def check_run(s: Settings, num_heads: int, dry_run: bool = False) -> None:
    """Everything about paths, space and packages that can be known before a run starts
    (a dry run creates nothing, not even output_root)."""
    check_tracker(s.tracker)
    check_weights(s.backbone)
    check_output_root(Path(s.output_root), create=not dry_run)
    if s.run_name:
        check_run_name(s.run_name)
        taken = OutputLayout.at(s.output_root).run(s.run_name)
        if taken.exists():
            raise ConfigError(f"run_name={s.run_name}: {taken} already exists")
    if s.out:
        check_out_file(Path(s.out))
    check_free_disk(Path(s.output_root), disk_needed(s, num_heads))
    check_device(s.amp, resolve_device(s.device))


def write_out(path: str | Path, metrics: Mapping[str, Any], saved_run: Path | None,
              calibration: Mapping | None = None) -> None:
    """The ``out=`` file; if it cannot be written, the finished run is not lost. ``metrics``
    is one row, or {protocol: row}: one protocol writes its row's keys (as always), several
    an object of rows by protocol. With ``test.calibration``, its record (the gamma curve,
    the pick) is under ``calibration``."""
    if all(isinstance(v, Mapping) for v in metrics.values()):
        rows = {p: metrics_json(m) for p, m in metrics.items()}
        data: dict = dict(next(iter(rows.values()))) if len(rows) == 1 else rows
    else:
        data = dict(metrics_json(metrics))
    if calibration is not None:
        data["calibration"] = dict(calibration)
    try:
        atomic_write_json(Path(path), data)
    except OSError as e:
        where = f"; the run is saved in {saved_run}" if saved_run else ""
        raise DataError(f"out={path}: cannot write ({e.strerror or e}){where}") from None

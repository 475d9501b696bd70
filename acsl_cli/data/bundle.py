"""``DatasetBundle``: what every dataset kind hands downstream (its own module so that the
builders of each kind and the one dispatcher, ``data.datasets``, import it without a circle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acsl_cli.data.annotations import CategoryMap, CategoryStats


@dataclass
class DatasetBundle:
    """Everything downstream needs: splits, the label map, train statistics, val GT.

    ``groups_note`` is the one-line account of the frequency groups (from train) for logs
    and reports; ``never_in_train`` lists category ids without a train image (rare, AP 0).
    Open Images sets also carry ``loader`` (what the challenge metric needs) and, when
    boxes count for their ancestors in training, ``ancestors`` (index label - 1).
    """

    train: Any  # LvisDetection or OpenImagesDetection: the same (image, target) items
    val: Any
    cmap: CategoryMap
    stats: CategoryStats
    groups_note: str = ""
    never_in_train: tuple[int, ...] = ()
    openimages: Any = None  # data.openimages.bundle.OpenImagesEval
    ancestors: tuple[tuple[int, ...], ...] | None = None

    @property
    def val_gt(self) -> dict:
        return self.val.data

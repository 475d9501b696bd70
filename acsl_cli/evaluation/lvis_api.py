"""``test.backend=lvis-api``: the official LVIS evaluator (PyPI ``lvis`` 0.5.3, extra
``.[lvis]``) gives the standard protocol's numbers, for reviewers who want them from the
reference rather than from this project's numpy evaluator (``lvis_eval``, equal on the
tests' fixture and 6x faster).

Two things lvis 0.5.3 cannot do, handled here without changing a number: it calls
``np.float`` (removed in numpy 1.24; this module lends ``np.float = float`` for the
duration of the call and takes it back), and it crashes on an empty result list (the
metrics are then those of no detection: 0 where a group has ground truth, as ours). It
reads the ground truth from a dict here, so the frequency groups a ``train_ann=`` gave
take part. Fixed and Pooled AP have no implementation in lvis-api (their reference
scripts are separate): with this backend they are refused (``config_rules``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from collections.abc import Iterator

import numpy as np

from acsl_cli.errors import ConfigError
from acsl_cli.evaluation.detections import Detections
from acsl_cli.evaluation.lvis_eval import METRIC_KEYS, LvisEvalResult, evaluate_parsed

BACKENDS = ("ours", "lvis-api")


@contextlib.contextmanager
def _numpy_float() -> Iterator[None]:
    """lvis 0.5.3's ``np.float`` (= the builtin float), only while it runs."""
    had = "float" in np.__dict__
    if not had:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not had:
            del np.float  # type: ignore[attr-defined]


def _as_dicts(dets: Detections) -> list[dict]:
    """lvis-api's input: result dicts in the order parsed (its per-image cap keeps the
    first of tied scores, as ours does)."""
    return [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b],
             "score": float(s)}
            for i, c, b, s in zip(dets.image_ids.tolist(), dets.category_ids.tolist(),
                                  dets.boxes.tolist(), dets.scores.tolist(), strict=True)]


def evaluate_with_lvis_api(gt: dict, dets: Detections, max_dets: int = 300) -> LvisEvalResult:
    """Metrics and per-category AP of lvis-api's ``LVISEval`` (bbox), in this project's
    form: nan where lvis-api reports -1, per-category rows as ``lvis_eval`` gives them."""
    try:
        with _numpy_float():
            from lvis import LVIS, LVISEval, LVISResults
    except ImportError:
        raise ConfigError("test.backend=lvis-api needs the lvis package: pip install "
                          "'acsl-cli[lvis]'") from None
    # ours gives the per-category rows' names and GT counts, and the metrics of no
    # detection, where lvis-api would crash
    ours = evaluate_parsed(gt, dets, max_dets)
    if len(dets.scores) == 0:
        return ours
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = copy.deepcopy(gt)
    quiet = logging.getLogger("lvis")  # its info and "assuming ... correct format" lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _numpy_float(), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its logger.warn
            lvis_gt._create_index()
            results = LVISResults(lvis_gt, _as_dicts(dets), max_dets=max_dets)
            run = LVISEval(lvis_gt, results, "bbox")
            run.run()
    finally:
        quiet.setLevel(level)
    metrics = {key: _nan(float(run.results[key])) for key in METRIC_KEYS}
    precision = run.eval["precision"]  # (T, R, K, A)
    column = {cat: k for k, cat in enumerate(run.params.cat_ids)}
    rows = []
    for row in ours.per_category:
        values = precision[:, :, column[row["category_id"]], 0]
        valid = values[values > -1]
        rows.append({**row, "AP": float(valid.mean()) if valid.size else math.nan})
    return LvisEvalResult(metrics, rows)


def _nan(value: float) -> float:
    return math.nan if value == -1 else value

"""Evaluation: LVIS-rules bounding-box AP (lvis-api 0.5.3 semantics, numpy implementation)."""

from acsl_cli.evaluation.lvis_eval import (
    METRIC_KEYS,
    LvisEvalResult,
    evaluate_lvis,
    load_detections,
    validate_detections,
)

__all__ = [
    "METRIC_KEYS",
    "LvisEvalResult",
    "evaluate_lvis",
    "load_detections",
    "validate_detections",
]

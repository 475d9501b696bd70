"""Evaluation: LVIS-rules bounding-box AP (lvis-api 0.5.3 semantics, numpy implementation).

``lvis_eval``: rules and matching; ``detections``: reading and checking results files;
``results``: scoring a results file with train frequency groups. All torch-free.
"""

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

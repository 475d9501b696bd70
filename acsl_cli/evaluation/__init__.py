"""Evaluation: LVIS-rules bounding-box AP (lvis-api 0.5.3 semantics) and the Open Images
challenge metric, numpy implementations, all torch-free.

LVIS: ``lvis_gt`` (what takes part), ``lvis_matching`` (greedy matching), ``lvis_eval``
(precision and summary), ``lvis_protocols`` (Fixed and Pooled AP); ``detections``: reading
and checking results files; ``results``: scoring a results file with train frequency groups.
Open Images: the ``openimages_*``
modules.
"""

from acsl_cli.evaluation.detections import load_detections, validate_detections
from acsl_cli.evaluation.lvis_eval import METRIC_KEYS, LvisEvalResult, evaluate_lvis

__all__ = [
    "METRIC_KEYS",
    "LvisEvalResult",
    "evaluate_lvis",
    "load_detections",
    "validate_detections",
]

"""``acsl eval dets=``: a results file scored against its annotations, no model."""

from __future__ import annotations

from acsl_cli.errors import ConfigError
from acsl_cli.plan import EvalPlan
from acsl_cli.settings.datasets import OpenImagesScored


def run_eval_results(plan: EvalPlan) -> tuple[dict[str, dict[str, float]], str]:
    """Metrics of ``dets=`` (LVIS results JSON, or Open Images predictions CSV) per
    protocol (``test.protocol``; Open Images: its own metric, as "standard") and the
    note under the table: the frequency groups, and (LVIS) how many of the ground truth's
    images the detections cover."""
    assert plan.dets is not None and plan.ann is not None and plan.settings is not None
    s = plan.settings
    protocols = s.test.protocols
    if plan.dets.lower().endswith(".csv"):  # Open Images predictions
        if s.test.backend == "lvis-api":
            raise ConfigError("test.backend=lvis-api: Open Images predictions are scored "
                              "with the Open Images metric, not LVIS rules")
        if protocols != ("standard",):
            raise ConfigError(f"test.protocol={s.test.protocol}: fixed and pooled are LVIS "
                              "protocols; Open Images predictions have their own metric")
        from acsl_cli.evaluation.openimages_file import evaluate_predictions_file

        # the challenge's weight unless an Open Images dataset sets its own
        group_of_weight = (float(s.dataset.group_of_weight)
                           if isinstance(s.dataset, OpenImagesScored) else 1.0)
        oi = evaluate_predictions_file(plan.dets, plan.ann, plan.train_ann,
                                       expand=s.test.expand_hierarchy,
                                       group_of_weight=group_of_weight,
                                       unknown_images=s.test.unknown_images)
        return {"standard": oi.metrics}, oi.groups_note
    from acsl_cli.evaluation.results import evaluate_results_file

    result = evaluate_results_file(plan.dets, plan.ann, plan.train_ann, protocols,
                                   s.test.dets_per_class, s.test.backend)
    return result.by_protocol, "\n".join(filter(None, (result.groups_note, result.coverage)))

"""Evaluation entry points: score heads on val, or a saved checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.data.lvis_dataset import subset_gt
from acsl_cli.engine.checkpoint import HEAD_FORMAT, check_classes, load_checkpoint, load_head_state
from acsl_cli.engine.inference import eval_subset, predict
from acsl_cli.errors import DataError
from acsl_cli.evaluation import evaluate_lvis
from acsl_cli.models.trunk import FrozenTrunk, Scorer
from acsl_cli.pipeline.components import (
    build_model,
    load_data,
    loss_context,
    make_loss,
    setup_torch,
)
from acsl_cli.plan import EvalPlan, checkpoint_settings
from acsl_cli.settings import Settings

log = logging.getLogger("acsl")


@dataclass
class Evaluation:
    """Per scorer name: LVIS metrics, per-category AP rows, and the detections scored."""

    metrics: dict[str, dict[str, float]]
    per_category: dict[str, list[dict]]
    detections: dict[str, list[dict]]


def evaluate(s: Settings, data: DatasetBundle, model, scorers: Mapping[str, Scorer] | None,
             device: str, during: Mapping[str, object] | None = None) -> Evaluation:
    """Predict on val (or its first ``eval_max_images``) and score with LVIS rules.
    ``during`` (stage, epoch) marks a validation during training in the event log."""
    val = eval_subset(data.val, s.schedule.eval_max_images)
    if not isinstance(model, FrozenTrunk):
        model = test_trunk(s, model)
    results = predict(model, val, data.cmap, device, scorers, s.schedule.batch_size,
                      s.progress, amp=s.amp)
    out = Evaluation({}, {}, results)
    score = scorer(s, data, len(val))
    for name, dets in results.items():
        metrics, rows = score(dets)
        out.metrics[name], out.per_category[name] = metrics, rows
        when = f" ({during['stage']}, epoch {during['epoch']})" if during else ""
        log.info("evaluated %s on %d val images%s: AP %.4f APr %.4f APc %.4f APf %.4f", name,
                 len(val), when, *(metrics[k] for k in ("AP", "APr", "APc", "APf")),
                 extra={"event": {"type": "eval", "model": name, "images": len(val),
                                  **(during or {}), **metrics}})
    return out


def validation(s: Settings, data: DatasetBundle, device: str, stage: str,
               model: Callable[[], tuple[FrozenTrunk, Mapping[str, Scorer]]]
               ) -> Callable[[int], None] | None:
    """The ``after_epoch`` hook of ``schedule.eval_every_epochs`` (None when it is off):
    ``model()`` gives the trunk and scorers to evaluate. The random streams are forked, so
    a run's results do not depend on whether it validated along the way."""
    every = s.schedule.eval_every_epochs
    if every is None:
        return None

    def run(epoch: int) -> None:
        if epoch % every:
            return
        devices = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            trunk, scorers = model()
            evaluate(s, data, trunk, scorers, device, {"stage": stage, "epoch": epoch})

    return run


def scorer(s: Settings, data: DatasetBundle, images: int
           ) -> Callable[[list[dict]], tuple[dict, list[dict]]]:
    """Metrics and per-category rows of detections on the first ``images`` val images:
    LVIS rules, or the Open Images challenge metric for an Open Images set. The ground truth
    is cut (and expanded up the hierarchy) once, for all the heads scored."""
    oi = data.openimages
    if oi is not None:
        from acsl_cli.evaluation.openimages_gt import ground_truth
        from acsl_cli.evaluation.openimages_metric import expand_ground_truth
        from acsl_cli.evaluation.openimages_scoring import first_images, score_openimages

        gt = ground_truth(oi.split, len(oi.names))
        full = expand_ground_truth(first_images(gt, images), oi.ancestors)
        expand = s.test.expand_hierarchy
        return lambda dets: score_openimages(
            full, dets, oi.widths, oi.heights, ancestors=oi.ancestors, names=oi.names,
            groups=oi.groups, expand=expand, group_of_weight=oi.group_of_weight)
    gt = data.val_gt
    if images < len(data.val):
        gt = subset_gt(gt, {im["id"] for im in data.val.images[:images]})

    def score_lvis(dets: list[dict]) -> tuple[dict, list[dict]]:
        r = evaluate_lvis(gt, dets)
        return r.metrics, r.per_category

    return score_lvis


def test_trunk(s: Settings, model) -> FrozenTrunk:
    """The frozen detector with the test-time variants (scales, flip) and stage-2 RoI
    sampling."""
    t = s.test
    return FrozenTrunk(model, list(t.scales) if t.scales else None, t.flip, t.max_detections,
                       s.schedule.stage2.rois_per_image)


def run_eval_checkpoint(plan: EvalPlan) -> dict[str, float]:
    """``acsl eval ckpt=PATH``: evaluate with the config saved beside (or in) the checkpoint,
    updated by the command's other overrides."""
    assert plan.ckpt is not None
    ckpt = load_checkpoint(plan.ckpt)
    s, loss_settings = checkpoint_settings(plan, ckpt)
    # a head's stage 1 is found and checked before any data is generated
    state = load_head_state(plan.ckpt, ckpt) if ckpt["format"] == HEAD_FORMAT else \
        ckpt.get("model")
    device = setup_torch(s)
    data = load_data(s)
    check_classes(plan.ckpt, ckpt, list(data.cmap.category_ids))
    loss = make_loss(loss_settings, loss_context(data, s.seed))
    model = build_model(s, data, loss)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        # torch's first line is a header ("Error(s) in loading ..."); the cause is next
        first = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:160]
        raise DataError(f"{plan.ckpt}: weights do not fit the configured detector ({first})"
                        ) from None
    return evaluate(s, data, model, None, device).metrics["model"]

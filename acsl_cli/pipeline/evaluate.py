"""Evaluation entry points: score heads on val, or a saved checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.data.lvis_dataset import subset_gt
from acsl_cli.engine.checkpoint import HEAD_FORMAT, check_classes, load_checkpoint, load_head_state
from acsl_cli.engine.inference import eval_subset, predict_top_k
from acsl_cli.engine.topk import TopDetections
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.evaluation.detections import Detections, parse_detections
from acsl_cli.evaluation.lvis_bootstrap import ImageMatches, image_matches
from acsl_cli.evaluation.lvis_eval import match_detections, summarise
from acsl_cli.evaluation.lvis_protocols import evaluate_protocols, protocol_label
from acsl_cli.models.calibration import refusal
from acsl_cli.models.trunk import FrozenTrunk, Scorer
from acsl_cli.pipeline.calibrate import Row, finish_calibration, plan_calibration
from acsl_cli.pipeline.components import (
    build_model,
    classifier_spec,
    load_data,
    loss_context,
    make_loss,
    setup_torch,
)
from acsl_cli.plan import EvalPlan, checkpoint_settings
from acsl_cli.settings import LossSettings, Settings

log = logging.getLogger("acsl")


@dataclass
class Evaluation:
    """Per row (scorer name, ``name [fixed]``/``name [pooled]`` for the other protocols:
    ``protocol_label``): LVIS metrics, per-category AP rows (none for pooled) and (standard
    LVIS rules only) the matches the image bootstrap resamples; per scorer name: the
    standard detections scored and, for fixed/pooled, the top-K detections."""

    metrics: dict[str, dict[str, float]]
    per_category: dict[str, list[dict]]
    detections: dict[str, list[dict]]
    top_detections: dict[str, TopDetections] = field(default_factory=dict)
    matches: dict[str, ImageMatches] = field(default_factory=dict)


def evaluate(s: Settings, data: DatasetBundle, model, scorers: Mapping[str, Scorer] | None,
             device: str, during: Mapping[str, object] | None = None,
             protocols: tuple[str, ...] | None = None) -> Evaluation:
    """Predict on val (or its first ``eval_max_images``) and score with LVIS rules under
    each of ``protocols`` (default ``test.protocol``). ``during`` (stage, epoch) marks a
    validation during training in the event log."""
    protocols = protocols or s.test.protocols
    val = eval_subset(data.val, s.schedule.eval_max_images)
    if not isinstance(model, FrozenTrunk):
        model = test_trunk(s, model)
    wide = protocols != ("standard",)
    results, tops = predict_top_k(model, val, data.cmap, device, scorers,
                                  s.schedule.batch_size, s.progress, amp=s.amp,
                                  top_k=s.test.dets_per_class if wide else None,
                                  per_image=s.backbone.pre_nms_topk)
    out = Evaluation({}, {}, results, tops)
    score = scorer(s, data, len(val))
    for name, dets in results.items():
        for protocol, (metrics, rows, matches) in score(dets, tops.get(name),
                                                         protocols).items():
            row = protocol_label(name, protocol)
            out.metrics[row] = metrics
            if protocol != "pooled":  # pooled AP has no per-category value
                out.per_category[row] = rows
            if matches is not None:
                out.matches[row] = matches
            when = f" ({during['stage']}, epoch {during['epoch']})" if during else ""
            log.info("evaluated %s on %d val images%s: AP %.4f APr %.4f APc %.4f APf %.4f",
                     row, len(val), when, *(metrics[k] for k in ("AP", "APr", "APc", "APf")),
                     extra={"event": {"type": "eval", "model": row, "images": len(val),
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


Scores = dict[str, tuple[dict, list[dict], "ImageMatches | None"]]


def scorer(s: Settings, data: DatasetBundle, images: int
           ) -> Callable[[list[dict], TopDetections | None, tuple[str, ...]], Scores]:
    """Per protocol, metrics, per-category rows and matches (standard LVIS only, else None)
    of detections on the first ``images`` val images: LVIS rules (standard on the standard
    detections, fixed and pooled on the top-K ones), or the Open Images challenge metric
    for an Open Images set (its one protocol). The ground truth is cut (and expanded up the
    hierarchy) once, for all the heads scored."""
    oi = data.openimages
    if oi is not None:
        from acsl_cli.evaluation.openimages_gt import ground_truth
        from acsl_cli.evaluation.openimages_metric import expand_ground_truth
        from acsl_cli.evaluation.openimages_scoring import first_images, score_openimages

        gt = ground_truth(oi.split, len(oi.names))
        full = expand_ground_truth(first_images(gt, images), oi.ancestors)
        expand = s.test.expand_hierarchy
        return lambda dets, top, protocols: {"standard": (*score_openimages(
            full, dets, oi.widths, oi.heights, ancestors=oi.ancestors, names=oi.names,
            groups=oi.groups, expand=expand, group_of_weight=oi.group_of_weight), None)}
    gt = data.val_gt
    if images < len(data.val):
        gt = subset_gt(gt, {im["id"] for im in data.val.images[:images]})

    def score_lvis(dets: list[dict], top: TopDetections | None,
                   protocols: tuple[str, ...]) -> Scores:
        out: Scores = {}
        if "standard" in protocols:
            parsed = parse_detections(gt, dets, "detections")
            m = match_detections(gt, parsed)
            r = summarise(m)
            if s.test.backend == "lvis-api":  # its numbers; the matches stay ours (bootstrap)
                from acsl_cli.evaluation.lvis_api import evaluate_with_lvis_api

                r = evaluate_with_lvis_api(gt, parsed)
            out["standard"] = (r.metrics, r.per_category, image_matches(m))
        others = tuple(p for p in protocols if p != "standard")
        if others:
            assert top is not None, "fixed and pooled AP need the top-K inference"
            arrays = Detections(top.image_ids, top.category_ids, top.boxes, top.scores)
            for p, r in evaluate_protocols(gt, arrays, others,
                                           s.test.dets_per_class).items():
                out[p] = (r.metrics, r.per_category, None)
        return {p: out[p] for p in protocols}

    return score_lvis


def load_error_cause(error: BaseException, keep: int = 300) -> str:
    """torch's reason a state dict does not load, on one line and cut at a word: its first
    line is a header ("Error(s) in loading ..."), the cause is next."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    cause = " ".join((lines[1] if len(lines) > 1 else lines[0] if lines else "").split())
    if len(cause) <= keep:
        return cause
    return cause[:keep].rsplit(" ", 1)[0] + " ..."


def layout_hint(loss: LossSettings, error: BaseException) -> str:
    """What a Seesaw classifier of the other layout needs (heads saved before ``layout``
    existed are single-softmax heads)."""
    if loss.name != "seesaw" or "cls_score" not in str(error):
        return ""
    other = "single_softmax" if loss.params.get("layout", "release") == "release" \
        else "release"
    return f"; a Seesaw head of the other layout: add loss.layout={other}"


def test_trunk(s: Settings, model) -> FrozenTrunk:
    """The frozen detector with the test-time variants (scales, flip, the cascade's stage
    scoring) and stage-2 RoI sampling."""
    t = s.test
    return FrozenTrunk(model, list(t.scales) if t.scales else None, t.flip, t.max_detections,
                       s.schedule.stage2.rois_per_image, t.cascade_scores)


@dataclass
class CheckpointEval:
    """``eval ckpt=``: its rows ("model", ``model [fixed]`` ..., and with calibration one
    per gamma), the row it reports (``out=``) under each protocol, and the calibration
    record (None without calibration)."""

    rows: dict[str, dict[str, float]]
    headline: str
    protocols: tuple[str, ...] = ("standard",)
    calibration: dict | None = None

    @property
    def by_protocol(self) -> dict[str, dict[str, float]]:
        """The reported row under each protocol it was scored with."""
        return {p: self.rows[protocol_label(self.headline, p)] for p in self.protocols
                if protocol_label(self.headline, p) in self.rows}

    @property
    def metrics(self) -> dict[str, float]:
        return next(iter(self.by_protocol.values()))


def run_eval_checkpoint(plan: EvalPlan) -> dict[str, float]:
    """``acsl eval ckpt=PATH``: the metrics of the row it reports (its first protocol)."""
    return eval_checkpoint(plan).metrics


def eval_checkpoint(plan: EvalPlan) -> CheckpointEval:
    """``acsl eval ckpt=PATH``: evaluate with the config saved beside (or in) the checkpoint,
    updated by the command's other overrides."""
    assert plan.ckpt is not None
    ckpt = load_checkpoint(plan.ckpt)
    s, loss_settings = checkpoint_settings(plan, ckpt)
    check_calibration(s, loss_settings)
    # a head's stage 1 is found and checked before any data is generated
    state = load_head_state(plan.ckpt, ckpt) if ckpt["format"] == HEAD_FORMAT else \
        ckpt.get("model")
    device = setup_torch(s)
    data = load_data(s)
    check_classes(plan.ckpt, ckpt, list(data.cmap.category_ids))
    loss = make_loss(loss_settings, loss_context(data, s.seed))
    # the head's classifier layer, as it was trained (its loss node says which)
    model = build_model(s, data, loss, classifier_spec(loss_settings))
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise DataError(f"{plan.ckpt}: weights do not fit the configured detector "
                        f"({load_error_cause(e)}){layout_hint(loss_settings, e)}") from None
    trunk = test_trunk(s, model)
    protocols = s.test.protocols
    cal = plan_calibration(s, data, [Row("model", trunk.stage1_scorer, loss_settings)])
    if cal is None:
        return CheckpointEval(evaluate(s, data, trunk, None, device).metrics, "model",
                              protocols)
    ev = evaluate(s, data, trunk, {"model": trunk.stage1_scorer, **cal.scorers}, device)
    done = finish_calibration(cal, s, data, trunk, device, ev.metrics, ev.per_category)
    rows = {**ev.metrics, **done.rows}
    return CheckpointEval(rows, done.headline.get("model", "model"), protocols, done.record)


def check_calibration(s: Settings, loss: LossSettings) -> None:
    """``eval ckpt=`` of a head NorCal cannot score: one line, before any work."""
    if s.test.calibration.method == "none":
        return
    why = refusal(loss.name, loss.params)
    if why is not None:
        raise ConfigError(f"test.calibration={s.test.calibration.method}: {why}")

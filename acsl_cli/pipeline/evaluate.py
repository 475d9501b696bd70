"""Evaluation entry points: score heads on val, or a saved checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from acsl_cli import config as config_mod
from acsl_cli.data.build import DatasetBundle
from acsl_cli.data.lvis_dataset import subset_gt
from acsl_cli.engine.checkpoint import HEAD_FORMAT, check_classes, load_checkpoint, load_head_base
from acsl_cli.engine.inference import eval_subset, predict
from acsl_cli.errors import DataError
from acsl_cli.evaluation import evaluate_lvis
from acsl_cli.models.trunk import FrozenTrunk, Scorer, with_classifier
from acsl_cli.pipeline.build import build_model, load_data, loss_context, make_loss, setup_torch
from acsl_cli.plan import EvalPlan, saved_config

log = logging.getLogger("acsl")


@dataclass
class Evaluation:
    """Per scorer name: LVIS metrics, per-category AP rows, and the detections scored."""

    metrics: dict[str, dict[str, float]]
    per_category: dict[str, list[dict]]
    detections: dict[str, list[dict]]


def evaluate(cfg: DictConfig, data: DatasetBundle, model, scorers: Mapping[str, Scorer] | None,
             device: str) -> Evaluation:
    """Predict on val (or its first ``eval_max_images``) and score with LVIS rules."""
    val = eval_subset(data.val, cfg.schedule.eval_max_images)
    if not isinstance(model, FrozenTrunk):
        model = test_trunk(cfg, model)
    results = predict(model, val, data.cmap, device, scorers, cfg.schedule.batch_size,
                      cfg.progress, amp=cfg.get("amp", "off"))
    out = Evaluation({}, {}, results)
    score = scorer(cfg, data, len(val))
    for name, dets in results.items():
        metrics, rows = score(dets)
        out.metrics[name], out.per_category[name] = metrics, rows
        log.info("evaluated %s on %d val images: AP %.4f APr %.4f APc %.4f APf %.4f", name,
                 len(val), *(metrics[k] for k in ("AP", "APr", "APc", "APf")),
                 extra={"event": {"type": "eval", "model": name, "images": len(val),
                                  **metrics}})
    return out


def scorer(cfg: DictConfig, data: DatasetBundle, images: int
           ) -> Callable[[list[dict]], tuple[dict, list[dict]]]:
    """Metrics and per-category rows of detections on the first ``images`` val images:
    LVIS rules, or the Open Images challenge metric for an Open Images set. The ground truth
    is cut (and expanded up the hierarchy) once, for all the heads scored."""
    oi = data.openimages
    if oi is not None:
        from acsl_cli.evaluation.openimages_metric import expand_ground_truth
        from acsl_cli.evaluation.openimages_scoring import first_images, score_openimages

        full = expand_ground_truth(first_images(oi.gt, images), oi.ancestors)
        expand = bool((cfg.get("test") or {}).get("expand_hierarchy", False))
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


def test_trunk(cfg: DictConfig, model) -> FrozenTrunk:
    """The frozen detector with the config's test-time variants (scales, flip) and stage-2
    RoI sampling."""
    test = cfg.get("test") or {}
    return FrozenTrunk(model, test.get("scales"), bool(test.get("flip", False)),
                       int(test.get("max_detections", 300)),
                       cfg.schedule.stage2.get("rois_per_image"))


def multi_variant_test(cfg: DictConfig) -> bool:
    """Whether the test settings differ from those the cached stage-1 row was scored with
    (single scale, no flip, 300 detections per image, no hierarchy expansion)."""
    test = cfg.get("test") or {}
    return (bool(test.get("scales")) or bool(test.get("flip", False))
            or int(test.get("max_detections", 300)) != 300
            or bool(test.get("expand_hierarchy", False)))


def checkpoint_loss(saved: Mapping, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's own loss config with the command's ``loss.KEY=VALUE`` overrides
    (e.g. ``loss.bg_factor=true`` changes how the saved head scores)."""
    node = OmegaConf.create(dict(saved))
    for o in config_mod.parse_overrides(list(overrides)):
        if o.key.startswith("loss."):
            OmegaConf.update(node, o.key[len("loss."):], o.value, merge=False)
    return node


def run_eval_checkpoint(plan: EvalPlan) -> dict[str, float]:
    """``acsl eval ckpt=PATH``: evaluate with the config saved beside (or in) the checkpoint,
    updated by the command's other overrides."""
    assert plan.ckpt is not None
    ckpt = load_checkpoint(plan.ckpt)
    saved = saved_config(plan.ckpt) or OmegaConf.create(ckpt.get("config") or {})
    cfg = config_mod.load_config(list(plan.overrides), base=saved)
    device = setup_torch(cfg)
    data = load_data(cfg)
    check_classes(plan.ckpt, ckpt, list(data.cmap.category_ids))
    loss = make_loss(checkpoint_loss(ckpt["loss"], plan.overrides), loss_context(data, cfg.seed))
    model = build_model(cfg, data, loss)
    state = ckpt.get("model")
    if ckpt["format"] == HEAD_FORMAT:
        base = load_head_base(plan.ckpt, ckpt)
        state = with_classifier(base["model"], ckpt["classifier"])
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise DataError(f"{plan.ckpt}: weights do not fit the configured detector ({first})"
                        ) from None
    return evaluate(cfg, data, model, None, device).metrics["model"]

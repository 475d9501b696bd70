"""``acsl train``: data -> stage 1 (cached) -> stage-2 heads in one frozen pass ->
evaluation -> reports, all written into a run folder that appears only when complete."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.checkpoint import HEAD_FORMAT, save_checkpoint
from acsl_cli.engine.finetune_heads import ClassifierHead, finetune_heads, new_head
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.evaluation.lvis_protocols import protocol_label
from acsl_cli.evaluation.match_file import save_matches
from acsl_cli.files import atomic_write_bytes, file_sha256
from acsl_cli.layout import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    MATCHES,
    PER_CATEGORY,
    PREDICTIONS,
    RESULTS,
    RESULTS_TOPK,
    STAGE1_POINTER,
    STAGE1_ROW,
    TRAIN_LOG,
    OutputLayout,
    head_dir,
    matches_file,
    pointer,
    stage1_row,
)
from acsl_cli.pipeline.calibrate import Row, finish_calibration, plan_calibration
from acsl_cli.pipeline.components import (
    classifier_spec,
    load_data,
    loss_context,
    make_loss,
    setup_torch,
    stage_losses,
    train_data_loader,
)
from acsl_cli.pipeline.evaluate import Evaluation, evaluate, test_trunk, validation
from acsl_cli.pipeline.live_log import live_log
from acsl_cli.pipeline.preflight import check_run, write_out
from acsl_cli.pipeline.provenance import provenance
from acsl_cli.pipeline.rundir import (
    FileLock,
    RunDir,
    atomic_write_json,
    atomic_write_text,
    clean_stale,
    default_run_name,
)
from acsl_cli.pipeline.stage1_cache import (
    checkpoint_payload,
    replay_history,
    train_or_load_stage1,
)
from acsl_cli.plan import HeadSpec, RunPlan, plan_train
from acsl_cli.reporting.calibration import write_calibration
from acsl_cli.reporting.events import event_handlers
from acsl_cli.reporting.suppression import write_suppression
from acsl_cli.reporting.tables import markdown_table, write_metrics, write_per_category
from acsl_cli.reporting.trackers import tracker_handlers
from acsl_cli.settings import Settings, stage2_key, yaml_text

log = logging.getLogger("acsl")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]  # row label -> metrics, stage-1 baseline first
    per_category: dict[str, list[dict]] = field(default_factory=dict)
    stage1_dir: Path | None = None
    stage1_reused: bool = False
    seconds: float = 0.0
    groups_note: str = ""


def run_train(overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    """``acsl train OVERRIDES``."""
    return train(plan_train(list(overrides)))


def train(plan: RunPlan, run_name: str | None = None) -> RunResult:
    """Run one plan: every check first, then the pipeline, then the run folder appears."""
    s = plan.settings
    check_run(s, len(plan.heads))
    device = setup_torch(s)
    t0 = time.time()
    label = f"{len(plan.heads)}heads" if len(plan.heads) > 1 else plan.heads[0].id
    name = run_name or s.run_name or default_run_name(label, s.seed)
    with run_folder(s, name, {h.id: h.label for h in plan.heads}) as run:
        origin = provenance(device)
        log.info("provenance: %s", json.dumps(origin), extra={"event": {"type": "start",
                                                                         **origin}})
        data = load_data(s)
        log.info("%s", data.groups_note)
        context = loss_context(data, s.seed)
        losses = [make_loss(h.loss, context) for h in plan.heads]  # fail fast
        s1 = train_or_load_stage1(s, data, device)
        if s1.reused:  # the curves of a cached stage 1 reach this run's log and trackers
            replay_history(s1.folder, s.schedule.log_every)
        trunk = test_trunk(s, s1.model)
        C = data.cmap.num_classes
        with torch.random.fork_rng(devices=[]):  # the global stream below stays as it was
            # layers a loss does not copy from stage 1 (BAGS's group columns) are drawn the
            # same whether stage 1 was trained in this process or loaded from the cache
            torch.manual_seed(s.seed + 1)
            heads = [new_head(h.id, stage_losses(loss, h.loss, context, trunk.num_stages),
                              trunk.stage1_classifier, C, classifier_spec(h.loss))
                     for h, loss in zip(plan.heads, losses, strict=True)]
        # Stage 2 must not depend on whether stage 1 was trained in this process or loaded
        # from the cache (training consumes the global RNG that RoI sampling uses).
        torch.manual_seed(s.seed + 1)
        loader = train_data_loader(s, data, s.seed + 1)
        resume = stage2_resume_file(plan, s1.folder)
        if dist.is_main():
            clean_stale(resume.parent)  # temp files of processes killed while saving
        with FileLock(resume) if dist.is_main() else nullcontext():
            check = validation(s, data, device, "stage 2",
                               lambda: (trunk, {spec.label: h.scorer for spec, h in
                                                zip(plan.heads, heads, strict=True)}))
            finetune_heads(trunk, heads, loader, StageSchedule.from_settings(s.schedule.stage2),
                           device, s.schedule.max_iters, s.progress, resume=resume, amp=s.amp,
                           after_epoch=check, log_every=s.schedule.log_every)
        scorers = {h.name: h.scorer for h in heads}
        # the cached stage-1 row was scored the canonical way; an entry cached before
        # matches were saved is scored again for its matches (the image bootstrap)
        cached_matches = s1.folder / MATCHES
        row1 = stage1_row(s.schedule.stage1.loss)
        if not s.test.canonical or (data.openimages is None and not cached_matches.is_file()):
            scorers[row1] = trunk.stage1_scorer
        cal = plan_calibration(s, data, [Row(row1, trunk.stage1_scorer, s.stage1_loss), *(
            Row(spec.label, h.scorer, spec.loss) for spec, h in zip(plan.heads, heads,
                                                                     strict=True))])
        scorers.update(cal.scorers if cal is not None else {})
        ev = evaluate(s, data, trunk, scorers, device)
        rows, per_cat = protocol_rows(s.test.protocols, plan.heads, ev, s1.metrics,
                                      s1.per_category, row1)
        calibration = None
        if cal is not None:  # one row per head and gamma (and the pick), after the plain rows
            calibration = finish_calibration(cal, s, data, trunk, device, ev.metrics,
                                             ev.per_category)
            rows.update(calibration.rows)
            per_cat.update(calibration.per_category)
        if run is not None:
            _write_run(run.path, plan, data, heads, ev, rows, per_cat, s1.folder, origin)
            _write_stage1_matches(run.path, ev, cached_matches, row1)
            if calibration is not None:
                write_calibration(run.path, calibration.record)
            log.info("run finished in %.1f s; metrics (%%):\n%s", time.time() - t0,
                     markdown_table(rows, note=data.groups_note))
            final = run.commit()
            resume.unlink(missing_ok=True)  # the run is complete: nothing left to resume
        else:
            final = OutputLayout.at(s.output_root).run(name)
    if dist.is_main() and s.out:
        last = plan.heads[-1].label
        write_out(s.out, {p: rows[protocol_label(last, p)] for p in s.test.protocols}, final)
    return RunResult(final, rows, per_cat, s1.folder, s1.reused, time.time() - t0,
                     data.groups_note)


def protocol_rows(protocols: tuple[str, ...], heads: list[HeadSpec], ev: Evaluation,
                  stage1_metrics: dict, stage1_per_category: list[dict],
                  stage1_label: str = STAGE1_ROW
                  ) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """The run's rows, protocol after protocol (``label``, ``label [fixed]``, ...): the
    stage-1 row ``stage1_label`` (from the cache when this run did not re-score it), then
    each head."""
    rows: dict[str, dict] = {}
    per_cat: dict[str, list[dict]] = {}
    for p in protocols:
        stage1 = protocol_label(stage1_label, p)
        rows[stage1] = ev.metrics.get(stage1, stage1_metrics)
        if p != "pooled":
            per_cat[stage1] = ev.per_category.get(stage1, stage1_per_category)
        for h in heads:
            rows[protocol_label(h.label, p)] = ev.metrics[protocol_label(h.id, p)]
            if p != "pooled":
                per_cat[protocol_label(h.label, p)] = ev.per_category[protocol_label(h.id, p)]
    return rows, per_cat


@contextmanager
def run_folder(s: Settings, name: str, heads: dict[str, str] | None = None):
    """Rank 0's run folder (``None`` on other ranks) with ``train.log`` attached; it is
    removed if anything fails before ``commit``. ``heads``: id -> label, for trackers."""
    if not dist.is_main():
        yield None
        return
    run = RunDir(OutputLayout.at(s.output_root).runs, name)
    with run:
        run.open()
        logger = logging.getLogger("acsl")
        handlers = [_log_to(run.path / TRAIN_LOG), *event_handlers(run.path),
                    *tracker_handlers(s.tracker, run.path, Path(s.output_root), s.as_dict(),
                                      s.to_yaml(), name, heads)]
        for h in handlers[1:]:
            logger.addHandler(h)
        try:
            with live_log(OutputLayout.at(s.output_root).live_log(name),
                          run.path / TRAIN_LOG):
                yield run
        finally:
            for h in handlers:
                logger.removeHandler(h)
                h.close()


def stage2_resume_file(plan: RunPlan, stage1_dir: Path) -> Path:
    """Where an interrupted stage 2 of exactly these heads on this stage 1 resumes from."""
    s = plan.settings
    key = stage2_key(s, [h.loss for h in plan.heads], stage1_dir.name, dist.world_size())
    return OutputLayout.at(s.output_root).stage2_resume(key)


def _write_run(folder: Path, plan: RunPlan, data: DatasetBundle,
               heads: list[ClassifierHead], ev: Evaluation, rows: dict, per_cat: dict,
               stage1_dir: Path, origin: dict[str, Any]) -> None:
    record = plan.settings.as_dict()
    record["heads"] = {h.id: {"label": h.label, "loss": h.loss.as_dict()} for h in plan.heads}
    record["provenance"] = origin
    atomic_write_text(folder / CONFIG, yaml_text(record))
    atomic_write_text(folder / STAGE1_POINTER, pointer(stage1_dir, folder) + "\n")
    ckpt = stage1_dir / CHECKPOINT
    digest = file_sha256(ckpt)
    for spec, head in zip(plan.heads, heads, strict=True):
        # relative to the head's folder (the partial run folder is a sibling of the final
        # one, so the pointer holds after the rename, and after moving outputs/)
        where = head_dir(folder, spec.id)
        ref = {"path": pointer(ckpt, where), "sha256": digest}
        _save_head(where, spec, data, head, ref)
        write_detections(where, data, ev.detections[spec.id])
        if spec.id in ev.top_detections:  # fixed / pooled: what those rows scored
            atomic_write_json(where / RESULTS_TOPK,
                              ev.top_detections[spec.id].as_results())
        if spec.id in ev.matches:
            save_matches(matches_file(folder, spec.id), ev.matches[spec.id])
    cap = plan.settings.schedule.eval_max_images
    val = len(data.val)
    write_metrics(folder, rows, note=data.groups_note,
                  scored=(val if cap is None else min(cap, val), val))
    s = data.stats
    counts = {cid: (s.image_counts[i], s.instance_counts[i])
              for i, cid in enumerate(data.cmap.category_ids)}
    write_per_category(folder / PER_CATEGORY, per_cat, counts)


def _write_stage1_matches(folder: Path, ev: Evaluation, cached: Path, label: str) -> None:
    """The stage-1 row's matches: scored in this run, or copied from the cache entry."""
    target = matches_file(folder, None)
    if label in ev.matches:
        save_matches(target, ev.matches[label])
    elif cached.is_file():
        atomic_write_bytes(target, cached.read_bytes())


def write_detections(folder: Path, data: DatasetBundle, dets: list[dict]) -> None:
    """A head's val detections in the format ``acsl eval dets=`` scores: LVIS
    ``results.json``, or Open Images ``predictions.csv`` (normalised boxes, release ids)."""
    oi = data.openimages
    if oi is None:
        atomic_write_json(folder / RESULTS, dets)
        return
    from acsl_cli.evaluation.openimages_predictions import write_predictions_csv
    from acsl_cli.evaluation.openimages_scoring import results_to_arrays

    arrays = results_to_arrays(dets, oi.widths, oi.heights)
    write_predictions_csv(folder / PREDICTIONS, oi.image_ids, oi.label_names, *arrays)


def _save_head(folder: Path, spec: HeadSpec, data: DatasetBundle, head: ClassifierHead,
               stage1: dict[str, str]) -> None:
    """A lean head checkpoint (its classifier + a hashed pointer to the stage-1
    checkpoint) with its config and history beside it."""
    payload = checkpoint_payload(spec.settings, data, {}, spec.loss)
    del payload["model"]
    payload.update(classifier=head.classifier.state_dict(), stage1=stage1)
    save_checkpoint(folder / CHECKPOINT, payload, HEAD_FORMAT)
    atomic_write_text(folder / CONFIG, spec.settings.to_yaml())
    atomic_write_json(folder / HISTORY, head.history)
    write_suppression(folder, head.loss, data.cmap.category_ids)  # ACSL: Figure 3's counts


def _log_to(path: Path) -> logging.Handler:
    logger = logging.getLogger("acsl")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler

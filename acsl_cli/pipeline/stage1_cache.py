"""Stage 1 as a cache: the detector (softmax CE, or ``schedule.stage1.loss``) is trained
once per config and reused.

The entry ``outputs/cache/stage1/<key>/`` is keyed by a hash of everything that shapes
stage 1. Building it is serialised by a lock file, so concurrent runs of the same key
train it once (the others wait and reuse it); it is written to a temp folder and renamed
into place, so it is either complete or absent; a corrupt entry (truncated checkpoint,
unreadable metrics) is reported in one line and rebuilt. Training resumes per epoch from
``<key>.resume.pt`` after an interruption.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.checkpoint import (
    HEAD_FORMAT,
    load_checkpoint,
    load_head_state,
    load_state_file,
    save_checkpoint,
)
from acsl_cli.engine.loaders import loader_generators
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.engine.train_detector import train_detector
from acsl_cli.errors import DataError
from acsl_cli.evaluation.match_file import save_matches
from acsl_cli.layout import CHECKPOINT, CONFIG, HISTORY, MATCHES, METRICS, OutputLayout, stage1_row
from acsl_cli.models.cascade import CASCADE_SCORES
from acsl_cli.models.init import detector_state, load_matching
from acsl_cli.models.trunk import FrozenTrunk
from acsl_cli.pipeline.components import loss_context, stage1_model, train_data_loader
from acsl_cli.pipeline.evaluate import evaluate, validation
from acsl_cli.pipeline.rundir import (
    CacheEntry,
    FileLock,
    atomic_write_json,
    atomic_write_text,
    tmp_name,
)
from acsl_cli.progress import status
from acsl_cli.settings import LossSettings, Settings, stage1_key

log = logging.getLogger("acsl")
FILES = (CHECKPOINT, CONFIG, HISTORY, METRICS)


@dataclass
class Stage1Result:
    model: nn.Module
    folder: Path
    metrics: dict[str, float]
    per_category: list[dict]
    reused: bool


def checkpoint_payload(s: Settings, data: DatasetBundle, state: dict, loss: LossSettings
                       ) -> dict:
    """What a detector checkpoint holds: tensors, the label map, the loss, the config."""
    return {
        "model": state,
        "category_ids": list(data.cmap.category_ids),
        "loss": loss.as_dict(),
        "config": s.to_yaml(),
    }


def stage1_folder(s: Settings) -> Path:
    return OutputLayout.at(s.output_root).stage1(stage1_key(s, dist.world_size()))


def train_or_load_stage1(s: Settings, data: DatasetBundle, device: str) -> Stage1Result:
    """The stage-1 detector of ``s``: from the cache, or trained and cached."""
    folder = stage1_folder(s)
    model = stage1_model(s, data, loss_context(data, s.seed))
    entry = CacheEntry(folder, FILES)
    lock = FileLock(folder, on_wait=_waiting) if dist.is_main() else nullcontext()
    with lock:
        dist.barrier()  # the other ranks wait until rank 0 holds the lock
        if entry.complete():
            try:
                ckpt = load_checkpoint(folder / CHECKPOINT)
                model.load_state_dict(ckpt["model"])
                saved = json.loads((folder / METRICS).read_text())
                if _old_cascade_row(model, saved):
                    saved = _rescore(s, data, model, device, folder, saved)
                metrics = {k: _nan(v) for k, v in saved["metrics"].items()}
                per_cat = [{**r, "AP": _nan(r["AP"])} for r in saved["per_category"]]
                log.info("stage 1: reusing %s", folder)
                return Stage1Result(model, folder, metrics, per_cat, True)
            except (DataError, OSError, ValueError, KeyError, RuntimeError) as e:
                if dist.is_main():
                    entry.invalidate(" ".join(str(e).split())[:200])
                dist.barrier()
        result = _train(s, data, model, device, folder, entry)
        dist.barrier()
    return result


def _train(s: Settings, data: DatasetBundle, model: nn.Module, device: str, folder: Path,
           entry: CacheEntry) -> Stage1Result:
    if s.init:
        _apply_init(s.init, model)
    sched = StageSchedule.from_settings(s.schedule.stage1)
    loader = train_data_loader(s, data, s.seed)
    resume = OutputLayout.at(s.output_root).stage1_resume(folder.name)
    t0 = time.time()
    label = stage1_row(s.schedule.stage1.loss)
    check = validation(s, data, device, "stage 1", lambda: _validation_trunk(model, label))
    # a seeded stage-1 loss's draws (ACSL's background, BAGS's others) resume exactly too
    generators = loader_generators(loader) + [
        g for loss in model.roi_heads.stage_losses
        if (g := getattr(loss, "generator", None)) is not None]
    history = train_detector(model, loader, sched, device, s.schedule.max_iters, s.progress,
                             resume=resume, generators=generators, amp=s.amp,
                             after_epoch=check, log_every=s.schedule.log_every)
    log.info("stage 1: trained in %.1f s", time.time() - t0)
    # the cached row is scored the canonical way (one scale, no flip, 300 detections);
    # runs with other test settings re-score stage 1 themselves
    ev = evaluate(s, data, FrozenTrunk(model), None, device, protocols=("standard",))
    saved = {"metrics": ev.metrics["model"], "per_category": ev.per_category["model"],
             "train_seconds": time.time() - t0, "cascade_scores": CASCADE_SCORES[0]}
    if dist.is_main():
        tmp = tmp_name(folder)
        try:
            save_checkpoint(tmp / CHECKPOINT,
                            checkpoint_payload(s, data, model.state_dict(), s.stage1_loss))
            atomic_write_text(tmp / CONFIG, s.to_yaml())
            atomic_write_json(tmp / HISTORY, history)
            atomic_write_json(tmp / METRICS, saved)
            if "model" in ev.matches:  # for the image bootstrap (not in FILES: optional)
                save_matches(tmp / MATCHES, ev.matches["model"])
            entry.publish(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        resume.unlink(missing_ok=True)
    return Stage1Result(model, folder, saved["metrics"], saved["per_category"], False)


def _old_cascade_row(model: nn.Module, saved: dict) -> bool:
    """Whether a cached cascade's row was scored before ``mean_logits`` became the
    canonical stage scoring (such entries hold no ``cascade_scores``)."""
    stages = len(model.roi_heads.classifiers)
    return stages > 1 and saved.get("cascade_scores") != CASCADE_SCORES[0]


def _rescore(s: Settings, data: DatasetBundle, model: nn.Module, device: str, folder: Path,
             saved: dict) -> dict:
    """The cached row scored again the canonical way, and saved so (the detector stays)."""
    log.info("stage 1: %s was scored by the mean of the stages' probabilities; re-scoring "
             "it by the mean of their logits", folder)
    ev = evaluate(s, data, FrozenTrunk(model), None, device)
    saved = {**saved, "metrics": ev.metrics["model"], "per_category": ev.per_category["model"],
             "cascade_scores": CASCADE_SCORES[0]}
    if dist.is_main():
        atomic_write_json(folder / METRICS, saved)
    return saved


def _validation_trunk(model: nn.Module, label: str):
    """A frozen copy of the detector in training, with its own head as the stage-1 row."""
    trunk = FrozenTrunk(copy.deepcopy(model))
    return trunk, {label: trunk.stage1_scorer}


def _apply_init(path: str, model: nn.Module) -> None:
    """``init=PATH``: an acsl checkpoint (detector or lean head) or a torchvision state dict."""
    obj = load_state_file(path)
    if isinstance(obj, dict) and obj.get("format") == HEAD_FORMAT:
        obj = load_head_state(path, obj)
    report = load_matching(model, detector_state(obj, str(path)), str(path))
    log.info("init from %s: %d tensors loaded", path, len(report.loaded))
    if report.reinitialised:
        log.info("init: re-initialised (not in the file or another shape): %s",
                 ", ".join(report.reinitialised))
    if report.unused:
        log.info("init: not used (not in this detector): %s", ", ".join(report.unused))


def replay_history(folder: Path, every: int = 50) -> None:
    """Log a cached stage 1's saved training curve as the loop logged it (every ``every``th
    iteration and the last), marked ``replayed``."""
    try:
        history = json.loads((folder / HISTORY).read_text())
    except (OSError, ValueError):
        return  # a cache entry without a readable curve still serves its detector
    if not isinstance(history, list):
        return
    for i, row in enumerate(history):
        if isinstance(row, dict) and (i % every == 0 or i == len(history) - 1):
            values = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            log.info("stage1 (cached, replayed) it %s loss %s", row.get("iter"), row.get("loss"),
                      extra={"event": {"type": "train", "stage": "stage 1", "replayed": True,
                                       **values}})


def _waiting(message: str) -> None:
    status.print(f"[dim]{message}: another acsl process is training this stage 1[/dim]")


def _nan(value: float | None) -> float:
    """Strict JSON stores undefined metrics as null; in memory they are nan."""
    return math.nan if value is None else float(value)

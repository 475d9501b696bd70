"""``acsl train``: data -> stage 1 (cached) -> stage-2 heads in one frozen pass ->
evaluation -> reports, all written into a run folder that appears only when complete."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from acsl_cli import config as config_mod
from acsl_cli.data.build import DatasetBundle
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.checkpoint import HEAD_FORMAT, file_digest, save_checkpoint
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.engine.stage2 import ClassifierHead, finetune_heads, new_head
from acsl_cli.pipeline.build import (
    load_data,
    loss_context,
    make_loss,
    setup_torch,
    train_data_loader,
)
from acsl_cli.pipeline.evaluate import evaluate, multi_variant_test, test_trunk
from acsl_cli.pipeline.preflight import check_run, write_out
from acsl_cli.pipeline.rundir import RunDir, atomic_write_json, atomic_write_text, default_run_name
from acsl_cli.pipeline.stage1 import checkpoint_payload, train_or_load_stage1
from acsl_cli.plan import HeadSpec, RunPlan, plan_train
from acsl_cli.reporting.tables import write_metrics, write_per_category

log = logging.getLogger("acsl")
STAGE1_ROW = "stage1 (softmax CE)"


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
    cfg = plan.cfg
    check_run(cfg, len(plan.heads))
    device = setup_torch(cfg)
    t0 = time.time()
    label = f"{len(plan.heads)}heads" if len(plan.heads) > 1 else plan.heads[0].id
    name = run_name or cfg.run_name or default_run_name(label, cfg.seed)
    with run_folder(cfg, name) as run:
        data = load_data(cfg)
        log.info("%s", data.groups_note)
        context = loss_context(data, cfg.seed)
        losses = [make_loss(h.cfg.loss, context) for h in plan.heads]  # fail fast
        s1 = train_or_load_stage1(cfg, data, device)
        trunk = test_trunk(cfg, s1.model)
        C = data.cmap.num_classes
        heads = [new_head(h.id, loss, trunk, C) for h, loss in zip(plan.heads, losses,
                                                                     strict=True)]
        # Stage 2 must not depend on whether stage 1 was trained in this process or loaded
        # from the cache (training consumes the global RNG that RoI sampling uses).
        torch.manual_seed(cfg.seed + 1)
        loader = train_data_loader(cfg, data, cfg.seed + 1)
        finetune_heads(trunk, heads, loader, StageSchedule.from_cfg(cfg.schedule.stage2),
                       device, cfg.schedule.max_iters, cfg.progress)
        scorers = {h.name: (h.classifier, h.loss) for h in heads}
        if multi_variant_test(cfg):  # the cached stage-1 row is single-scale: redo it
            scorers[STAGE1_ROW] = (trunk.stage1_classifier, trunk.detector.roi_heads.cls_loss)
        metrics, per_cat = evaluate(cfg, data, trunk, scorers, device)
        s1_metrics = metrics.get(STAGE1_ROW, s1.metrics)
        rows = {STAGE1_ROW: s1_metrics, **{h.label: metrics[h.id] for h in plan.heads}}
        per_cat = {STAGE1_ROW: per_cat.get(STAGE1_ROW, s1.per_category),
                   **{h.label: per_cat[h.id] for h in plan.heads}}
        if run is not None:
            _write_run(run.path, cfg, plan, data, heads, rows, per_cat, s1.folder)
            log.info("run finished in %.1f s", time.time() - t0)
            final = run.commit()
        else:
            final = Path(cfg.output_root) / "runs" / name
    if dist.is_main() and cfg.out:
        write_out(cfg.out, rows[plan.heads[-1].label], final)
    return RunResult(final, rows, per_cat, s1.folder, s1.reused, time.time() - t0,
                     data.groups_note)


@contextmanager
def run_folder(cfg: DictConfig, name: str):
    """Rank 0's run folder (``None`` on other ranks) with ``train.log`` attached; it is
    removed if anything fails before ``commit``."""
    if not dist.is_main():
        yield None
        return
    run = RunDir(Path(cfg.output_root) / "runs", name)
    with run:
        run.open()
        handler = _log_to(run.path / "train.log")
        try:
            yield run
        finally:
            logging.getLogger("acsl").removeHandler(handler)
            handler.close()


def _write_run(folder: Path, cfg: DictConfig, plan: RunPlan, data: DatasetBundle,
               heads: list[ClassifierHead], rows: dict, per_cat: dict,
               stage1_dir: Path) -> None:
    record: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    record["heads"] = {h.id: {"label": h.label,
                              "loss": OmegaConf.to_container(h.cfg.loss, resolve=True)}
                       for h in plan.heads}
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(record)))
    atomic_write_text(folder / "stage1", str(stage1_dir.resolve()) + "\n")
    ckpt = (stage1_dir / "checkpoint.pt").resolve()
    pointer = {"path": str(ckpt), "sha256": file_digest(ckpt)}
    for spec, head in zip(plan.heads, heads, strict=True):
        _save_head(folder / "heads" / spec.id, spec, data, head, pointer)
    write_metrics(folder, rows, note=data.groups_note)
    write_per_category(folder / "per_category_ap.csv", per_cat)


def _save_head(folder: Path, spec: HeadSpec, data: DatasetBundle, head: ClassifierHead,
               stage1: dict[str, str]) -> None:
    """A lean head checkpoint (its classifier + a hashed pointer to the stage-1
    checkpoint) with its config and history beside it."""
    payload = checkpoint_payload(spec.cfg, data, {}, spec.cfg.loss)
    del payload["model"]
    payload.update(classifier=head.classifier.state_dict(), stage1=stage1)
    save_checkpoint(folder / "checkpoint.pt", payload, HEAD_FORMAT)
    atomic_write_text(folder / "config.yaml", config_mod.to_yaml(spec.cfg))
    atomic_write_json(folder / "history.json", head.history)


def _log_to(path: Path) -> logging.Handler:
    logger = logging.getLogger("acsl")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler

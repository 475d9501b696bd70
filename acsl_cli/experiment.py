"""The decoupled pipeline as library calls: the CLI and the tests call these.

``train`` = data -> stage 1 (cached by a hash of its config) -> stage 2 heads sharing one
frozen pass -> evaluation -> reports. Everything a run writes goes to a hidden
``outputs/runs/.<name>.partial`` folder that is renamed into place only on success, so
a failed or interrupted run never leaves a half-written run that looks complete.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from acsl_cli import config as config_mod
from acsl_cli.data.build import DatasetBundle, build_datasets
from acsl_cli.data.lvis_dataset import read_annotations, subset_gt
from acsl_cli.data.transforms import RandomHorizontalFlip, Transformed
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.checkpoint import (
    check_classes,
    config_hash,
    load_checkpoint,
    save_checkpoint,
)
from acsl_cli.engine.finetune import ClassifierHead, finetune_heads, new_head
from acsl_cli.engine.inference import eval_subset, predict
from acsl_cli.engine.train import StageSchedule, train_detector, train_loader
from acsl_cli.errors import ConfigError
from acsl_cli.evaluation import evaluate_lvis, load_detections
from acsl_cli.losses import STAT_NAMES, ClassificationLoss, build_loss, loss_class
from acsl_cli.models.detector import build_detector
from acsl_cli.progress import console, progress_callback
from acsl_cli.reporting.tables import (
    markdown_mean_std,
    rich_table,
    write_json,
    write_metrics,
    write_per_category,
)

log = logging.getLogger("acsl")
STAGE1_VERSION = 1  # bump when stage-1 training changes, so stale caches are not reused
STAGE1_ROW = "stage1 (softmax CE)"
# Overrides that select or parametrise the stage-2 loss: these vary per head in a sweep.
HEAD_KEYS = ("loss", "xi")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]  # row name -> metrics, stage-1 baseline first
    per_category: dict[str, list[dict]] = field(default_factory=dict)
    stage1_dir: Path | None = None
    stage1_reused: bool = False
    seconds: float = 0.0


# ---------------------------------------------------------------- building blocks


def setup_torch(cfg: DictConfig) -> str:
    device = dist.resolve_device(cfg.device)
    dist.init_distributed(device)
    torch.manual_seed(cfg.seed)
    return device


def make_loss(node: Any, num_classes: int, stats: dict[str, Any], seed: int
              ) -> ClassificationLoss:
    """Loss from a ``loss`` config node; dataset statistics are passed where accepted."""
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}
    accepted = inspect.signature(loss_class(node.name).__init__).parameters
    extra: dict[str, Any] = {"num_classes": num_classes, "seed": seed}
    extra.update({k: stats[k] for k in STAT_NAMES})
    for k, v in extra.items():
        if k in accepted and k not in params:
            params[k] = v
    return build_loss(node.name, **params)


def head_name(loss_node: Any) -> str:
    """Readable row name: the loss plus what distinguishes it (xi for ACSL)."""
    name = loss_node.name
    if "xi" in loss_node:
        name += f" xi={loss_node.xi}"
    if "bg_mode" in loss_node:
        name += f" bg={loss_node.bg_mode}"
    return name


def slug(name: str) -> str:
    """Folder-safe form of a row name: 'acsl xi=0.7 bg=official' -> 'acsl_xi0.7_bgofficial'."""
    return name.replace(" ", "_").replace("=", "")


def data_root(cfg: DictConfig) -> Path:
    return Path(cfg.output_root) / "cache" / "data"


def load_data(cfg: DictConfig) -> DatasetBundle:
    """Datasets; under torchrun rank 0 generates the benchmark while the others wait."""
    if not dist.is_main():
        dist.barrier()
    with progress_callback("generating benchmark", cfg.progress and dist.is_main()) as tick:
        data = build_datasets(cfg.dataset, data_root(cfg), tick)
    if dist.is_main():
        dist.barrier()
    return data


def stage1_key(cfg: DictConfig) -> str:
    s = cfg.schedule
    node = {
        "version": STAGE1_VERSION,
        "dataset": {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
                    if k != "loss_defaults"},
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "schedule": {"batch_size": s.batch_size, "flip": s.flip, "max_iters": s.max_iters,
                     "stage1": OmegaConf.to_container(s.stage1, resolve=True)},
        "seed": cfg.seed,
        "world_size": dist.world_size(),
    }
    return config_hash(node)


def build_model(cfg: DictConfig, data: DatasetBundle, loss: ClassificationLoss):
    return build_detector(cfg.backbone, data.cmap.num_classes, loss, cfg.dataset.min_size,
                          cfg.dataset.max_size)


def evaluate(cfg: DictConfig, data: DatasetBundle, model, scorers, device: str
             ) -> tuple[dict[str, dict], dict[str, list]]:
    """Predict on val (or its first ``eval_max_images``) and score with LVIS rules."""
    val = eval_subset(data.val, cfg.schedule.eval_max_images)
    results = predict(model, val, data.cmap, device, scorers, cfg.schedule.batch_size,
                      cfg.progress)
    gt = data.val_gt
    if val is not data.val:
        gt = subset_gt(gt, {data.val.images[i]["id"] for i in val.indices})
    metrics, per_cat = {}, {}
    for name, dets in results.items():
        r = evaluate_lvis(gt, dets)
        metrics[name], per_cat[name] = r.metrics, r.per_category
    return metrics, per_cat


def checkpoint_payload(cfg: DictConfig, data: DatasetBundle, model, loss_node: Any) -> dict:
    return {
        "model": model.state_dict(),
        "category_ids": list(data.cmap.category_ids),
        "loss": OmegaConf.to_container(loss_node, resolve=True),
        "config": config_mod.to_yaml(cfg),
    }


def stage1(cfg: DictConfig, data: DatasetBundle, device: str):
    """Train (or reuse) the softmax-CE detector; returns (model, folder, metrics, reused)."""
    folder = Path(cfg.output_root) / "cache" / "stage1" / stage1_key(cfg)
    ce_node = OmegaConf.create({"name": "softmax_ce"})
    ce = make_loss(ce_node, data.cmap.num_classes, data.stats.as_params(), cfg.seed)
    model = build_model(cfg, data, ce)
    done = (folder / "checkpoint.pt").is_file() and (folder / "metrics.json").is_file()
    if done:
        ckpt = load_checkpoint(folder / "checkpoint.pt")
        model.load_state_dict(ckpt["model"])
        saved = json.loads((folder / "metrics.json").read_text())
        log.info("stage 1: reusing %s", folder)
        return model, folder, saved, True
    sched = StageSchedule.from_cfg(cfg.schedule.stage1)
    flip = RandomHorizontalFlip(cfg.schedule.flip, cfg.seed)
    loader = train_loader(Transformed(data.train, flip), cfg.schedule.batch_size, cfg.seed,
                          cfg.schedule.workers)
    generators = [flip.generator]
    if getattr(loader.sampler, "generator", None) is not None:
        generators.append(loader.sampler.generator)
    resume = folder.with_name(folder.name + ".resume.pt")
    t0 = time.time()
    history = train_detector(model, loader, sched, device, cfg.schedule.max_iters, cfg.progress,
                             resume=resume, generators=generators)
    log.info("stage 1: trained in %.1f s", time.time() - t0)
    metrics, per_cat = evaluate(cfg, data, model, None, device)
    saved = {"metrics": metrics["model"], "per_category": per_cat["model"],
             "train_seconds": time.time() - t0}
    if dist.is_main():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp / "checkpoint.pt", checkpoint_payload(cfg, data, model, ce_node))
        (tmp / "config.yaml").write_text(config_mod.to_yaml(cfg))
        (tmp / "history.json").write_text(json.dumps(history))
        (tmp / "metrics.json").write_text(json.dumps(saved))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        resume.unlink(missing_ok=True)
    dist.barrier()
    return model, folder, saved, False


# ---------------------------------------------------------------- commands


def sweep_values(override: str) -> tuple[str, list[str] | None]:
    """(key, values) of a Hydra choice sweep like ``xi=0.1,0.3``; values None otherwise.

    Hydra's own grammar decides, so ``loss.bins=[10,100]`` stays one list value.
    """
    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException as e:
        raise ConfigError(f"bad override '{override}': {' '.join(str(e).split())}") from None
    key = parsed.get_key_element()
    if not parsed.is_sweep_override():
        return key, None
    return key, list(parsed.sweep_string_iterator())


def expand_heads(overrides: list[str]) -> list[tuple[str, DictConfig]]:
    """(row name, config) of every stage-2 head: the product of comma lists in head overrides.

    ``loss=bce,acsl xi=0.3,0.7`` gives bce (xi does not apply) and acsl at both xi. Heads
    whose loss configs are identical are kept once; heads that share a name but differ in
    some ``loss.*`` value get that value appended (``... bg_factor=True``).
    Non-head keys with comma lists are rejected here; ``sweep`` loops over those.
    """
    fixed, varying = [], []
    for o in overrides:
        key, values = sweep_values(o)
        if values is None:
            fixed.append(o)
        elif key.split(".")[0] in HEAD_KEYS:
            varying.append([f"{key}={v}" for v in values])
        else:
            raise ConfigError(f"{key}: a list of values needs 'acsl sweep', not 'acsl train'")
    configs, seen = [], set()
    for combo in itertools.product(*varying):
        c = config_mod.load_config(fixed + list(combo))
        node = OmegaConf.to_container(c.loss, resolve=True)
        key = json.dumps(node, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append((node, c))
    names = []
    for node, c in configs:
        name = head_name(c.loss)
        twins = [n for n, o in configs if head_name(o.loss) == name and n is not node]
        extra = sorted(k for k in node if any(t.get(k) != node[k] for t in twins))
        names.append(" ".join([name, *(f"{k}={node[k]}" for k in extra)]))
    return list(zip(names, (c for _, c in configs), strict=True))


def run_train(overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    """``acsl train``: stage 1 (or reuse) + stage-2 head(s) + evaluation + reports."""
    overrides = list(overrides)
    names, head_cfgs = zip(*expand_heads(overrides), strict=True)
    cfg = head_cfgs[0]
    device = setup_torch(cfg)
    t0 = time.time()
    run_name = cfg.run_name or (time.strftime("%Y%m%d-%H%M%S") + "-" +
                                ("sweep" if len(names) > 1 else slug(names[0])))
    runs = Path(cfg.output_root) / "runs"
    final = runs / run_name
    tmp = runs / f".{run_name}.partial"
    if dist.is_main():
        if final.exists():
            raise ConfigError(f"run_name={run_name}: {final} already exists")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    handler = _log_to(tmp / "train.log") if dist.is_main() else None
    try:
        data = load_data(cfg)
        stats = data.stats.as_params()
        C = data.cmap.num_classes
        losses = [make_loss(c.loss, C, stats, cfg.seed) for c in head_cfgs]  # fail fast
        model, s1_dir, s1, reused = stage1(cfg, data, device)
        heads = [new_head(n, loss, model, C) for n, loss in zip(names, losses, strict=True)]
        # Stage 2 must not depend on whether stage 1 was trained in this process or loaded
        # from the cache (training consumes the global RNG that RoI sampling uses).
        torch.manual_seed(cfg.seed + 1)
        train = Transformed(data.train, RandomHorizontalFlip(cfg.schedule.flip, cfg.seed + 1))
        loader = train_loader(train, cfg.schedule.batch_size, cfg.seed + 1, cfg.schedule.workers)
        finetune_heads(model, heads, loader, StageSchedule.from_cfg(cfg.schedule.stage2),
                       device, cfg.schedule.max_iters, cfg.progress)
        metrics, per_cat = evaluate(
            cfg, data, model, {h.name: (h.classifier, h.loss) for h in heads}, device)
        rows = {STAGE1_ROW: s1["metrics"], **metrics}
        per_cat = {STAGE1_ROW: s1["per_category"], **per_cat}
        if dist.is_main():
            (tmp / "config.yaml").write_text(config_mod.to_yaml(cfg))
            (tmp / "stage1").write_text(str(s1_dir.resolve()) + "\n")
            for h, hc in zip(heads, head_cfgs, strict=True):
                _save_head(tmp / "heads" / slug(h.name), hc, data, model, h)
            write_metrics(tmp, rows)
            write_per_category(tmp / "per_category_ap.csv", per_cat)
            if cfg.out:
                write_json(Path(cfg.out), rows[names[-1]])
            log.info("run finished in %.1f s", time.time() - t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if handler:
            logging.getLogger("acsl").removeHandler(handler)
            handler.close()
    if dist.is_main():
        tmp.rename(final)
    return RunResult(final, rows, per_cat, s1_dir, reused, time.time() - t0)


def _save_head(folder: Path, cfg: DictConfig, data: DatasetBundle, model, head: ClassifierHead
               ) -> None:
    """A self-contained detector checkpoint for one head, with its config beside it."""
    predictor, rh = model.roi_heads.box_predictor, model.roi_heads
    old = predictor.cls_score, rh.cls_loss
    predictor.cls_score, rh.cls_loss = head.classifier, head.loss
    try:
        save_checkpoint(folder / "checkpoint.pt", checkpoint_payload(cfg, data, model, cfg.loss))
    finally:
        predictor.cls_score, rh.cls_loss = old
    (folder / "config.yaml").write_text(config_mod.to_yaml(cfg))
    (folder / "history.json").write_text(json.dumps(head.history))


def run_eval_checkpoint(ckpt_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                        ) -> dict[str, float]:
    """``acsl eval ckpt=PATH``: evaluate with the config saved beside the checkpoint."""
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    beside = ckpt_path.parent / "config.yaml"
    saved = OmegaConf.load(beside) if beside.is_file() else OmegaConf.create(ckpt["config"])
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist([o for o in overrides
                                                         if not o.startswith("ckpt=")]))
    device = setup_torch(cfg)
    data = load_data(cfg)
    check_classes(ckpt_path, ckpt, list(data.cmap.category_ids))
    loss_node = OmegaConf.create(ckpt["loss"])
    loss = make_loss(loss_node, data.cmap.num_classes, data.stats.as_params(), cfg.seed)
    model = build_model(cfg, data, loss)
    model.load_state_dict(ckpt["model"])
    metrics, _ = evaluate(cfg, data, model, None, device)
    return metrics["model"]


def run_eval_results(dets_path: str | Path, ann_path: str | Path) -> dict[str, float]:
    """``acsl eval dets=RESULTS.json ann=ANN.json``: score an existing results file."""
    gt = read_annotations(ann_path)
    dets = load_detections(dets_path, gt)
    return evaluate_lvis(gt, dets).metrics


def print_metrics(rows: dict[str, dict[str, float]], title: str = "") -> None:
    console.print(rich_table(rows, title))


def _log_to(path: Path) -> logging.Handler:
    logger = logging.getLogger("acsl")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler


@dataclass
class SweepResult:
    folder: Path
    runs: list[RunResult]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]

    @property
    def num_runs(self) -> int:
        return len(self.runs)


def run_sweep(overrides: list[str] | tuple[str, ...] = ()) -> SweepResult:
    """``acsl sweep``: one run per combination of non-head comma lists (e.g. seeds), each
    with all head combinations in one stage-2 pass; then mean and std over runs."""
    outer, inner, out = [], [], None
    for o in overrides:
        key, values = sweep_values(o)
        if key == "out":  # the sweep's mean goes there, not each run's metrics
            out = o.split("=", 1)[1]
        elif values is not None and key.split(".")[0] not in HEAD_KEYS:
            outer.append([f"{key}={v}" for v in values])
        else:
            inner.append(o)
    for combo in itertools.product(*outer):  # validate every run's config before any work
        expand_heads(inner + list(combo))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    for i, combo in enumerate(itertools.product(*outer)):
        runs.append(run_train([*inner, *combo, f"run_name={stamp}-sweep-{i}"]))
    rows = list(runs[0].metrics)
    mean, std = {}, {}
    for row in rows:
        vals = {k: np.array([float(r.metrics[row][k]) for r in runs])
                for k in runs[0].metrics[row]}
        mean[row] = {k: float(v.mean()) for k, v in vals.items()}
        std[row] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()}
    folder = runs[0].run_dir.parent / f"{stamp}-sweep"
    if dist.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_metrics(folder, mean)
        (folder / "std.json").write_text(json.dumps(std, indent=2))
        (folder / "summary.md").write_text(markdown_mean_std(mean, std, len(runs)))
        if out:
            write_json(Path(out), mean[rows[-1]])
        (folder / "runs.txt").write_text("\n".join(
            f"{' '.join(c)}\t{r.run_dir}" for c, r in
            zip(itertools.product(*outer), runs, strict=True)) + "\n")
    return SweepResult(folder, runs, mean, std)

"""Run under torchrun by tests/test_pipeline.py: each rank fine-tunes the same two heads on
its own shard and saves their final weights, which must agree across ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from acsl_cli import config as config_mod
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.finetune_heads import finetune_heads, new_head
from acsl_cli.engine.loaders import train_loader
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.models.trunk import FrozenTrunk
from acsl_cli.pipeline.components import build_model, load_data, loss_context, make_loss
from acsl_cli.settings import LossSettings

TINY = ["dataset.num_classes=8", "dataset.max_images_per_class=12",
        "dataset.val_instances_per_class=2", "schedule=smoke", "progress=false"]


def main(out: Path) -> None:
    cfg = config_mod.load_settings([*TINY, f"output_root={out / 'outputs'}", "device=cpu"])
    dist.init_distributed("cpu")
    data = load_data(cfg)
    ctx = loss_context(data, 0)
    torch.manual_seed(0)  # same detector on every rank
    model = build_model(cfg, data, make_loss(LossSettings("softmax_ce"), ctx))
    heads = [new_head(n, make_loss(LossSettings(n), ctx), model.roi_heads.box_predictor.cls_score,
                      data.cmap.num_classes) for n in ("bce", "softmax_ce")]
    start = {h.name: h.classifier.weight.detach().clone() for h in heads}
    torch.manual_seed(1 + dist.rank())  # RoI sampling differs per rank, as in real runs
    loader = train_loader(data.train, 2, seed=5)
    sched = StageSchedule.from_settings(cfg.schedule.stage2)
    finetune_heads(FrozenTrunk(model), heads, loader, sched, "cpu", max_iters=4,
                   show_progress=False, amp="off")
    torch.save({h.name: {"weight": h.classifier.weight.detach(), "start": start[h.name]}
                for h in heads}, out / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

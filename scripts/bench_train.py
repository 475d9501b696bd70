"""Training-step throughput: the project's stage-1 step against a bare torchvision step.

Run: ``.venv/bin/python scripts/bench_train.py [--device cpu|cuda] [--backbone small|r50|r101]
[--size 800] [--batch 2] [--amp off|bf16|fp16] [--iters 20] [--warmup N] [--classes 1230]
[--bare matched|torchvision] [--detector faster_rcnn|cascade_rcnn] [--threads N]
[--seed 0] [--json FILE]``.

Quick CPU check (under a minute): ``scripts/bench_train.py --backbone small --size 128
--batch 2 --iters 5``. GPU: ``scripts/bench_train.py --device cuda --backbone r50 --size 800
--batch 2 --iters 20`` (``scripts/gpu_check.sh`` runs it).

What is timed, on the same seeded synthetic batches (random images of ``size`` x ``size``
pixels, 1 to 4 random boxes per image, labels in 1..C), already on the device:

- **ours**: ``acsl_cli.engine.train_detector.DetectorStep`` (the pipeline's stage-1 step: forward,
  loss guard, backward, gradient clipping at the default schedule's 35, SGD) on
  ``build_detector(conf/backbone/<backbone>.yaml, C, softmax_ce)``;
- **bare**: a plain torchvision training step (forward, ``sum(losses)``, backward, SGD, as in
  torchvision's detection reference) on a torchvision ``FasterRCNN`` with ``C + 1`` classes.
  ``--bare matched`` (default) gives it the same backbone (``build_backbone``: for r50 /
  r101 FrozenBatchNorm and 3 trainable stages, which is what
  ``fasterrcnn_resnet50_fpn(weights_backbone=DEFAULT)`` builds, minus the download), anchors
  and RPN / RoI sampling sizes as ours, so only the detector head and step code differ.
  ``--bare torchvision`` is the literal ``fasterrcnn_resnet50_fpn(weights=None,
  weights_backbone=None, num_classes=C+1)`` (r101: the same with a ResNet-101): without
  backbone weights torchvision switches to trainable BatchNorm and 5 trainable stages,
  i.e. more work than ours.

Both use SGD lr 0.02, momentum 0.9, weight decay 1e-4, with the lr in the linear warm-up of
torchvision's detection reference (from 0.001 x over 1000 iterations), as the first steps
of a real run: at a constant 0.02 a randomly initialised r50 without gradient clipping
(the bare step) gives non-finite losses within a few steps, and NaNs change the code paths
(NMS, sampling) that are timed. Non-finite losses are counted and reported. The stage-2 step
(``acsl_cli.engine.finetune_heads.HeadsStep``, one bce head on a ``FrozenTrunk`` of a same-seed copy
of our detector) is timed too. The three steps take turns in a rotating order (A B C, B C A,
C A B, ...) so that load from other processes hits all alike, and ``--warmup`` steps of each
are not timed; every timed region is bracketed by ``torch.cuda.synchronize()`` on CUDA.
``--amp bf16|fp16`` runs the steps under ``torch.autocast`` (fp16 with a gradient scaler) if
``DetectorStep`` / ``HeadsStep`` take an ``amp=`` argument (the bare step follows stage 1);
otherwise it falls back to ``off`` with a printed note.

``--detector cascade_rcnn`` also times the same stage-1 step on a Cascade R-CNN
(``models.cascade``, three stages, same backbone and seed) and stage 2 on it (one bce head
of three classifiers), in the same rotation on the same batches, and prints the ratio
``stage-1 ms/step cascade/faster`` (wall and CPU medians) before the last line.

Prints a Markdown table (median and mean wall ms per step, median process-CPU ms per step,
images/s from the median wall time) and, as its last line, ``stage-1 images/s ours/bare: R``
(R > 1: ours is faster). On a CPU shared with other jobs, wall times of multi-threaded steps
are very noisy (a descheduled OpenMP thread stalls the others); ``--threads 1`` and the
CPU-time ratio printed just above the last line are the steadier check. ``--json FILE``
also writes the medians (ms per step, wall and CPU, per step kind, and the ratios) for
``scripts/bench_compare.py``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

LR, MOMENTUM, WEIGHT_DECAY, GRAD_CLIP = 0.02, 0.9, 1e-4, 35.0
WARMUP_FACTOR, WARMUP_ITERS = 1e-3, 1000  # torchvision's detection reference warm-up
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Cfg(dict):
    """A backbone config node with attribute access (what ``build_backbone`` reads)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def backbone_cfg(name: str) -> Any:
    """``conf/backbone/<name>.yaml``, as OmegaConf when installed, else a plain mapping."""
    path = ROOT / "conf" / "backbone" / f"{name}.yaml"
    try:
        from omegaconf import OmegaConf
    except ImportError:
        import yaml

        return _Cfg(yaml.safe_load(path.read_text()))
    return OmegaConf.load(path)


class CountingGuard:
    """Stands in for the pipeline's ``LossGuard``: counts non-finite losses instead of
    stopping, so a diverging random detector still gets timed (and the table says so)."""

    def __init__(self) -> None:
        self.bad = 0

    def check(self, track: str, value: float, it: int) -> None:
        if not math.isfinite(value):
            self.bad += 1


class BareStep:
    """A plain torchvision detection training step (torchvision's reference recipe)."""

    def __init__(self, model: nn.Module, device: str, amp: str) -> None:
        self.model, self.device = model.to(device).train(), device
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.dtype = AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device) if amp == "fp16" else None
        self.guard = CountingGuard()

    def __call__(self, images: list, targets: list, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
            losses = self.model(images, targets)
            loss = sum(losses.values())
        self.guard.check("", loss.item(), 0)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()


def takes_amp(cls: type) -> bool:
    return "amp" in inspect.signature(cls.__init__).parameters


def lr_at(it: int) -> float:
    """Base lr 0.02 in its linear warm-up from 0.001 x over 1000 iterations (the first
    iterations of a real run, as in torchvision's detection reference)."""
    return LR * (WARMUP_FACTOR + (1 - WARMUP_FACTOR) * min(it, WARMUP_ITERS) / WARMUP_ITERS)


def stepper(step, guard: CountingGuard) -> Callable[[tuple, int], None]:
    """One step of ours at ``lr_at(it)``, as ``(batch, it)``: today ``fit``'s schedulers set
    the lr on the step's optimizers; a tree from before that (bench_compare's BASE) takes
    ``lr`` as an argument. Decided once, outside the timed steps."""
    if "lr" in inspect.signature(step.__call__).parameters:
        return lambda b, it: step(b[0], b[1], it, lr_at(it), guard)

    def run(b: tuple, it: int) -> None:
        for opt in step.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
        step(b[0], b[1], it, guard)

    return run


def schedule(grad_clip: float):
    from acsl_cli.engine.schedule import StageSchedule

    return StageSchedule(epochs=1, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                         warmup_iters=0, warmup_ratio=1.0, steps=[], grad_clip=grad_clip)


def make_batches(count: int, batch: int, size: int, classes: int, seed: int, device: str
                 ) -> list[tuple[list, list]]:
    """``count`` batches of random images with 1-4 random boxes each (sides 10-50 % of the
    image), moved to ``device`` up front so that no copy is timed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        images, targets = [], []
        for _ in range(batch):
            images.append(torch.rand(3, size, size, generator=g).to(device))
            k = int(torch.randint(1, 5, (1,), generator=g))
            wh = size * (0.1 + 0.4 * torch.rand(k, 2, generator=g))
            xy = (size - wh) * torch.rand(k, 2, generator=g)
            targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                            "labels": torch.randint(1, classes + 1, (k,), generator=g).to(device)})
        out.append((images, targets))
    return out


def ours_detector(args: argparse.Namespace, cascade: bool = False) -> nn.Module:
    from acsl_cli.losses import LossContext, build_loss
    from acsl_cli.models.cascade import CascadeSpec
    from acsl_cli.models.detector import build_detector

    torch.manual_seed(args.seed)
    loss = build_loss("softmax_ce", LossContext(args.classes, args.seed))
    return build_detector(backbone_cfg(args.backbone), args.classes, loss, args.size, args.size,
                          cascade=CascadeSpec() if cascade else None, class_agnostic_boxes=False)


def bare_detector(args: argparse.Namespace) -> nn.Module:
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    from acsl_cli.models.backbones import build_backbone

    torch.manual_seed(args.seed)
    n, size = args.classes + 1, args.size
    if args.bare == "torchvision" and args.backbone == "r50":
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=n,
                                       min_size=size, max_size=size)
    if args.bare == "torchvision" and args.backbone == "r101":
        backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None,
                                       trainable_layers=5)
        return FasterRCNN(backbone, num_classes=n, min_size=size, max_size=size)
    cfg = backbone_cfg(args.backbone)  # matched (and small, which torchvision lacks)
    backbone = build_backbone(cfg)
    sizes = tuple((int(s),) for s in cfg.anchor_sizes)
    rep = int(cfg.representation_size)
    return FasterRCNN(
        backbone, num_classes=None, min_size=size, max_size=size,
        rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_batch_size_per_image=cfg.roi_batch_size_per_image,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, n),
    )


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """Wall and process-CPU milliseconds of ``fn()``, the device's queued work included.

    CPU time (all threads of this process) is less sensitive than wall time to other
    processes competing for the cores; on CUDA it measures host-side work only.
    """
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3


def run_interleaved(steps: dict[str, Callable[[Any, int], Any]], batches: list, warmup: int,
                    iters: int, device: str) -> dict[str, list[tuple[float, float]]]:
    """Rotate the steps' order each round (A B C, B C A, C A B, ...) over the same batch
    sequence, so that each runs first, second, ... equally often and a burst of load from
    other processes hits all of them alike; the first ``warmup`` rounds are not recorded.
    Returns (wall ms, CPU ms) per timed step."""
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in steps}
    keys = list(steps)
    for i in range(warmup + iters):
        batch = batches[i % len(batches)]
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            ms = timed(partial(steps[key], batch, i), device)
            if i >= warmup:
                times[key].append(ms)
    return times


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backbone", choices=["small", "r50", "r101"], default="small")
    parser.add_argument("--size", type=int, default=800, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="off")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps per model first (default: 1 on cpu, 2 on cuda)")
    parser.add_argument("--classes", type=int, default=1230, help="foreground classes (C)")
    parser.add_argument("--bare", choices=["matched", "torchvision"], default="matched",
                        help="bare model: same backbone as ours, or torchvision's builder")
    parser.add_argument("--detector", choices=["faster_rcnn", "cascade_rcnn"],
                        default="faster_rcnn",
                        help="cascade_rcnn: also time Cascade R-CNN's steps beside ours")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a busy CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the medians to this file (bench_compare.py reads it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the script runs (CI runs it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone = 'small'
        args.size = 128
        args.batch = 1
        args.iters = 2
        args.warmup = 1
        args.classes = 20
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.amp == "fp16" and args.device != "cuda":
        parser.error("--amp fp16 needs CUDA (its gradient scaler); use --amp bf16 on cpu")
    for key in ("size", "batch", "iters", "classes"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.warmup is None:
        args.warmup = 2 if args.device == "cuda" else 1
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    from acsl_cli.engine.finetune_heads import HeadsStep, new_head
    from acsl_cli.engine.train_detector import DetectorStep
    from acsl_cli.losses import LossContext, build_loss
    from acsl_cli.models.trunk import FrozenTrunk

    args = parse_args(argv)
    device = args.device
    amp1 = amp2 = args.amp
    if args.amp != "off" and not takes_amp(DetectorStep):
        print(f"note: DetectorStep takes no amp= argument yet; --amp {args.amp} falls back to "
              "off for both stage-1 steps")
        amp1 = "off"
    if args.amp != "off" and not takes_amp(HeadsStep):
        print("note: HeadsStep takes no amp= argument yet; stage 2 runs with amp off")
        amp2 = "off"
    amp_kw1 = {"amp": amp1} if takes_amp(DetectorStep) else {}
    amp_kw2 = {"amp": amp2} if takes_amp(HeadsStep) else {}

    batches = make_batches(min(args.warmup + args.iters, 8), args.batch, args.size,
                           args.classes, args.seed, device)
    ours_model, bare_model = ours_detector(args), bare_detector(args)
    params = (trainable(ours_model), trainable(bare_model))
    ours = DetectorStep(ours_model, schedule(GRAD_CLIP), device, **amp_kw1)
    bare = BareStep(bare_model, device, amp1)
    # stage 2 gets its own copy of our (same-seed) detector, frozen, so that its steps can
    # be interleaved with the stage-1 steps and see the same load
    trunk = FrozenTrunk(ours_detector(args).to(device))
    head = new_head("bce", build_loss("bce", LossContext(args.classes, args.seed)),
                    trunk.stage1_classifier,
                    args.classes)
    heads = HeadsStep(trunk, [head], schedule(GRAD_CLIP), device, **amp_kw2)
    guard, guard2 = CountingGuard(), CountingGuard()
    steps = {
        "ours": stepper(ours, guard),
        "bare": lambda b, it: bare(b[0], b[1], lr_at(it)),
        "stage2": stepper(heads, guard2),
    }
    if args.detector == "cascade_rcnn":
        cascade = DetectorStep(ours_detector(args, True), schedule(GRAD_CLIP), device, **amp_kw1)
        ctrunk = FrozenTrunk(ours_detector(args, True).to(device))
        chead = new_head("bce", [build_loss("bce", LossContext(args.classes, args.seed))
                                 for _ in range(ctrunk.num_stages)],
                         ctrunk.stage1_classifier, args.classes)
        cheads = HeadsStep(ctrunk, [chead], schedule(GRAD_CLIP), device, **amp_kw2)
        steps["cascade"] = stepper(cascade, guard)
        steps["cascade2"] = stepper(cheads, guard2)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    times = run_interleaved(steps, batches, args.warmup, args.iters, device)
    wall = time.perf_counter() - t0

    name = (torch.cuda.get_device_name() if device == "cuda"
            else f"cpu x{torch.get_num_threads()} threads")
    print(f"backbone={args.backbone} size={args.size} batch={args.batch} C={args.classes} "
          f"amp={amp1} (stage 2: {amp2}) bare={args.bare}; {args.iters} timed + {args.warmup} "
          f"warm-up steps each, interleaved (torch {torch.__version__}, {name})")
    print(f"trainable parameters: ours {params[0] / 1e6:.2f} M, bare {params[1] / 1e6:.2f} M; "
          f"SGD lr {LR} (warm-up from x{WARMUP_FACTOR:g}) momentum {MOMENTUM} wd "
          f"{WEIGHT_DECAY}, ours clips at {GRAD_CLIP:g}; "
          f"timing loop {wall:.1f} s")
    if device == "cuda":
        print(f"peak GPU memory (all three models resident): "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print()
    print("| step | ms/step (median) | ms/step (mean) | CPU ms/step (median) | images/s |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "ours": "stage 1, ours (DetectorStep, softmax_ce)",
        "bare": f"stage 1, bare torchvision FasterRCNN ({args.bare})",
        "stage2": "stage 2, ours (HeadsStep, 1 bce head, FrozenTrunk)",
        "cascade": "stage 1, Cascade R-CNN (DetectorStep, softmax_ce, 3 stages)",
        "cascade2": "stage 2, Cascade R-CNN (HeadsStep, 1 bce head x 3 stages)",
    }
    rate, cpu, med_ms = {}, {}, {}
    for key, label in labels.items():
        if key not in times:
            continue
        walls = [w for w, _ in times[key]]
        med, mean = statistics.median(walls), statistics.fmean(walls)
        med_ms[key] = med
        cpu[key] = statistics.median(c for _, c in times[key])
        rate[key] = args.batch / (med / 1e3)
        print(f"| {label} | {med:.1f} | {mean:.1f} | {cpu[key]:.1f} | {rate[key]:.2f} |")
    print()
    if guard.bad or bare.guard.bad or guard2.bad:
        print(f"warning: non-finite losses (ours {guard.bad}, bare {bare.guard.bad}, stage 2 "
              f"{guard2.bad}); the timings still count, but a diverged model may take other "
              "code paths")
    print(f"stage-1 CPU ms/step ours/bare: {cpu['ours'] / cpu['bare']:.3f}"
          + (" (host-side work only)" if device == "cuda" else ""))
    print(f"stage-2 images/s: {rate['stage2']:.2f}")
    if "cascade" in times:
        print(f"stage-1 ms/step cascade/faster: wall {med_ms['cascade'] / med_ms['ours']:.3f}, "
              f"CPU {cpu['cascade'] / cpu['ours']:.3f} (target <= 1.4); stage 2: wall "
              f"{med_ms['cascade2'] / med_ms['stage2']:.3f}, "
              f"CPU {cpu['cascade2'] / cpu['stage2']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "ms": med_ms, "cpu_ms": cpu, "ours/bare images/s": rate["ours"] / rate["bare"],
            "ours/bare CPU ms": cpu["ours"] / cpu["bare"], "device": name}))
    print(f"stage-1 images/s ours/bare: {rate['ours'] / rate['bare']:.3f}")


if __name__ == "__main__":
    main()

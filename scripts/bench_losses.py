"""Forward + backward wall time of every registered loss against plain sigmoid BCE.

Run: ``.venv/bin/python scripts/bench_losses.py [--n 8192 --classes 1230 --repeats 9
--device cpu|cuda --dtype float32|bfloat16|float16 --threads 2 --clock wall|cpu
--acsl-only --losses NAME[,NAME] --json FILE]``. Logits are N(-4, 2) so ACSL masks are as
sparse as on a trained head, 25 % of the RoIs are foreground, and the dataset statistics are
a synthetic LVIS-like long tail.

Every loss is measured the same way: in paired runs against the BCE baseline, each pair
one call of BCE and one of the loss back to back (BCE first in even rounds, second in odd
ones), round-robin over the losses so that load from other processes hits all of them
alike; ``x BCE`` is the median over ``--repeats`` pairs of the pair's ratio, after one
untimed warm-up call of each. The ``ms`` column is the loss's median time. On CUDA every
timing starts and ends with ``torch.cuda.synchronize()``, the losses and their buffers live
on the device, and a column counts the host synchronisations of one forward (CUDA's sync
debug mode). ``--dtype`` is the logits' dtype (what autocast hands the loss); the losses
reduce in float32 whatever it is, and so does the BCE baseline. ``--threads`` defaults to
2 (the figures in the README and in ``bench_compare.py`` are at 2 threads).

Besides the registered losses it times, for comparison, the formulations they replaced
(BAGS with ``nonzero`` per group, Federated with advanced indexing, ECM as weighted BCE
on a one-hot target), ACSL's other form (dense on CPU, gathered on CUDA), an ACSL written
as a per-class Python loop in the style of the authors' release (official background
draws) and EFL as its release computes it (autograd through its formulas, statistics from
a gradient hook); it checks that each gives the loss's value and gradient, and prints
everything as a Markdown table.

ACSL records its suppression counts (Figure 3) in training mode, as in stage 2; each ACSL
mode is also timed in eval mode, which records nothing, and the ratio of the two (each
against its BCE pairs: the recording's overhead) is printed below the table.
``--acsl-only`` times just those rows and the baseline, for a quick, less noisy
measurement (raise ``--repeats``); ``--losses gol,bce`` times just those registered losses
(with their comparison rows) and the baseline, ACSL's mode rows only if ``acsl`` is named.
On a CPU shared with other processes, ``--threads 1
--clock cpu`` measures the work itself: wall time there mostly measures how often the
scheduler runs this process (and, with several threads, how long a parallel op waits for
its second thread). ``--json FILE`` also writes the medians (``x_bce`` and ``ms`` per row)
for ``scripts/bench_compare.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASELINE = "BCE baseline (F.bce_with_logits, one-hot given)"
for _path in (ROOT, ROOT / "scripts"):  # the package from a checkout; the refs beside this
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_losses_refs import (  # noqa: E402 - beside this script
    acsl_release_style,
    bags_before,
    efl_release_style,
    federated_before,
    other_form,
)


def synthetic_statistics(num_classes: int, seed: int = 0) -> dict[str, object]:
    """LVIS-like long tail: image counts fall log-linearly from 20,000 to 1 over the
    classes (in a shuffled label order), 2 instances per image, r/c/f from image counts
    with the LVIS thresholds (<= 10, <= 100, > 100)."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(num_classes, generator=g).double()
    span = max(num_classes - 1, 1)
    image_counts = torch.exp(math.log(20000.0) * (1.0 - rank / span)).round().long().tolist()
    frequencies = ["r" if n <= 10 else "c" if n <= 100 else "f" for n in image_counts]
    return {
        "frequencies": frequencies,
        "image_counts": image_counts,
        "instance_counts": [2 * n for n in image_counts],
        "num_images": 57000,
    }


def make_batch(
    n: int, width: int, num_classes: int, device: str, seed: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, width, generator=g) * 2.0 - 4.0
    labels = torch.randint(1, num_classes + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= 0.25] = 0
    return logits.to(device=device, dtype=dtype), labels.to(device)


def timed(fn: Callable[[], None], device: str, clock: Callable[[], float] = time.perf_counter
          ) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) * 1e3


def step(
    loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, labels: Tensor
) -> Callable[[], None]:
    """One forward + backward on a fresh leaf, like a training step sees it."""
    leaf = logits.detach().requires_grad_(True)

    def run() -> None:
        leaf.grad = None
        loss_fn(leaf, labels).backward()

    return run


def paired_times(runs: dict[str, Callable[[], None]], repeats: int, device: str,
                 clock: Callable[[], float]) -> tuple[dict[str, list[float]],
                                                       dict[str, list[float]]]:
    """ms per call of every run, and each loss's ratio to the BCE call paired with it:
    per round, every loss in turn with one BCE call beside it (BCE first in even rounds)."""
    ms: dict[str, list[float]] = {key: [] for key in runs}
    ratios: dict[str, list[float]] = {key: [] for key in runs}
    for r in range(repeats):
        for key, run in runs.items():
            if key == BASELINE:
                continue
            if r % 2 == 0:
                base, t = timed(runs[BASELINE], device, clock), timed(run, device, clock)
            else:
                t, base = timed(run, device, clock), timed(runs[BASELINE], device, clock)
            ms[BASELINE].append(base)
            ms[key].append(t)
            ratios[key].append(t / base)
            ratios[BASELINE].append(1.0)
    return ms, ratios


def host_syncs(fn: Callable[[], None], device: str) -> str:
    """How many host synchronisations one call makes (CUDA only; "-" elsewhere)."""
    if device != "cuda":
        return "-"
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return str(sum("synchroniz" in str(w.message) for w in caught))


def max_diff(a: Callable[[Tensor, Tensor], Tensor], b: Callable[[Tensor, Tensor], Tensor],
             logits: Tensor, labels: Tensor) -> float:
    """Max |difference| of value and gradient between two loss callables."""
    za = logits.detach().clone().requires_grad_(True)
    zb = logits.detach().clone().requires_grad_(True)
    va, vb = a(za, labels), b(zb, labels)
    va.backward()
    vb.backward()
    return max(abs(va.item() - vb.item()), (za.grad - zb.grad).abs().max().item())


def ecm_bce(loss: torch.nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """ECM through ``binary_cross_entropy_with_logits`` on a one-hot target (its per-RoI
    terms, mmdetection's path), against the fused Function its ``forward`` uses."""
    return loss.roi_losses(logits, labels).sum() / max(logits.shape[0], 1)


def check_release_style(args: argparse.Namespace, stats: dict[str, object]) -> float:
    """Max |difference| of value and gradient between the loop and the vectorised loss."""
    from acsl_cli.losses import build_loss

    logits, labels = make_batch(args.n, args.classes + 1, args.classes, args.device, seed=1)
    vectorised = build_loss("acsl", bg_mode="official", frequencies=stats["frequencies"], seed=5)
    release_gen = torch.Generator().manual_seed(5)
    return max_diff(
        vectorised.to(args.device),
        lambda z, y: acsl_release_style(z, y, 0.7, stats["frequencies"], release_gen),
        logits, labels)


def main(argv: list[str] | None = None) -> None:
    from acsl_cli.losses import available_losses, build_loss, loss_class
    from acsl_cli.losses.acsl import BG_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="RoIs per batch (N)")
    parser.add_argument("--classes", type=int, default=1230, help="foreground classes (C)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="timed pairs (BCE, loss) per loss")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="dtype of the logits handed to the losses")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (CPU device; with --threads 1 it "
                        "ignores other processes' load)")
    parser.add_argument("--acsl-only", action="store_true",
                        help="time only ACSL with and without its suppression record")
    parser.add_argument("--losses", default=None, metavar="NAME[,NAME]",
                        help="time only these registered losses (and their comparison rows)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the medians to this file (bench_compare.py reads it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the script runs (CI runs it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 256
        args.classes = 30
        args.repeats = 2
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    unknown = sorted(set((args.losses or "").split(",")) - {"", *available_losses()})
    if unknown or args.losses == "":
        parser.error(f"--losses: not registered: {', '.join(unknown) or '(empty)'}")
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU work only: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n, c, dev, dtype = args.n, args.classes, args.device, DTYPES[args.dtype]
    stats = synthetic_statistics(c)
    logits, labels = make_batch(n, c + 1, c, dev, seed=0, dtype=dtype)
    onehot = torch.zeros(logits.shape, device=dev)
    onehot[torch.arange(n, device=dev), labels] = 1

    def build(name: str, **params: object) -> torch.nn.Module:
        needs = {key: stats[key] for key in loss_class(name).needs}
        return build_loss(name, num_classes=c, **needs, **params).to(dev)

    cases: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Tensor]] = {}
    cases[BASELINE] = (
        lambda z, y: F.binary_cross_entropy_with_logits(z.float(), onehot, reduction="sum") / n,
        logits)
    names = [] if args.acsl_only else available_losses() if args.losses is None \
        else args.losses.split(",")
    acsl_rows = args.losses is None or "acsl" in names  # ACSL's mode rows and checks
    for name in names:
        loss = build(name)
        width = loss.num_outputs(c)
        z = logits if width == c + 1 else make_batch(n, width, c, dev, seed=0, dtype=dtype)[0]
        cases[name] = (loss, z)
        if name == "bags":
            cases["bags, before (nonzero per group)"] = (partial(bags_before, build(name)), z)
        if name == "federated":
            cases["federated, before (advanced indexing)"] = (
                partial(federated_before, build(name)), z)
        if name == "gol":
            cases["gol (variant=gumbel_ce)"] = (build(name, variant="gumbel_ce"), z)
        if name == "efl":
            cases["efl, release style (autograd, gradient hook)"] = (
                partial(efl_release_style, build(name)), z)
        if name == "ecm":
            cases["ecm, weighted BCE form (its roi_losses)"] = (partial(ecm_bce, build(name)), z)
    other = "dense" if dev == "cpu" else "gathered"  # the form this device does not use
    for mode in BG_MODES if acsl_rows else ():
        key = f"acsl (bg_mode={mode})"
        cases[key] = (build("acsl", bg_mode=mode), logits)
        cases[f"{key}, not recording (eval mode)"] = (build("acsl", bg_mode=mode).eval(), logits)
        if not args.acsl_only:
            cases[f"{key}, {other} form"] = (other_form(build("acsl", bg_mode=mode), other,
                                                         stats["frequencies"]), logits)
    if not args.acsl_only and acsl_rows:
        release_gen = torch.Generator().manual_seed(0)
        cases["acsl, per-class loop (release style)"] = (
            lambda z, y: acsl_release_style(z.float(), y, 0.7, stats["frequencies"],
                                            release_gen), logits)

    runs = {key: step(fn, z, labels) for key, (fn, z) in cases.items()}
    syncs = {key: host_syncs(lambda f=fn, z=z: f(z, labels), dev)
             for key, (fn, z) in cases.items()}
    for run in runs.values():  # warm-up
        run()
    ms, ratios = paired_times(runs, args.repeats, dev, clock)
    medians = {key: statistics.median(values) for key, values in ms.items()}
    x_bce = {key: statistics.median(values) for key, values in ratios.items()}
    device_name = torch.cuda.get_device_name() if dev == "cuda" \
        else f"cpu x{torch.get_num_threads()}"
    print(f"N={n} C={c} logits {args.dtype}, forward+backward ({args.clock} clock), median of "
          f"{args.repeats} pairs with BCE (torch {torch.__version__}, {device_name})\n")
    print("| loss | ms (median) | x BCE (median of pairs) | host syncs / forward |")
    print("|---|---:|---:|---:|")
    for key, value in medians.items():
        print(f"| {key} | {value:.1f} | {x_bce[key]:.2f} | {syncs[key]} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"x_bce": x_bce, "ms": medians, "n": n, "classes": c,
                                         "device": device_name, "clock": args.clock}))

    print()
    for mode in BG_MODES if acsl_rows else ():
        key = f"acsl (bg_mode={mode})"
        on, off = x_bce[key], x_bce[f"{key}, not recording (eval mode)"]
        print(f"{key}: recording suppression counts costs x{on / off:.3f} "
              f"({on:.2f} x BCE vs {off:.2f} x BCE, {100 * (on / off - 1):+.1f} %)")
    if args.acsl_only:
        return
    # fresh pairs built alike (same seeds, so the same draws on both sides); a loss the tree
    # does not have (bench_compare's older BASE) or --losses leaves out has no pair
    have = set(names)
    pairs = [
        *([("bags", build("bags"), partial(bags_before, build("bags")), cases["bags"][1])]
          if "bags" in have else []),
        *([("federated", build("federated"), partial(federated_before, build("federated")),
            logits)] if "federated" in have else []),
        *([("efl vs its release-style form", build("efl"),
            partial(efl_release_style, build("efl")), logits)] if "efl" in have else []),
        *([("ecm vs its weighted BCE form", build("ecm"), partial(ecm_bce, build("ecm")),
            logits)] if "ecm" in have else []),
        *((f"acsl (bg_mode={mode}) vs its {other} form", build("acsl", bg_mode=mode),
           other_form(build("acsl", bg_mode=mode), other, stats["frequencies"]), logits)
          for mode in BG_MODES),
    ]
    for label, new, old, z in (pair for pair in pairs if pair[0].split()[0] in have):
        what = label if " vs " in label else f"{label} vs before"
        print(f"{what}: max |diff| of value and gradient {max_diff(new, old, z, labels):.2e}")
    if not acsl_rows:
        return
    diff = check_release_style(args, stats)
    print(f"release-style loop vs vectorised acsl (official, same draws): max |diff| {diff:.2e}")

if __name__ == "__main__":
    main()

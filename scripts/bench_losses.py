"""Forward + backward wall time of every registered loss against plain sigmoid BCE.

Run: ``.venv/bin/python scripts/bench_losses.py [--n 8192 --classes 1230 --repeats 7
--device cpu|cuda]``. Logits are N(-4, 2) so ACSL masks are as sparse as on a trained
head, 25 % of the RoIs are foreground, and the dataset statistics are a synthetic
LVIS-like long tail. Losses are timed round-robin (one repeat of each, then the next
round) so that load from other processes hits all of them alike; the table reports the
median per loss after one warm-up call.

It also times an ACSL written as a per-class Python loop in the style of the authors'
release (official background draws), checks it gives the vectorised loss's value and
gradient for the same draws, and prints everything as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))


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


def acsl_release_style(
    logits: Tensor,
    labels: Tensor,
    xi: float,
    frequencies: list[str],
    generator: torch.Generator,
) -> Tensor:
    """ACSL the way the authors' release computes it: a Python loop over the unique
    labels building the weight mask group by group, then a weighted BCE by autograd.
    Background rows use the release's draws (common rows first, then rare rows)."""
    n, width = logits.shape
    device = logits.device
    cols = {
        group: torch.tensor(
            [i + 1 for i, f in enumerate(frequencies) if f == group], dtype=torch.long
        ).to(device)
        for group in "rcf"
    }
    target = logits.new_zeros(n, width)
    weight = logits.new_zeros(n, width)
    with torch.no_grad():
        high = torch.nonzero(torch.sigmoid(logits) >= xi)
    weight[high[:, 0], high[:, 1]] = 1
    for cls in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == cls).squeeze(1)
        if cls == 0:
            target[rows, 0] = 1
            base = logits.new_zeros(width)
            base[0] = 1
            base[cols["f"]] = 1
            weight[rows] = base.expand(rows.numel(), width)
            n_common = int(rows.numel() * 0.1)
            common = torch.randperm(rows.numel(), generator=generator)[:n_common]
            n_rare = int(rows.numel() * 0.01)
            rare = torch.randperm(rows.numel(), generator=generator)[:n_rare]
            for picked, group in ((common, "c"), (rare, "r")):
                picked_rows = rows[picked.to(device)]
                weight[picked_rows[:, None], cols[group][None, :]] = 1
        else:
            target[rows, cls] = 1
            weight[rows, cls] = 1
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weight * loss).sum() / n


def make_batch(
    n: int, width: int, num_classes: int, device: str, seed: int
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, width, generator=g) * 2.0 - 4.0
    labels = torch.randint(1, num_classes + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= 0.25] = 0
    return logits.to(device), labels.to(device)


def timed(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def step(
    loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, labels: Tensor
) -> Callable[[], None]:
    """One forward + backward on a fresh leaf, like a training step sees it."""
    leaf = logits.detach().requires_grad_(True)

    def run() -> None:
        leaf.grad = None
        loss_fn(leaf, labels).backward()

    return run


def check_release_style(args: argparse.Namespace, stats: dict[str, object]) -> float:
    """Max |difference| of value and gradient between the loop and the vectorised loss."""
    from acsl_cli.losses import build_loss

    logits, labels = make_batch(args.n, args.classes + 1, args.classes, args.device, seed=1)
    vectorised = build_loss("acsl", bg_mode="official", frequencies=stats["frequencies"], seed=5)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    va = vectorised(a, labels)
    va.backward()
    vb = acsl_release_style(b, labels, 0.7, stats["frequencies"], torch.Generator().manual_seed(5))
    vb.backward()
    return max(abs(va.item() - vb.item()), (a.grad - b.grad).abs().max().item())


def main(argv: list[str] | None = None) -> None:
    from acsl_cli.losses import available_losses, build_loss, loss_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="RoIs per batch (N)")
    parser.add_argument("--classes", type=int, default=1230, help="foreground classes (C)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per loss")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    n, c = args.n, args.classes
    stats = synthetic_statistics(c)
    logits, labels = make_batch(n, c + 1, c, args.device, seed=0)
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(n, device=logits.device), labels] = 1

    cases: dict[str, Callable[[], None]] = {}
    cases["BCE baseline (F.bce_with_logits, one-hot given)"] = step(
        lambda z, y: F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / n,
        logits,
        labels,
    )
    for name in available_losses():
        needs = {key: stats[key] for key in loss_class(name).needs}
        loss = build_loss(name, **needs)
        width = loss.num_outputs(c)
        z = logits if width == c + 1 else make_batch(n, width, c, args.device, seed=0)[0]
        cases[name] = step(loss, z, labels)
    official = build_loss("acsl", bg_mode="official", frequencies=stats["frequencies"])
    cases["acsl (bg_mode=official)"] = step(official, logits, labels)
    release_gen = torch.Generator().manual_seed(0)
    cases["acsl, per-class loop (release style)"] = step(
        lambda z, y: acsl_release_style(z, y, 0.7, stats["frequencies"], release_gen),
        logits,
        labels,
    )

    times: dict[str, list[float]] = {key: [] for key in cases}
    for run in cases.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for key, run in cases.items():
            times[key].append(timed(run, args.device))

    medians = {key: statistics.median(values) for key, values in times.items()}
    base = medians["BCE baseline (F.bce_with_logits, one-hot given)"]
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"N={n} C={c} float32, forward+backward, median of {args.repeats} "
        f"(torch {torch.__version__}, {device_name})\n"
    )
    print("| loss | ms (median) | x BCE |")
    print("|---|---:|---:|")
    for key, value in medians.items():
        print(f"| {key} | {value:.1f} | {value / base:.2f} |")
    diff = check_release_style(args, stats)
    print(f"\nrelease-style loop vs vectorised acsl (official, same draws): max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()

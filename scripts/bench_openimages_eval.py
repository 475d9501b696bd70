"""Wall time and memory of the Open Images challenge metric at Open Images scale (issue #9).

Run: ``python scripts/bench_openimages_eval.py [--images 100000 --dets 10000000
--classes 600 --seed 0 --group-of-weight 1.0 --no-hierarchy --csv]``.

The problem is random but shaped like Open Images val: each image has 1-4 boxed classes
drawn from a long-tailed class distribution (1-4 boxes each, 10 % of them group-of), one
extra verified-present label without boxes in a fifth of the images and three verified-absent
labels; classes hang under a random two-level hierarchy (a sixth of them are parents, some
leaves have two parents) and the GT is expanded through it as the official tool does.
Detections, ``--dets / --images`` per image, are 30 % jittered GT boxes of the right class
(scores skewed high), 20 % random boxes of a class verified in the image and 50 % random
boxes of any class (nearly all dropped as unverified).

Memory: after the inputs are built the script frees what it can (``gc``, glibc
``malloc_trim``), notes the resident size as the baseline, resets the kernel's peak mark
(``/proc/self/clear_refs``) and evaluates; it prints the peak RSS (``ru_maxrss``) and the
peak minus the baseline (the evaluation's own memory). ``--csv`` also writes the detections
as a predictions CSV and times reading it back (``acsl eval dets=`` reads that file).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from acsl_cli.evaluation.openimages_metric import (  # noqa: E402
    OpenImagesGT,
    evaluate_openimages,
    expand_ground_truth,
)

MIB = 1024.0**2


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["VmHWM"].split()[0]) / 1024.0)


def reset_peak() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")


def random_boxes(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    size = rng.uniform(lo, hi, (n, 2))
    corner = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - size)
    return np.concatenate([corner, corner + size], axis=1)


def hierarchy(rng: np.random.Generator, c: int) -> list[tuple[int, ...]]:
    """Ancestor table: labels 1..c/6 are parents; a leaf has one parent, 10 % have two."""
    parents = max(1, c // 6)
    table: list[tuple[int, ...]] = [()] * parents
    for _ in range(parents, c):
        k = 2 if rng.random() < 0.1 and parents > 1 else 1
        table.append(tuple(sorted(int(p) for p in rng.choice(parents, k, replace=False) + 1)))
    return table


def build_gt(rng: np.random.Generator, n: int, c: int) -> OpenImagesGT:
    weights = 1.0 / np.arange(1, c + 1)
    weights /= weights.sum()
    classes_per_image = rng.integers(1, 5, n)
    img_of_class = np.repeat(np.arange(n), classes_per_image)
    cls = rng.choice(c, len(img_of_class), p=weights) + 1
    boxes_per = rng.integers(1, 5, len(cls))
    box_img = np.repeat(img_of_class, boxes_per)
    box_lab = np.repeat(cls, boxes_per).astype(np.int32)
    group_of = rng.random(len(box_lab)) < 0.1
    boxes = random_boxes(rng, len(box_lab), 0.05, 0.5)
    boxes[group_of] = random_boxes(rng, int(group_of.sum()), 0.3, 0.9)
    offsets = np.searchsorted(box_img, np.arange(n + 1)).astype(np.int64)
    extra = rng.random(n) < 0.2  # a verified-present label without boxes
    pos_img = np.concatenate([img_of_class, np.flatnonzero(extra)])
    pos_lab = np.concatenate([cls, rng.integers(1, c + 1, int(extra.sum()))])
    order = np.argsort(pos_img, kind="stable")
    neg_lab = rng.integers(1, c + 1, 3 * n).astype(np.int32)
    return OpenImagesGT(
        c, offsets, boxes.astype(np.float32), box_lab, group_of,
        np.searchsorted(pos_img[order], np.arange(n + 1)).astype(np.int64),
        pos_lab[order].astype(np.int32), np.arange(0, 3 * n + 1, 3, dtype=np.int64), neg_lab)


def build_dets(rng: np.random.Generator, gt: OpenImagesGT, m: int):
    n, c = gt.num_images, gt.num_classes
    img = np.sort(rng.integers(0, n, m))
    kind = rng.choice(3, m, p=[0.3, 0.2, 0.5])
    labels = rng.integers(1, c + 1, m).astype(np.int32)
    boxes = random_boxes(rng, m, 0.02, 0.6)
    scores = rng.random(m)
    # near a GT box of the image, its class
    nbox = np.diff(gt.box_offsets)[img]
    near = np.flatnonzero((kind == 0) & (nbox > 0))
    pick = gt.box_offsets[img[near]] + (rng.random(len(near)) * nbox[near]).astype(np.int64)
    b = gt.boxes[pick].astype(np.float64)
    wh = np.tile(b[:, 2:] - b[:, :2], 2)
    boxes[near] = np.clip(b + rng.normal(0.0, 0.08, (len(near), 4)) * wh, 0.0, 1.0)
    labels[near] = gt.box_labels[pick]
    scores[near] = rng.beta(4, 1.5, len(near))
    # random box, a class verified in the image
    nlab = np.diff(gt.neg_offsets)[img]
    ver = np.flatnonzero(kind == 1)
    labels[ver] = gt.neg_labels[gt.neg_offsets[img[ver]]
                                + (rng.random(len(ver)) * nlab[ver]).astype(np.int64)]
    lo, hi = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])
    boxes = np.concatenate([lo, hi], axis=1)  # jitter may have inverted a box
    return img, labels, scores.astype(np.float32), boxes.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--dets", type=int, default=10_000_000)
    ap.add_argument("--classes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-of-weight", type=float, default=1.0)
    ap.add_argument("--no-hierarchy", action="store_true", help="evaluate the GT unexpanded")
    ap.add_argument("--csv", action="store_true", help="also time the predictions CSV")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes: checks that the script runs (CI runs it)")
    args = ap.parse_args()
    if args.quick:
        args.images = 200
        args.dets = 20000
        args.classes = 20

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    gt = build_gt(rng, args.images, args.classes)
    dets = build_dets(rng, gt, args.dets)
    if not args.no_hierarchy:
        t = time.perf_counter()
        gt = expand_ground_truth(gt, hierarchy(rng, args.classes))
        print(f"expand_ground_truth: {time.perf_counter() - t:.1f} s")
    print(f"inputs: {gt.num_images} images, {len(gt.boxes)} GT boxes "
          f"({int(gt.group_of.sum())} group-of), {len(gt.pos_labels)} present and "
          f"{len(gt.neg_labels)} absent labels, {len(dets[0])} detections, "
          f"{gt.num_classes} classes; built in {time.perf_counter() - t0:.1f} s")
    if args.csv:
        bench_csv(gt, dets)

    reset_peak()
    base, _ = rss_mib()
    t = time.perf_counter()
    result = evaluate_openimages(gt, *dets, group_of_weight=args.group_of_weight)
    seconds = time.perf_counter() - t
    _, peak = rss_mib()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"evaluate_openimages: {seconds:.1f} s, mAP {result.map:.4f} over "
          f"{int((result.num_gt > 0).sum())} classes with GT")
    print(f"memory: baseline (inputs) {base:.0f} MiB, peak {peak:.0f} MiB "
          f"(ru_maxrss {maxrss:.0f} MiB), evaluation above inputs {peak - base:.0f} MiB")


def bench_csv(gt: OpenImagesGT, dets: tuple) -> None:
    from acsl_cli.evaluation.openimages_predictions import (
        read_predictions_csv,
        write_predictions_csv,
    )

    ids = [f"{i:016x}" for i in range(gt.num_images)]
    names = [f"/m/c{c}" for c in range(1, gt.num_classes + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.csv"
        t = time.perf_counter()
        write_predictions_csv(path, ids, names, *dets)
        print(f"write_predictions_csv: {time.perf_counter() - t:.1f} s, "
              f"{path.stat().st_size / MIB:.0f} MiB")
        reset_peak()
        base, _ = rss_mib()
        t = time.perf_counter()
        back = read_predictions_csv(path, {s: i for i, s in enumerate(ids)},
                                    {s: i for i, s in enumerate(names, 1)})
        seconds = time.perf_counter() - t
        _, peak = rss_mib()
        same = all(np.array_equal(a, b) for a, b in zip(back, dets, strict=True))
        print(f"read_predictions_csv: {seconds:.1f} s, above baseline {peak - base:.0f} MiB, "
              f"round trip {'exact' if same else 'DIFFERS'}")
        del back


if __name__ == "__main__":
    main()

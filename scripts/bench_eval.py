"""Wall time and peak memory of LVIS-scale evaluation (issue #7: 5,000 images x 300 dets < 2 GB;
``--protocols``: Fixed + Pooled AP at LVIS v1 val scale, issue 24, see bench_eval_protocols.py).

Run: ``.venv/bin/python scripts/bench_eval.py [--images 5000 --dets-per-image 300 --seed 0
--json-file --keep-category-ids --tracemalloc]``. The ground truth is LVIS-shaped and built
deterministically from the LVIS v0.5 fixture (``tests/data/lvis_v0.5_val_100.json``): its
1230 categories with their ``frequency`` fields, and ``--images`` images drawn from its 100
with replacement, each with its size, its annotations (count, boxes, areas, segmentations)
and its neg_category_ids / not_exhaustive_category_ids, under new image and annotation ids.
Unless ``--keep-category-ids``, each drawn image also renames its categories (annotations
and both lists alike, one-to-one within its frequency group), so that GT spreads over the
whole category list as in LVIS val instead of the fixture's 190 categories. Detections,
exactly ``--dets-per-image`` per image, mix jittered GT boxes with their own class (25 %),
jittered GT boxes with a random class (10 %), random boxes with a class that is annotated
or negative in the image (15 %) and random boxes with a random class (50 %); scores are
uniform.

The evaluation runs in a fresh subprocess that first builds the inputs, then records its
resident memory (baseline, after ``gc.collect()`` and glibc's ``malloc_trim`` so that the
evaluation cannot hide in heap that the building left free), resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) and evaluates; the peak printed is ``ru_maxrss`` at the
end (the process's absolute peak during the evaluation) and that peak minus the baseline
(the evaluation's own). Default mode times ``evaluate_lvis(gt, detections)`` on in-memory
dicts; ``--json-file`` writes the ground truth and the detections to temp JSON files and
times ``acsl_cli.evaluation.results.evaluate_results_file`` (reading, checking and parsing
included), which is what ``acsl eval dets=`` runs, with the inputs freed before the
baseline. ``--tracemalloc`` also reports the peak of the evaluation's traced allocations
(Python objects and numpy buffers), at several times the wall time and with tracemalloc's
own records in the RSS figures, so its run gives no verdict on the 2 GB target.

Then, in this process, the paired image bootstrap (``--resamples``, default 1000) of two
detection sets on the same ground truth, timed from their matches, beside one resample
evaluated the direct way (the resampled data set built and scored with ``evaluate_lvis``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "lvis_v0.5_val_100.json"
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

# Detection kinds and their shares (they sum to 1).
KIND_SHARES = {"near GT, right class": 0.25, "near GT, wrong class": 0.10,
               "random box, image's class": 0.15, "random box, random class": 0.50}
MIB = 1024.0**2
GB = 1e9


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def build_ground_truth(n_images: int, seed: int, relabel: bool = True) -> dict:
    """LVIS-shaped ground truth: fixture images drawn with replacement under new ids."""
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    categories = fixture["categories"]
    group_of = {c["id"]: c.get("frequency") for c in categories}
    members = {f: np.array(sorted(c for c, g in group_of.items() if g == f))
               for f in set(group_of.values())}
    anns_of: dict[int, list[dict]] = {im["id"]: [] for im in fixture["images"]}
    for ann in fixture["annotations"]:
        anns_of[ann["image_id"]].append(ann)

    images, annotations = [], []
    drawn = rng.integers(0, len(fixture["images"]), size=n_images)
    for new_id, source in enumerate(drawn.tolist(), start=1):
        src = fixture["images"][source]
        src_anns = anns_of[src["id"]]
        rename = {}
        if relabel:  # one-to-one within each frequency group, the same for the whole image
            used = {a["category_id"] for a in src_anns}
            used.update(src["neg_category_ids"], src["not_exhaustive_category_ids"])
            by_group: dict[str | None, list[int]] = {}
            for cat in sorted(used):
                by_group.setdefault(group_of[cat], []).append(cat)
            for group, cats in by_group.items():
                picked = rng.choice(members[group], size=len(cats), replace=False)
                rename.update(zip(cats, picked.tolist(), strict=True))
        image = dict(src)
        image["id"] = new_id
        for field in ("neg_category_ids", "not_exhaustive_category_ids"):
            image[field] = [rename.get(c, c) for c in src[field]]
        images.append(image)
        for ann in src_anns:
            new_ann = dict(ann)  # shares the segmentation lists with the fixture
            new_ann.update(id=len(annotations) + 1, image_id=new_id,
                           category_id=rename.get(ann["category_id"], ann["category_id"]))
            annotations.append(new_ann)
    return {"info": fixture.get("info", {}), "licenses": fixture.get("licenses", []),
            "images": images, "annotations": annotations, "categories": categories}


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def build_detections(gt: dict, per_image: int, seed: int) -> list[dict]:
    """``per_image`` detections for every image (see the module docstring for the mix)."""
    rng = np.random.default_rng(seed + 1)
    images = gt["images"]
    n_img = len(images)
    n = n_img * per_image
    img = np.repeat(np.arange(n_img), per_image)
    width = np.array([im["width"] for im in images], dtype=np.float64)[img]
    height = np.array([im["height"] for im in images], dtype=np.float64)[img]
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)

    anns = sorted(gt["annotations"], key=lambda a: a["image_id"])  # image i has id i + 1
    ann_img = np.array([a["image_id"] - 1 for a in anns], dtype=np.int64)
    ann_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    ann_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    n_gt = np.bincount(ann_img, minlength=n_img)
    cands = [list(im["neg_category_ids"]) for im in images]
    for a_img, a_cat in zip(ann_img.tolist(), ann_cat.tolist(), strict=True):
        cands[a_img].append(a_cat)
    n_cand = np.array([len(c) for c in cands], dtype=np.int64)
    cand_flat = np.array([c for cs in cands for c in cs], dtype=np.int64)

    kind = rng.choice(len(KIND_SHARES), size=n, p=list(KIND_SHARES.values()))
    kind[(kind < 2) & (n_gt[img] == 0)] = 3  # no GT to jitter: random box, random class
    kind[(kind == 2) & (n_cand[img] == 0)] = 3

    # Random boxes: log-uniform size from 2 % to 90 % of each side, placed inside the image.
    size = np.exp(rng.uniform(math.log(0.02), math.log(0.9), size=(n, 2)))
    w, h = size[:, 0] * width, size[:, 1] * height
    boxes = np.stack([rng.uniform(0, 1, n) * (width - w), rng.uniform(0, 1, n) * (height - h),
                      w, h], axis=1)
    cats = cat_ids[rng.integers(0, len(cat_ids), size=n)]

    near = kind < 2  # jitter: centre by N(0, 0.1) of the side, sides by exp(N(0, 0.15))
    pick = _offsets(n_gt)[img[near]] + (rng.uniform(0, 1, near.sum()) * n_gt[img[near]])
    src = ann_box[pick.astype(np.int64)]
    scale = np.exp(rng.normal(0, 0.15, size=(len(src), 2)))
    centre = src[:, :2] + src[:, 2:] / 2 + rng.normal(0, 0.1, size=(len(src), 2)) * src[:, 2:]
    sides = np.maximum(src[:, 2:] * scale, 1.0)
    boxes[near] = np.concatenate([centre - sides / 2, sides], axis=1)
    right = kind == 0
    cats[right] = ann_cat[pick.astype(np.int64)[right[near]]]
    own = kind == 2
    cat_pick = _offsets(n_cand)[img[own]] + rng.uniform(0, 1, own.sum()) * n_cand[img[own]]
    cats[own] = cand_flat[cat_pick.astype(np.int64)]

    boxes = boxes.astype(np.float32).astype(np.float64)  # a detector's float32 outputs
    scores = rng.uniform(0, 1, n).astype(np.float32).astype(np.float64)
    cats_l, boxes_l, scores_l = cats.tolist(), boxes.tolist(), scores.tolist()
    del img, width, height, size, w, h, boxes, cats, scores, kind, src, scale, centre, sides
    dets = []
    for i, image in enumerate(images):  # no throw-away int per detection (heap fragments)
        part = slice(i * per_image, (i + 1) * per_image)
        iid = image["id"]
        dets.extend({"image_id": iid, "category_id": c, "bbox": b, "score": s}
                    for c, b, s in zip(cats_l[part], boxes_l[part], scores_l[part], strict=True))
    return dets


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident bytes now (Linux /proc), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc), so that the
    evaluation cannot hide its own allocations in memory the input building left free."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS mark at the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Child: build, measure, evaluate
# ---------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    gt = build_ground_truth(args.images, args.seed, relabel=not args.keep_category_ids)
    dets = build_detections(gt, args.dets_per_image, args.seed)
    info = {"images": len(gt["images"]), "annotations": len(gt["annotations"]),
            "detections": len(dets),
            "categories with GT": len({a["category_id"] for a in gt["annotations"]}),
            "build s": time.perf_counter() - start}
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        if args.json_file:
            ann_path, dets_path = Path(tmp) / "gt.json", Path(tmp) / "dets.json"
            ann_path.write_text(json.dumps(gt), encoding="utf-8")
            dets_path.write_text(json.dumps(dets), encoding="utf-8")
            info["dets JSON MB"] = dets_path.stat().st_size / 1e6
            info["GT JSON MB"] = ann_path.stat().st_size / 1e6
            del gt, dets  # the command starts from the files
        release_free_memory()
        info["build peak"] = peak_rss()
        info["baseline"] = current_rss()
        info["peak reset"] = reset_peak()
        if args.tracemalloc:
            tracemalloc.start()
        start = time.perf_counter()
        if args.json_file:
            from acsl_cli.evaluation.results import evaluate_results_file

            result = evaluate_results_file(dets_path, ann_path)
            info["evaluated"] = "evaluate_results_file(dets.json, gt.json)"
        else:
            from acsl_cli.evaluation import evaluate_lvis

            result = evaluate_lvis(gt, dets)
            info["evaluated"] = "evaluate_lvis(gt, detections)"
        info["seconds"] = time.perf_counter() - start
        info["peak"] = peak_rss()
        if args.tracemalloc:
            info["traced peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    info["metrics"] = result.metrics
    info["categories evaluated"] = len(result.per_category)
    return info


def run_child(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           "--images", str(args.images), "--dets-per-image", str(args.dets_per_image),
           "--seed", str(args.seed)]
    cmd += ["--json-file"] * args.json_file + ["--keep-category-ids"] * args.keep_category_ids
    cmd += ["--tracemalloc"] * args.tracemalloc
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, r: dict) -> None:
    print(f"{r['evaluated']}, fresh subprocess (python {platform.python_version()}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, seed {args.seed})\n")
    peak, base = r["peak"], r["baseline"]
    rows = [
        ("images", f"{r['images']:,}"),
        ("GT annotations", f"{r['annotations']:,}"),
        ("categories (with GT / evaluated)",
         f"1230 ({r['categories with GT']} / {r['categories evaluated']})"),
        ("detections", f"{r['detections']:,} ({args.dets_per_image} per image)"),
    ]
    if args.json_file:
        rows.append(("JSON files (detections / GT)",
                     f"{r['dets JSON MB']:.0f} MB / {r['GT JSON MB']:.0f} MB"))
    rows += [
        ("inputs built in", f"{r['build s']:.1f} s (peak {r['build peak'] / MIB:,.0f} MiB)"),
        ("evaluation wall time", f"{r['seconds']:.1f} s"
         + (" (under tracemalloc)" if "traced peak" in r else "")),
        ("RSS before evaluation (baseline)", f"{base / MIB:,.0f} MiB"),
        ("peak RSS, absolute", f"{peak / MIB:,.0f} MiB ({peak / GB:.2f} GB)"
         + ("" if r["peak reset"] else " (peak mark not reset: includes building)")),
        ("peak RSS above baseline",
         f"{(peak - base) / MIB:,.0f} MiB ({(peak - base) / GB:.2f} GB)"),
    ]
    if "traced peak" in r:  # tracemalloc's own bookkeeping is in the RSS figures above
        rows += [("peak of traced allocations (tracemalloc)", f"{r['traced peak'] / MIB:,.0f} MiB"),
                 ("issue #7 target: peak < 2 GB", "n/a: RSS includes tracemalloc's records")]
    else:
        rows.append(("issue #7 target: peak < 2 GB", "met" if peak < 2 * GB else "NOT met"))
    print("| quantity | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    m = r["metrics"]
    print("\n" + "  ".join(f"{key} {m[key] * 100:.2f}" for key in ("AP", "APr", "APc", "APf"))
          + "  (x100; detections are synthetic, scores random)")


def bench_bootstrap(args: argparse.Namespace) -> None:
    """The paired image bootstrap (issue 24: 5,000 images x 1,230 categories, 1,000
    resamples within a minute): two detection sets on the same ground truth, matched once;
    the bootstrap timed from the matches, side by side with one resample done the direct
    way (the resampled data set built and evaluated with evaluate_lvis)."""
    from acsl_cli.evaluation import evaluate_lvis
    from acsl_cli.evaluation.detections import parse_detections
    try:
        from acsl_cli.evaluation.lvis_bootstrap import image_matches, paired_bootstrap
    except ModuleNotFoundError:  # a tree older than the bootstrap (bench_compare's BASE)
        print("\npaired bootstrap: not in this tree (acsl_cli.evaluation.lvis_bootstrap)")
        return
    from acsl_cli.evaluation.lvis_eval import match_detections

    gt = build_ground_truth(args.images, args.seed)
    dets = [build_detections(gt, args.dets_per_image, args.seed + k) for k in (0, 1)]
    start = time.perf_counter()
    matches = [image_matches(match_detections(gt, parse_detections(gt, d, "dets")))
               for d in dets]
    matched = time.perf_counter() - start
    start = time.perf_counter()
    found = paired_bootstrap(matches[0], matches[1], args.resamples, seed=0)
    ours = time.perf_counter() - start
    counts = np.random.default_rng(0).multinomial(args.images, np.full(args.images,
                                                                        1 / args.images))
    start = time.perf_counter()
    for d in dets:  # one resample, directly: copies of the drawn images under new ids
        images, by_image = [], {}
        for det in d:
            by_image.setdefault(det["image_id"], []).append(det)
        anns: dict[int, list] = {}
        for a in gt["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        new_anns, new_dets = [], []
        for im, c in zip(gt["images"], counts, strict=True):
            for _ in range(c):
                iid = len(images) + 1
                images.append({**im, "id": iid})
                new_anns += [{**a, "id": len(new_anns) + 1, "image_id": iid}
                             for a in anns.get(im["id"], [])]
                new_dets += [{**x, "image_id": iid} for x in by_image.get(im["id"], [])]
        evaluate_lvis({**gt, "images": images, "annotations": new_anns}, new_dets)
    direct = time.perf_counter() - start
    per = ours / args.resamples
    print(f"\nimage bootstrap, {args.images:,} images x {len(gt['categories'])} categories, "
          f"{args.resamples} resamples, two models: {ours:.1f} s ({1000 * per:.0f} ms per "
          f"resample; matching both once: {matched:.1f} s); one resample evaluated directly: "
          f"{direct:.1f} s, {direct / per:,.0f}x ours; "
          f"ΔAP {100 * found['AP'].delta:+.2f} [{100 * found['AP'].low:+.2f}, "
          f"{100 * found['AP'].high:+.2f}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images in the ground truth")
    parser.add_argument("--dets-per-image", type=int, default=300, help="detections per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs (deterministic)")
    parser.add_argument("--json-file", action="store_true",
                        help="time evaluate_results_file on temp JSON files (acsl eval dets=)")
    parser.add_argument("--keep-category-ids", action="store_true",
                        help="keep the fixture's category ids on drawn images (190 with GT)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace the evaluation's allocations (peak; several x slower)")
    parser.add_argument("--protocols", action="store_true",
                        help="Fixed + Pooled AP at --images with --dets-per-class (issue 24; "
                             "see bench_eval_protocols.py) instead of the standard protocol")
    parser.add_argument("--dets-per-class", type=int, default=10_000,
                        help="--protocols: detections per category (K)")
    parser.add_argument("--side-images", type=int, default=200,
                        help="--protocols: images of the side-by-side run with lvis-api")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resamples", type=int, default=1000,
                        help="image bootstrap: resamples timed (two models)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the script runs (CI runs it)")
    args = parser.parse_args(argv)
    for name in ("images", "dets_per_image", "side_images", "dets_per_class", "resamples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.quick:
        args.images = 50
        args.dets_per_image = 20
        args.dets_per_class, args.side_images = 5, 10
        args.resamples = 20
    if args.images < 1 or args.dets_per_image < 0 or args.dets_per_class < 1:
        parser.error("--images, --dets-per-class must be >= 1 and --dets-per-image >= 0")
    if args.protocols or args.quick:
        import bench_eval_protocols as protocols

        if args.child:
            print(json.dumps(protocols.child(args.images, args.dets_per_class, args.seed)))
            return
        side = protocols.side_by_side(args.side_images, min(args.dets_per_class, 50),
                                      args.seed)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--protocols",
               "--images", str(args.images), "--dets-per-class", str(args.dets_per_class),
               "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"evaluation subprocess failed ({proc.returncode}):\n"
                             f"{proc.stderr}")
        protocols.report(json.loads(proc.stdout.strip().splitlines()[-1]), side,
                         args.dets_per_class)
        if not args.quick:
            return
    if args.child:
        print(json.dumps(child(args)))
        return
    report(args, run_child(args))
    bench_bootstrap(args)


if __name__ == "__main__":
    main()

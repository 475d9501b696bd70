"""Parse time and peak memory of the Open Images loader on a full-size generated train set.

Run: ``python scripts/bench_openimages_load.py [--rows 14600000 --images N --label-rows N
--classes 600 --image-sample 2000 --dir DIR --keep --seed 0]``.

Writes Open Images-format files of the train split's size (default 14.6 M boxes over
~1.7 M images, 600 classes with a long-tailed label distribution, rows sorted by ImageID as
in the releases, 13 columns; ~8.8 M human-verified image-level labels, 5 % of them of
classes outside the class list) plus the class descriptions and a hierarchy, then measures
in fresh subprocesses (peak = ``ru_maxrss``; the baseline is the RSS after imports, numpy
and torch included):

1. the stages that build the compact form: streamed parsing of the boxes CSV, of the labels
   CSV, and the CSR assembly;
2. ``load_split`` from cold (the same plus writing the ``.npz`` cache);
3. ``load_split`` again (read back from the cache).

Image files: 1.7 M files would dominate the bench with disk work unrelated to parsing, so
the loads use ``check_images=False`` (no file touched; sizes unknown). The per-image cost of
the check (one folder listing, then PIL's header read per image) is measured on
``--image-sample`` small JPEGs and extrapolated. Generated files are deleted at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

MIB = 1024.0**2
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,"
              "IsTruncated,IsGroupOf,IsDepiction,IsInside\n")
WRITE_CHUNK = 500_000


def label_name(k: int) -> str:
    return f"/m/{k:06x}"


def write_inputs(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Classes, hierarchy (30 parents over the rest, every 7th class with 2 parents), the
    boxes CSV and the image-level labels CSV, written in chunks with numpy draws."""
    rng = np.random.default_rng(args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / n for k, n in (("classes", "class-descriptions-boxable.csv"),
                                        ("hierarchy", "bbox_labels_hierarchy.json"),
                                        ("boxes", "train-annotations-bbox.csv"),
                                        ("labels", "train-annotations-human-imagelabels.csv"))}
    c = args.classes
    paths["classes"].write_text("".join(f"{label_name(k)},Class {k}\n" for k in range(c)))
    parents = min(30, c)
    kids: dict[int, list[dict]] = {p: [] for p in range(parents)}
    for k in range(parents, c):
        kids[k % parents].append({"LabelName": label_name(k)})
        if k % 7 == 0:
            kids[(k + 1) % parents].append({"LabelName": label_name(k)})
    tree = {"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": label_name(p), "Subcategory": kids[p]} for p in range(parents)]}
    paths["hierarchy"].write_text(json.dumps(tree))
    weights = 1.0 / np.arange(1, c + 1) ** 1.1  # long tail over the classes
    weights /= weights.sum()
    per_image = rng.multinomial(args.rows, np.full(args.images, 1.0 / args.images))
    image_of_row = np.repeat(np.arange(args.images), per_image)  # sorted, as released
    ids = [f"{i * 2654435761 % 2**64:016x}" for i in range(args.images)]
    ids.sort()
    with open(paths["boxes"], "w", newline="") as f:
        f.write(BOX_HEADER)
        for start in range(0, args.rows, WRITE_CHUNK):
            img = image_of_row[start:start + WRITE_CHUNK]
            n = len(img)
            lab = rng.choice(c, n, p=weights)
            xy = np.sort(rng.random((n, 2, 2)), axis=2).round(6)
            group = rng.random(n) < 0.05
            f.write("".join(
                f"{ids[i]},xclick,{label_name(k)},1,{x0:.6f},{x1:.6f},{y0:.6f},{y1:.6f},"
                f"0,0,{int(g)},0,0\n"
                for i, k, (x0, x1), (y0, y1), g in zip(img.tolist(), lab.tolist(),
                                                       xy[:, 0].tolist(), xy[:, 1].tolist(),
                                                       group.tolist(), strict=True)))
    with open(paths["labels"], "w", newline="") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        per_image = rng.multinomial(args.label_rows, np.full(args.images, 1.0 / args.images))
        image_of_row = np.repeat(np.arange(args.images), per_image)
        for start in range(0, args.label_rows, WRITE_CHUNK):
            img = image_of_row[start:start + WRITE_CHUNK]
            lab = rng.choice(c, len(img), p=weights)
            lab[rng.random(len(img)) < 0.05] = c + 1  # a class outside the class list
            conf = rng.random(len(img)) < 0.7
            f.write("".join(f"{ids[i]},verification,{label_name(k)},{int(p)}\n"
                            for i, k, p in zip(img.tolist(), lab.tolist(), conf.tolist(),
                                               strict=True)))
    return paths


# ---------------------------------------------------------------------------------------
# Children: one measurement each, in a fresh process
# ---------------------------------------------------------------------------------------


def current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def child(mode: str, folder: Path) -> dict:
    from acsl_cli.data.openimages import loader  # noqa: F401  (torch and numpy in the baseline)
    from acsl_cli.data.openimages.csv_parse import (
        ImageRegistry,
        assemble,
        parse_boxes,
        parse_image_labels,
        read_class_descriptions,
    )
    from acsl_cli.data.openimages.loader import OpenImagesFiles, load_split

    names, _ = read_class_descriptions(folder / "class-descriptions-boxable.csv")
    index = {n: i + 1 for i, n in enumerate(names)}
    boxes_csv = folder / "train-annotations-bbox.csv"
    labels_csv = folder / "train-annotations-human-imagelabels.csv"
    info: dict = {"baseline": current_rss()}
    t0 = time.perf_counter()
    if mode == "stages":
        images = ImageRegistry()
        boxes = parse_boxes(boxes_csv, index, images)
        t1, info["boxes_peak"] = time.perf_counter(), peak_rss()
        labels = parse_image_labels(labels_csv, index, images)
        t2, info["labels_peak"] = time.perf_counter(), peak_rss()
        split = assemble(images, boxes, labels, len(names))
        t3 = time.perf_counter()
        info.update(boxes_s=t1 - t0, labels_s=t2 - t1, assemble_s=t3 - t2,
                    images=len(split.image_ids), boxes=len(split.box_labels),
                    degenerate=split.skipped_degenerate, pos=len(split.pos_labels),
                    neg=len(split.neg_labels), unknown=split.skipped_unknown_labels,
                    compact_bytes=sum(a.nbytes for a in (
                        split.box_offsets, split.boxes, split.box_labels, split.group_of,
                        split.pos_offsets, split.pos_labels, split.neg_offsets,
                        split.neg_labels, split.image_ids)))
    else:
        files = OpenImagesFiles(boxes_csv, labels_csv, folder / "images")
        split = load_split(files, folder / "class-descriptions-boxable.csv", index,
                           folder / "cache", "train", check_images=False)
        info["images"] = split.num_images
        info["cache_bytes"] = sum(p.stat().st_size for p in (folder / "cache").glob("*.npz"))
    info["seconds"] = time.perf_counter() - t0
    info["peak"] = peak_rss()
    return info


def run_child(mode: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode,
                           "--dir", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def image_check_cost(n: int) -> float:
    """Seconds per image of the image check (listing + header read), on n small JPEGs."""
    from PIL import Image

    from acsl_cli.data.openimages.csv_parse import ParsedSplit
    from acsl_cli.data.openimages.loader import OpenImagesFiles, _image_info

    with tempfile.TemporaryDirectory(prefix="bench_oi_images_") as tmp:
        ids = [f"{i:016x}" for i in range(n)]
        pixels = Image.fromarray(np.random.default_rng(0).integers(
            0, 255, (480, 640, 3), dtype=np.uint8))
        for image_id in ids:
            pixels.save(Path(tmp) / f"{image_id}.jpg", quality=85)
        zero = np.zeros(n + 1, dtype=np.int64)
        none = np.zeros(0, np.int32)
        parsed = ParsedSplit(
            image_ids=np.array(ids), first_source=np.zeros(n, np.int8),
            first_row=np.ones(n, np.int64), box_offsets=zero, boxes=np.zeros((0, 4), np.float32),
            box_labels=none, group_of=np.zeros(0, bool), pos_offsets=zero, pos_labels=none,
            neg_offsets=zero, neg_labels=none)
        start = time.perf_counter()
        _image_info(parsed, OpenImagesFiles(Path(tmp) / "b.csv", None, Path(tmp)), None)
        return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=14_600_000, help="boxes CSV rows")
    parser.add_argument("--images", type=int, default=None,
                        help="images (default rows x 1.7/14.6, as in the train split)")
    parser.add_argument("--label-rows", type=int, default=None,
                        help="image-level label rows (default rows x 0.6)")
    parser.add_argument("--classes", type=int, default=600)
    parser.add_argument("--image-sample", type=int, default=2000,
                        help="JPEGs for the per-image cost of the image check (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("stages", "cold", "cached"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the script runs (CI runs it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 20000
        args.classes = 20
        args.image_sample = 20
    if args.child:
        print(json.dumps(child(args.child, args.dir)))
        return
    args.images = args.images or max(1, round(args.rows * 1.7 / 14.6))
    args.label_rows = args.label_rows if args.label_rows is not None else round(args.rows * 0.6)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_oi_"))
    try:
        start = time.perf_counter()
        paths = write_inputs(folder, args)
        print(f"generated in {time.perf_counter() - start:.0f} s: boxes CSV {args.rows:,} rows "
              f"({paths['boxes'].stat().st_size / 1e9:.2f} GB), labels CSV "
              f"{args.label_rows:,} rows ({paths['labels'].stat().st_size / 1e9:.2f} GB), "
              f"{args.images:,} images, {args.classes} classes")
        stages, cold, cached = (run_child(m, folder) for m in ("stages", "cold", "cached"))
        print(f"compact form: {stages['images']:,} images, {stages['boxes']:,} boxes, "
              f"{stages['pos']:,} positive / {stages['neg']:,} negative labels "
              f"({stages['unknown']:,} unknown-class rows skipped), "
              f"{stages['compact_bytes'] / MIB:,.0f} MiB of arrays; "
              f"cache file {cold['cache_bytes'] / MIB:,.0f} MiB")
        print("| step | wall s | peak RSS so far, MiB | above baseline MiB |\n"
              "|---|---:|---:|---:|")
        for name, r, s, peak in (
                ("parse boxes CSV", stages, stages["boxes_s"], stages["boxes_peak"]),
                ("parse labels CSV", stages, stages["labels_s"], stages["labels_peak"]),
                ("assemble CSR", stages, stages["assemble_s"], stages["peak"]),
                ("load_split, cold (+ cache write)", cold, cold["seconds"], cold["peak"]),
                ("load_split, from cache", cached, cached["seconds"], cached["peak"])):
            print(f"| {name} | {s:.1f} | {peak / MIB:,.0f} | "
                  f"{(peak - r['baseline']) / MIB:,.0f} |")
        if args.image_sample:
            per = image_check_cost(args.image_sample)
            print(f"image check: {per * 1e6:.0f} us per image on {args.image_sample} JPEGs "
                  f"(page cache warm) -> ~{per * args.images:.0f} s for {args.images:,} images")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

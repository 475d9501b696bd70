"""``acsl show``: ground truth and detections drawn on val images, from a head (its
``results.json``) or a results file with its annotations and image folder; and, for rare
classes, a page of their highest-scoring false positives with what each one hit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from acsl_cli.errors import ConfigError, DataError, did_you_mean
from acsl_cli.files import staged_folder
from acsl_cli.layout import RESULTS
from acsl_cli.plan_show import ShowPlan
from acsl_cli.reporting.drawing import Box, crop_page, draw_boxes

FP_PER_PAGE = 12
AUTO_RARE_CLASSES = 4  # without classes=, the rare classes with the most false positives


@dataclass(frozen=True)
class Scene:
    """What show needs: val GT (LVIS dict), detections, and each image's file."""

    gt: dict
    dets: list[dict]
    files: dict[int, Path]


def run_show(plan: ShowPlan) -> list[Path]:
    """Write the pictures into ``plan.out`` (whole or not at all); returns their paths."""
    if plan.image_dir and not Path(plan.image_dir).is_dir():
        raise DataError(f"image_dir={plan.image_dir}: no such folder")
    with staged_folder(plan.out) as stage:
        names = [p.name for p in _draw(plan, stage)]
    return [Path(plan.out) / name for name in names]


def _draw(plan: ShowPlan, out: Path) -> list[Path]:
    scene = _head_scene(plan) if plan.ckpt else _file_scene(plan)
    cats = {c["id"]: c for c in scene.gt["categories"]}
    chosen = _chosen(plan.classes, cats)
    written = []
    by_image: dict[int, list[dict]] = {}
    for d in scene.dets:
        by_image.setdefault(d["image_id"], []).append(d)
    gt_by_image: dict[int, list[dict]] = {}
    for a in scene.gt["annotations"]:
        gt_by_image.setdefault(a["image_id"], []).append(a)
    shown = 0
    for image in sorted(scene.gt["images"], key=lambda im: im["id"]):
        if shown >= plan.images:
            break
        iid = image["id"]
        passing = [d for d in by_image.get(iid, []) if d["score"] >= plan.score
                   and (chosen is None or d["category_id"] in chosen)]
        dets = sorted(passing, key=lambda d: -d["score"])[:plan.top]
        gts = [a for a in gt_by_image.get(iid, []) if chosen is None or a["category_id"]
               in chosen]
        if chosen is not None and not dets and not gts:
            continue
        found, hits = match(dets, gts)
        boxes = [_box(cats, a, "found" if i in found else "missed") for i, a in enumerate(gts)]
        boxes += [_box(cats, d, "tp" if i in hits else "fp") for i, d in enumerate(dets)]
        note = f"detections scoring >= {plan.score:g}, at most {plan.top} per image"
        if len(passing) > len(dets):
            note += f" ({len(passing) - len(dets)} more not drawn)"
        path = out / f"image_{iid}.png"
        draw_boxes(_open(scene.files[iid]), boxes, note).save(path)
        written.append(path)
        shown += 1
    written += _confusion_pages(scene, cats, chosen, gt_by_image, by_image, out)
    return written


def _head_scene(plan: ShowPlan) -> Scene:
    from acsl_cli.data.annotations import load_json
    from acsl_cli.engine.checkpoint import load_checkpoint
    from acsl_cli.evaluation.detections import validate_detections
    from acsl_cli.pipeline.components import load_data
    from acsl_cli.plan import checkpoint_settings

    assert plan.ckpt is not None
    ckpt = load_checkpoint(plan.ckpt)  # a missing or unreadable file is named as such
    results = Path(plan.ckpt).parent / RESULTS
    if not results.is_file():
        raise DataError(f"{plan.ckpt}: no results.json beside it (acsl show draws a head's "
                        "saved val detections; Open Images heads save predictions.csv)")
    settings, _ = checkpoint_settings(plan.as_eval(), ckpt)
    data = load_data(settings)
    dets = load_json(results)
    validate_detections(data.val_gt, dets, str(results))
    files = {im["id"]: p for im, p in zip(data.val.images, data.val.paths, strict=True)}
    return Scene(data.val_gt, dets, files)


def _file_scene(plan: ShowPlan) -> Scene:
    from acsl_cli.data.annotations import read_annotations
    from acsl_cli.data.lvis_dataset import image_path
    from acsl_cli.evaluation.detections import load_detections

    assert plan.dets and plan.ann and plan.image_dir
    gt = read_annotations(plan.ann)
    dets = load_detections(plan.dets, gt)
    root = Path(plan.image_dir)
    return Scene(gt, dets, {im["id"]: image_path(im, root, "val") for im in gt["images"]})


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def _chosen(classes: Sequence[str | int] | None, cats: dict[int, dict]) -> set[int] | None:
    if classes is None:
        return None
    by_name = {str(c.get("name")): cid for cid, c in cats.items()}
    out = set()
    for c in classes:
        cid = c if isinstance(c, int) and c in cats else by_name.get(str(c))
        if cid is None:
            raise ConfigError(f"classes: unknown class {c!r} ({did_you_mean(c, by_name)}"
                              "give names or category ids)")
        out.add(cid)
    return out


def _name(cats: dict[int, dict], cid: int) -> str:
    return str(cats[cid].get("name", cid))


def _box(cats: dict[int, dict], item: dict, kind: str) -> Box:
    """A detection (it has a score) or a ground-truth annotation as a ``Box`` of ``kind``."""
    cid = item["category_id"]
    score = float(item["score"]) if "score" in item else None
    return Box(tuple(item["bbox"]), _name(cats, cid), _group(cats, cid), score, kind)


def _group(cats: dict[int, dict], cid: int) -> str:
    return str(cats[cid].get("frequency", "f"))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _greedy(dets: list[dict], own: list[dict]) -> dict[int, int]:
    """Detections of one class, by score, each taking the unmatched ground truth of its
    class it overlaps most if IoU >= 0.5 (as LVIS matches): {detection: ground truth}."""
    pairs: dict[int, int] = {}
    for i in sorted(range(len(dets)), key=lambda i: -dets[i]["score"]):
        ious = [(_iou(dets[i]["bbox"], a["bbox"]), j) for j, a in enumerate(own)
                if j not in pairs.values()]
        best = max(ious, default=(0.0, -1))
        if best[0] >= 0.5:
            pairs[i] = best[1]
    return pairs


def match(dets: list[dict], gts: list[dict]) -> tuple[set[int], set[int]]:
    """One image's drawn detections against its ground truth, class by class: (indices of
    ground truth found, indices of detections that found one)."""
    found: set[int] = set()
    hits: set[int] = set()
    for cid in {d["category_id"] for d in dets}:
        mine = [i for i, d in enumerate(dets) if d["category_id"] == cid]
        own = [j for j, a in enumerate(gts) if a["category_id"] == cid]
        for i, j in _greedy([dets[i] for i in mine], [gts[j] for j in own]).items():
            hits.add(mine[i])
            found.add(own[j])
    return found, hits


def false_positives(dets: list[dict], gts: list[dict], cid: int) -> list[tuple[dict, dict | None]]:
    """One image's detections of ``cid`` that match no ground truth of ``cid`` (``_greedy``),
    each with the ground-truth box it overlaps most (any class, IoU >= 0.1) or None
    (background); highest score first."""
    mine = sorted((d for d in dets if d["category_id"] == cid), key=lambda d: -d["score"])
    matched = _greedy(mine, [a for a in gts if a["category_id"] == cid])
    out = []
    for i, d in enumerate(mine):
        if i in matched:
            continue
        hit = max(((_iou(d["bbox"], a["bbox"]), a) for a in gts), key=lambda t: t[0],
                  default=(0.0, None))
        out.append((d, hit[1] if hit[0] >= 0.1 else None))
    return out


def _confusion_pages(scene: Scene, cats: dict[int, dict], chosen: set[int] | None,
                     gt_by_image: dict, by_image: dict, out: Path) -> list[Path]:
    rare = [cid for cid in (chosen or cats) if _group(cats, cid) == "r"]
    fps: dict[int, list[tuple[dict, dict | None]]] = {cid: [] for cid in rare}
    for iid, dets in by_image.items():
        gts = gt_by_image.get(iid, [])
        for cid in rare:
            fps[cid] += false_positives(dets, gts, cid)
    if chosen is None:
        rare = sorted(rare, key=lambda c: -len(fps[c]))[:AUTO_RARE_CLASSES]
    written = []
    for cid in rare:
        top = sorted(fps[cid], key=lambda t: -t[0]["score"])[:FP_PER_PAGE]
        if not top:
            continue
        crops = []
        for d, hit in top:
            x, y, w, h = d["bbox"]
            im = _open(scene.files[d["image_id"]])
            pad = max(w, h) * 0.25
            crop = im.crop((int(x - pad), int(y - pad), int(x + w + pad), int(y + h + pad)))
            what = _name(cats, hit["category_id"]) if hit else "background"
            crops.append((crop, f"{d['score']:.2f} on {what}"))
        path = out / f"false_positives_{_name(cats, cid)}.png"
        crop_page(crops, title=f"{_name(cats, cid)} (rare): highest-scoring false positives "
                  "and what they hit").save(path)
        written.append(path)
    return written

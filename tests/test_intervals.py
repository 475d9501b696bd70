"""95 % intervals on differences: Student-t quantiles against printed tables, the paired seed
interval on hand-derived numbers, the image bootstrap against the evaluator (unit weights:
``summarise`` bit for bit; a resample: ``summarise`` on the resampled data set itself), its
seed, its coverage in a simulation with a known difference, and report.json on real runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acsl_cli.errors import DataError
from acsl_cli.evaluation.detections import parse_detections
from acsl_cli.evaluation.lvis_bootstrap import (
    BOOTSTRAP_KEYS,
    ImageMatches,
    image_matches,
    paired_bootstrap,
    weighted_metrics,
)
from acsl_cli.evaluation.lvis_eval import match_detections, summarise
from acsl_cli.evaluation.match_file import load_matches, save_matches
from acsl_cli.reporting.deltas import Bootstrapper, intervals
from acsl_cli.reporting.intervals import seed_interval, t_quantile
from acsl_cli.reporting.runs import STAGE1_ROW
from tests.test_lvis_eval import LVIS_SAMPLE, _synthetic_detections

# Student's t quantiles as printed in standard tables (e.g. NIST/SEMATECH e-Handbook
# 1.3.6.7.2, Abramowitz & Stegun table 26.10), 9 significant digits.
T_TABLE = [(0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 3, 3.182446305),
           (0.975, 4, 2.776445105), (0.975, 5, 2.570581836), (0.975, 9, 2.262157163),
           (0.975, 10, 2.228138852), (0.975, 30, 2.042272456), (0.975, 100, 1.983971519),
           (0.95, 7, 1.894578605), (0.995, 3, 5.840909310), (0.9, 20, 1.325340707)]


@pytest.mark.parametrize("p, df, value", T_TABLE)
def test_t_quantiles_equal_the_table(p, df, value):
    assert t_quantile(p, df) == pytest.approx(value, abs=2e-9)
    assert t_quantile(1 - p, df) == pytest.approx(-value, abs=2e-9)  # symmetric


def test_seed_interval_by_hand():
    # differences 1, 3, 2 points: mean 2, sd 1, half width t(.975, 2) / sqrt(3)
    iv = seed_interval([0.01, 0.03, 0.02])
    half = 4.302652730 * 0.01 / math.sqrt(3)
    assert (iv.delta, iv.kind, iv.n) == (pytest.approx(0.02), "seeds", 3)
    assert iv.low == pytest.approx(0.02 - half) and iv.high == pytest.approx(0.02 + half)
    assert iv.holds_zero  # -0.48 .. +4.48 points
    assert not seed_interval([0.020, 0.021, 0.022]).holds_zero  # 2.1 ± 0.25 points
    assert seed_interval([0.02]) is None  # one seed: no spread, no interval


def test_pairing_uses_the_seeds_both_rows_have():
    row = {0: {"AP": 0.30}, 1: {"AP": 0.32}, 2: {"AP": 0.31}, 7: {"AP": 0.9}}
    base = {0: {"AP": 0.29}, 1: {"AP": 0.29}, 2: {"AP": 0.29}, 5: {"AP": 0.0}}
    fill = {"AP50": None, "AP75": None, "APs": None, "APm": None, "APl": None, "APr": None,
            "APc": None, "APf": None}
    row = {s: {**fill, **m} for s, m in row.items()}
    base = {s: {**fill, **m} for s, m in base.items()}
    got = intervals((row, {}), (base, {}), Bootstrapper(0, 0))
    want = seed_interval([0.01, 0.03, 0.02])
    assert got["AP"].delta == pytest.approx(want.delta) and got["AP"].low == pytest.approx(
        want.low) and got["AP"].n == 3
    assert got["APr"] is None  # undefined metric: no interval


# ---------------------------------------------------------------------------------------
# The image bootstrap against the evaluator
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvis() -> dict:
    return json.loads(LVIS_SAMPLE.read_text())


def _matches(gt: dict, dets: list[dict]):
    return match_detections(gt, parse_detections(gt, dets, "detections"))


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True)])
def test_unit_weights_give_summarise_exactly(lvis, seed, ties):
    m = _matches(lvis, _synthetic_detections(lvis, seed, ties))
    ref = summarise(m).metrics
    got = weighted_metrics(image_matches(m), np.ones((2, len(lvis["images"]))))
    for k in BOOTSTRAP_KEYS:
        assert got[k][0] == got[k][1] == ref[k] or (math.isnan(ref[k]) and np.isnan(got[k]).all()
                                                    ), k


def _resampled(gt: dict, dets: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The data set a resample stands for: image i copied counts[i] times, new ids."""
    images = sorted(gt["images"], key=lambda im: im["id"])
    anns: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    found: dict[int, list[dict]] = {}
    for d in dets:
        found.setdefault(d["image_id"], []).append(d)
    new = {"categories": gt["categories"], "images": [], "annotations": []}
    out: list[dict] = []
    for image, c in zip(images, counts, strict=True):
        for _ in range(c):
            iid = len(new["images"]) + 1
            new["images"].append({**image, "id": iid})
            new["annotations"] += [{**a, "id": len(new["annotations"]) + 1 + j, "image_id": iid}
                                   for j, a in enumerate(anns.get(image["id"], []))]
            out += [{**d, "image_id": iid} for d in found.get(image["id"], [])]
    return new, out


def test_a_resample_is_the_resampled_data_set(lvis):
    """Weights = draw counts give lvis-rules AP of the data set with each image repeated
    that often (distinct scores, so copies of a detection are adjacent in score order)."""
    dets = _synthetic_detections(lvis, 0, False)
    compact = image_matches(_matches(lvis, dets))
    rng = np.random.default_rng(5)
    for _ in range(2):
        counts = rng.multinomial(len(lvis["images"]), np.full(len(lvis["images"]), 0.01))
        ref = summarise(_matches(*_resampled(lvis, dets, counts))).metrics
        got = weighted_metrics(compact, counts[None].astype(float))
        for k in BOOTSTRAP_KEYS:
            assert got[k][0] == pytest.approx(ref[k], abs=1e-15, nan_ok=True), k


def test_bootstrap_is_reproducible_by_seed(lvis, tmp_path):
    a = image_matches(_matches(lvis, _synthetic_detections(lvis, 0, False)))
    b = image_matches(_matches(lvis, _synthetic_detections(lvis, 1, False)))
    save_matches(tmp_path / "a.npz", a)  # and through the file the runs keep
    one = paired_bootstrap(load_matches(tmp_path / "a.npz"), b, 200, seed=3)
    assert one == paired_bootstrap(a, b, 200, seed=3)
    other = paired_bootstrap(a, b, 200, seed=4)
    assert one["AP"].delta == other["AP"].delta  # the full-set difference
    assert (one["AP"].low, one["AP"].high) != (other["AP"].low, other["AP"].high)
    ref_a, ref_b = summarise(_matches(lvis, _synthetic_detections(lvis, 0, False))), \
        summarise(_matches(lvis, _synthetic_detections(lvis, 1, False)))
    assert one["AP"].delta == ref_a.metrics["AP"] - ref_b.metrics["AP"]
    assert one["AP"].low <= one["AP"].delta <= one["AP"].high


def test_a_bad_matches_file_is_one_line(tmp_path):
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="m.npz: not a readable matches file"):
        load_matches(bad)
    np.savez(bad, version=np.array(1))
    with pytest.raises(DataError, match="missing arrays"):
        load_matches(bad)


IOU = np.linspace(0.5, 0.95, 10)


def _simulate(rng: np.random.Generator, n_images: int, mus=(1.0, 1.6)) -> list[ImageMatches]:
    """Two detectors on the same images: 4 categories (r, c, f, f), Poisson(0.6) objects
    per image and category, each found with p 0.8 at IoU ~ U(0.4, 1) with score
    N(mu, 1), plus Poisson(1.5) false positives with score N(0, 1)."""
    n_cats = 4
    gt = rng.poisson(0.6, size=(n_images, n_cats))
    gi, gc = np.nonzero(gt)
    out = []
    for mu in mus:
        img_g, cat_g = np.repeat(gi, gt[gi, gc]), np.repeat(gc, gt[gi, gc])
        found = rng.random(len(img_g)) < 0.8
        iou = rng.uniform(0.4, 1.0, found.sum())
        n_fp = rng.poisson(1.5, size=(n_images, n_cats)).ravel()
        cells = np.arange(n_images * n_cats).repeat(n_fp)
        img = np.concatenate([img_g[found], cells // n_cats])
        cat = np.concatenate([cat_g[found], cells % n_cats])
        score = np.concatenate([rng.normal(mu, 1.0, found.sum()), rng.normal(0, 1, len(cells))])
        outcome = np.concatenate([np.where(iou[:, None] >= IOU, 1, -1),
                                  -np.ones((len(cells), len(IOU)), int)]).astype(np.int8)
        order = np.lexsort((img, -score, cat))
        out.append(ImageMatches(np.arange(n_images) + 1, np.arange(n_cats) + 1,
                                np.array(["r", "c", "f", "f"]), img[order], cat[order],
                                score[order], outcome[order], gi, gc, gt[gi, gc]))
    return out


def test_bootstrap_covers_a_known_difference_about_95_percent():
    """The true difference is the one on 50,000 images (its own sampling error is a tenth of
    an interval's half width at 300 images). 200 data sets of 300 images, 200 resamples
    each: the coverage of each metric's interval is binomial with sd 1.5 points at 95 %,
    and the percentile bootstrap under-covers a little at this size, so each must lie in
    [0.88, 0.99] and their mean in [0.91, 0.98]: an unpaired or mis-scaled interval falls
    outside (it covers ~100 % or far less)."""
    rng = np.random.default_rng(0)
    a, b = _simulate(rng, 50_000)
    full = np.ones((1, 50_000))
    keys = ("AP", "AP50", "APr", "APf")
    wa, wb = weighted_metrics(a, full), weighted_metrics(b, full)
    truth = {k: float(wb[k][0] - wa[k][0]) for k in keys}
    assert truth["AP"] > 0.03  # a real difference to cover
    hits = dict.fromkeys(keys, 0)
    for i in range(200):
        a, b = _simulate(rng, 300)
        found = paired_bootstrap(b, a, 200, seed=i)
        for k in keys:
            hits[k] += found[k].low <= truth[k] <= found[k].high
    coverage = {k: v / 200 for k, v in hits.items()}
    assert all(0.88 <= c <= 0.99 for c in coverage.values()), coverage
    assert 0.91 <= sum(coverage.values()) / len(keys) <= 0.98, coverage


# ---------------------------------------------------------------------------------------
# report.json on a tiny real run pair
# ---------------------------------------------------------------------------------------

TINY = ["dataset.num_classes=8", "dataset.max_images_per_class=12",
        "dataset.val_instances_per_class=2", "schedule=smoke", "progress=false"]


def _acsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("intervals")
    proc = _acsl("sweep", *TINY, "seed=0,1", "loss=bce", f"output_root={work / 'o'}", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return next((work / "o" / "runs").glob("*-sweep"))


def _rows(path: Path) -> dict[str, dict]:
    return {r["model"]: r for r in json.loads(path.read_text())["rows"]}


def test_report_json_on_two_seeds_is_the_paired_t_interval(sweep, tmp_path):
    proc = _acsl("report", str(sweep), f"out_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = [sweep / line.split("\t")[1] for line in (sweep / "runs.txt").read_text().splitlines()]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    rows = _rows(tmp_path / "report.json")
    for k in ("AP", "AP50", "APr"):
        d = [m["bce"][k] - m[STAGE1_ROW][k] for m in metrics]
        mean, half = sum(d) / 2, 12.706204736 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
        e = rows["bce"]["intervals"][k]
        assert e["kind"] == "seeds" and e["n"] == 2
        assert e["delta"] == pytest.approx(100 * mean, abs=0.006)
        assert e["low"] == pytest.approx(100 * (mean - half), abs=0.006)
        assert e["high"] == pytest.approx(100 * (mean + half), abs=0.006)
        assert e["holds_zero"] == (mean - half <= 0 <= mean + half)
    assert all(v is None for v in rows[STAGE1_ROW]["intervals"].values())  # the baseline
    # the sweep's own summary carries the same intervals
    assert _rows(sweep / "deltas.json")["bce"]["intervals"] == rows["bce"]["intervals"]
    assert "Differences against the stage-1 row" in (sweep / "summary.md").read_text()
    assert (tmp_path / "deltas.png").is_file()


def test_report_json_on_one_run_is_the_image_bootstrap(sweep, tmp_path):
    run = sweep / (sweep / "runs.txt").read_text().splitlines()[0].split("\t")[1]
    proc = _acsl("report", str(run), f"out_dir={tmp_path}", "resamples=300", "bootstrap_seed=2",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "report.json")
    metrics = json.loads((run / "metrics.json").read_text())
    want = paired_bootstrap(load_matches(run / "heads" / "bce" / "matches.npz"),
                            load_matches(run / "stage1_matches.npz"), 300, seed=2)
    for k in BOOTSTRAP_KEYS:
        e, w = rows["bce"]["intervals"][k], want[k]
        if metrics["bce"][k] is None:
            assert e is None and w is None
            continue
        assert e["kind"] == "bootstrap" and e["n"] == w.resamples
        assert e["delta"] == pytest.approx(100 * (metrics["bce"][k] - metrics[STAGE1_ROW][k]),
                                           abs=0.006)
        assert (e["low"], e["high"]) == (round(100 * w.low, 2), round(100 * w.high, 2))
    for k in ("APs", "APm", "APl"):  # not resampled
        assert rows["bce"]["intervals"][k] is None
    text = (tmp_path / "report.md").read_text()
    assert "(n=1)" in text and "± 0.00" not in text  # one seed: no std claimed
    assert "images (300)" in text

"""Issue 27: ``acsl report ... out_dir=DIR`` writes ``DIR/report.html``, one self-contained file,
checked in a real browser (headless Chromium, installed by .ci/run from Debian).

The page's own JS runs a self-check when opened as ``report.html#selftest=COL,QUERY``: it
sorts the per-category table by column COL both ways, searches for QUERY, and writes the
names it then shows, the images' decoded widths and the comparison's rows into the page;
``--dump-dom`` returns that page. Every expectation is computed here from the runs.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from acsl_cli.reporting.compare import compare
from acsl_cli.reporting.html_report import render
from acsl_cli.reporting.runs import STAGE1_ROW, load_runs
from tests.synth_runs import make_sweep

HEADS = {"softmax_ce": {"name": "softmax_ce"}, "bce": {"name": "bce"},
         "acsl xi=0.7 bg=official": {"name": "acsl", "xi": 0.7, "bg": "official"}}
EVIL = '<img src=x onerror="document.title=1">'


def chromium() -> str:
    """The browser: on PATH (.ci/run installs Debian's ``chromium``); never a skip."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(n)), None)
    assert found, "no chromium on PATH: apt-get install -y chromium (as .ci/run does)"
    return found


def browse(page: Path, profile: Path, *args: str) -> str:
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def self_check(page: Path, profile: Path, column: int, query: str) -> dict:
    dom = browse(page, profile, "--dump-dom", f"{page.as_uri()}#selftest={column},{query}")
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def expected_order(runs, label: str, descending: bool) -> list[str]:
    """Names by the model's AP (ties: by id, the page's first order), undefined last."""
    c = compare(runs, STAGE1_ROW, 0)
    row = c.row(label)
    cats = sorted({cat.category_id: cat.name for run in runs for cat in run.categories}
                  .items())
    defined = [(cid, n) for cid, n in cats if not math.isnan(row.per_category[cid])]
    undefined = [n for cid, n in cats if math.isnan(row.per_category[cid])]
    sign = -1 if descending else 1
    # the page sorts the 2-decimal percentages it shows to 4 decimals
    ordered = sorted(defined, key=lambda t: (sign * round(100 * row.per_category[t[0]], 4),
                                             t[0]))
    return [n for _, n in ordered] + undefined


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[list, Path, Path]:
    """``acsl report`` of a small sweep, with a gallery picture, a file that only claims to
    be one, and a class whose name is markup."""
    root = tmp_path_factory.mktemp("html")
    sweep = make_sweep(root, seeds=(0,), classes=12, heads=HEADS, detectors=("faster_rcnn",))
    run = root / "runs" / "long-names-sweep-0"
    show = run / "heads" / "h0" / "show"
    show.mkdir(parents=True)
    Image.new("RGB", (120, 80), (200, 40, 40)).save(show / "image_1.png")
    (show / "image_2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    csv = run / "per_category_ap.csv"
    csv.write_text(csv.read_text().replace(",green_hstripes_diamond,",
                                           f',"{EVIL.replace(chr(34), chr(34) * 2)}",'))
    out = root / "rep"
    proc = subprocess.run([sys.executable, "-m", "acsl_cli", "report", str(sweep),
                           f"baseline={STAGE1_ROW}", f"out_dir={out}", "resamples=0"],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return load_runs([sweep]), out, sweep


def test_report_html_works_in_a_real_browser(report, tmp_path):
    runs, out, _ = report
    page = out / "report.html"
    assert page.is_file()
    c = compare(runs, STAGE1_ROW, 0)
    label = "acsl xi=0.7 bg=official"
    column = 4 + [r.name for r in c.rows if r.per_category].index(label)
    got = self_check(page, tmp_path / "profile", column, "stripes_c")
    names = [cat.name for cat in sorted(runs[0].categories, key=lambda x: x.category_id)]
    assert got["rows"] == got["rendered"] == len(names) == 12
    assert got["descending"] == expected_order(runs, label, True)
    assert got["ascending"] == expected_order(runs, label, False)
    hits = [n for n in got["ascending"] if "stripes_c" in n.lower()]
    assert got["filtered"] == hits and got["matches"] == len(hits) > 0
    assert got["shown_text"] == f"{len(hits)} of 12 categories shown"
    assert got["table_rows"] == [r.name for r in c.rows]
    # every figure written plus the one real gallery picture, each decoded by the browser
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(i["alt"] for i in got["images"]) == sorted([*pngs, "image_1.png"])
    assert all(i["complete"] and i["width"] > 0 for i in got["images"]), got["images"]
    assert EVIL in got["descending"]  # the markup is shown as a name, not run
    shot = tmp_path / "report_screenshot.png"
    browse(page, tmp_path / "profile", "--hide-scrollbars", "--window-size=1400,1600",
           f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1400, 1600)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # text on a page, not a blank


def test_report_html_is_self_contained_and_escaped(report):
    _, out, sweep = report
    text = (out / "report.html").read_text()
    assert EVIL not in text and html.escape(EVIL, quote=True) in text
    for attr in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert attr.startswith(("data:image/png;base64,", "#")), attr
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text  # the page may fetch nothing
    assert "not really" not in text and text.count('alt="image_') == 1
    made = f"Made by acsl report {sweep} "
    assert made in text and "Made by `acsl report" in (out / "report.md").read_text()


def test_a_thousand_categories_sort_and_filter(tmp_path):
    """1,230 classes (LVIS v1's size), one column per model: the page's table holds them
    all and sorts and filters them right."""
    sweep = make_sweep(tmp_path, seeds=(0,), classes=1230, detectors=("faster_rcnn",),
                       heads={k: v for k, v in HEADS.items() if v["name"] != "acsl"})
    runs = load_runs([sweep])
    page = tmp_path / "big.html"
    c = compare(runs, STAGE1_ROW, 0)
    page.write_text(render(c, tmp_path, []))
    got = self_check(page, tmp_path / "profile", 4 + [r.name for r in c.rows].index("bce"),
                     "ring_4")
    assert got["rows"] == got["rendered"] == 1230
    assert got["descending"] == expected_order(runs, "bce", True)
    assert got["ascending"] == expected_order(runs, "bce", False)
    hits = [n for n in expected_order(runs, "bce", False) if "ring_4" in n]
    assert got["filtered"] == hits and len(hits) > 0
    print(f"1,230 rows: sorted twice in {got['sort_ms']:.0f} ms, "
          f"filtered in {got['filter_ms']:.0f} ms")


def test_the_gallery_reads_no_picture_linked_from_outside_the_run(tmp_path):
    """A run folder is untrusted: a ``show/*.png`` that links out of it is not embedded."""
    from types import SimpleNamespace

    from PIL import Image

    from acsl_cli.reporting.html_report import gallery_images

    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    show = tmp_path / "run" / "heads" / "bce" / "show"
    show.mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(show / "a.png")
    (show / "b.png").symlink_to(outside)
    run = SimpleNamespace(path=tmp_path / "run", name="run")
    assert [name for _, name, _ in gallery_images([run])] == ["a.png"]

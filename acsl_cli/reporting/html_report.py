"""``report.html``: the whole report in one self-contained file that opens from disk in
any browser: figures embedded as data URIs, CSS and JS inline, nothing fetched (its
Content-Security-Policy forbids it).

Every string that comes from a run folder (row and class names, settings, file names) is
untrusted and escaped; gallery images are decoded and re-encoded by PIL, never embedded
as given. The page's own JS sorts and searches the per-category table; ``#selftest=COL,Q``
makes it check itself and write what it saw into the page (the browser test reads it).
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from html import escape
from importlib.resources import files
from pathlib import Path

from acsl_cli.reporting.compare import HEADLINE, Comparison, Summary
from acsl_cli.reporting.compare_tables import caption, delta_cell, interval_kind, mean_std
from acsl_cli.reporting.figures import suffixed
from acsl_cli.reporting.runs import Run
from acsl_cli.reporting.settings_diff import differing_settings

TABLE_KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf")
FIGURES = {  # file -> caption, in the order shown
    "group_ap.png": "AP, AP75 and APr / APc / APf per model (error bars: the 95 % interval "
                    "of the difference to the row's baseline, or ± std over seeds).",
    "deltas.png": "Differences to the baseline with their 95 % intervals.",
    "per_category_ap.png": "Per-category AP per frequency group, classes in the order of "
                           "the baseline's AP.",
    "xi_sweep.png": "ACSL: AP, APr, APc and APf against ξ.",
    "validation.png": "Validation AP and APr during training.",
    "label_distribution.png": "Train images per category.",
    "suppression.png": "ACSL's suppressed columns per class (Figure 3).",
}
GALLERY_DIR = "show"  # heads/<id>/show/*.png: what `acsl show ... out_dir=` wrote there
GALLERY_MAX = 12  # images per head
GALLERY_SIDE = 640  # longest side of a gallery image, pixels
GALLERY_BYTES = 20_000_000  # larger files are left out unread


def e(value: object) -> str:
    """Escaped for HTML text and attribute values alike."""
    return escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pct(v: float | None) -> tuple[str, str]:
    """(shown, sort key) of an AP in [0, 1]."""
    if v is None or math.isnan(v):
        return "-", ""
    return f"{100 * v:.2f}", f"{100 * v:.4f}"


def _holds0(r: Summary, k: str) -> str:
    iv = r.interval.get(k)
    return " holds0" if iv is not None and iv.holds_zero else ""


def comparison_table(c: Comparison, key: str = "comparison") -> str:
    head = "".join(f"<th>{k}</th>" for k in TABLE_KEYS) + "".join(
        f"<th>Δ{k} [95 %]</th>" for k in HEADLINE)
    body = []
    for r in c.rows:
        cells = "".join(f"<td>{e(mean_std(r, k))}</td>" for k in TABLE_KEYS) + "".join(
            f'<td class="delta{_holds0(r, k)}">{e(delta_cell(r, k))}</td>' for k in HEADLINE)
        body.append(f'<tr><td class="name">{e(r.name)}</td><td>{len(r.seeds)}</td>{cells}'
                    f"<td>{e(interval_kind(r))}</td></tr>")
    note = f'<p class="note">{e(c.note)}</p>' if c.note else ""
    return (f'{note}<div class="scroll"><table id="{key}" class="comparison"><caption>'
            f'{e(caption(c))}</caption>'
            f'<thead><tr><th class="name">model</th><th>seeds</th>{head}<th>interval</th>'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def category_rows(c: Comparison) -> list[tuple[int, str, str, int | None]]:
    """(id, name, group, train images) of every category of the runs, by id."""
    seen: dict[int, tuple[int, str, str, int | None]] = {}
    for run in c.runs:
        for cat in run.categories:
            seen.setdefault(cat.category_id, (cat.category_id, cat.name, cat.group,
                                              cat.train_images))
    return [seen[k] for k in sorted(seen)]


def category_table(c: Comparison, key: str = "cats") -> str:
    """Every category, one AP column per row of the comparison; sortable, searchable (the
    page's JS finds the search box and counter by the table's id ``key``)."""
    cats = category_rows(c)
    rows: Sequence[Summary] = [r for r in c.rows if r.per_category]
    if not cats or not rows:
        return '<p class="note">No per_category_ap.csv in the runs.</p>'
    head = ('<th data-type="num">id</th><th class="name">class</th><th>group</th>'
            '<th>train images</th>' + "".join(f"<th>{e(r.name)}</th>" for r in rows))
    out = []
    for cid, name, group, images in cats:
        aps = "".join('<td data-v="{1}">{0}</td>'.format(*_pct(r.per_category.get(cid)))
                      for r in rows)
        out.append(f'<tr><td data-v="{cid}">{cid}</td><td class="name">{e(name)}</td>'
                   f'<td class="grp-{e(group)}">{e(group)}</td>'
                   f'<td data-v="{"" if images is None else images}">'
                   f'{"-" if images is None else images}</td>{aps}</tr>')
    return (f'<input type="search" id="{key}-search" placeholder="search classes by name" '
            f'aria-label="search classes"> <span id="{key}-shown" class="note"></span>'
            f'<div class="cats-wrap"><table id="{key}" class="cats" data-rows="{len(cats)}">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(out)}</tbody></table></div>'
            '<p class="note">AP (%) per category, mean over each row\'s seeds; click a '
            "column to sort (again: reverse), - = no AP (undefined).</p>")


def figures_html(out_dir: Path, names: Sequence[str], suffix: str = "") -> str:
    """The figures of one comparison (their file names end in its ``suffix``)."""
    parts = []
    for base, text in FIGURES.items():
        name = suffixed(base, suffix)
        if name in names and (out_dir / name).is_file():
            parts.append(f'<figure id="fig-{e(Path(name).stem)}"><img alt="{e(name)}" '
                         f'src="{data_uri((out_dir / name).read_bytes())}">'
                         f"<figcaption>{e(text)} ({e(name)})</figcaption></figure>")
    return "".join(parts)


def settings_table(runs: Sequence[Run]) -> str:
    keys, values = differing_settings(runs)
    if not keys:
        return '<p class="note">The runs differ in no setting that can change a result.</p>'
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    body = "".join(f'<tr><td class="name">{e(run.name)}</td>'
                   + "".join(f"<td>{e(v)}</td>" for v in vals) + "</tr>"
                   for run, vals in zip(runs, values, strict=True))
    return (f'<div class="scroll"><table id="settings"><thead><tr><th class="name">run</th>'
            f"{head}</tr></thead><tbody>{body}</tbody></table></div>")


def gallery_images(runs: Sequence[Run]) -> list[tuple[str, str, bytes]]:
    """(head, file name, re-encoded PNG) of the pictures ``acsl show`` left in heads'
    ``show`` folders; a file PIL cannot decode is left out."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for run in runs:
        heads = run.path / "heads"
        inside = run.path.resolve()
        for folder in sorted(heads.glob(f"*/{GALLERY_DIR}")) if heads.is_dir() else []:
            for path in sorted(folder.glob("*.png"))[:GALLERY_MAX]:
                if not path.resolve().is_relative_to(inside):  # a link out of the run
                    continue
                try:
                    if path.stat().st_size > GALLERY_BYTES:
                        continue
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        im.thumbnail((GALLERY_SIDE, GALLERY_SIDE))
                        buf = io.BytesIO()
                        im.save(buf, format="PNG")
                except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
                    continue
                out.append((f"{run.name}/{folder.parent.name}", path.name, buf.getvalue()))
    return out


def gallery(runs: Sequence[Run]) -> str:
    images = gallery_images(runs)
    if not images:
        return ""
    cells = "".join(f'<figure><img alt="{e(name)}" src="{data_uri(png)}"><figcaption>'
                    f"{e(head)}: {e(name)}</figcaption></figure>" for head, name, png in images)
    return f'<h2 id="gallery">Detections (acsl show)</h2><div class="gallery">{cells}</div>'


def _sections(c: Comparison, out_dir: Path, figure_names: Sequence[str], n: str = ""
              ) -> list[tuple[str, str, str]]:
    """(anchor, title, html) of one comparison's parts; ``n`` makes its ids unique."""
    return [(f"comparison{n}", "Comparison", comparison_table(c, f"comparison{n}")),
            (f"figures{n}", "Figures", figures_html(out_dir, figure_names, c.suffix)),
            (f"categories{n}", "Per-category AP", category_table(c, f"cats{n}")),
            (f"settings{n}", "Settings that differ between the runs", settings_table(c.runs))]


def render(comparison: Comparison | Sequence[Comparison], out_dir: Path,
           figure_names: Sequence[str], command: str = "") -> str:
    """The page's text; ``command``: the command line that made it. Several comparisons
    (one per dataset and metric) get a heading each, with their parts below it."""
    cs = [comparison] if isinstance(comparison, Comparison) else list(comparison)
    runs = [r for c in cs for r in c.runs]
    if len(cs) == 1:
        sections = _sections(cs[0], out_dir, figure_names)
        body = "".join(f'<h2 id="{k}">{title}</h2>{html}' for k, title, html in sections)
        nav = "".join(f'<a href="#{k}">{title}</a>' for k, title, _ in sections)
    else:
        body = nav = ""
        for i, c in enumerate(cs, 1):
            n = "" if i == 1 else f"-{i}"
            body += f'<h2 id="dataset{n}">{e(c.title)}</h2>' + "".join(
                f'<h3 id="{k}">{title}</h3>{html}'
                for k, title, html in _sections(c, out_dir, figure_names, n))
            nav += f'<a href="#dataset{n}">{e(c.title)}</a>'
    body += gallery(runs)
    names = ", ".join(r.name for r in runs)
    baselines = "; ".join(dict.fromkeys(c.baseline for c in cs))
    datasets = "; ".join(c.title for c in cs if c.title)
    page = files("acsl_cli.reporting").joinpath("report_template.html").read_text("utf-8")
    fill = {"title": e(f"Comparison of {len(runs)} run(s)"
                       + (f" on {len(cs)} datasets" if len(cs) > 1 else "")),
            "subtitle": e(f"Made by {command or 'acsl report'}; "
                          + (f"dataset: {datasets}; " if datasets else "")
                          + f"baseline: {baselines}; runs: {names}"),
            "nav": nav + ('<a href="#gallery">Detections</a>' if "gallery" in body else ""),
            "body": body}
    # one pass: a filled-in value is never scanned again for placeholders
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fill[m.group(1)], page)

"""Layout defects of a drawn matplotlib figure, measured from its own text extents.

``defects(fig, words)`` lists, in words a failing test can print: two texts (or a text and
a legend box) that overlap, a text that leaves the canvas, a legend entry without a drawn
handle, a data line that no legend names, a promise of a dashed line that none keeps, and
a known word (a model or class name) broken across two lines.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

SLACK = 1.0  # pixels two boxes may share (antialiasing of touching glyph boxes)


def _texts(fig) -> list:
    """Every text the figure draws: figure texts, panel titles, axis labels, the tick
    labels of the ticks in view (``Axis._update_ticks``: what ``Axis.draw`` draws), panel
    texts and legend texts."""
    out = [*fig.texts]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_visible():
                    out.append(axis.label)
                    for tick in axis._update_ticks():
                        out += [lab for lab in (tick.label1, tick.label2)
                                if lab.get_visible()]
    for lg in _legends(fig):
        out += [*lg.get_texts(), lg.get_title()]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _legends(fig) -> list:
    out = list(fig.legends)
    for ax in fig.axes:
        if ax.get_legend() is not None and ax.get_legend().get_visible():
            out.append(ax.get_legend())
    return out


def _overlap(a, b) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > SLACK
            and min(a.y1, b.y1) - max(a.y0, b.y0) > SLACK)


def _name(t) -> str:
    return repr(t.get_text()[:60])


def defects(fig, words: Iterable[str] = ()) -> list[str]:
    """Every layout defect of ``fig`` (drawn first, with the renderer it is saved with)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas_agg = FigureCanvasAgg(fig)  # a saved figure was closed: give it a canvas again
    canvas_agg.draw()
    renderer = canvas_agg.get_renderer()
    canvas = fig.bbox
    found: list[str] = []
    texts = _texts(fig)
    boxes = {id(t): t.get_window_extent(renderer) for t in texts}
    legends = _legends(fig)
    in_legend = {id(t) for lg in legends for t in [*lg.get_texts(), lg.get_title()]}
    for t in texts:
        b = boxes[id(t)]
        if b.x0 < canvas.x0 - SLACK or b.y0 < canvas.y0 - SLACK or \
                b.x1 > canvas.x1 + SLACK or b.y1 > canvas.y1 + SLACK:
            found.append(f"{_name(t)} leaves the canvas ({b} outside {canvas})")
    for s, t in itertools.combinations(texts, 2):
        if _overlap(boxes[id(s)], boxes[id(t)]):
            found.append(f"{_name(s)} overlaps {_name(t)}")
    for lg in legends:
        frame = lg.get_window_extent(renderer)
        own = {id(x) for x in [*lg.get_texts(), lg.get_title()]}
        for t in texts:
            if id(t) not in own and id(t) not in in_legend and _overlap(frame, boxes[id(t)]):
                found.append(f"legend {[x.get_text() for x in lg.get_texts()][:3]}... covers "
                             f"{_name(t)}")
        handles = lg.legend_handles
        labels = [x.get_text() for x in lg.get_texts()]
        if len(handles) != len(labels) or any(h is None or not h.get_visible()
                                               for h in handles):
            found.append(f"legend {labels[:3]}...: {len(labels)} labels, "
                         f"{sum(h is not None for h in handles)} drawn handles")
    found += _unnamed_lines(fig, legends)
    found += _dashed_promise(fig, texts, legends)
    found += _broken_words(texts, words)
    return found


def _unnamed_lines(fig, legends) -> list[str]:
    """In a panel of several data lines, each line's label is some legend's entry."""
    named = {x.get_text() for lg in legends for x in lg.get_texts()}
    out = []
    for ax in fig.axes:
        owner = {id(a): cont.get_label() for cont in ax.containers
                 for a in _flat(cont.get_children())}
        lines = [ln for ln in ax.get_lines() if ln.get_visible() and len(ln.get_xdata()) > 1]
        if len(lines) < 2:
            continue
        for ln in lines:
            label = owner.get(id(ln), ln.get_label())
            if not label.startswith("_") and label not in named:
                out.append(f"panel {ax.get_title()!r}: line {label!r} is in no legend")
            elif label.startswith("_") and len({x.get_color() for x in lines}) > 1:
                out.append(f"panel {ax.get_title()!r}: an unlabelled line among several")
    return out


def _flat(items) -> list:
    out = []
    for a in items:
        out += _flat(a) if isinstance(a, (list, tuple)) else [a]
    return out


def _dashed_promise(fig, texts, legends) -> list[str]:
    """A text that says 'dashed' is kept by a dashed line that a legend entry shows."""
    if not any("dashed" in t.get_text() for t in texts):
        return []
    drawn = [ln for ax in fig.axes for ln in ax.get_lines()
             if ln.get_linestyle() == "--" and ln.get_visible()]
    shown = [h for lg in legends for h in lg.legend_handles
             if h is not None and getattr(h, "get_linestyle", lambda: "")() == "--"]
    if not drawn or not shown:
        return [f"a text promises a dashed line; {len(drawn)} drawn, {len(shown)} in a legend"]
    return []


def _broken_words(texts, words: Iterable[str]) -> list[str]:
    """A known word split over two lines: 'detector.na\\nme=faster_rcnn'."""
    out = []
    vocabulary = {w for text in words for w in text.split() if len(w) > 3}
    for t in texts:
        s = t.get_text()
        if "\n" not in s:
            continue
        glued, spaced = s.replace("\n", ""), s.replace("\n", " ")
        for w in vocabulary:
            if w in glued and w not in spaced:
                out.append(f"{_name(t)} breaks the word {w!r}")
    return out

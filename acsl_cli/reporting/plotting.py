"""What every report figure shares: pyplot on Agg, the atomic PNG writer, labels wrapped at
word boundaries, one colour per row, a legend below the panels sized to the figure, and
what the error bars are (a std needs two seeds).

matplotlib is imported inside the functions: the CLI and the library stay fast to import,
and nothing needs a display.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acsl_cli.files import atomic_write_bytes

DPI = 150
GROUP_NAMES = {"f": "frequent", "c": "common", "r": "rare"}
GROUP_COLOURS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}
METRIC_COLOURS = {"AP": "tab:grey", "AP75": "tab:purple",
                  **{f"AP{g}": c for g, c in GROUP_COLOURS.items()}}
POINTS_PER_CHAR = 4.9  # a legend or tick character at font size 8, generous


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """The figure as a PNG at ``DPI``, written atomically; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def wrap(text: str, width: int = 16) -> str:
    """Lines of at most ``width`` characters, broken between words only (a word longer
    than the width stays whole on its own line: never 'detector.na' / 'me=...')."""
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def colours(names: Sequence[str], black: Sequence[str] = ()) -> dict[str, Any]:
    """One distinct colour per name; the names in ``black`` are black."""
    cmap = pyplot().get_cmap("tab10" if len(names) <= 10 else "tab20")
    others = [n for n in names if n not in black]
    out = {n: cmap(i % cmap.N) for i, n in enumerate(others)}
    out.update(dict.fromkeys(black, "black"))
    return out


def bottom_legend(fig: Any, handles: Sequence[Any], labels: Sequence[str],
                  fontsize: float = 8) -> Any:
    """A legend under the panels with as many columns as fit the figure's width; a label
    too long for the figure is wrapped between words."""
    width_pt = fig.get_figwidth() * 72 - 20
    most = max(12, int((width_pt - 40) / POINTS_PER_CHAR))
    labels = [wrap(label, most) for label in labels]
    longest = max((len(line) for label in labels for line in label.splitlines()), default=1)
    ncol = max(1, min(len(labels), int(width_pt // (longest * POINTS_PER_CHAR + 40))))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol,
                      fontsize=fontsize)


def spread(seed_counts: Sequence[int]) -> str:
    """What an error bar over seeds is, from each row's number of seeds."""
    if all(n < 2 for n in seed_counts):
        return "one seed per row (n=1), no spread"
    if any(n < 2 for n in seed_counts):
        return "bars: ± std over seeds (none for n=1 rows)"
    return "bars: ± std over seeds"


def seed_words(seed_counts: Sequence[int]) -> str:
    """'mean over seeds' where some row has two, 'one seed' where none does."""
    return "one seed (n=1)" if all(n < 2 for n in seed_counts) else "mean over seeds"

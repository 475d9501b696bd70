"""What every figure draws with: matplotlib (Agg, imported on first use), the groups'
colours, wrapped labels, and the atomic 150 dpi PNG write. Its own module so that the
figure modules import it and not each other."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

from acsl_cli.files import atomic_write_bytes

DPI = 150
GROUP_COLOURS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _wrap(name: str, width: int = 16) -> str:
    return textwrap.fill(name, width, break_long_words=True)

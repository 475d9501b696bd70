"""The gamma curve of ``test.calibration``: ``calibration.json`` (the record),
``calibration.md`` (a table per head) and ``calibration.png`` (val AP against gamma, the
held-out metric the pick maximised, the picked gamma marked)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acsl_cli.files import atomic_write_json, atomic_write_text
from acsl_cli.reporting.tables import HEADLINE, pct

CURVE_KEYS = HEADLINE


def calibration_markdown(record: Mapping[str, Any]) -> str:
    """Per calibrated head: val AP, APr, APc, APf at every gamma, and the held-out metric."""
    metric = record.get("select_metric", "AP")
    lines = [f"NorCal: N_c = train {record['counts']}; gamma picked on "
             + ("held-out train-distribution images "
                f"({record['heldout']['images']}) by {metric}" if record.get("heldout")
                else "nothing (every gamma reported, none picked)"), ""]
    for base, head in record["heads"].items():
        picked = head.get("picked_gamma")
        lines += [f"### {base}", "",
                  "| gamma | " + " | ".join(f"val {k}" for k in CURVE_KEYS)
                  + f" | held-out {metric} |", "|---" * (len(CURVE_KEYS) + 2) + "|"]
        for point in head["curve"]:
            held = point["heldout"][metric] if point["heldout"] else None
            mark = " (picked)" if picked is not None and point["gamma"] == picked else ""
            lines.append(f"| {point['gamma']:g}{mark} | "
                         + " | ".join(pct(point["val"][k]) for k in CURVE_KEYS)
                         + f" | {pct(held)} |")
        if head.get("picked_at_grid_edge"):
            lines += ["", f"The pick is the largest gamma of the grid: the held-out {metric} "
                          "may still rise past it (extend `test.calibration.gamma`)."]
        lines.append("")
    for base, why in record.get("not_calibrated", {}).items():
        lines.append(f"- {base}: not calibrated ({why})")
    return "\n".join(lines).rstrip() + "\n"


def calibration_figure(record: Mapping[str, Any], path: Path) -> Path | None:
    """One panel per calibrated head: val AP/APr/APc/APf against gamma, the held-out
    metric dashed, the picked gamma as a vertical line."""
    from acsl_cli.reporting.figures import _pyplot, _save

    heads = record["heads"]
    if not heads:
        return None
    plt = _pyplot()
    n = len(heads)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    metric = record.get("select_metric", "AP")
    for ax, (base, head) in zip(axes[0], heads.items(), strict=True):
        gammas = [p["gamma"] for p in head["curve"]]
        for k in CURVE_KEYS:
            ys = [_percent(p["val"][k]) for p in head["curve"]]
            ax.plot(gammas, ys, marker="o", label=f"val {k}")
        if record.get("heldout"):
            ys = [_percent(p["heldout"][metric]) for p in head["curve"]]
            ax.plot(gammas, ys, "k--", marker="x", label=f"held-out {metric}")
        if head.get("picked_gamma") is not None:
            ax.axvline(head["picked_gamma"], color="grey", lw=1)
        ax.set_title(base, fontsize=9)
        ax.set_xlabel("NorCal gamma")
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _percent(v: float | None) -> float:
    return float("nan") if v is None else 100 * v


def write_calibration(folder: Path, record: Mapping[str, Any]) -> None:
    """calibration.json, calibration.md and calibration.png in a run folder."""
    atomic_write_json(folder / "calibration.json", dict(record))
    atomic_write_text(folder / "calibration.md", calibration_markdown(record))
    calibration_figure(record, folder / "calibration.png")

"""The settings that differ between compared runs: what a reader must know to trust a
comparison (the rule of ``settings.pooling``: outcome settings only, declared defaults
filled in; the seed is shown too)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from acsl_cli.reporting.runs import Run
from acsl_cli.settings.pooling import outcome_values

UNKNOWN = "? (no config.yaml)"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def differing_settings(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """(dotted keys whose values differ between the runs, sorted; per run its values)."""
    values = [outcome_values(r.config) if r.config else None for r in runs]
    known = [v for v in values if v is not None]
    keys = sorted({k for v in known for k in v})
    differ = [k for k in keys if len({_text(v.get(k, "-")) for v in known}) > 1]
    rows = [[UNKNOWN if v is None else _text(v.get(k, "-")) for k in differ] for v in values]
    return differ, rows

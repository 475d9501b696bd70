"""Is this folder already this plan's finished run? The one rule that says what differs
between a saved run and a planned one, and the one step "reuse it or train", shared by
the in-process sweep, the job workers (``launchers/jobs.py``) and the sweep-name check
(``sweep_name.py``).

What differs, in this order: the heads (their losses: a run's rows are per head), the
LVIS protocols it scored (``test.protocol`` is no pooling variant, but a run without the
fixed rows cannot stand in for one that asks for them), then every outcome setting by
the rule that pools runs (``settings.pooling``, seed included).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acsl_cli.errors import ConfigError, DataError
from acsl_cli.evaluation.lvis_eval import METRIC_KEYS
from acsl_cli.layout import CONFIG, METRICS, OutputLayout, finished
from acsl_cli.pipeline.train import RunResult, train
from acsl_cli.plan import RunPlan, saved_run_config
from acsl_cli.settings.pooling import differences as pooled_differences

log = logging.getLogger("acsl")


@dataclass(frozen=True)
class Difference:
    """One setting in which a saved run differs from a planned one. ``plain``: the values
    are text to show as they are (the heads' labels), else shown with ``repr``."""

    key: str
    there: Any
    here: Any
    plain: bool = False

    def _shown(self, value: Any) -> str:
        return str(value) if self.plain else repr(value)

    def arrow(self) -> str:
        """``key: there -> here``."""
        return f"{self.key}: {self._shown(self.there)} -> {self._shown(self.here)}"

    def there_here(self) -> str:
        """``key: there there, here here``."""
        return f"{self.key}: {self._shown(self.there)} there, {self._shown(self.here)} here"


def _saved_heads(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    heads = saved.get("heads")
    return heads if isinstance(heads, Mapping) else {}


def _heads(saved: Mapping[str, Any], run: RunPlan) -> Difference | None:
    """The heads differ when their losses do (id -> loss parameters); shown by label."""
    heads = _saved_heads(saved)
    have = {k: v.get("loss") if isinstance(v, Mapping) else None for k, v in heads.items()}
    if have == {h.id: h.loss.as_dict() for h in run.heads}:
        return None
    there = sorted(str(h.get("label", k)) if isinstance(h, Mapping) else str(k)
                   for k, h in heads.items())
    return Difference("heads", ", ".join(there), ", ".join(sorted(h.label for h in run.heads)),
                      plain=True)


def _protocols(saved: Mapping[str, Any], run: RunPlan) -> Difference | None:
    """A saved run that scored fewer LVIS protocols lacks their rows."""
    test = saved.get("test")
    have = test.get("protocol", "standard") if isinstance(test, Mapping) else "standard"
    have_set = {have} if isinstance(have, str) else set(have)
    missing = [p for p in run.settings.test.protocols if p not in have_set]
    return Difference("test.protocol", have, missing[0]) if missing else None


def differences(saved: Mapping[str, Any], run: RunPlan) -> list[Difference]:
    """Every difference of a saved run's config from ``run``, in the module's order."""
    first = [d for d in (_heads(saved, run), _protocols(saved, run)) if d is not None]
    return first + [Difference(k, a, b) for k, a, b in
                    pooled_differences(saved, run.settings.source)]


def finished_run(folder: Path, run: RunPlan) -> RunResult | None:
    """The saved result of ``run`` if ``folder`` holds it finished; None if it is not
    finished; a one-line error if it is the finished run of other settings."""
    if not finished(folder):
        return None
    try:
        saved = saved_run_config(folder / CONFIG)
        rows = json.loads((folder / METRICS).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: a finished run that cannot be read "
                        f"({e.__class__.__name__}); move it away to rerun it") from None
    diff = differences(saved, run)
    if diff:
        raise ConfigError(f"{folder} exists but was made with other settings "
                          f"({diff[0].there_here()}); use another run_name")
    log.info("sweep: %s is finished, reusing it", folder)
    metrics = {row: {k: math.nan if m.get(k) is None else float(m[k]) for k in METRIC_KEYS}
               for row, m in rows.items()}  # rows also say which val images were scored
    return RunResult(folder, metrics, stage1_reused=True)


def reuse_or_train(run: RunPlan, name: str) -> RunResult:
    """The run named ``name``: its finished folder if it holds this run, else trained
    (stage 1 and stage 2 resume from their last epoch)."""
    folder = OutputLayout.at(run.settings.output_root).run(name)
    return finished_run(folder, run) or train(run, name)

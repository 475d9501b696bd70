"""Which runs measure the same thing: the one rule shared by a sweep's mean (``SweepPlan.
variants``), ``acsl report``'s rows and a sweep's reuse of a finished run.

A run is described by its outcome values: every setting that can change a result, as a
flat ``{dotted path: value}``. A declared setting a config does not hold takes its declared
default (the value the code ran with: the Faster R-CNN's config holds no cascade lists, the
cascade's no ``class_agnostic_boxes``, an older run no option added since). Two runs may be
pooled into one mean and std when their outcome values are equal in everything but the
seed, whatever other runs are compared with them. Not compared: settings declared
``outcome=False`` (where and how a run is written), what a run's heads compare (``loss``,
``xi``, ``heads``: rows are per head) and the run's record of itself (``provenance``). A
config's dataset keys are its kind's (``settings.datasets``); a dataset key that only one
config holds and no kind declares (one an older version had) is not compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from acsl_cli.settings.datasets import KINDS, DatasetSettings
from acsl_cli.settings.declare import Declared, declared
from acsl_cli.settings.keys import not_outcome_keys
from acsl_cli.settings.sections import Settings

#: Roots never compared: the heads' own settings, the run's record of itself, and which
#: LVIS protocols it scored (each protocol's rows carry it in their label: ``acsl [fixed]``).
SELF_KEYS = frozenset({"heads", "loss", "xi", "provenance", "test.protocol"})
#: What pooling is over: runs that differ only here are pooled.
POOLED_OVER = "seed"


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings -> {dotted path: leaf value}; lists are leaves."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(value: Any) -> Any:
    """Tuples (declared defaults) and lists (saved yaml) compare as one kind."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _skipped(key: str, skip: set[str]) -> bool:
    return key in skip or key.split(".")[0] in skip


def outcome_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted path -> value of every setting of ``config`` that can change a result, the
    declared ones that it does not hold at their defaults (see the module's docstring)."""
    skip = not_outcome_keys() | SELF_KEYS
    flat = {k: _plain(v) for k, v in flatten(config).items() if not _skipped(k, skip)}
    for d in _declared_for(config):
        path = ".".join(d.path)
        if _skipped(path, skip) or path in flat or any(k.startswith(path + ".") for k in flat):
            continue
        flat[path] = _plain(d.default)
    return flat


def _declared_for(config: Mapping[str, Any]) -> list[Declared]:
    """The declared leaves of ``config``: its dataset's are its kind's class's."""
    dataset = config.get("dataset")
    kind = dataset.get("kind", "synthetic") if isinstance(dataset, Mapping) else "synthetic"
    cls = KINDS.get(kind, DatasetSettings) if isinstance(kind, str) else DatasetSettings
    return [*(d for d in declared(Settings) if d.path[0] != "dataset"),
            *declared(cls, ("dataset",))]


def differences(a: Mapping[str, Any], b: Mapping[str, Any], *, seed: bool = True
                ) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` for every outcome setting in which two configs
    differ, sorted by key; ``seed=False`` leaves the seed out (what pooling is over)."""
    va, vb = outcome_values(a), outcome_values(b)
    out = []
    for k in sorted(va.keys() | vb.keys()):
        if not seed and k == POOLED_OVER:
            continue
        if k not in va or k not in vb:  # an undeclared dataset key only one config holds
            continue
        if va[k] != vb[k]:
            out.append((k, va[k], vb[k]))
    return out


def pool_key(config: Mapping[str, Any]) -> str:
    """Equal for two configs exactly when their runs may be pooled (nothing but the seed
    differs), given that both hold the same undeclared dataset keys."""
    values = outcome_values(config)
    values.pop(POOLED_OVER, None)
    return json.dumps(values, sort_keys=True, default=str)


def may_pool(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs differ in nothing but the seed."""
    return not differences(a, b, seed=False)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def variant_names(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per config, ``key=value`` of every outcome setting (but the seed) whose value is not
    the same in all of them ("" when all may be pooled). Configs get the same name exactly
    when they may be pooled with each other."""
    values = [outcome_values(c) for c in configs]
    keys = sorted({k for v in values for k in v} - {POOLED_OVER})
    differing = [k for k in keys  # held by several configs with different values
                 if len({json.dumps(v[k], sort_keys=True, default=str)
                         for v in values if k in v}) > 1]
    names = []
    for v in values:
        parts = [f"{k}={_shown(v[k])}" for k in differing if k in v]
        names.append(" ".join(parts))
    _separate(names, configs)
    return names


def _separate(names: list[str], configs: Sequence[Mapping[str, Any]]) -> None:
    """Two configs that may not be pooled but read the same (an undeclared key one of them
    lacks, a value whose text is another's) get numbered names."""
    groups: list[list[int]] = []
    for i in range(len(configs)):
        for g in groups:
            j = g[0]
            if names[j] == names[i] and may_pool(configs[j], configs[i]):
                g.append(i)
                break
        else:
            groups.append([i])
    seen: dict[str, int] = {}
    for g in groups:
        n = seen[names[g[0]]] = seen.get(names[g[0]], 0) + 1
        if n > 1:
            for i in g:
                names[i] = f"{names[i]} #{n}".strip()

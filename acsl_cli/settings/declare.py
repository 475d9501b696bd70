"""How a setting is declared: default, rule, and the caches whose keys it enters.

``caches`` names the cache keys a value enters (``DATA``, ``STAGE1``, ``STAGE2``); a field
without its own ``caches`` inherits its section's. ``changed_only`` lists the caches the
value enters only when it differs from its default: options added after a key's format
was fixed, so that existing cache entries keep their keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from acsl_cli.settings.rules import Rule

DATA, STAGE1, STAGE2 = "data", "stage1", "stage2"
CACHES = (DATA, STAGE1, STAGE2)


def setting(default: Any, rule: Rule, caches: tuple[str, ...] | None = None,
            changed_only: tuple[str, ...] = (), outcome: bool = True) -> Any:
    """A leaf field: its default, its rule, and the cache keys it enters. ``outcome=False``
    marks values that cannot change a result (where a run is written, how it is shown):
    runs that differ only in them are the same experiment."""
    return field(default=default, metadata={"rule": rule, "caches": caches,
                                            "changed_only": changed_only, "outcome": outcome})


def section(cls: type, caches: tuple[str, ...] | None = None,
            changed_only: tuple[str, ...] = ()) -> Any:
    """A nested group of settings (``schedule``, ``sampler``, ...)."""
    return field(default_factory=cls, metadata={"caches": caches, "changed_only": changed_only,
                                                "section": True})


@dataclass(frozen=True)
class Declared:
    """One declared leaf, found by walking the settings classes."""

    path: tuple[str, ...]
    default: Any
    rule: Rule
    caches: tuple[str, ...]
    changed_only: tuple[str, ...]
    outcome: bool = True


def declared(cls: type, path: tuple[str, ...] = (), caches: tuple[str, ...] = (),
             changed_only: tuple[str, ...] = ()) -> Iterator[Declared]:
    """Every leaf of ``cls`` (recursively), with the caches it inherits."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        own = meta.get("caches")
        here = caches if own is None else own
        only = meta.get("changed_only") or changed_only
        if meta.get("section"):
            yield from declared(f.default_factory, (*path, f.name), here,  # type: ignore[arg-type]
                                only)
        elif "rule" in meta:
            yield Declared((*path, f.name), f.default, meta["rule"], here, only,
                           meta.get("outcome", True))


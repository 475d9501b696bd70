"""How a setting is declared: default, rule, and the caches whose keys it enters.

``caches`` names the cache keys a value enters (``DATA``, ``STAGE1``, ``STAGE2``); a field
without its own ``caches`` inherits its section's. ``changed_only`` lists the caches the
value enters only when it differs from its default: options added after a key's format
was fixed, so that existing cache entries keep their keys.

A section whose keys depend on which one is chosen (``detector=``, ``launcher=``,
``backbone=``) is declared with ``kinds``: each kind is a class of its own, registered with
``kind``, and a key of another kind than the chosen one is refused (``settings.build``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from acsl_cli.settings.rules import Rule

DATA, STAGE1, STAGE2 = "data", "stage1", "stage2"
#: the field of a kinds section that names its kind (``detector.name``)
SELECTOR = "name"
CACHES = (DATA, STAGE1, STAGE2)


def setting(default: Any, rule: Rule, caches: tuple[str, ...] | None = None,
            changed_only: tuple[str, ...] = (), outcome: bool = True) -> Any:
    """A leaf field: its default, its rule, and the cache keys it enters. ``outcome=False``
    marks values that cannot change a result (where a run is written, how it is shown):
    runs that differ only in them are the same experiment."""
    meta = {"rule": rule, "caches": caches, "changed_only": changed_only, "outcome": outcome}
    if isinstance(default, dict):  # a mapping default: each instance gets its own copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def leaf_default(f: dataclasses.Field) -> Any:
    """A leaf field's default (a mapping's is made by its factory)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def section(cls: type, caches: tuple[str, ...] | None = None,
            changed_only: tuple[str, ...] = ()) -> Any:
    """A nested group of settings (``schedule``, ``sampler``, ...)."""
    return field(default_factory=cls, metadata={"caches": caches, "changed_only": changed_only,
                                                "section": True})


def kinds(registry: dict[str, type], default: str, caches: tuple[str, ...] | None = None,
          changed_only: tuple[str, ...] = ()) -> Any:
    """A section with one class per kind (``registry``: kind name -> class, filled by
    ``kind``); ``default`` is the kind a config that names none gets."""
    return field(default_factory=lambda: registry[default](),
                 metadata={"caches": caches, "changed_only": changed_only, "section": True,
                           "kinds": registry, "default_kind": default})


def kind(registry: dict[str, type], *names: str) -> Callable[[type], type]:
    """Register a section class as the kind(s) ``names`` (default: its ``name`` field's
    default), e.g. ``@kind(DETECTOR_KINDS)`` over ``CascadeRCNNSettings``."""

    def wrap(cls: type) -> type:
        own = names or (cls.__dataclass_fields__[SELECTOR].default,)  # type: ignore[attr-defined]
        for n in own:
            registry[n] = cls
        return cls

    return wrap


def kind_classes(meta: Any) -> list[type]:
    """A kinds section's classes, the default kind's first, each once."""
    registry = meta["kinds"]
    return list(dict.fromkeys([registry[meta["default_kind"]], *registry.values()]))


@dataclass(frozen=True)
class Declared:
    """One declared leaf, found by walking the settings classes."""

    path: tuple[str, ...]
    default: Any
    rule: Rule
    caches: tuple[str, ...]
    changed_only: tuple[str, ...]
    outcome: bool = True
    #: in a kinds section, the kinds whose class has this field (None: not in one)
    kinds: tuple[str, ...] | None = None


def declared(cls: type, path: tuple[str, ...] = (), caches: tuple[str, ...] = (),
             changed_only: tuple[str, ...] = ()) -> Iterator[Declared]:
    """Every leaf of ``cls`` (recursively), with the caches it inherits."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        own = meta.get("caches")
        here = caches if own is None else own
        only = meta.get("changed_only") or changed_only
        if meta.get("kinds"):
            yield from _declared_kinds(meta, (*path, f.name), here, only)
        elif meta.get("section"):
            yield from declared(f.default_factory, (*path, f.name), here,  # type: ignore[arg-type]
                                only)
        elif "rule" in meta:
            yield Declared((*path, f.name), leaf_default(f), meta["rule"], here, only,
                           meta.get("outcome", True))



def _declared_kinds(meta: Any, path: tuple[str, ...], caches: tuple[str, ...],
                    changed_only: tuple[str, ...]) -> Iterator[Declared]:
    """Each field of a kinds section once, with the kinds that have it and the default
    kind's default where it has the field (``name``: the default kind)."""
    registry, seen = meta["kinds"], set()
    for cls in kind_classes(meta):
        for d in declared(cls, path, caches, changed_only):
            if d.path in seen:
                continue
            seen.add(d.path)
            owners = tuple(n for n, c in registry.items()
                           if d.path[-1] in c.__dataclass_fields__)
            yield dataclasses.replace(d, kinds=owners)

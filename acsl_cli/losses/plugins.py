"""Losses from outside the package: a user's own loss without a fork.

Two ways in, both loaded once per process and only when needed (a built-in loss never
triggers them):

- an installed package declares the entry-point group ``acsl.losses``, each entry naming a
  module (importing it runs its ``@register_loss`` decorators) or a ``ClassificationLoss``
  subclass (registered under the entry's name unless it registered itself);
- ``plugins=[my_pkg.losses]`` in the config imports modules that are not installed (from
  ``sys.path`` or the current folder).

A plugin that fails to load is one ``ConfigError`` line naming it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import STAT_NAMES, ClassificationLoss
from acsl_cli.losses.registry import _LOSSES, ON_UNKNOWN, register_loss

GROUP = "acsl.losses"
_state = {"entry_points": False}
_imported: set[str] = set()
#: loss name -> where it came from ("entry point NAME = VALUE", "plugins=MODULE")
_ORIGIN: dict[str, str] = {}


def load_entry_points() -> None:
    """Load every ``acsl.losses`` entry point (once)."""
    if _state["entry_points"]:
        return
    _state["entry_points"] = True
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        _load(f"plugin '{ep.name}' ({GROUP} entry point {ep.value})",
              f"entry point {ep.name} = {ep.value}", ep.load, ep.name)


ON_UNKNOWN.append(load_entry_points)


def import_plugins(modules: Iterable[str]) -> None:
    """Import the ``plugins=`` modules not imported yet; the current folder is searched
    after ``sys.path``."""
    for module in modules:
        if module in _imported:
            continue
        _imported.add(module)
        _load(f"plugin '{module}' (plugins=)", f"plugins={module}",
              lambda m=module: _import(m), module)


def origin(name: str) -> str | None:
    """Where a plugin loss came from, or None for a built-in one."""
    return _ORIGIN.get(name)


def _import(module: str) -> Any:
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _load(what: str, where: str, load: Callable[[], Any], entry_name: str) -> None:
    before = set(_LOSSES)
    try:
        obj = load()
        if inspect.isclass(obj) and issubclass(obj, ClassificationLoss):
            if _LOSSES.get(obj.name) is not obj:
                register_loss(entry_name)(obj)
        elif not inspect.ismodule(obj):
            raise TypeError(f"names a {type(obj).__name__}, not a module or a "
                            "ClassificationLoss subclass")
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a broken plugin is the user's code: one line
        msg = " ".join(str(e).split())[:200]
        raise ConfigError(f"{what} cannot be loaded: {e.__class__.__name__}: {msg}") from None
    for name in set(_LOSSES) - before:
        _ORIGIN[name] = where


def config_node(name: str) -> dict[str, Any]:
    """The config a plugin loss gets as ``loss=NAME``: its constructor's keyword defaults
    that a YAML file can hold; a parameter without a default is ``???`` (must be given)."""
    cls = _LOSSES[name]
    given = {"self", "num_classes", "seed", *STAT_NAMES}
    node: dict[str, Any] = {"name": name}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in given or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            node[p.name] = "???"
        elif p.default is None or isinstance(p.default, (bool, int, float, str)):
            node[p.name] = p.default
        elif isinstance(p.default, tuple) and all(
                isinstance(v, (bool, int, float, str)) for v in p.default):
            node[p.name] = list(p.default)
    return node

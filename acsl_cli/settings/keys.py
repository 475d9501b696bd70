"""Cache keys computed from the declarations: a field enters a key by being tagged for it.

A key's node holds, at each tagged field's path, the value the config gave (so existing
entries keep their keys); a field the config did not give enters only when it differs
from its default, and ``changed_only`` fields only when they differ from their default.
In a kinds section (``detector``, ``backbone``) only the chosen kind's fields exist: another
kind's never enters, and a field's default is the chosen kind's own (its ``name``
compares with the section's default kind).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from acsl_cli.files import file_sha256
from acsl_cli.settings.declare import (
    SELECTOR,
    STAGE1,
    STAGE2,
    Declared,
    declared,
    leaf_default,
)
from acsl_cli.settings.sections import LossSettings, SamplerSettings, Settings

STAGE1_VERSION = 1  # bump when stage-1 training changes, so stale caches are not reused

#: Sections whose ``changed_only`` applies to the section as a whole.
_WHOLE = {"sampler": SamplerSettings}
#: Fields taken out of a key whose format held them (they cannot change a result): where
#: the config holds one it enters at this fixed value, whatever its value, so existing
#: entries of the default keep their keys.
FIXED = {STAGE2: {("schedule", "workers"): 0}}


def config_hash(node: Any) -> str:
    """Stable short hash of a JSON-able config subtree."""
    blob = json.dumps(node, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _get(tree: Any, path: Sequence[str]) -> tuple[bool, Any]:
    for p in path:
        if not isinstance(tree, Mapping) or p not in tree:
            return False, None
        tree = tree[p]
    return True, tree


def _put(tree: dict, path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _typed(settings: Settings, d: Declared) -> tuple[bool, Any, Any]:
    """Whether the settings hold ``d`` (a kinds section holds its chosen kind's fields),
    its value, and its default: in a kinds section, the chosen kind's own."""
    parent: Any = settings
    for p in d.path[:-1]:
        parent = getattr(parent, p)
    own = type(parent).__dataclass_fields__.get(d.path[-1])
    if own is None:
        return False, None, None
    default = d.default if d.kinds is None or d.path[-1] == SELECTOR else leaf_default(own)
    return True, getattr(parent, d.path[-1]), default


def not_outcome_keys() -> set[str]:
    """Dotted paths of the settings that cannot change a result (``outcome=False``): runs
    that differ only in them are the same experiment."""
    return {".".join(d.path) for d in declared(Settings) if not d.outcome}


def leaves(settings: Settings) -> Iterator[Declared]:
    """The declared leaves of ``settings``: the dataset's are those of its kind's class."""
    yield from (d for d in declared(Settings) if d.path[0] != "dataset")
    section = next(f for f in dataclasses.fields(Settings) if f.name == "dataset").metadata
    yield from declared(type(settings.dataset), ("dataset",), section["caches"] or ())


def key_node(settings: Settings, cache: str) -> dict[str, Any]:
    """The values of every field tagged for ``cache``, at their config paths."""
    node: dict[str, Any] = {}
    source = settings.source
    for d in leaves(settings):
        if cache not in d.caches:
            continue
        root = d.path[0]
        if root in _WHOLE and cache in d.changed_only:
            if getattr(settings, root) != _WHOLE[root]():
                present, value = _get(source, d.path)
                if present:
                    _put(node, d.path, value)
            continue
        held, value, default = _typed(settings, d)
        if not held:  # a field of another kind than the chosen one
            continue
        present, given = _get(source, d.path)
        changed = value != default
        if cache in d.changed_only:
            if changed:
                _put(node, d.path, _key_value(settings, d.path, given if present else value))
        elif present:
            _put(node, d.path, given)
        elif changed:
            _put(node, d.path, value)
    for path, value in FIXED.get(cache, {}).items():
        if _get(source, path)[0]:
            _put(node, path, value)
    return node


#: stage 1's loss: enters as its resolved settings, not its name alone
STAGE1_LOSS_PATH = ("schedule", "stage1", "loss")


def _key_value(settings: Settings, path: Sequence[str], value: Any) -> Any:
    """``init=PATH`` enters as the file's content digest, not its name; a stage-1 loss
    other than the default as its name and parameters (``Settings.stage1_loss``: its
    preset resolved against the config, ``xi`` and a dataset's ``loss_defaults`` included)."""
    if tuple(path) == ("init",) and value and Path(str(value)).is_file():
        return file_sha256(Path(str(value)))
    if tuple(path) == STAGE1_LOSS_PATH:
        return settings.stage1_loss.as_dict()
    return value


def stage1_key(settings: Settings, world_size: int) -> str:
    """Everything that shapes the stage-1 detector."""
    node = key_node(settings, STAGE1)
    node.update(version=STAGE1_VERSION, world_size=world_size)
    return config_hash(node)


def stage2_key(settings: Settings, heads: Sequence[LossSettings], stage1: str,
               world_size: int) -> str:
    """Everything that shapes a stage-2 pass of exactly these heads on this stage 1."""
    node = key_node(settings, STAGE2)
    node.update(stage1=stage1, heads=[h.as_dict() for h in heads], world_size=world_size)
    node.setdefault("sampler", None)
    return config_hash(node)

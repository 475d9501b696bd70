"""Files that travel with a checkpoint or a run (config.yaml, stage-1 pointers, runs.txt,
events.jsonl) are untrusted data: parsed as plain data, never evaluated.

- YAML is read with the safe loader; nothing in it is an OmegaConf interpolation or a
  resolver call: a value that would be one (``${...}``) is refused before any of it reaches
  OmegaConf, because OmegaConf resolves ``${oc.env:...}`` (an environment variable, e.g. a
  secret) wherever the value is read, and its escapes do not survive a merge.
- Settings that say where and how a command writes (``output_root``, ``run_name``,
  ``tracker``, ... every ``outcome=False`` setting) are dropped from a saved config: the
  command's own (or their defaults) apply, never the stored ones.
- A path in such a file names something inside the folder tree the file came with (its
  output root); anything else, absolute or relative, is refused with one message that does
  not say whether it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from acsl_cli.errors import DataError

INTERPOLATION = "${"


def read_text(path: Path) -> str:
    """A file's UTF-8 text; unreadable or not UTF-8 is a one-line DataError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__})") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's mapping as plain Python data (safe loader: no tags, no interpolation)."""
    return yaml_mapping(read_text(path), str(path))


def yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """YAML text (a file's, or the config a checkpoint holds) as a plain mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{source}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a mapping of config keys")
    return data


def interpolation_free(data: Any, source: str, where: str = "") -> Any:
    """``data`` itself, after checking that no key or string in it is an OmegaConf
    interpolation (what OmegaConf would resolve once the data is a config)."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = f"{where}.{k}" if where else str(k)
            if not isinstance(k, str) or INTERPOLATION in k:
                raise DataError(f"{source}: key {here!r} is not a plain config key")
            interpolation_free(v, source, here)
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            interpolation_free(v, source, f"{where}[{i}]")
    elif isinstance(data, str) and INTERPOLATION in data:
        raise DataError(f"{source}: {where or 'a value'} holds an OmegaConf interpolation "
                        "('${...}'); a file that comes with a checkpoint is plain data and "
                        "is never resolved")
    return data


def without_where_to_write(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config without the settings that cannot change a result (where and how a
    run was written): the command that reads it brings its own."""
    from acsl_cli.settings import not_outcome_keys

    drop = sorted(not_outcome_keys() | {"provenance", "heads"})
    out = _copy(config)
    for key in drop:
        *parents, leaf = key.split(".")
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _copy(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def confined(ptr: str, origin: Path, tree: Path, what: str, source: Path) -> Path:
    """The file a relative pointer written in ``origin`` names, if it lies inside ``tree``
    (symlinks resolved). An absolute pointer (older runs wrote them) is taken only when it
    lies inside the tree too. One message for every refusal: whether a path outside the
    tree exists is not told."""
    text = str(ptr).strip()
    refused = DataError(f"{source}: its {what} '{text[:200]}' does not name a file inside "
                        f"{tree} (the folder it came with); refused")
    if not text or "\0" in text:
        raise refused
    path = Path(text)
    target = path if path.is_absolute() else Path(origin) / path
    try:
        real, root = target.resolve(), Path(tree).resolve()
    except (OSError, RuntimeError):
        raise refused from None
    if real != root and root not in real.parents:
        raise refused
    return real

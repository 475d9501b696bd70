"""The Open Images class hierarchy: which classes are parents of which.

Ground truth is expanded over it before evaluation (boxes and positive labels to every
ancestor, negative labels to every descendant) and multi-label training uses the same
expansion. A class may have several parents (one label can sit under several nodes), so the
relation is a DAG; a cycle would make expansion meaningless and is rejected.

Ancestors follow the JSON as the official expansion tool (``oid_hierarchical_labels_
expansion.py``) reads it: a class's ancestors are the labels on the paths from the top to
each place it is written. A subtree written under only one of a class's parents is below
that parent only: if Duck sits under Bird (with Mallard below it) and again, alone, under
Toy, then Duck's ancestors are Bird and Toy but Mallard's are Duck and Bird, not Toy.
Descendants are the inverse relation. The top node is skipped, even when its label is a class.

File format (``bbox_labels_600_hierarchy.json``): nested ``{"LabelName": ..., "Subcategory":
[...]}``; the top node is the root (``/m/0bl9f`` "Entity"); ``Part`` lists (part-of
relations) are not class inheritance and are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from acsl_cli.errors import DataError


@dataclass(frozen=True)
class Hierarchy:
    """Direct parents per label (labels 1..C), and the ancestors expansion uses.

    ``parents`` holds only labels that have a parent, each with a sorted tuple;
    ``lineage`` maps a label to its ancestors (sorted, only labels that have some): from
    the JSON paths when read from a file, else the transitive closure of ``parents``. Two
    hierarchies with the same relations compare equal however they were built.
    """

    parents: dict[int, tuple[int, ...]]
    lineage: dict[int, tuple[int, ...]] = field(default=None)  # type: ignore[assignment]
    _children: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lineage is None:
            object.__setattr__(self, "lineage", {
                label: up for label in sorted(self.parents)
                if (up := self._closure(label, self.parents))})
        below: dict[int, list[int]] = {}
        for label, ups in self.lineage.items():
            for up in ups:
                below.setdefault(up, []).append(label)
        object.__setattr__(self, "_children",
                           {p: tuple(sorted(cs)) for p, cs in below.items()})

    @staticmethod
    def _closure(start: int, edges: Mapping[int, tuple[int, ...]]) -> tuple[int, ...]:
        seen: set[int] = set()
        stack = list(edges.get(start, ()))
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
        seen.discard(start)
        return tuple(sorted(seen))

    def ancestors(self, label: int) -> tuple[int, ...]:
        """All labels above ``label`` (sorted, without ``label`` itself)."""
        return self.lineage.get(label, ())

    def descendants(self, label: int) -> tuple[int, ...]:
        """All labels below ``label`` (sorted, without ``label`` itself)."""
        return self._children.get(label, ())

    def ancestor_table(self, num_classes: int) -> list[tuple[int, ...]]:
        """``table[label - 1]`` = ancestors of ``label``: the form the metric expects."""
        return [self.ancestors(label) for label in range(1, num_classes + 1)]


def _find_cycle(parents: Mapping[int, Iterable[int]]) -> list[int] | None:
    """One cycle of the parent relation as [a, b, ..., a], or None (iterative DFS)."""
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done
    for start in parents:
        if state.get(start):
            continue
        path: list[int] = [start]
        iters = [iter(parents.get(start, ()))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(parents.get(nxt, ())))
    return None


def _build(parents: Mapping[int, Iterable[int]], where: str,
           name: Callable[[int], str] = str,
           lineage: Mapping[int, Iterable[int]] | None = None) -> Hierarchy:
    clean = {child: tuple(sorted(set(ps))) for child, ps in parents.items()}
    clean = {child: ps for child, ps in sorted(clean.items()) if ps}
    cycle = _find_cycle(clean)
    if cycle is not None:
        raise DataError(f"{where}: hierarchy cycle: {' -> '.join(name(x) for x in cycle)}")
    if lineage is not None:
        lineage = {k: tuple(sorted(set(v))) for k, v in sorted(lineage.items()) if v}
    return Hierarchy(clean, lineage)  # type: ignore[arg-type]


def hierarchy_from_parents(parents: Mapping[int, Iterable[int]]) -> Hierarchy:
    """A hierarchy from ``label -> parent labels`` (tests, generated sets); rejects cycles.
    Ancestors are the transitive closure (no JSON layout to follow)."""
    return _build(parents, "hierarchy")


def read_hierarchy(path: str | Path, class_index: Mapping[str, int]) -> Hierarchy:
    """Read the hierarchy JSON; every label in it except the top node must be a known class.

    Errors are one line naming the file: bad JSON or structure (nesting too deep for the
    JSON reader included), a label outside the class list, a cycle (its labels by name).
    """
    path = Path(path)
    try:
        root = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: hierarchy file not found") from None
    except RecursionError:
        raise DataError(f"{path}: cannot read the hierarchy JSON (nested too deeply for "
                        f"the JSON reader)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the hierarchy JSON ({e})") from None
    parents: dict[int, set[int]] = {}
    lineage: dict[int, set[int]] = {}
    names = {label: name for name, label in class_index.items()}
    # (node, labels on the path above it, where); the top node adds no label to the path
    stack: list[tuple[object, tuple[int, ...], str]] = [(root, (), "root")]
    while stack:
        node, above, where = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
            raise DataError(f"{path}: {where} is not a node with a LabelName string")
        name = node["LabelName"]
        label = class_index.get(name)
        if label is None and where != "root":
            raise DataError(f"{path}: label {name} is not in the class list")
        below = above
        if label is not None and where != "root":
            parents.setdefault(label, set()).update(above[-1:])
            lineage.setdefault(label, set()).update(above)
            if label in above:  # stop here: _build names the cycle
                continue
            below = (*above, label)
        subs = node.get("Subcategory", [])
        if not isinstance(subs, list):
            raise DataError(f"{path}: Subcategory of {name} is not a list")
        for i, sub in enumerate(subs):
            stack.append((sub, below, f"Subcategory {i} of {name}"))
    return _build(parents, str(path), lambda label: names.get(label, str(label)), lineage)

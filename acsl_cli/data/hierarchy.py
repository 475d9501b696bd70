"""The Open Images class hierarchy: which classes are parents of which.

Ground truth is expanded over it before evaluation (boxes and positive labels to every
ancestor, negative labels to every descendant) and multi-label training uses the same
expansion, so ancestors and descendants are transitive. A class may have several parents
(the file is a tree of *nodes*, but one label can sit under several nodes), so the relation
is a DAG; a cycle would make expansion meaningless and is rejected.

File format (``bbox_labels_600_hierarchy.json``): nested ``{"LabelName": ..., "Subcategory":
[...]}``; the top node is the root (``/m/0bl9f`` "Entity"), a class only when it is in the
class list; ``Part`` lists (part-of relations) are not class inheritance and are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from acsl_cli.errors import DataError


@dataclass(frozen=True)
class Hierarchy:
    """Direct parents per label (labels 1..C; the root excluded unless it is a class).

    ``parents`` holds only labels that have a parent, each with a sorted tuple, so two
    hierarchies with the same relation compare equal however they were built.
    """

    parents: dict[int, tuple[int, ...]]
    _children: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children: dict[int, list[int]] = {}
        for child, ps in self.parents.items():
            for p in ps:
                children.setdefault(p, []).append(child)
        object.__setattr__(self, "_children",
                           {p: tuple(sorted(cs)) for p, cs in children.items()})

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
        """All labels above ``label`` (transitive, sorted, without ``label`` itself)."""
        return self._closure(label, self.parents)

    def descendants(self, label: int) -> tuple[int, ...]:
        """All labels below ``label`` (transitive, sorted, without ``label`` itself)."""
        return self._closure(label, self._children)

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
           name: Callable[[int], str] = str) -> Hierarchy:
    clean = {child: tuple(sorted(set(ps))) for child, ps in parents.items()}
    clean = {child: ps for child, ps in sorted(clean.items()) if ps}
    cycle = _find_cycle(clean)
    if cycle is not None:
        raise DataError(f"{where}: hierarchy cycle: {' -> '.join(name(x) for x in cycle)}")
    return Hierarchy(clean)


def hierarchy_from_parents(parents: Mapping[int, Iterable[int]]) -> Hierarchy:
    """A hierarchy from ``label -> parent labels`` (tests, generated sets); rejects cycles."""
    return _build(parents, "hierarchy")


def read_hierarchy(path: str | Path, class_index: Mapping[str, int]) -> Hierarchy:
    """Read the hierarchy JSON; every label in it except the root must be a known class.

    Errors are one line naming the file: bad JSON or structure, a label outside the class
    list, a cycle (its labels by name).
    """
    path = Path(path)
    try:
        root = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: hierarchy file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the hierarchy JSON ({e})") from None
    parents: dict[int, set[int]] = {}
    names = {label: name for name, label in class_index.items()}
    stack: list[tuple[object, int | None, str]] = [(root, None, "root")]
    while stack:
        node, parent, where = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
            raise DataError(f"{path}: {where} is not a node with a LabelName string")
        name = node["LabelName"]
        label = class_index.get(name)
        if label is None and where != "root":
            raise DataError(f"{path}: label {name} is not in the class list")
        if label is not None:
            parents.setdefault(label, set())
            if parent is not None:
                parents[label].add(parent)
        subs = node.get("Subcategory", [])
        if not isinstance(subs, list):
            raise DataError(f"{path}: Subcategory of {name} is not a list")
        for i, sub in enumerate(subs):
            stack.append((sub, label, f"Subcategory {i} of {name}"))
    return _build(parents, str(path), lambda label: names.get(label, str(label)))

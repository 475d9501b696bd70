"""The house's import graph (docs/layout.md): no import circle, module-level or inside a
function, and no arrow back up the data flow config -> dataset -> model -> engine ->
evaluator -> report (the plan, the pipeline and the CLI wire them, above all of them).

The graph is read from the source (every ``import`` statement of every module, wherever
it stands), not from what one run happens to import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "acsl_cli"

#: Layers, lowest first: a module may import its own layer and those below it. Each entry
#: is a dotted prefix under ``acsl_cli`` (a module or a package).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("", "errors", "files", "locks", "layout", "tensor_file", "progress",
              "conf_groups")),
    # losses are pure tensor code on the base layer; the config consults their registry
    # (a plugin loss's config node is built from its class)
    ("loss", ("losses",)),
    ("config", ("config", "config_rules", "settings", "untrusted")),
    ("dataset", ("data",)),
    ("model", ("models",)),
    ("engine", ("engine",)),
    ("evaluator", ("evaluation",)),
    ("report", ("reporting",)),
    ("wiring", ("plan", "plan_show", "pipeline", "cli", "__main__")),
)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub, else a name of pkg
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import a.b.c`` of a name: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """The layer of ``acsl_cli.X...``: the one whose longest prefix names it."""
    rest = module.removeprefix("acsl_cli").removeprefix(".")
    named = [(len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
             if p == rest or p and rest.startswith(p + ".")]
    if not named:
        raise AssertionError(f"{module}: in no layer of tests/test_imports.py LAYERS "
                             "(add it where it belongs in the data flow)")
    return max(named)[1]


def test_the_circle_finder_finds_a_circle():
    """The check itself can fail: a -> b -> c -> a is one circle, d alone none."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_wherever_they_stand(tmp_path):
    """A function-level import counts as much as a module-level one."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from acsl_cli.pipeline import sweep\n    import acsl_cli.layout\n"
                 "from acsl_cli.settings.keys import stage1_key\n")
    known = {"acsl_cli.pipeline", "acsl_cli.pipeline.sweep", "acsl_cli.layout",
             "acsl_cli.settings", "acsl_cli.settings.keys"}
    assert imports("acsl_cli.x", f, known) == {"acsl_cli.pipeline.sweep", "acsl_cli.layout",
                                               "acsl_cli.settings.keys"}


def test_no_import_circle():
    assert circles(graph()) == []


def test_no_arrow_back_up_the_data_flow():
    up = sorted(f"{a} -> {b} ({LAYERS[layer(a)][0]} imports {LAYERS[layer(b)][0]})"
                for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert up == []


@pytest.mark.parametrize("module,expected", [("acsl_cli.data.bundle", "dataset"),
                                             ("acsl_cli.pipeline.reuse", "wiring"),
                                             ("acsl_cli", "base"),
                                             ("acsl_cli.config_rules", "config"),
                                             ("acsl_cli.settings.keys", "config")])
def test_layers_are_read_by_the_longest_prefix(module, expected):
    assert LAYERS[layer(module)][0] == expected

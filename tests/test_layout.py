"""The package's shape, read from its source: no import circle (function-local imports
included: they hide a circle, they do not remove it), and small modules.

A circle closed by an import inside a function works until someone moves that import; the
rule is to move the shared piece below both modules instead. Imports under ``if
TYPE_CHECKING:`` are annotations only (never run), so they are not edges."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distopt"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the distopt modules it imports, anywhere in its body."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
                       ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the module pkg.mod when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:  # ``import a.b.c`` of a package path
                    target = target.rpartition(".")[0]
                if target.startswith("distopt") and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle_closed_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back_in_a_circle():
    graph = import_graph()
    assert len(graph) > 30 and graph["distopt.training.fit"]  # the reader sees the package
    assert circles(graph) == []


def test_models_compression_and_training_import_nothing_above_them():
    """Arrows point down: the model knows nothing of training, training nothing of the search
    or its report, the results nothing of Ray."""
    graph = import_graph()
    below = {"distopt.models": ("distopt.training", "distopt.compress", "distopt.orchestration",
                                "distopt.export", "distopt.results"),
             "distopt.compress": ("distopt.training", "distopt.orchestration", "distopt.export",
                                  "distopt.results"),
             "distopt.runtime": ("distopt.training", "distopt.export", "distopt.orchestration"),
             "distopt.training": ("distopt.orchestration", "distopt.results", "distopt.cli"),
             "distopt.results": ("distopt.orchestration", "distopt.cli")}
    for low, above in below.items():
        for module, targets in graph.items():
            if module == low or module.startswith(low + "."):
                bad = sorted(t for t in targets if t.startswith(above))
                assert not bad, f"{module} imports {bad}"


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    too_long = {n: s for n, s in sizes.items() if s > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"

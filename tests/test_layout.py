"""The house's shape (issue 26): short modules, no import circles, no room reaching up into a higher one.

Every module under models/, variants/ and runner/ is parsed (nothing is imported), and every import it can
make is an edge: top-level ones, lazy ones inside functions, and the "package.module:function" strings the
CLI dispatches its verbs through. Importing a.b.c also runs a and a.b, so those are edges too.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "variants", "runner")
MAX_LINES = 300
DISPATCH = re.compile(r"^((?:models|variants|runner)(?:\.\w+)*):\w+$")  # runner/cli.py's verb targets


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _ours(name: str) -> str | None:
    """The module of ours that importing `name` loads (`runner.results.summarize` -> `runner.results`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _imported(module: str) -> set[str]:
    """Every module of ours that `module` can import, directly or by running a parent package."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names |= {f"{base}.{a.name}" for a in node.names} | {base}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DISPATCH.match(node.value):
            names.add(DISPATCH.match(node.value).group(1))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"):
            names.add(str(node.args[0].value))
    found = {m for n in names for m in _with_parents(_ours(n) or "") if m in MODULES}
    return found - _with_parents(module)  # its own package is already running


GRAPH = {m: _imported(m) for m in MODULES}


def _cycle() -> list[str] | None:
    """One import circle, as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_sees_lazy_and_dispatched_imports():
    """The parser finds what a grep would miss, so the checks below check something."""
    assert "runner.commands" in GRAPH["runner.cli"]       # "runner.commands:cmd_sweep", a verb's target
    assert "runner.timeline" in GRAPH["runner.report"]    # a top-level import
    assert "variants.loader" in GRAPH["variants"]         # a package's __init__
    assert "models" in GRAPH["variants.families"]         # importing models.registry runs models/__init__
    assert len(MODULES) > 50


def test_no_import_circles():
    cycle = _cycle()
    assert cycle is None, "import circle (lazy imports count): " + " -> ".join(cycle)


@pytest.mark.parametrize("lower, higher", [("models", "runner"), ("models", "variants"), ("variants", "runner")])
def test_lower_rooms_never_import_higher_ones(lower, higher):
    """models/ builds networks and knows nothing of sweeps or measurement; variants/ describes sweeps and
    knows nothing of how they run."""
    up = sorted(f"{m} -> {n}" for m, targets in GRAPH.items() if m.split(".")[0] == lower
                for n in targets if n.split(".")[0] == higher)
    assert not up, f"{lower}/ imports {higher}/: {up}"


def test_modules_are_short():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_every_package_says_what_it_is_for():
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and doc.strip(), f"{path.relative_to(ROOT)}: no docstring saying what {name}/ is for"

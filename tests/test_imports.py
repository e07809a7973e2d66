"""The package's import graph, read with stdlib ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` of every module under ``compdiff/`` counts, at module
level and inside functions alike: a function-level import that closes a cycle is still a
cycle, only deferred to run time. ``from compdiff import x`` imports ``compdiff.x`` when
``x`` is a module (else the name ``x`` of ``compdiff/__init__.py``), and importing
``compdiff.a.b`` imports the package ``compdiff.a`` first (its ``__init__`` runs), an edge
too. Edges to the importer's own enclosing packages are left out: those are initialized
before it whatever it imports, so they cannot close a cycle that Python would trip on.

Two rules:

- no cycles: the graph of compdiff modules is a DAG, so every module can be imported
  (and understood) after the modules below it;
- ``compdiff.experiments`` is the top layer: no module outside it imports it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "compdiff"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
TOP_LAYER = f"{PACKAGE}.experiments"


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module and package under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``: the packages whose ``__init__`` runs first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The compdiff modules that module ``name`` (file ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        for candidate in [*_parents(target), target]:
            if candidate in modules:
                found.add(candidate)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            add(source)
            for alias in node.names:  # from package import submodule
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
    return found - {name, *_parents(name)}


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """``{module: the compdiff modules it imports}``; a folder of modules without an
    ``__init__.py`` (a namespace package) is a module that imports nothing."""
    files = module_files(root)
    folders = {".".join(path.parent.relative_to(root.parent).parts) for path in files.values()}
    graph = {name: set() for name in folders - set(files)}
    names = set(files) | set(graph)
    graph.update({name: imports_of(name, path, names) for name, path in files.items()})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def top_layer_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a module outside the top layer imports it."""
    def inside(name: str) -> bool:
        return name == TOP_LAYER or name.startswith(TOP_LAYER + ".")

    return sorted((a, b) for a, targets in graph.items() if not inside(a)
                  for b in targets if inside(b))


# ---------------------------------------------------------------------------- the package
def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_below_the_experiments_imports_them():
    bad = top_layer_imports(import_graph())
    assert not bad, "library modules import compdiff.experiments: " + ", ".join(
        f"{a} -> {b}" for a, b in bad)


# ---------------------------------------------------------------------------- the checker
def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / PACKAGE
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_reads_every_import_form(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from compdiff import b\n",
        "b.py": "def f():\n    from compdiff.sub import c  # function level\n",
        "sub/__init__.py": "",
        "sub/c.py": "from . import d\nimport compdiff.e\n",
        "sub/d.py": "from ..a import thing\n",
        "e.py": "from compdiff import not_a_module\n",
    })
    graph = import_graph(root)
    assert graph["compdiff.a"] == {"compdiff.b"}
    assert graph["compdiff.b"] == {"compdiff.sub", "compdiff.sub.c"}
    assert graph["compdiff.sub.c"] == {"compdiff.sub.d", "compdiff.e"}
    assert graph["compdiff.sub.d"] == {"compdiff.a"}
    assert graph["compdiff.e"] == set()
    assert find_cycle(graph) == ["compdiff.a", "compdiff.b", "compdiff.sub.c",
                                 "compdiff.sub.d", "compdiff.a"]


@pytest.mark.parametrize("text", ["from compdiff import a\n", "import compdiff.a\n",
                                  "def late():\n    from compdiff.a import x\n"])
def test_checker_finds_a_two_module_cycle(tmp_path, text):
    root = _package(tmp_path, {"a.py": "from compdiff import b\n", "b.py": text})
    assert find_cycle(import_graph(root)) == ["compdiff.a", "compdiff.b", "compdiff.a"]


def test_checker_sees_a_namespace_package(tmp_path):
    root = _package(tmp_path, {"experiments/table.py": "",
                               "lib.py": "import compdiff.experiments\n"})
    assert top_layer_imports(import_graph(root)) == [("compdiff.lib", "compdiff.experiments")]


def test_checker_finds_imports_of_the_experiments(tmp_path):
    root = _package(tmp_path, {
        "experiments/__init__.py": "",
        "experiments/common.py": "from compdiff import lib\n",
        "experiments/table.py": "from compdiff.experiments import common\n",
        "lib.py": "",
        "bad.py": "def f():\n    from compdiff.experiments import table\n",
    })
    graph = import_graph(root)
    assert find_cycle(graph) is None
    assert top_layer_imports(graph) == [("compdiff.bad", "compdiff.experiments"),
                                        ("compdiff.bad", "compdiff.experiments.table")]

"""The import structure of ``companion``: no module imports itself back through others, and every
module imports on its own (python-zeroconf guards its imports the same way).

What counts as an arrow: every ``import`` and ``from ... import`` of a companion module anywhere in
a module's source, at module level, under ``if TYPE_CHECKING:`` and inside functions alike. A
type-only or deferred import is still a dependency a reader has to follow, and a circle hidden in a
function body (``doctor`` once reached into ``cli`` that way) is still a circle; breaking circles
with ``TYPE_CHECKING`` or a late import only hides them. ``from companion.x import y`` is an arrow
to the module ``companion.x.y`` when that is a module, else to ``companion.x``. The implicit
arrow from a module to its parent package (Python runs ``__init__`` first) is not drawn: a
package that re-exports one of its modules is not a circle, and the second test catches any
such import that fails at run time.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "companion"


@dataclass(frozen=True)
class Arrow:
    """One import of a companion module by another, with where it is written."""

    source: str
    target: str
    path: str
    line: int


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              modules: Mapping[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:  # import a.b.c names the module a.b.c (or its package)
                name = name.rpartition(".")[0]
            if name:
                yield name
        return
    if node.level:  # relative: from . import x / from ..y import z
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    if origin not in modules:
        return
    for alias in node.names:
        child = f"{origin}.{alias.name}"
        yield child if child in modules else origin


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, list[Arrow]]:
    """module -> its arrows to other modules of the package, from the sources (nothing is imported)."""
    modules = module_files(root, package)
    graph: dict[str, list[Arrow]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        arrows: dict[str, Arrow] = {}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, module, path.name == "__init__.py", modules):
                if target != module and target not in arrows:
                    arrows[target] = Arrow(module, target, str(path.relative_to(root)), node.lineno)
        graph[module] = sorted(arrows.values(), key=lambda a: a.target)
    return graph


def circles(graph: Mapping[str, list[Arrow]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a deep chain of imports cannot hit the recursion limit.
        work = [(start, iter(graph.get(start, [])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, arrows = work[-1]
            advanced = False
            for arrow in arrows:
                nxt = arrow.target
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def cycle_path(graph: Mapping[str, list[Arrow]], component: list[str]) -> list[Arrow]:
    """A shortest circle through the first module of a component, as the arrows that make it."""
    members = set(component)
    start = component[0]
    came: dict[str, Arrow] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for module in frontier:
            for arrow in graph.get(module, []):
                if arrow.target not in members or arrow.target in came:
                    continue
                came[arrow.target] = arrow
                if arrow.target == start:
                    path = [arrow]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                following.append(arrow.target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: Mapping[str, list[Arrow]], component: list[str]) -> str:
    """A circle for people: the modules in order, then where each arrow is written."""
    path = cycle_path(graph, component)
    ring = " -> ".join([path[0].source, *(a.target for a in path)])
    where = "".join(f"\n    {a.path}:{a.line} imports {a.target}" for a in path)
    return f"import circle among {len(component)} modules ({', '.join(component)}):\n  {ring}{where}"


# -- the package ----------------------------------------------------------------------------------


@cache
def package_graph() -> dict[str, list[Arrow]]:
    """The graph of companion itself (read once per test run)."""
    return import_graph(ROOT)


def test_no_module_of_companion_is_part_of_an_import_circle() -> None:
    graph = package_graph()
    found = circles(graph)
    assert not found, "\n".join(describe(graph, component) for component in found)


def test_the_graph_sees_the_imports_it_is_meant_to_see() -> None:
    graph = package_graph()
    targets = {m: {a.target for a in arrows} for m, arrows in graph.items()}
    assert len(graph) > 50
    assert "companion.commands.run" in targets["companion.cli"]  # from companion.commands.run import cmd_run
    assert "companion.bridge" in targets["companion.commands.run"]  # inside a function, and under TYPE_CHECKING
    assert "companion.admin.api" in targets["companion.admin.app"]  # from companion.admin import api (a module)
    assert "companion" in targets["companion.admin.api"]  # from companion import __version__ (a name)
    assert "companion.admin.app" in targets["companion.admin"]  # a package's __init__


def test_a_circle_is_named_with_each_arrow_and_where_it_is_written(tmp_path: Path) -> None:
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "leaf.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("from demo import leaf\nfrom demo.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("def late():\n    from ..a import leaf\n    return leaf\n")
    graph = import_graph(tmp_path, "demo")
    assert circles(graph) == [["demo.a", "demo.sub.b", "demo.sub.c"]]
    text = describe(graph, ["demo.a", "demo.sub.b", "demo.sub.c"])
    assert "demo.a -> demo.sub.b -> demo.sub.c -> demo.a" in text
    assert f"{Path('demo/sub/b.py')}:4 imports demo.sub.c" in text
    assert f"{Path('demo/sub/c.py')}:2 imports demo.a" in text
    (pkg / "sub" / "c.py").write_text("from demo import leaf\n")
    assert circles(import_graph(tmp_path, "demo")) == []


# -- every module on its own ----------------------------------------------------------------------

# One fresh interpreter imports every module in turn, each time after dropping every companion
# module from sys.modules: each import starts from no companion state, as in a process of its own,
# while the third-party libraries (which never import ours) stay loaded, so the run takes seconds
# rather than a minute of interpreter start-ups.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "companion" or m.startswith("companion.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-4)
print(json.dumps(failures))
"""

# Running it is what it does: importing it runs the command line (``python -m companion``, which
# the functional tests start).
NOT_IMPORTED = {"companion.__main__"}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    names = sorted(set(module_files(ROOT, PACKAGE)) - NOT_IMPORTED)
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=90, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    failures: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"`import {name}` fails on its own:\n{tb}" for name, tb in failures.items())


# -- what the daemon does not load until a path needs it -----------------------------------------

# Each is resident memory for the daemon's lifetime once imported (bench/memory.py): mDNS, Cast
# and the DNS check load their libraries when configured or used; the push client its HTTP
# parsers with the first plain-http subscriber; the "did you mean" helper only for a wrong name;
# the command line the one command it runs.
LOADED_ON_DEMAND = ("zeroconf", "pychromecast", "dns", "h11", "httptools", "difflib",
                    *(f"companion.commands.{tool}" for tool in
                      ("capture", "doctor", "explain", "flings", "link", "profiles", "scan")))


def test_the_daemons_imports_leave_out_what_only_some_paths_use() -> None:
    code = ("import json, sys, companion.cli, companion.bridge; "
            f"print(json.dumps([m for m in {LOADED_ON_DEMAND!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []

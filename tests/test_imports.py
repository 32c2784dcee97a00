"""The package's import graph: no cycle, imports inside functions included, and every module imports on
its own.

Why: a module-level import cycle works or fails depending on which module is imported first (the
second one finds the first half-initialised), so it passes in one test order and breaks a user's
``import``. An import inside a function runs later and so does not fail that way, but a cycle through one
is still two modules that each need the other: neither can be read, tested or moved alone, and the lazy
import usually hides code that lives in the wrong module. So function-level imports are edges too, and a
cycle is fixed by moving the shared code down a layer, not by hiding the import; only imports under
``if TYPE_CHECKING:`` (they never run) are not edges. Reaching up a layer from a function (a CLI command
importing a trainer) is fine as long as nothing below imports back.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import immiscible_policy

PACKAGE_DIR = Path(immiscible_policy.__file__).parent


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file for every module under ``package_dir`` (packages: __init__)."""
    root = package_dir.parent
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    nodes: Iterable[ast.AST], lazy: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """``(import statement, lazy)`` for every import that can run: at module level (class bodies, ``try``,
    ``if`` and ``with`` blocks included; ``lazy`` False) or inside a function or lambda (``lazy`` True);
    not under ``if TYPE_CHECKING:`` (its ``else`` does run)."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse, lazy)
        else:
            inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(ast.iter_child_nodes(node), inner)


@dataclass(frozen=True)
class Import:
    """One import statement that makes one module depend on another: where it is, for the failure text."""

    path: str
    line: int
    statement: str
    lazy: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.statement}" + ("  (in a function)" if self.lazy else "")


def import_edges(package_dir: Path) -> dict[str, dict[str, list[Import]]]:
    """Module -> {package module it imports: the statements that import it}.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (an
    attribute of its ``__init__``). Importing ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__`` first,
    so it is an edge to ``a.b`` too; from inside ``a.b`` it is not (``a.b`` is already being imported: a
    package whose ``__init__`` imports its own submodules is the normal layout, not a cycle).
    """
    modules = package_modules(package_dir)
    edges: dict[str, dict[str, list[Import]]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: dict[str, list[Import]] = {}
        tree = ast.parse(path.read_text(), str(path))
        for node, lazy in _imports(tree.body):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name in modules]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        targets.append(f"{base}.{alias.name}")
                    elif base in modules:
                        targets.append(base)
            where = Import(
                path.relative_to(package_dir.parent).as_posix(), node.lineno, ast.unparse(node), lazy
            )
            for target in targets:
                parts = target.split(".")
                parents = [".".join(parts[:k]) for k in range(1, len(parts))]
                outside = [p for p in parents if p in modules and not (name == p or name.startswith(p + "."))]
                for dep in {target, *outside} - {name}:
                    if where not in deps.setdefault(dep, []):
                        deps[dep].append(where)
        edges[name] = deps
    return edges


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level or inside a function; see :func:`import_edges`)."""
    return {name: set(deps) for name, deps in import_edges(package_dir).items()}


def _tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out)


def _shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, breadth first within the component."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for dep in sorted(graph[node] & members):
            if dep == start:
                return [*paths[node], start]
            if dep not in paths:
                paths[dep] = [*paths[node], dep]
                queue.append(dep)
    raise AssertionError(f"{component} is strongly connected, so it has a cycle")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` (each imports the next) per tangle of mutually dependent
    modules; empty when the graph is acyclic. A tangle can hold more cycles than the one named:
    :func:`cycle_report` lists all of its imports."""
    return [_shortest_cycle(graph, component) for component in _tangles(graph)]


def cycle_report(edges: dict[str, dict[str, list[Import]]]) -> str:
    """Each cycle, named, then every import statement among its tangle's modules (the lines to change)."""
    graph = {name: set(deps) for name, deps in edges.items()}
    lines = []
    for cycle, component in zip(find_cycles(graph), _tangles(graph), strict=True):
        lines.append(" -> ".join(cycle))
        for name in component:
            for dep in sorted(set(edges[name]) & set(component)):
                lines.extend(f"    {name} -> {dep}: {where}" for where in edges[name][dep])
    return "\n".join(lines)


def test_no_import_cycle():
    edges = import_edges(PACKAGE_DIR)
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 50 and "immiscible_policy.policy.train" in graph
    assert "immiscible_policy.policy.build" in graph["immiscible_policy.policy.train"]
    # an import inside a function counts too
    assert "immiscible_policy.metrics.pusht_modes" in graph["immiscible_policy.policy.rollout"]
    cycles = find_cycles(graph)
    assert not cycles, (
        f"{len(cycles)} import cycle(s), imports inside functions included (move the code both sides "
        "need down a layer rather than hiding the import):\n" + cycle_report(edges)
    )


def test_the_cycle_check_finds_and_names_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import a\n"  # never runs: no edge
        "try:\n    from .c import C\nexcept ImportError:\n    C = None\n"  # runs: an edge
    )
    (pkg / "sub" / "c.py").write_text("C = 2\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}  # pkg/sub/__init__.py runs first
    assert find_cycles(graph) == []

    (pkg / "sub" / "c.py").write_text("def f():\n    import pkg.a\nC = 2\n")  # inside a function: an edge
    edges = import_edges(pkg)
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]
    assert str(edges["pkg.sub.c"]["pkg.a"][0]) == "pkg/sub/c.py:2: import pkg.a  (in a function)"
    report = cycle_report(edges)
    assert report.splitlines()[0] == "pkg.a -> pkg.sub.b -> pkg.sub.c -> pkg.a"
    assert "    pkg.sub.c -> pkg.a: pkg/sub/c.py:2: import pkg.a  (in a function)" in report

    # importing pkg.sub.b from outside pkg.sub runs pkg/sub/__init__.py first: a cycle through it counts
    (pkg / "sub" / "c.py").write_text("C = 2\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg import d\n")
    (pkg / "d.py").write_text("def f():\n    from pkg.sub.c import C\n")
    (pkg / "e.py").write_text("from pkg import f\n")  # a second, separate cycle: both are named
    (pkg / "f.py").write_text("def g():\n    from pkg.e import g\n")
    assert find_cycles(import_graph(pkg)) == [["pkg.d", "pkg.sub", "pkg.d"], ["pkg.e", "pkg.f", "pkg.e"]]


# Runs in a fresh interpreter: imports each module with every module of the package (argv[2])
# forgotten first, so a module that works only because another one was imported before it fails here.
ISOLATED_IMPORTS = r"""
import importlib, json, sys, traceback
failures, package = {}, sys.argv[2]
for name in json.loads(sys.argv[1]):
    for cached in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[cached]
    try:
        importlib.import_module(name)
    except BaseException as err:  # noqa: BLE001 - report every module, SystemExit included
        failures[name] = "".join(traceback.format_exception_only(type(err), err)).strip()
print(json.dumps(failures))
"""


def import_each(package_dir: Path, cwd: Path | None = None) -> dict[str, str]:
    """Module -> its one-line import error, each module imported in isolation in one fresh interpreter."""
    names = sorted(package_modules(package_dir))
    proc = subprocess.run(
        [sys.executable, "-c", ISOLATED_IMPORTS, json.dumps(names), package_dir.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own():
    failures = import_each(PACKAGE_DIR)
    assert not failures, "\n".join(f"{name}: {err}" for name, err in failures.items())


def test_isolated_imports_catch_a_cycle(tmp_path):
    pkg = tmp_path / "pkgx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkgx.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from pkgx.a import A\nB = 2\n")
    (pkg / "c.py").write_text("C = 3\n")
    failures = import_each(pkg, cwd=tmp_path)
    assert sorted(failures) == ["pkgx.a", "pkgx.b"] and "partially initialized" in failures["pkgx.a"]


@pytest.mark.parametrize(
    "statement",
    [
        "from immiscible_policy.policy import DiffusionPolicy, Policy",
        "from immiscible_policy.policy.model import Policy",
        "from immiscible_policy.policy.train import build_model, load_policy, policy_sampler, rollout",
        "from immiscible_policy.policy.rollout import ActionChunkWrapper, evaluate, make_pusht_env",
        "from immiscible_policy.collect import EXPERTS, WaypointExpert, make_expert",
        "from immiscible_policy.collect.base import EXPERTS, make_expert",
    ],
)
def test_former_import_paths_still_work(statement):
    exec(statement, {})


def test_every_cli_module_is_a_console_script():
    """Each ``immiscible_policy/cli/<name>.py`` with a ``main`` is installed as ``immiscible-<name>`` (the
    docs call the commands by that name; ``immiscible-convert`` was once left out)."""
    import tomllib

    root = PACKAGE_DIR.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    for module in sorted((PACKAGE_DIR / "cli").glob("[!_]*.py")):
        if "\ndef main(" in module.read_text():
            name = f"immiscible-{module.stem}"
            assert scripts.get(name) == f"immiscible_policy.cli.{module.stem}:main", (
                f"{name} not in pyproject"
            )

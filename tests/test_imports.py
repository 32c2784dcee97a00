"""The package's import graph: no cycle at module level, and every module imports on its own.

Why: a module-level import cycle works or fails depending on which module is imported first (the
second one finds the first half-initialised), so it passes in one test order and breaks a user's
``import``. Imports inside functions are the accepted way to reach up a layer (a CLI command importing
a trainer, ``Policy`` helpers importing the loader) and are not edges here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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


def _module_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported: not inside a function (nor lambda), not
    under ``if TYPE_CHECKING:``; class bodies, ``try``, ``if`` and ``with`` blocks do run."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _module_level_imports(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_level_imports(getattr(node, field, None) or [])
        for handler in getattr(node, "handlers", None) or []:
            yield from _module_level_imports(handler.body)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (an
    attribute of its ``__init__``). The implicit import of a module's parent packages is not an edge:
    a package whose ``__init__`` imports its own submodules is the normal layout, not a cycle.
    """
    modules = package_modules(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    deps.add(f"{base}.{alias.name}")
                elif base in modules:
                    deps.add(base)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]`` (each imports the next), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the DFS path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_level_import_cycle():
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 50 and "immiscible_policy.policy.train" in graph
    assert "immiscible_policy.policy.build" in graph["immiscible_policy.policy.train"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle)


def test_the_cycle_check_finds_and_names_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import a\n"  # not run: no edge
        "def f():\n    from pkg import a\n"  # inside a function: no edge
        "try:\n    from .c import C\nexcept ImportError:\n    C = None\n"  # runs: an edge
    )
    (pkg / "sub" / "c.py").write_text("import pkg.a\nC = 2\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("C = 2\n")
    assert find_cycle(import_graph(pkg)) is None


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
        "from immiscible_policy.policy.train import build_model, build_policy, load_policy, policy_sampler, rollout",
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

"""The imports follow the data flow: read from the source (``ast``), imports inside functions
included, and checked against the rules below.

* No import circle anywhere in ``ntk_core``, ``app`` or ``benchmarks``.
* The engine never imports the app or a browser library (``app``, ``panel``, ``bokeh``,
  ``holoviews``).
* The engine's layers, lowest first (``ENGINE_LAYERS``): a module imports from its own layer or
  lower ones, never from a higher one. Every engine module belongs to a layer.
* The dashboard's session and file modules, and the data its plots draw, are computed without a
  browser library: no ``panel``, ``bokeh`` or ``holoviews``.
* The isolated reader of run files from outside (``app.files.runfile``) runs as a process of its
  own that imports only the standard library, numpy and h5py.

An import is an edge to the module it names: ``from a.b import c`` points at ``a.b.c`` when that
is a module, else at ``a.b``. Python also runs a package's ``__init__`` before its modules; those
implicit imports are not edges, since every module would otherwise import its package.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ntk_core", "app", "benchmarks")
BROWSER = ("panel", "bokeh", "holoviews")
# The engine, lowest layer first. A prefix names a module and everything below it; the last
# layer, the public surface (``ntk_core/__init__``), is the root module alone.
ENGINE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("ntk_core.version", "ntk_core.vocabulary"),  # the words the rest shares
    ("ntk_core.numerics",),  # tensors in, numbers out: no configuration, no runs
    ("ntk_core.config",),
    ("ntk_core.grid", "ntk_core.presets", "ntk_core.data", "ntk_core.models"),  # a run's inputs
    ("ntk_core.training",),  # one run: trainer, measurer, log and its file
    ("ntk_core.experiments",),  # many runs: sweeps, theory, benchmark, reproduction
    ("ntk_core.cli",),  # argparse and printing
    ("ntk_core",),
)
NO_BROWSER = ("app.session", "app.files", "app.views.plot_data")
READER = "app.files.runfile"
READER_MAY_IMPORT = {"numpy", "h5py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {_module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py")) if ".peers" not in path.parts}


def imports_of(name: str) -> set[str]:
    """The dotted names ``name`` imports, anywhere in its source (functions included)."""
    path = project_modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # a name that is a module of the package is an edge to it
                child = f"{source}.{alias.name}"
                found.add(child if child in project_modules() else source)
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    return {name: {target for target in imports_of(name) if target in project_modules()}
            for name in project_modules()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing
    itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def layer_of(name: str) -> int | None:
    """The engine layer of module ``name`` (by its longest prefix), None outside the engine."""
    best, depth = None, -1
    for i, prefixes in enumerate(ENGINE_LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "ntk_core"
            matches = name == prefix or (not exact_only and name.startswith(prefix + "."))
            if matches and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def _top(name: str) -> str:
    return name.partition(".")[0]


# ---- the reader of the source works ------------------------------------------------------------
def test_the_graph_holds_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    assert "ntk_core.training.trainer" in graph["ntk_core.experiments.theory"]  # in a function
    assert "ntk_core.numerics.eigensolver" in graph["ntk_core.numerics.hessian"]  # relative
    assert "ntk_core.cli.run" in graph["ntk_core.cli.main"]  # `from . import run`: a module
    assert "ntk_core.config" in graph["app.session.settings"]  # absolute, across packages


def test_the_circle_finder_finds_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"a"}}) == [["a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_layers_are_by_longest_prefix() -> None:
    assert layer_of("ntk_core.numerics.ntk.exact") == 1
    assert layer_of("ntk_core.training.schema") == 4
    assert layer_of("ntk_core") == len(ENGINE_LAYERS) - 1
    assert layer_of("ntk_core.unplaced") is None and layer_of("app.cli") is None


# ---- the rules ---------------------------------------------------------------------------------
def test_there_is_no_import_circle() -> None:
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_engine_never_imports_the_app_or_a_browser_library() -> None:
    bad = sorted(f"{name} imports {target}" for name in project_modules()
                 if _top(name) == "ntk_core"
                 for target in imports_of(name) if _top(target) in ("app", *BROWSER))
    assert not bad, bad


def test_every_engine_module_has_a_layer() -> None:
    unplaced = [name for name in project_modules()
                if _top(name) == "ntk_core" and layer_of(name) is None]
    assert not unplaced, f"add these to ENGINE_LAYERS: {unplaced}"


def test_the_engine_imports_only_from_its_own_layer_or_below() -> None:
    upward = []
    for name, targets in import_graph().items():
        here = layer_of(name)
        if here is None:
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if there is not None and there > here:
                upward.append(f"{name} (layer {here}) imports {target} (layer {there})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("package", NO_BROWSER)
def test_sessions_files_and_plot_data_need_no_browser_library(package) -> None:
    modules = [name for name in project_modules() if name.startswith(package)]
    assert modules
    bad = sorted(f"{name} imports {target}" for name in modules for target in imports_of(name)
                 if _top(target) in BROWSER)
    assert not bad, bad


def test_the_run_file_reader_imports_only_numpy_and_h5py() -> None:
    allowed = READER_MAY_IMPORT | set(sys.stdlib_module_names) | {"__future__"}
    bad = sorted(target for target in imports_of(READER) if _top(target) not in allowed)
    assert not bad, f"{READER} runs in a process of its own; it imports {bad}"
    for package in ("app", "app.files"):  # run first by `python -m app.files.runfile`
        assert not imports_of(package), f"{package}/__init__.py must import nothing"

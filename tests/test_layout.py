"""The import arrows of design.md (Layout), pinned by reading the source, not by importing it.

``common`` (the ``retia`` package, ``retia.nn`` and ``retia.strategy`` included) imports none of
the service (``retia.dispatcher``), the client side (``retia.client``) or the worker
(``retia.worker``); those three import ``common`` and never each other. ``retia.nni`` (NNI's module
paths) re-exports ``common`` and the client side, and nothing imports it. Every import counts:
module level, inside functions, under ``TYPE_CHECKING``, and ``importlib.import_module`` /
``__import__`` with a literal name. Two places in ``common`` name other sides on purpose, and
only by module path strings: the PEP 562 ``_LAZY`` table of ``common/__init__.py`` (with its
``TYPE_CHECKING`` imports for type checkers) and the ``_COMMANDS`` table of ``common/cli.py``;
the tests below pin that those tables name real modules and real functions.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> package, as [tool.setuptools] package-dir maps them (checked against pyproject below)
FOLDERS = {
    "common": "retia",
    "client": "retia.client",
    "dispatcher": "retia.dispatcher",
    "worker": "retia.worker",
}

# package prefix -> side; the longest matching prefix wins (retia.client is not common)
SIDES = {
    "retia": "common",
    "retia.client": "client",
    "retia.dispatcher": "service",
    "retia.worker": "worker",
    "retia.nni": "nni",  # NNI's module paths: a facade over common and the client side (its Experiment)
}

# side -> the sides it may import (besides third-party code and the standard library)
ALLOWED = {
    "common": {"common"},
    "client": {"common", "client"},
    "service": {"common", "service"},
    "worker": {"common", "worker"},
    "nni": {"common", "client", "nni"},
}

LAZY_INIT = Path("common/__init__.py")
CLI = Path("common/cli.py")


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    target: str
    side: str
    target_side: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.side} imports {self.target} ({self.target_side} side)"


def side_of(module: str) -> str | None:
    """The side a ``retia...`` module belongs to, None for anything outside retia."""
    best: str | None = None
    for prefix in SIDES:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return SIDES[best] if best is not None else None


def module_name(path: Path) -> str:
    """``client/backend.py`` -> ``retia.client.backend``; ``common/nn/__init__.py`` -> ``retia.nn``."""
    folder, *rest = path.with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    """Every .py file of the four package folders, relative to the repository root."""
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in source_files()}


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        assert name is not None
        return name
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ImportError(f"relative import beyond the top-level package in {module}")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, bool, ast.AST]]:
    """(line, imported module, under TYPE_CHECKING, node) for every import anywhere in ``tree``.

    ``from pkg import name`` yields ``pkg.name`` (name may be a submodule) as well as ``pkg``.
    """

    def visit(node: ast.AST, type_checking: bool) -> Iterator[tuple[int, str, bool, ast.AST]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, type_checking, node
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, is_package, node.level, node.module)
            yield node.lineno, base, type_checking, node
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}", type_checking, node
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            dynamic = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
                isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}
            )
            if dynamic and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value, type_checking, node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, type_checking)
            return
        for inner in ast.iter_child_nodes(node):
            yield from visit(inner, type_checking)

    yield from visit(tree, False)


def constant(tree: ast.Module, name: str) -> object:
    """The literal value of the module-level assignment ``name = ...`` (a dict, list or tuple of strings)."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return ast.literal_eval(value)
    raise AssertionError(f"no module-level {name} = ... found")


def lazy_table(tree: ast.Module) -> dict[str, str]:
    """``_LAZY`` of common/__init__.py: re-exported name -> module path string."""
    table = constant(tree, "_LAZY")
    assert isinstance(table, dict)
    return table


def violations(source: str, path: Path, lazy: dict[str, str] | None = None) -> list[Violation]:
    """The imports of ``source`` (the text of ``path``, relative to the root) that cross a forbidden arrow.

    ``lazy`` is the ``_LAZY`` table of common/__init__.py: there, and only there, a ``from X import
    name`` under ``TYPE_CHECKING`` may name another side when ``_LAZY[name] == X``.
    """
    module = module_name(path)
    side = side_of(module)
    assert side is not None, path
    tree = ast.parse(source, filename=str(path))
    found: list[Violation] = []
    is_package = path.name == "__init__.py"
    for line, target, type_checking, node in imports(tree, module, is_package):
        target_side = side_of(target)
        if target_side is None or target_side in ALLOWED[side]:
            continue
        if isinstance(node, ast.ImportFrom):
            base = resolve(module, is_package, node.level, node.module)
            if target != base and side_of(base) not in ALLOWED[side]:
                continue  # ``from retia.client import Backend``: retia.client itself is reported
            if path == LAZY_INIT and type_checking and lazy is not None:
                if all(lazy.get(alias.name) == base for alias in node.names):
                    continue  # a lazy re-export, spelled out for type checkers
        found.append(Violation(path, line, target, side, target_side))
    return found


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _parse(path: Path) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), filename=str(path))


# ---------------------------------------------------------------------------------------------


def test_package_dirs_match_pyproject() -> None:
    if sys.version_info < (3, 11):
        tomllib = pytest.importorskip("tomli")
    else:
        import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = config["tool"]["setuptools"]["package-dir"]
    assert {folder: package for package, folder in package_dir.items()} == FOLDERS


def test_no_import_crosses_a_forbidden_arrow() -> None:
    lazy = lazy_table(_parse(LAZY_INIT))
    files = list(source_files())
    assert len(files) > 20, f"expected the package sources under {ROOT}, found {files}"
    found = [v for path in files for v in violations((ROOT / path).read_text(), path, lazy)]
    assert not found, "imports that cross the layout's arrows (design.md, Layout):\n" + "\n".join(
        f"  {v}" for v in found
    )


def test_lazy_reexports_of_common_name_real_client_side_modules() -> None:
    modules = all_modules()
    tree = _parse(LAZY_INIT)
    lazy = lazy_table(tree)
    assert lazy, "common/__init__.py has an empty _LAZY table"
    problems = []
    for name, module in lazy.items():
        if module not in modules:
            problems.append(f"_LAZY[{name!r}] = {module!r}: no such module")
        elif side_of(module) not in {"common", "client"}:
            problems.append(f"_LAZY[{name!r}] = {module!r}: re-exports only client-side and common names")
        elif name not in top_level_names(_parse(modules[module])):
            problems.append(f"_LAZY[{name!r}] = {module!r}: {modules[module]} defines no {name}")
    exported = constant(tree, "__all__")
    assert isinstance(exported, list)
    problems += [f"_LAZY[{name!r}] is not in __all__" for name in lazy if name not in exported]
    assert not problems, "\n".join(problems)


def test_cli_routes_to_real_modules_and_functions() -> None:
    modules = all_modules()
    commands = constant(_parse(CLI), "_COMMANDS")
    assert isinstance(commands, dict)
    assert set(commands) >= {"dispatcher", "worker", "status"}
    problems = []
    for command, (module, add_arguments, run, _help) in commands.items():
        if module not in modules:
            problems.append(f"common/cli.py: {command!r} routes to {module!r}: no such module")
            continue
        defined = top_level_names(_parse(modules[module]))
        problems += [
            f"common/cli.py: {command!r} routes to {module}.{function}: {modules[module]} has no {function}"
            for function in (add_arguments, run)
            if function not in defined
        ]
    assert not problems, "\n".join(problems)


# --- the checker itself: it must see what it is meant to forbid --------------------------------


@pytest.mark.parametrize(
    ("module", "is_package", "level", "name", "expected"),
    [
        ("retia.client.cluster", False, 1, "backend", "retia.client.backend"),
        ("retia.client", True, 1, "backend", "retia.client.backend"),
        ("retia", True, 1, "client.backend", "retia.client.backend"),
        ("retia.nn.space", False, 2, "trace", "retia.trace"),
        ("retia.nn", True, 2, "errors", "retia.errors"),
        ("retia.worker.agent", False, 1, None, "retia.worker"),
        ("retia.strategy.base", False, 2, None, "retia"),
        ("retia.worker.agent", False, 0, "retia.protocol", "retia.protocol"),
    ],
)
def test_relative_imports_resolve(
    module: str, is_package: bool, level: int, name: str | None, expected: str
) -> None:
    assert resolve(module, is_package, level, name) == expected


def test_module_names_follow_package_dir() -> None:
    assert module_name(Path("client/backend.py")) == "retia.client.backend"
    assert module_name(Path("common/__init__.py")) == "retia"
    assert module_name(Path("common/nn/space.py")) == "retia.nn.space"
    assert module_name(Path("worker/__init__.py")) == "retia.worker"
    assert side_of("retia.nn.space") == "common"
    assert side_of("retia.clientele") == "common"  # a prefix of a name is not its package
    assert side_of("retia.dispatcher.journal") == "service"
    assert side_of("torch.nn") is None


BAD_WORKER = textwrap.dedent(
    """
    from __future__ import annotations
    from typing import TYPE_CHECKING

    import retia.protocol
    from retia import trace
    from . import runner

    if TYPE_CHECKING:
        from retia.client.backend import Backend

    def journal():
        from retia.dispatcher.journal import Journal
        return Journal

    def dynamic():
        import importlib
        return importlib.import_module("retia.client.cluster")
    """
)


def test_checker_catches_imports_at_module_level_in_functions_and_under_type_checking() -> None:
    found = violations(BAD_WORKER, Path("worker/agent.py"))
    assert [(v.line, v.target, v.target_side) for v in found] == [
        (10, "retia.client.backend", "client"),
        (13, "retia.dispatcher.journal", "service"),
        (18, "retia.client.cluster", "client"),
    ]
    assert str(found[0]) == "worker/agent.py:10: worker imports retia.client.backend (client side)"


@pytest.mark.parametrize(
    ("path", "source", "target"),
    [
        (Path("common/nn/space.py"), "from ..client import cluster\n", "retia.client"),
        (Path("common/nn/space.py"), "from .. import worker\n", "retia.worker"),
        (Path("common/serializer.py"), "from retia import dispatcher\n", "retia.dispatcher"),
        (Path("common/evaluator.py"), "import retia.client.backend as b\n", "retia.client.backend"),
        (Path("client/backend.py"), "from retia.worker.runner import run\n", "retia.worker.runner"),
        (Path("client/cluster.py"), "def f():\n    import retia.dispatcher\n", "retia.dispatcher"),
        (Path("dispatcher/service.py"), "from retia.client import Backend\n", "retia.client"),
        (Path("worker/runner.py"), "__import__('retia.dispatcher.journal')\n", "retia.dispatcher.journal"),
    ],
)
def test_checker_catches_each_forbidden_arrow(path: Path, source: str, target: str) -> None:
    found = violations(source, path)
    assert [v.target for v in found] == [target]
    assert str(found[0]).startswith(f"{path}:{found[0].line}: ")


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (Path("client/cluster.py"), "from .backend import Backend, connect\n"),
        (Path("client/__init__.py"), "from .cluster import local_cluster\n"),
        (Path("worker/agent.py"), "from . import runner\nfrom retia.protocol import Session\n"),
        (Path("dispatcher/cli.py"), "def f():\n    from .service import Dispatcher\n"),
        (Path("common/nn/space.py"), "from ..trace import Recipe\nimport torch.nn\n"),
        (Path("common/cli.py"), "MODULES = ['retia.dispatcher.cli', 'retia.worker.cli']\n"),
        (Path("client/cluster.py"), "ARGS = ['-m', 'retia.dispatcher']\n"),
    ],
)
def test_checker_allows_the_permitted_arrows(path: Path, source: str) -> None:
    assert violations(source, path) == []


def test_only_the_lazy_reexports_of_common_init_may_name_the_client_side() -> None:
    reexport = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .client.backend import Backend\n"
    )
    lazy = {"Backend": "retia.client.backend"}
    assert violations(reexport, LAZY_INIT, lazy) == []
    # the same lines elsewhere in common, outside TYPE_CHECKING, or naming what _LAZY does not
    assert [v.line for v in violations(reexport, Path("common/evaluator.py"), lazy)] == [3]
    eager = "from .client.backend import Backend\n"
    assert [v.target for v in violations(eager, LAZY_INIT, lazy)] == ["retia.client.backend"]
    unlisted = reexport.replace("Backend", "Trial")
    assert [v.target for v in violations(unlisted, LAZY_INIT, lazy)] == ["retia.client.backend"]

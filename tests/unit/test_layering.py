"""Dependencies point inward (docs/architecture.md, "Layering").

    types  <-  manager (store, then its components)  <-  api
    types  <-  agent
    daemon, cli: may import everything

Every module under shoal/ is parsed with `ast` (never imported), and every `import` /
`from ... import` naming a shoal module is checked, wherever it sits: at module top, in
a function, or under `if TYPE_CHECKING:` (a type-only import is still a dependency).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import shoal

PACKAGE_DIR = Path(shoal.__file__).parent

# (importing package, imported package): forbidden edges.
FORBIDDEN = [
    ("shoal.agent", "shoal.manager"),
    ("shoal.agent", "shoal.api"),
    ("shoal.manager", "shoal.api"),
    ("shoal.manager", "shoal.agent"),
    ("shoal.manager", "shoal.cli"),
    ("shoal.manager", "shoal.daemon"),
    ("shoal.api", "shoal.agent"),
]
# Only these may import shoal.daemon and shoal.cli (the top of the graph).
TOP = ("shoal.daemon", "shoal.cli", "shoal.__main__")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "shoal.api.nodes"
    target: str  # the imported shoal module, e.g. "shoal.manager.store"
    line: int

    def __str__(self) -> str:
        path = self.module.replace(".", "/")
        return f"{self.module} ({path}.py:{self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """True if `name` is a shoal module or package (not an attribute like __version__)."""
    rel = Path(*name.split("."))
    base = PACKAGE_DIR.parent / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    return imports_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    """The shoal modules that `source`, the text of `module`, imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from shoal.api import nodes` imports the module shoal.api.nodes
            targets = [
                f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base
                for alias in node.names
            ]
        for target in dict.fromkeys(targets):  # once per statement
            if target == "shoal" or target.startswith("shoal."):
                found.append(Import(module, target, node.lineno))
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
IMPORTS = [imp for path in MODULES for imp in imports_of(path)]


def test_the_walk_sees_the_package() -> None:
    names = {module_name(p) for p in MODULES}
    for expected in ("shoal.types.task", "shoal.manager.store.memory", "shoal.api.server"):
        assert expected in names
    assert any(
        within(i.module, "shoal.manager") and within(i.target, "shoal.types") for i in IMPORTS
    )


def test_types_import_no_other_shoal_package() -> None:
    offending = [
        str(i)
        for i in IMPORTS
        if within(i.module, "shoal.types") and not within(i.target, "shoal.types")
    ]
    assert not offending, "shoal.types must import nothing of shoal's:\n  " + "\n  ".join(offending)


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=lambda p: p)
def test_dependencies_point_inward(importer: str, imported: str) -> None:
    offending = [
        str(i) for i in IMPORTS if within(i.module, importer) and within(i.target, imported)
    ]
    assert not offending, f"{importer} must not import {imported}:\n  " + "\n  ".join(offending)


def test_the_store_imports_no_manager_component() -> None:
    """The store is the bottom of the manager: components meet in it, it knows none."""
    offending = [
        str(i)
        for i in IMPORTS
        if within(i.module, "shoal.manager.store")
        and within(i.target, "shoal.manager")
        and not within(i.target, "shoal.manager.store")
    ]
    assert not offending, "shoal.manager.store must stay below:\n  " + "\n  ".join(offending)


def test_only_the_top_imports_daemon_and_cli() -> None:
    offending = [
        str(i)
        for i in IMPORTS
        if (within(i.target, "shoal.daemon") or within(i.target, "shoal.cli"))
        and not any(within(i.module, top) for top in TOP)
    ]
    assert not offending, "only daemon and cli sit on top:\n  " + "\n  ".join(offending)


# The checker itself, on made-up sources: it must catch what it claims to catch.


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import shoal.manager.store\n", ["shoal.manager.store"]),
        ("from shoal.manager.store import Store\n", ["shoal.manager.store"]),
        ("from shoal.manager import store\n", ["shoal.manager.store"]),
        ("from shoal import __version__\n", ["shoal"]),
        ("def f():\n    from shoal.api import server\n", ["shoal.api.server"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import shoal.manager\n",
            ["shoal.manager"],
        ),
        ("from ..manager.store import Store\n", ["shoal.manager.store"]),
        ("from . import task_runner\n", ["shoal.agent.task_runner"]),
        ("import os\nimport msgspec\n", []),
        ("from shoal.types.task import Task, TaskState\n", ["shoal.types.task"]),
    ],
)
def test_the_checker_finds_every_form(source: str, expected: list[str]) -> None:
    found = imports_in(source, "shoal.agent.probe")
    assert [i.target for i in found] == expected
    assert all(i.module == "shoal.agent.probe" for i in found)


def test_relative_imports_in_a_package_init() -> None:
    found = imports_in("from .store import Store\n", "shoal.manager", is_package=True)
    assert [i.target for i in found] == ["shoal.manager.store"]


def test_a_violation_names_module_line_and_target() -> None:
    [imp] = imports_in("import os\n\nfrom shoal.manager.store import Store\n", "shoal.agent.probe")
    assert str(imp) == "shoal.agent.probe (shoal/agent/probe.py:3) imports shoal.manager.store"

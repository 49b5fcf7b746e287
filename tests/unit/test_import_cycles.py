"""The package's modules import one another without a cycle: every import (at the top of a
module or inside a function, absolute or relative) is an edge of one graph, and no strongly
connected component of it holds more than one module."""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

import voucher_ledger

PACKAGE = "voucher_ledger"
ROOT = Path(voucher_ledger.__file__).resolve().parent


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(
    module: str, source: str, modules: Collection[str], *, is_package: bool = False
) -> Iterator[str]:
    """The names ``module`` (whose text is ``source``) imports, anywhere in its body, in
    functions too. ``from a.b import c`` names ``a.b.c`` when that is one of ``modules``, else
    ``a.b``; a relative import is resolved from the module's package (a package's own)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative: from the module's package (a package is its own)
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in modules else target


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        source = path.read_text(encoding="utf-8")
        is_package = path.name == "__init__.py"
        for target in imported_names(name, source, modules, is_package=is_package):
            # ``import a.b.c`` runs a, a.b and a.b.c: the deepest module of the package named
            # is the edge (a package's __init__ importing its own submodule is not a cycle
            # through the submodule's importers)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in no particular order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    components.append(sorted(component))
    return components


def a_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One cycle through the first of ``members`` (a path back to it inside the component)."""
    inside = set(members)
    start = members[0]
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & inside):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return members  # not reached: a component of several modules has a cycle through each


SAMPLE = """
import voucher_ledger.a.b
from voucher_ledger.a import b, c
from . import sibling
from .. import up


def later() -> None:
    from voucher_ledger.z import thing
    from .sibling import name
"""


def test_the_edges_include_imports_in_functions_relative_ones_and_submodules() -> None:
    modules = {
        "voucher_ledger.a",
        "voucher_ledger.a.b",
        "voucher_ledger.p",
        "voucher_ledger.p.m",
        "voucher_ledger.p.sibling",
        "voucher_ledger.z",
    }
    names = list(imported_names("voucher_ledger.p.m", SAMPLE, modules))
    assert names == [
        "voucher_ledger.a.b",
        "voucher_ledger.a.b",  # a module of the package: the edge goes to it
        "voucher_ledger.a",  # c is a name in voucher_ledger.a
        "voucher_ledger.p.sibling",
        "voucher_ledger",  # up is not a module: a name in the package
        "voucher_ledger.z",
        "voucher_ledger.p.sibling",
    ]


def test_the_graph_holds_the_package_and_its_known_edges() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert "voucher_ledger.jetstream.pulls" in graph["voucher_ledger.projections.replay"]
    assert "voucher_ledger.ledger.events" in graph["voucher_ledger.projections.verify"]


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    components = [c for c in strongly_connected(graph) if len(c) > 1]
    assert components == [["a", "b", "c"]]
    assert a_cycle(graph, components[0]) == ["a", "b", "c", "a"]


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    graph = import_graph()
    cycles = [
        f"{', '.join(members)}: {' -> '.join(a_cycle(graph, members))}"
        for members in strongly_connected(graph)
        if len(members) > 1
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)

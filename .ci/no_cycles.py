"""Fail when an import chain inside the installed `infer` package loops back to where it began.

import-linter (the contracts in pyproject.toml) has no contract for "no cycles", so this builds
the same import graph with grimp, which import-linter installs, and looks for strongly connected
components. Every import counts: at module level, inside a function (a lazy import is still a
dependency) and under TYPE_CHECKING (a type shared both ways still ties the two designs).

Run it against a regular install (`pip install .`, as .ci/run does): an editable install maps
infer.cli and infer.runtime outside the infer/ folder, where grimp does not look.
"""

from __future__ import annotations

import itertools
import sys

import grimp

PACKAGE = "infer"
EXPECTED = ("infer.cli", "infer.runtime")  # a graph without them checks nothing


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each as an import chain that starts and ends at its first module."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_loop(graph, sorted(c), edges) for c in sorted(components)]


def _loop(graph: grimp.ImportGraph, component: list[str], edges: dict[str, list[str]]) -> list[str]:
    """One concrete cycle through the component's first module: it imports `nxt`, and the
    shortest chain from `nxt` leads back to it."""
    first = component[0]
    nxt = next(m for m in edges[first] if m in component)
    chain = graph.find_shortest_chain(importer=nxt, imported=first)
    assert chain is not None  # both are in one strongly connected component
    return [first, *chain]


def describe(graph: grimp.ImportGraph, loop: list[str]) -> str:
    steps = []
    for importer, imported in itertools.pairwise(loop):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = f" (line {details[0]['line_number']})" if details else ""
        steps.append(f"  {importer} imports {imported}{where}")
    return "\n".join(steps)


def main() -> int:
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    missing = [name for name in EXPECTED if name not in graph.modules]
    if missing:
        sys.stderr.write(
            f"no_cycles: {', '.join(missing)} not found in the installed {PACKAGE}: install it "
            "with `pip install .` (an editable install keeps them outside infer/)\n"
        )
        return 2
    found = cycles(graph)
    for loop in found:
        sys.stderr.write(f"import cycle: {' -> '.join(loop)}\n{describe(graph, loop)}\n")
    if found:
        return 1
    sys.stdout.write(f"no import cycles among {len(graph.modules)} modules of {PACKAGE}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

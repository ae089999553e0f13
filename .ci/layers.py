#!/usr/bin/env python3
"""Checks that the modules of crates/pgbatch/src import each other in layers.

Lists each top-level module's `crate::` imports, then fails when two modules import each
other through any path (a cycle), or when a module imports one of a higher layer than its
own. The layers, lowest first, are the ones docs/architecture.md describes.

Usage: .ci/layers.py [crates/pgbatch/src]
"""
import os
import re
import sys

LAYERS = [
    ["error"],
    ["codec"],
    ["plan"],
    ["wire"],
    ["outcome"],
    ["run"],
    ["two_phase", "idempotency", "intent"],
]
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}


def imports(src):
    """Top-level module -> the other top-level modules its code names through `crate::`."""
    graph = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, src)[:-3].split(os.sep)
            module = relative[0]
            if module in ("lib", "mod"):
                continue
            text = open(path, encoding="utf-8").read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]  # test-only imports don't count
            text = re.sub(r"//.*", "", text)  # comments and doc links don't count
            found = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                found |= set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", group))
            graph.setdefault(module, set()).update(m for m in found if m != module)
    return graph


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "crates/pgbatch/src"
    graph = imports(src)
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    problems = []
    for module in sorted(graph, key=lambda m: (LAYER_OF.get(m, -1), m)):
        deps = sorted(graph[module], key=lambda m: (LAYER_OF.get(m, -1), m))
        print(f"{module:12} -> {', '.join(deps) if deps else '(nothing)'}")
        if module not in LAYER_OF:
            problems.append(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
            continue
        for dep in deps:
            if dep in LAYER_OF and LAYER_OF[dep] >= LAYER_OF[module]:
                problems.append(f"{module} imports {dep}, which is not below it")
    # A cycle needs an import that points up or sideways, so the layer check catches it;
    # the search below names it whole.
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in graph[module]:
            if state.get(dep) == "open":
                problems.append("cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    edges = sum(len(d) for d in graph.values())
    print(f"modules={len(graph)} imports={edges} problems={len(problems)}")
    for problem in problems:
        print(f"layers: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

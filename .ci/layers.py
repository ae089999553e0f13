#!/usr/bin/env python3
"""Checks that the modules of crates/pgbatch/src import each other in layers.

Lists each top-level module's `crate::` imports, then fails when two modules import each
other through any path (a cycle), or when a module imports one of a higher layer than its
own. The layers, lowest first, are the ones docs/architecture.md describes.

Inside each layer (a folder), the files must import each other one way too: a circle of
files fails, and the message lists each import in it with the names it takes, so that the
one to move (a helper in the wrong file) can be seen.

Usage: .ci/layers.py [crates/pgbatch/src]
"""
import os
import re
import sys

LAYERS = [
    ["telemetry", "error"],
    ["codec"],
    ["plan"],
    ["protocol"],
    ["connect"],
    ["connection"],
    ["pool"],
    ["outcome"],
    ["run"],
    ["two_phase", "idempotency", "intent", "async_connection"],
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


def file_imports(folder):
    """File -> {other file of the same folder: the names it takes from it}."""
    layer = os.path.basename(folder.rstrip(os.sep))
    texts = {}
    for name in os.listdir(folder):
        if name.endswith(".rs") and name != "mod.rs":
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
            texts[name[:-3]] = re.sub(r"//.*", "", text)
    graph = {}
    for file, text in texts.items():
        found = {}
        paths = rf"(?:super|crate::{layer})"
        for other, rest in re.findall(paths + r"::([a-z_][a-z0-9_]*)((?:::\{[^}]*\}|::[A-Za-z_][A-Za-z0-9_]*)?)", text):
            names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)
            found.setdefault(other, set()).update(names)
        for group in re.findall(paths + r"::\{([^}]*)\}", text):
            for other in re.findall(r"\b([a-z_][a-z0-9_]*)\b", group):
                found.setdefault(other, set())
        graph[file] = {other: names for other, names in found.items() if other in texts and other != file}
    return graph


def circles(graph):
    """The strongly connected groups of more than one file (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            connect(node)
    return groups


def layer_problems(src):
    problems = []
    for name in sorted(os.listdir(src)):
        folder = os.path.join(src, name)
        if not os.path.isdir(folder):
            continue
        graph = file_imports(folder)
        edges = sum(len(d) for d in graph.values())
        found = circles(graph)
        print(f"{name + '/':12} files={len(graph)} imports={edges} circles={len(found)}")
        for group in found:
            arrows = [(a, b) for a in group for b in sorted(graph[a]) if b in group]
            # The imports whose removal alone leaves the circle's files in order: the ones to move.
            breaking = [
                (a, b)
                for a, b in arrows
                if not circles({f: {o: n for o, n in graph[f].items() if o in group and (f, o) != (a, b)} for f in group})
            ]
            shown = breaking or arrows
            described = "; ".join(f"{a}.rs takes {', '.join(sorted(graph[a][b])) or 'names'} from {b}.rs" for a, b in shown)
            problems.append(
                f"files of {name}/ import each other in a circle ({', '.join(f + '.rs' for f in group)}). "
                f"{'Move this import' if len(shown) == 1 else 'Move one of these imports'}: {described} "
                "(the names belong in the file that uses them, or in a file below both)"
            )
    return problems


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
    problems += layer_problems(src)
    edges = sum(len(d) for d in graph.values())
    print(f"modules={len(graph)} imports={edges} problems={len(problems)}")
    for problem in problems:
        print(f"layers: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

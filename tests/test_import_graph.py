"""The package's import graph, read from the source with `ast`: no circles, and the layers point one way.

Every `import` and `from ... import` counts, those inside functions too (a lazy import is still a
dependency). An edge goes to the most specific module of the package that the statement names; the parent
packages Python imports on the way are not edges (else every package whose `__init__` gathers its
submodules would be a circle).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffma_cli"
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The longest prefix of a dotted name that is a module of the package (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` depends on the submodule; `from mod import name` on the module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name) if name.split(".")[0] == ROOT else None
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): every component with more than one module is an import circle."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    def visit(start):
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read_from_the_source():
    # A check that reads nothing passes vacuously: pin a few edges known from the code.
    assert "diffma_cli.models.ops.dispatch" in GRAPH["diffma_cli.models.ops.selective_scan"]
    assert "diffma_cli.models.ops.scan_inputs" in GRAPH["diffma_cli.models.ops.selective_scan_triton"]
    assert "diffma_cli.errors" in GRAPH["diffma_cli.config"]
    assert len(GRAPH) > 50


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]


def test_no_import_circles():
    circles = [component for component in strongly_connected(GRAPH) if len(component) > 1]
    assert circles == []


# What each part of the package may not import (docs/architecture.md, "Package map"): the layers point one
# way, from the command line down to the models, and inference never needs the training code.
FORBIDDEN = {
    "models": ("train", "convert", "evaluation", "data", "encoders", "commands", "cli", "demo"),
    "diffusion": ("train", "convert", "evaluation", "commands", "cli", "demo"),
    "encoders": ("models", "train", "convert", "evaluation", "commands", "cli", "demo"),
    "io": ("models", "train", "convert", "evaluation", "data", "weights", "encoders", "commands", "cli"),
    "weights": ("train", "convert", "evaluation", "data", "commands", "cli", "demo"),
    "data": ("train", "convert", "evaluation", "commands", "cli", "demo"),
    "evaluation": ("train", "convert", "commands", "cli", "demo"),
    "convert": ("train", "commands", "cli", "demo"),
    "runs": ("train", "convert", "commands", "cli"),
    "devices": ("train", "convert", "commands", "cli"),
    "train": ("convert.files", "convert.cohort", "commands", "cli", "demo"),
}


def forbidden_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    def part(module: str) -> str:
        return module.partition(".")[2]

    def within(module: str, name: str) -> bool:
        return part(module) == name or part(module).startswith(f"{name}.")

    return sorted((module, target) for module, targets in graph.items() for target in targets
                  for layer, rules in FORBIDDEN.items() if within(module, layer)
                  if any(within(target, rule) for rule in rules))


def test_the_layers_point_one_way():
    assert forbidden_edges(GRAPH) == []


def test_the_layer_rules_catch_forbidden_edges():
    graph = {"diffma_cli.convert.pipeline": {"diffma_cli.train.run_folder", "diffma_cli.runs"},
             "diffma_cli.models.backbone": {"diffma_cli.encoders.vae", "diffma_cli.models.layers"},
             "diffma_cli.train.api": {"diffma_cli.convert.pipeline", "diffma_cli.convert.files"}}
    assert forbidden_edges(graph) == [("diffma_cli.convert.pipeline", "diffma_cli.train.run_folder"),
                                      ("diffma_cli.models.backbone", "diffma_cli.encoders.vae"),
                                      ("diffma_cli.train.api", "diffma_cli.convert.files")]

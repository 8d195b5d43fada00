"""The allowed import layers of ellbench's modules: no cycle, no import that runs back up, light modules stay light.

Every import counts, function-local ones included (read with ast, so nothing is executed). The layers, top to bottom
(docs: README's development section and DESIGN.md's flow):

    cli -> demo -> tasks, train -> report -> runner, attacks, corruptions, profile -> models, data
        -> store, distributed, stats, pure parts -> io, resources -> errors, _version

A module may import modules of a lower layer, or of its own layer as long as no cycle forms.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ellbench"

# Top to bottom. A module belongs to the layer of the longest prefix that names it.
LAYERS = [
    ("ellbench.cli", "ellbench.__main__"),
    ("ellbench.demo",),
    ("ellbench.tasks", "ellbench.train"),
    ("ellbench.report",),
    ("ellbench.runner", "ellbench.attacks", "ellbench.corruptions", "ellbench.profile"),
    # The package root registers the models with timm on import, so it sits with them.
    ("ellbench.models", "ellbench.data", "ellbench"),
    ("ellbench.store", "ellbench.distributed", "ellbench.stats", "ellbench.attacks.checks",
     "ellbench.corruptions.names", "ellbench.corruptions.mce", "ellbench.corruptions.suite"),
    ("ellbench.io", "ellbench.resources"),
    ("ellbench.errors", "ellbench._version"),
]
# Pure arithmetic and lists: they, and everything of ellbench they import, load no heavy third-party package.
PURE = ("ellbench.attacks.checks", "ellbench.corruptions.names", "ellbench.corruptions.mce",
        "ellbench.corruptions.suite", "ellbench.resources", "ellbench.io", "ellbench.errors")
HEAVY = ("torch", "torchvision", "timm", "torchattacks", "imagecorruptions", "pandas", "numpy", "scipy", "sklearn",
         "skimage", "matplotlib", "PIL", "safetensors")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(ellbench modules, top-level third-party packages) that `name` imports anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    ours, theirs = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name} uses a relative import"
            base = node.module or ""
            # `from ellbench.x import y` imports the module ellbench.x.y when there is one, else a name of ellbench.x
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "ellbench" or target.startswith("ellbench."):
                while target not in MODULES:  # `import ellbench.models.vit` names a module; trim to one that is
                    target = target.rsplit(".", 1)[0]
                ours.add(target)
            elif target != "__future__":
                theirs.add(target.split(".")[0])
    ours.discard(name)
    return ours, theirs


GRAPH = {name: imports_of(name)[0] for name in MODULES}


def layer_of(name: str) -> int:
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for name in MODULES:
        layer_of(name)


def test_no_import_runs_back_up():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in GRAPH.items() for target in sorted(targets) if layer_of(target) < layer_of(name)]
    assert upward == []


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert cycles == []


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen | {name}


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_nothing_heavy(name):
    heavy = {f"{module}: {package}" for module in reachable(name) for package in imports_of(module)[1]
             if package in HEAVY}
    assert heavy == set()


def test_the_checker_sees_function_local_imports_and_would_catch_a_violation():
    # runner imports ellbench.data only inside a function; an upward edge would be reported.
    assert "ellbench.data" in GRAPH["ellbench.runner"]
    assert layer_of("ellbench.report.results") < layer_of("ellbench.attacks.checks")
    assert layer_of("ellbench.tasks.attack") < layer_of("ellbench.runner") < layer_of("ellbench.store")


def test_pure_modules_load_no_heavy_package_at_run_time():
    code = ("import sys; import " + ", ".join(PURE) + "; "
            "print(','.join(sorted(m for m in " + repr(HEAVY) + " if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

"""The package's import graph: layers that import only downward, no circles, tests that mirror the layout."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top (README "Layout"). A module imports modules of its own package or of a lower layer only; the
# packages that share a layer do not import each other.
LAYERS = [
    ["spark.errors"],  # mistakes a user can fix, and the ranges of settings
    ["spark.cli"],  # command lines
    ["spark.tasks"],  # the task table and its prompt templates
    ["spark.data"],  # rows, chat messages, images
    ["spark.verify"],  # the rule reward
    ["spark.models"],  # Qwen2.5 / Qwen2.5-VL in plain PyTorch
    ["spark.generation"],  # the sampler, the chat model
    ["spark.distributed"],  # process groups, checkpoints, preemption, metrics, FLOPs
    ["spark.rl"],  # rollouts, recycling, packing, losses
    ["spark.config", "spark.evaluation"],  # every setting of a run; evaluation and test-time scaling
    ["spark.plan"],  # a run's memory plan
    ["spark.trainer"],  # the loop
    ["spark.demo"],  # the CPU demo
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def spark_imports(path: Path) -> set[str]:
    """The spark modules `path` imports, at any depth (an import inside a function counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spark"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("spark")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): spark_imports(path) for path in sorted((ROOT / "spark").rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str]:
    """(layer, unit) of a module: its entry of LAYERS, and the package or module that entry names."""
    for index, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return index, unit
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py")


def test_every_import_runs_downward():
    upward = []
    for module, imports in graph().items():
        if module == "spark":
            continue
        layer, unit = layer_of(module)
        for imported in imports:
            other_layer, other_unit = layer_of(imported)
            if other_unit != unit and other_layer >= layer:
                upward.append(f"{module} -> {imported}")
    assert upward == []


def test_no_import_circles():
    edges = graph()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module):], module]))
        for imported in sorted(edges.get(module, ())):
            visit(imported, [*path, module])

    for module in edges:
        visit(module, [])


def test_tests_mirror_the_packages():
    """A test folder is named after the package it tests, and each package with tests has one."""
    packages = {path.name for path in (ROOT / "spark").iterdir() if (path / "__init__.py").exists()}
    folders = {path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders <= packages
    assert {"data", "demo", "distributed", "evaluation", "generation", "models", "rl", "tasks", "verify"} <= folders

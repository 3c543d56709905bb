"""The package's imports point only down its layers (docs/architecture.md), without cycles.

Every import is read from the source with ``ast``, including imports inside functions
(a lazy import must not hide a cycle); only ``if TYPE_CHECKING:`` blocks are skipped,
since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "captum_deconvviz"

#: Layer of each module, bottom up (docs/architecture.md). A module may import from its own
#: layer or below; the import graph must have no cycle.
LAYERS: dict[int, set[str]] = {
    1: {"_ops", "_geometry", "_field", "_tables", "_checks", "_guard", "_compiled"},
    2: {"_rule_sets", "engine"},
    3: {
        "_forward", "_units", "_taps", "data", "_datasource", "_fingerprint", "zoo", "zoo.model", "zoo.transforms",
        "zoo.data",
    },
    4: {
        "_rf_blocks", "_rf_window", "_rf_index", "_rf_mix", "_rf_local", "_rf_rules", "_rf_graph", "_rf_types",
        "_probe", "receptive_field", "cropped", "_chunks", "projection", "attr",
    },
    5: {
        "_topk", "_checkpoint", "_mining_config", "_mining_state", "mining", "mining_result", "_distributed",
        "_result_cache", "compare", "diagnose", "_diagnose_pass", "_integrity", "_result_io", "_result_checks",
        "_exemplar_state", "_relevance", "exemplars", "_exemplar_records", "_exemplar_agreement", "_ranking",
        "_result_exemplars", "_relu_census",
        "_mining_folds",
    },
    6: {
        "viz", "_figures", "_result_figures", "_hierarchy_figure", "_exemplar_figures", "_class_figures",
        "_layer_crops",
    },
    7: {
        "report", "_report_sections", "cli", "_cli_checks", "model_loading", "zoo.train", "explorer", "_explorer_data",
        "_explorer_images", "_explorer_pages", "_cli_commands",
    },
}  # fmt: skip
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str | None = None) -> list[tuple[str, list[str], int]]:
    """``(module imported, names imported, line)`` for every relative import that runs."""
    module = module if module is not None else _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [alias.name for alias in node.names]
            if node.module is None:  # from . import _x: the submodules themselves
                for name in names:
                    found.append((".".join([*base, name]), [], node.lineno))
            else:
                found.append((target, names, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if _module_name(p)}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYER_OF)) == [], "add new modules to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = [
        f"line {line}: {target} (layer {LAYER_OF.get(target)})"
        for target, _, line in GRAPH[module]
        if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]
    ]
    assert upward == [], f"{module} (layer {LAYER_OF[module]}) imports upward: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module: str) -> None:
    private = [
        f"line {line}: {name} from {target}"
        for target, names, line in GRAPH[module]
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert private == [], f"{module} takes private names of other modules: {private}"


def test_no_import_cycles() -> None:
    edges = {m: sorted({t for t, _, _ in GRAPH[m] if t in MODULES and t != m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := dfs(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .viz import plot\n"
        "def f():\n    from .report import write\n"
    )
    fake = tmp_path / "probe.py"
    fake.write_text(source)
    assert [t for t, _, _ in _imports(fake, module="probe")] == ["report"]

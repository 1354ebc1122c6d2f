"""The package's layout (issue 17): subpackages by concern, dependencies pointing down, no import
circles, light packages that never import TensorFlow, and the size rules. Read from the source
(nothing is imported), so a forbidden arrow fails here the moment it is written."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "bc_keras"
SUBPACKAGES = ("config", "histology", "prepare", "data", "models", "training", "evaluation", "experiments",
               "report", "export", "robustness", "active")  # fmt: skip
# The modules that are commands (`python -m ...`, a `main`, and the installed command's
# package bc_keras.commands): they alone may import `cli`.
COMMANDS = {
    "bc_keras.study", "bc_keras.study.__main__", "bc_keras.probe", "bc_keras.bench",
    "bc_keras.compare",
    "bc_keras.report.document", "bc_keras.report.__main__", "bc_keras.report.compare",
    "bc_keras.export.__main__", "bc_keras.robustness.__main__", "bc_keras.active.__main__",
}  # fmt: skip
# Forbidden arrows: (importer prefix, imported prefix).
FORBIDDEN = [
    ("bc_keras.models", "bc_keras.training"),
    ("bc_keras.models", "bc_keras.experiments"),
    ("bc_keras.models", "bc_keras.cli"),
    ("bc_keras.histology", "bc_keras.data"),
    ("bc_keras.histology", "bc_keras.models"),
    ("bc_keras.prepare", "bc_keras.data"),
    ("bc_keras.data", "bc_keras.models"),
    ("bc_keras.data", "bc_keras.training"),
    ("bc_keras.data", "bc_keras.evaluation"),
    ("bc_keras.data", "bc_keras.experiments"),
    ("bc_keras.evaluation", "bc_keras.experiments"),
    ("bc_keras.evaluation", "bc_keras.report"),
    ("bc_keras.training", "bc_keras.experiments"),
    ("bc_keras.experiments", "bc_keras.report"),
]
# Modules that must never import TensorFlow or Keras at import time.
LIGHT = ["bc_keras.histology", "bc_keras.prepare", "bc_keras.config", "bc_keras.errors",
         "bc_keras.runs", "bc_keras.cli", "bc_keras.backbones", "bc_keras.experiments",
         "bc_keras.evaluation", "bc_keras.evaluation.metrics", "bc_keras.report",
         "bc_keras.report.compare", "bc_keras.report.runs", "bc_keras.report.tables",
         "bc_keras.commands", "bc_keras.console", "bc_keras.export",
         "bc_keras.robustness", "bc_keras.active", "bc_keras.active.strategies",
         "bc_keras.active.select"]  # fmt: skip
MAX_LINES = 450
MAX_TOP_LEVEL = 12


def module_names(package: Path) -> dict[Path, str]:
    root = package.parent
    return {
        path: ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
    }


def import_graph(package: Path, top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in it, or at module level only).
    `from a.b import c` counts as importing a.b.c when that is a module, else a.b; a module
    importing its own parent package does not count."""
    modules = module_names(package)
    names = set(modules.values())
    graph: dict[str, set[str]] = {name: set() for name in names}
    for path, module in modules.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in names:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != module and not module.startswith(candidate + "."):
                    graph[module].add(candidate)
                    break
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    def inside(module, prefix):
        return module == prefix or module.startswith(prefix + ".")

    found = []
    for importer, imported in sorted((m, t) for m, targets in graph.items() for t in targets):
        for source, target in FORBIDDEN:
            if inside(importer, source) and inside(imported, target):
                found.append(f"{importer} -> {imported}")
        command = importer in COMMANDS or inside(importer, "bc_keras.commands")
        if inside(imported, "bc_keras.cli") and not command:
            found.append(f"{importer} -> {imported} (cli is for commands and scripts)")
    return found


def test_no_import_circles_and_no_forbidden_arrows():
    graph = import_graph(PACKAGE)
    assert import_circles(graph) == []
    assert forbidden_arrows(graph) == []


def _write_package(root: Path, modules: dict[str, str]) -> Path:
    for name, text in modules.items():
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "bc_keras"


def test_the_checks_fail_when_a_circle_or_a_forbidden_arrow_is_added(tmp_path):
    package = _write_package(tmp_path, {
        "bc_keras.__init__": "",
        "bc_keras.cli": "",
        "bc_keras.models.__init__": "",
        "bc_keras.models.cnn": "def f():\n    from bc_keras.training import run\n",
        "bc_keras.training.__init__": "",
        "bc_keras.training.run": "from bc_keras.models import cnn\n",
        "bc_keras.data.__init__": "from bc_keras.data import pipeline\n",
        "bc_keras.data.pipeline": "import bc_keras.cli\n",
    })  # fmt: skip
    graph = import_graph(package)
    # A lazy import inside a function still makes the circle.
    assert import_circles(graph) == [["bc_keras.models.cnn", "bc_keras.training.run"]]
    assert forbidden_arrows(graph) == [
        "bc_keras.data.pipeline -> bc_keras.cli (cli is for commands and scripts)",
        "bc_keras.models.cnn -> bc_keras.training.run",
    ]


def test_each_subpackage_has_a_docstring_face_and_two_modules():
    for name in SUBPACKAGES:
        folder = PACKAGE / name
        init = ast.parse((folder / "__init__.py").read_text())
        assert ast.get_docstring(init), f"{name}/__init__.py states no concern"
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) >= 2, f"{name}/ holds {len(modules)} module(s)"


def test_the_top_level_keeps_only_package_wide_modules_and_commands():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(REPO_ROOT)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_never_import_tensorflow(module):
    code = (
        f"import sys, {module}\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

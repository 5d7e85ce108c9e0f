"""Layers point one way: the library (every module under core/ outside core/ui/) never imports the UI layer
(``core.ui``) or Streamlit, at module level or inside a function. The app-driving benchmark lives in
bench/ for this reason; ``core.ui`` may import the library, never the reverse."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
FORBIDDEN = ("core.ui", "streamlit")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The full names an import statement (or an ``importlib.import_module``/``__import__`` call with a
    constant name) brings in; ``from X import y`` yields both ``X`` and ``X.y`` (y may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every name ``source`` (the module ``module``) imports from core.ui or streamlit, with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for name in _imported(node, module, is_package):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                found.append(f"line {node.lineno}: {name}")
    return found


LIBRARY = sorted(p for p in CORE.rglob("*.py") if (CORE / "ui") not in p.parents)


def test_the_library_is_all_walked():
    names = {_module_name(p) for p in LIBRARY}
    assert {"core", "core.analysis", "core.bench", "core.cli", "core.concurrency", "core.store"} <= names
    assert not any(n.startswith("core.ui") for n in names)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_does_not_import_the_ui_or_streamlit(path):
    found = upward_imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    assert not found, f"{path.relative_to(ROOT)} imports the UI layer: {found}"


def test_only_the_cli_reaches_the_app_benchmarks():
    """``bench`` drives the app (Streamlit): the CLI may load it for ``python -m core bench app``, no
    other library module may import it."""
    for path in LIBRARY:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n for node in ast.walk(tree) for n in _imported(node, _module_name(path),
                                                                  path.name == "__init__.py")]
        uses = [n for n in names if n == "bench" or n.startswith("bench.")]
        assert not uses or path == CORE / "cli.py", f"{path.relative_to(ROOT)} imports {uses}"


@pytest.mark.parametrize("source, module", [
    ("import streamlit as st", "core.x"),
    ("import streamlit.components.v1", "core.x"),
    ("from streamlit.testing.v1 import AppTest", "core.x"),
    ("from core.ui import limits", "core.x"),
    ("from core import ui", "core.x"),
    ("import core.ui.state", "core.x"),
    ("def f():\n    if True:\n        from core.ui.state import Selection\n", "core.x"),
    ("class A:\n    def m(self):\n        import streamlit\n", "core.x"),
    ("from .ui import state", "core.x"),
    ("from . import ui", "core.x"),
    ("from ..ui import state", "core.sub.x"),
    ("import importlib\nimportlib.import_module('core.ui.services')", "core.x"),
    ("__import__('streamlit')", "core.x"),
])
def test_the_check_sees_every_form_of_import(source, module):
    assert upward_imports(source, module)


@pytest.mark.parametrize("source", [
    "import core.uix", "from core import uiux", "from core.user import ui", "import streamlit_like",
    "from core import analysis\n'''core.ui.limits in a docstring'''",
])
def test_the_check_passes_what_is_not_the_ui(source):
    assert upward_imports(source, "core.x") == []

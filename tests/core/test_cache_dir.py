"""One place reads the cache folder: ``core.store.cache_dir()``, per call ($NVE_CACHE, else the repository's
cache/). The store functions' default, the app's pages (``core.ui.stores``) and the CLI's ``--cache``
default all ask it."""
import ast
from pathlib import Path

from core import store
from core.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_cache_dir_is_read_per_call(monkeypatch, tmp_path):
    monkeypatch.delenv("NVE_CACHE", raising=False)
    assert store.cache_dir() == ROOT / "cache"
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    assert store.cache_dir() == tmp_path


def test_the_store_functions_default_to_it(monkeypatch, cifar20_store, tmp_path, capsys):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    assert [s.id for s in store.list_stores()] == [cifar20_store.id]
    assert store.open_store(cifar20_store.id).path == cifar20_store.path
    assert main(["list"]) == 0 and capsys.readouterr().out.startswith(f"{cifar20_store.id} ")
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))  # changed in a running process: followed
    assert store.list_stores() == []
    assert main(["list"]) == 0 and str(tmp_path) in capsys.readouterr().out


def test_the_pages_use_the_same_function():
    from core.ui import stores
    assert stores.cache_dir is store.cache_dir


def test_nothing_else_reads_nve_cache():
    """Only core.store reads NVE_CACHE from the environment (others may set it, as ``bench app`` does)."""
    readers = []
    for path in [*ROOT.glob("core/**/*.py"), *ROOT.glob("pages/*.py"), ROOT / "app.py",
                 *ROOT.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == "NVE_CACHE":
                readers.append(str(path.relative_to(ROOT)))
    assert readers == ["core/store.py"], readers  # its CACHE_ENV

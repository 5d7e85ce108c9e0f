"""``python -m core bench app`` reaches the app benchmark, which lives outside the library (bench/), and says
what to do where that package is not there (an installed core run outside a checkout)."""
import sys
from pathlib import Path

import bench.app
from core.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bench_app_dispatches_to_the_bench_package(monkeypatch, capsys, tmp_path):
    calls = []

    def recorded(experiment, walks, cache_dir):
        calls.append((experiment, walks, cache_dir))
        return {"experiment": experiment, "walks": walks}
    monkeypatch.setattr(bench.app, "bench_app", recorded)
    assert main(["--cache", str(tmp_path), "bench", "app", "--experiment", "demo", "--walks", "2"]) == 0
    assert calls == [("demo", 2, tmp_path)]
    assert capsys.readouterr().out.split() == ["experiment", "demo", "walks", "2"]


def test_bench_app_outside_a_checkout_is_one_clear_error(monkeypatch, capsys, tmp_path):
    # what an installed core run outside a checkout sees: no bench/ on the path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    monkeypatch.delitem(sys.modules, "bench")
    monkeypatch.delitem(sys.modules, "bench.app")
    assert main(["--cache", str(tmp_path), "bench", "app"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `bench app` runs from a checkout") and "Traceback" not in err

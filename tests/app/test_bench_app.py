"""``python -m core bench app`` on the small real store: the §6.1.2 walk runs through every page and the
report has its structure (no timing is asserted)."""
import gc
import os
import shutil

import pytest

from bench.app import TARGET_P95_MS, bench_app
from core.ui import services

STEPS = ["1_select_cell", "2_sort_l2_increasing", "3_select_pair", "4a_open_ranking", "4b_sort_iou_bmap",
         "5_select_neuron", "6_open_receptive_fields", "7_open_context", "8a_open_clustering",
         "8b_parent_node"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def test_bench_app_walks_every_step(cifar20_store, tmp_path, monkeypatch):
    monkeypatch.delenv("NVE_CACHE", raising=False)
    shutil.copytree(cifar20_store.path, tmp_path / "cifar20")
    r = bench_app("cifar20", walks=1, cache_dir=tmp_path, stride=4, timeout=300)
    assert r["walks"] == 1 and r["pairs"] == len(cifar20_store) and r["map_stride"] == 4
    assert list(r["interactions_ms"]) == STEPS and list(r["cold_walk"]["ms"]) == STEPS
    for stats in r["interactions_ms"].values():
        assert set(stats) == {"p50", "p95", "max"} and 0 < stats["p50"] <= stats["p95"] <= stats["max"]
    assert r["target_p95_ms"] == TARGET_P95_MS
    assert r["over_target"] == [s for s in STEPS if r["interactions_ms"][s]["p95"] > TARGET_P95_MS]
    # the walk's pair is the first by L2 of the most populated cell, and its maps are in the disk cache
    pairs = cifar20_store.pairs
    counts = pairs.groupby(["label", "adv_label"]).size()
    (walk,) = r["walk_cells_pairs"]
    assert counts[tuple(walk["cell"])] == counts.max()
    in_cell = pairs[(pairs["label"] == walk["cell"][0]) & (pairs["adv_label"] == walk["cell"][1])]
    assert walk["pair"] == int(in_cell.sort_values(["l2", "pair"])["pair"].iloc[0])
    assert list((tmp_path / "cifar20" / "derived").glob(f"vmap-p{walk['pair']}-*-s4-*.npy"))
    assert r["cold_walk"]["pair"] != walk["pair"] or len(counts) == 1
    assert "NVE_CACHE" not in os.environ  # restored
    # the walk ran through app.py (its sidebar is checked by the walk), which froze the startup heap
    assert services._frozen and gc.get_freeze_count() > 0

"""Concurrency limits of a shared server (core.concurrency, core.analysis): vulnerability maps are computed
at most K at a time and once per map however many users ask for it, the in-memory caches stay inside
their byte budget, and results shared by all users are read-only.

A small synthetic store stands in for a prepared one; the map computation is replaced by a counting,
deliberately slow stand-in (the real one is covered by tests/core/test_vulnerability.py), so the tests
are about who computes what, and when."""
import json
import logging
import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from core import concurrency, hosting, vulnerability
from core.analysis import Analysis
from core.concurrency import ByteLRU, ComputeGate, nbytes
from core.store import SCHEMA_VERSION, Store

pytestmark = pytest.mark.reliability

N_PAIRS, N_NEURONS, C, H, W, FH, FW = 6, 16, 1, 28, 28, 4, 4
WAIT = 30  # seconds: a generous bound for a thread to reach a point (never a timed assertion)


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path) -> Store:
    """A tiny complete store: what ``Analysis`` reads for maps and RFs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "cache" / "tiny"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "created": "2026-11-25T00:00:00", "classes": list("ab"),
        "counts": {"n_success": N_PAIRS}, "config": {"model": {}}}))
    np.save(path / "benign_pooled.npy", rng.random((N_PAIRS, N_NEURONS), dtype=np.float32))
    np.save(path / "benign_images.npy", rng.integers(0, 256, (N_PAIRS, C, H, W), dtype=np.uint8))
    np.save(path / "adversarial_images.npy", rng.random((N_PAIRS, C, H, W), dtype=np.float32))
    for side in ("benign", "adversarial"):
        np.save(path / f"{side}_fmaps.npy", rng.random((N_PAIRS, N_NEURONS, FH, FW), dtype=np.float32))
        np.save(path / f"{side}_logits.npy", rng.random((N_PAIRS, 2), dtype=np.float32))  # the exact sorts
    pd.DataFrame({"pair": range(N_PAIRS), "label": [0] * N_PAIRS, "adv_label": [1] * N_PAIRS}
                 ).to_parquet(path / "pairs.parquet")
    return _unchecked(path)


def _unchecked(path) -> Store:
    """The tiny store opened past the integrity check, which would rightly refuse it: it holds only the
    files Analysis reads for maps and RFs."""
    store = Store.__new__(Store)
    store.path, store.id, store._arrays = path, path.name, {}
    store.manifest = json.loads((path / "manifest.json").read_text())
    return store


class FakeMaps:
    """Stands in for ``core.vulnerability.vulnerability_maps``: counts calls per image, tracks how many
    run at once, and runs until ``release`` is set (or at once when ``hold`` is False)."""

    def __init__(self, hold: bool = True):
        self.lock = threading.Lock()
        self.calls: list[float] = []
        self.running = self.peak = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, model, benign, adversarial, bc, ac, **kw):
        with self.lock:
            self.calls.append(float(benign.sum()))
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            assert self.release.wait(WAIT), "the test never released the computation"
            b = torch.full(benign.shape[1:], float(benign.mean()))
            return b, b + 1.0
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def fake(monkeypatch):
    f = FakeMaps()
    monkeypatch.setattr(vulnerability, "vulnerability_maps", f)
    return f


@pytest.fixture
def gate(monkeypatch):
    """A fresh process-wide gate of 2 slots (the module's own is shared with the rest of the session)."""
    g = ComputeGate(2)
    monkeypatch.setattr(concurrency, "MAP_JOBS", g)
    return g


def _analysis(store: Store, **kw) -> Analysis:
    an = Analysis(_unchecked(store.path), **kw)  # its own Store object too: as a second server process would
    an._model = object()  # never loaded: the fake computation does not use it
    return an


def _threads(targets) -> list:
    results, errors = [None] * len(targets), []

    def run(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in ts:
        t.start()
    return ts, results, errors


def _join(ts, errors):
    for t in ts:
        t.join(WAIT)
        assert not t.is_alive(), "a thread is stuck"
    assert not errors, errors


# -- the gate itself -----------------------------------------------------------------------------------
def test_one_computation_for_many_requests_of_the_same_key():
    g = ComputeGate(2)
    release, calls = threading.Event(), []

    def compute():
        calls.append(1)
        release.wait(WAIT)
        return object()
    ts, results, errors = _threads([lambda: g.run("map", compute)] * 8)
    _until(lambda: g.joined == 7, "7 requests to join the first")
    release.set()
    _join(ts, errors)
    assert len(calls) == 1 and g.computed == 1
    assert all(r is results[0] for r in results), "every request gets the one result"
    assert g.in_flight() == 0


def test_never_more_than_k_at_once_and_the_rest_wait():
    g = ComputeGate(2)
    release, lock, state = threading.Event(), threading.Lock(), {"now": 0, "peak": 0}

    def compute(i):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        release.wait(WAIT)
        with lock:
            state["now"] -= 1
        return i
    ts, results, errors = _threads([lambda i=i: g.run(("map", i), lambda: compute(i)) for i in range(5)])
    _until(lambda: g.in_flight() == 5 and g.running == 2, "5 requests, 2 of them computing")
    time.sleep(0.2)  # room for a third to start, if the gate let it
    assert state["now"] == 2, "only K computations may run while the others wait"
    release.set()
    _join(ts, errors)
    assert results == list(range(5)) and state["peak"] == 2 == g.peak and g.computed == 5


def test_an_error_reaches_every_waiter_and_the_next_request_retries():
    g = ComputeGate(1)
    release = threading.Event()

    def fail():
        release.wait(WAIT)
        raise RuntimeError("out of memory")
    ts, _, errors = _threads([lambda: g.run("k", fail)] * 3)
    _until(lambda: g.joined == 2, "2 requests to join the failing one")
    release.set()
    for t in ts:
        t.join(WAIT)
    assert len(errors) == 3 and all(str(e) == "out of memory" for e in errors)
    assert g.run("k", lambda: 42) == 42, "a failed flight must not poison its key"


def test_limits_from_the_environment(monkeypatch, caplog, tmp_path):
    """Both limits are server settings (core.hosting): NVE_MAX_MAP_JOBS / NVE_ANALYSIS_CACHE_MB or the
    server's TOML file; a bad value is ignored with a warning naming the variable."""
    monkeypatch.setenv(hosting.CONFIG_ENV, str(tmp_path / "absent.toml"))  # whatever the machine has
    monkeypatch.delenv("NVE_MAX_MAP_JOBS", raising=False)
    monkeypatch.delenv("NVE_ANALYSIS_CACHE_MB", raising=False)
    assert concurrency.max_map_jobs() == max(1, (os.cpu_count() or 1) // 2)
    assert concurrency.analysis_cache_bytes() == 256 * 2**20
    monkeypatch.setenv("NVE_MAX_MAP_JOBS", "3")
    monkeypatch.setenv("NVE_ANALYSIS_CACHE_MB", "64")
    assert concurrency.max_map_jobs() == 3 and concurrency.analysis_cache_bytes() == 64 * 2**20
    with caplog.at_level(logging.WARNING, logger=hosting.__name__):
        for bad in ("many", "0", "-2", "1.5"):
            monkeypatch.setenv("NVE_MAX_MAP_JOBS", bad)
            assert concurrency.max_map_jobs() == max(1, (os.cpu_count() or 1) // 2)
    assert "NVE_MAX_MAP_JOBS: max_map_jobs='many' is not a positive integer" in caplog.text
    monkeypatch.delenv("NVE_MAX_MAP_JOBS")
    monkeypatch.delenv("NVE_ANALYSIS_CACHE_MB")
    (tmp_path / "nve.toml").write_text("max_map_jobs = 5\nanalysis_cache_mb = 32\n")
    monkeypatch.setenv(hosting.CONFIG_ENV, str(tmp_path / "nve.toml"))  # like the other server limits
    assert concurrency.max_map_jobs() == 5 and concurrency.analysis_cache_bytes() == 32 * 2**20
    with pytest.raises(ValueError, match="positive integer"):
        ComputeGate(0)
    assert concurrency.MAP_JOBS.max_jobs >= 1


# -- through Analysis ------------------------------------------------------------------------------------
def test_many_users_asking_for_one_map_compute_it_once(store, fake, gate):
    """8 sessions (each with its own Analysis, as after a server restart or with two server processes'
    worth of objects) open the same pair at once: one computation, one file, the same maps for all."""
    analyses = [_analysis(store) for _ in range(8)]
    ts, results, errors = _threads([lambda a=a: a.vulnerability_maps(2, stride=2) for a in analyses])
    _until(lambda: gate.joined == 7, "7 sessions to wait for the first one's computation")
    fake.release.set()
    _join(ts, errors)
    assert len(fake.calls) == 1 and gate.computed == 1
    for b, a in results:
        assert np.array_equal(b, results[0][0]) and np.array_equal(a, results[0][1])
    assert [p.name for p in (store.path / "derived").iterdir()] == ["vmap-p2-k2-s2-probability-fp32-v2.npy"]
    # later requests read the file: no computation, no slot taken
    assert np.array_equal(_analysis(store).vulnerability_maps(2, stride=2)[0], results[0][0])
    assert len(fake.calls) == 1 and gate.computed == 1


def test_distinct_maps_are_bounded_by_the_gate(store, fake, gate):
    """K+1 (here 5 > K = 2) different maps asked at once on one shared Analysis: 2 compute, 3 wait."""
    an = _analysis(store)
    ts, results, errors = _threads([lambda p=p: an.vulnerability_maps(p, stride=2) for p in range(5)])
    _until(lambda: gate.in_flight() == 5 and fake.running == 2, "5 maps asked, 2 computing")
    time.sleep(0.2)
    assert fake.running == 2, "a third map computation started past the limit"
    fake.release.set()
    _join(ts, errors)
    assert fake.peak == 2 and gate.peak == 2 and len(fake.calls) == 5
    for p, (b, _) in enumerate(results):  # each thread got its own pair's map
        assert b.mean() == pytest.approx(store.pair_images(p)[0].mean(), rel=1e-6)


def test_different_parameters_are_different_maps(store, fake, gate):
    fake.release.set()
    an = _analysis(store)
    an.vulnerability_maps(1, stride=2)
    an.vulnerability_maps(1, stride=4)
    an.vulnerability_maps(1, stride=2, output="logit")
    an.vulnerability_maps(1, stride=2)
    assert len(fake.calls) == 3


def test_shared_results_are_read_only(store, fake, gate):
    """One Analysis serves every session: a page that changed a cached array in place would change it
    for everybody, so the cache hands out read-only arrays."""
    fake.release.set()
    an = _analysis(store)
    b, a = an.vulnerability_maps(0, stride=2)
    with pytest.raises(ValueError, match="read-only"):
        b[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        an.rf_thresholds()[0] = 0.0
    assert np.array_equal(an.vulnerability_maps(0, stride=2)[0], b)


# -- byte-bounded memory -----------------------------------------------------------------------------------
def test_the_worst_case_item_is_measured_in_bytes():
    # RFs of 512 neurons on one 224×224 RGB image: (512,3,224,224) float32 + (512,224,224) bool masks
    rf = torch.empty((512, 3, 224, 224), device="meta")
    masks = torch.empty((512, 224, 224), dtype=torch.bool, device="meta")
    assert nbytes((rf, masks)) == 512 * 3 * 224 * 224 * 4 + 512 * 224 * 224 == 333_971_456
    assert nbytes(np.zeros((3, 4), np.float64)) == 96
    assert nbytes({"a": np.zeros(10, np.uint8), "b": [np.zeros(2, np.float32)]}) == 18
    # 32 of them (the old item-count limit) would be 10.7 GB; a 256 MB cache does not even keep one
    cache = ByteLRU(256 * 2**20)
    cache.put("rf", (rf, masks))
    assert "rf" not in cache and cache.bytes == 0


def test_lru_keeps_the_most_recent_items_within_its_budget():
    cache = ByteLRU(1000)
    rng = np.random.default_rng(1)
    for i in range(300):
        cache.put(i, np.zeros(int(rng.integers(1, 400)), np.uint8))
        if i % 7 == 0:
            cache.get(i // 2)  # touch an older one
        assert cache.bytes <= 1000
        assert cache.bytes == sum(nbytes(cache.get(k)) for k in list(cache._items))
    cache = ByteLRU(300)
    for k in "abc":
        cache.put(k, np.zeros(100, np.uint8))
    cache.get("a")  # a is now the most recent: b goes first
    cache.put("d", np.zeros(100, np.uint8))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("a", np.zeros(250, np.uint8))  # replacing a key frees its old bytes first
    assert cache.bytes <= 300 and "a" in cache


def test_analysis_memory_stays_within_its_byte_budget(store, monkeypatch):
    one = nbytes(_analysis(store).rf_masks(0, "benign", mode="fraction", value=0.5))
    budget = int(2.5 * one)  # room for two images' RF masks (what the cache keeps of the RFs)
    an = _analysis(store, memory_bytes=budget)
    for pair in range(N_PAIRS):
        for side in ("benign", "adversarial"):
            an.rf_masks(pair, side, mode="fraction", value=0.5)
            an.rf(pair, side, mode="fraction", value=0.5)  # built from the masks, not kept
            assert an._memory.bytes <= budget
    assert len(an._memory) == 2
    # the budget comes from the environment by default
    monkeypatch.setenv("NVE_ANALYSIS_CACHE_MB", "3")
    assert _analysis(store)._memory.max_bytes == 3 * 2**20


# -- tracing beside other threads -----------------------------------------------------------------------
def _small_net() -> torch.nn.Module:
    from torchvision.models import resnet18
    return resnet18(num_classes=10).eval()


def test_tracing_a_model_does_not_break_other_threads_forward_passes():
    """The bf16 map engine traces its model with torch.fx, which patches nn.Module.__call__ for the whole
    process while it runs: before the fix, a prepare running in another thread of the server failed with
    "NameError: module is not installed as a submodule" when a user's first map was being traced."""
    traced, other = _small_net(), _small_net()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = other(x)
    errors, stop, passes = [], threading.Event(), [0]

    def forwards():
        with torch.no_grad():
            while not stop.is_set():
                try:
                    assert torch.equal(other(x), expected)
                    passes[0] += 1
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))
                    return
    t = threading.Thread(target=forwards, daemon=True)
    t.start()
    _until(lambda: passes[0] > 0, "the other thread's first forward pass")
    try:
        for _ in range(30):
            vulnerability._TRACED.pop(traced, None)
            assert vulnerability.DeltaForward.for_model(traced) is not None
    finally:
        stop.set()
        t.join(WAIT)
    assert not errors, errors[0]
    assert passes[0] > 1


def test_concurrent_traces_all_succeed_and_restore_torch():
    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    nets = [_small_net() for _ in range(4)]
    ts, results, errors = _threads([lambda n=n: vulnerability.DeltaForward.for_model(n) for n in nets])
    _join(ts, errors)
    assert all(r is not None for r in results), "a trace disturbed by another fell back to fp32"
    assert torch.nn.Module.__call__ is call and torch.nn.Module.__getattr__ is getattr_

"""Process-wide concurrency limits for a server shared by several users: a gate on heavy compute and a
byte-bounded cache (pure Python: ``core.analysis`` uses it; no Streamlit).

Every session of a Streamlit server runs its script in a thread of one process, and the per-experiment
``Analysis`` objects are shared by all of them (``core.ui.services``). Two things keep N users from
exhausting the machine:

- **Heavy compute is gated.** A vulnerability map is 1,024 forward passes in batches of 128 (seconds of
  every core, and a batch's activations in memory). ``MAP_JOBS`` lets at most ``max_map_jobs()`` of them
  run at once in the process (setting ``max_map_jobs``, env ``NVE_MAX_MAP_JOBS``; default half the CPU
  cores, at least 1); further requests wait their turn. Requests for the *same* map (same store, pair, k,
  stride, output, precision) are merged: one computes, the others wait for its result instead of queueing
  a second computation (a "single flight" per key).
- **Memory caches are bounded in bytes.** ``ByteLRU`` keeps the most recently used results up to a byte
  budget (``analysis_cache_bytes()``: setting ``analysis_cache_mb``, env ``NVE_ANALYSIS_CACHE_MB``,
  default 256 MB per ``Analysis``), not a number of items: the RFs of one image are 6 MB for 512 neurons
  at 32×32 but 308 MB at 224×224, so an item count bounds nothing. ``core.ui.services`` keeps at most 8
  ``Analysis`` objects, so these caches hold at most 8 × 256 MB in all.

Both numbers are server settings (``core.hosting``, with the other limits): a value that is not a positive
integer is ignored with a warning (the default is used), so a typo in a unit file must not stop the server.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from core.hosting import settings


def max_map_jobs() -> int:
    """How many vulnerability maps may be computed at once in this process."""
    return settings().max_map_jobs


def analysis_cache_bytes() -> int:
    """The byte budget of one ``Analysis``'s in-memory cache."""
    return settings().analysis_cache_mb * 2**20


# -- bounded, deduplicated compute -------------------------------------------------------------------
class _Flight:
    __slots__ = ("done", "value", "error")

    def __init__(self):
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ComputeGate:
    """At most ``max_jobs`` computations at once; concurrent requests for one key share one computation.

    ``run(key, fn)``: if a computation of ``key`` is in flight, wait for it and return its result (or
    raise its error); otherwise compute ``fn()`` once a slot is free. ``fn`` should itself look for a
    result a previous flight left behind (a file, a cache) before computing: a request that arrives just
    after a flight ended starts a new one. Counters (``computed``, ``joined``, ``peak``) are for tests and
    benchmarks.
    """

    def __init__(self, max_jobs: int):
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(f"max_jobs must be a positive integer, got {max_jobs!r}")
        self.max_jobs = max_jobs
        self._slots = threading.BoundedSemaphore(max_jobs)
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self.running = 0
        self.peak = 0
        self.computed = 0
        self.joined = 0

    def run(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            else:
                self.joined += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            with self._slots:
                with self._lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                    self.computed += 1
                try:
                    flight.value = fn()
                finally:
                    with self._lock:
                        self.running -= 1
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.value

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)


MAP_JOBS = ComputeGate(max_map_jobs())


# -- byte-bounded LRU ---------------------------------------------------------------------------------
def nbytes(value) -> int:
    """The memory a cached result holds: arrays and tensors by their data, containers summed."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if type(value).__module__.startswith("torch") and hasattr(value, "element_size"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 64  # a small Python object


class ByteLRU:
    """A thread-safe LRU mapping that keeps at most ``max_bytes`` of values (``nbytes``). Adding a value
    evicts the least recently used ones until it fits; a value larger than the whole budget is not kept
    (the caller still gets it from ``put``)."""

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value):
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._sizes.pop(key)
                del self._items[key]
            if size <= self.max_bytes:
                self._items[key] = value
                self._sizes[key] = size
                self._bytes += size
                while self._bytes > self.max_bytes:
                    old, _ = self._items.popitem(last=False)
                    self._bytes -= self._sizes.pop(old)
        return value

"""Several experts on one server (issue 5, concurrency), in headless Debian Chromium.

``test_concurrent_walks_with_a_prepare_running``: one Streamlit server over a copy of the demo store;
8 browser contexts click the paper's §6.1.2 walk at the same time, each on another prediction-matrix
cell (so another pair and neuron), while a 9th context starts a real ``prepare`` (the demo preset, 30
images per class) from the Prepare page. It proves:

- every walk completes, with no browser error: the vulnerability maps, 8 of them asked at once, are
  computed through the bounded gate (``core.concurrency``) and reach every session;
- no state leaks: each session ends with its own pair, neuron and dendrogram node in its URL and its
  sidebar, never another's;
- the prepare, running in a process of its own (``core.jobs``), does not block the others: walk
  interactions complete while it runs, and it publishes a complete store;
- memory stays bounded: the server's resident set and the job process's, sampled every 0.2 s, stay
  below ``RSS_LIMIT`` together.

Each walker's page records, in the browser, when it sent each rerun request over Streamlit's websocket
and when the server's "script finished" message came back: the interaction latency under load, whose
p95 goes to BENCHMARKS.md with the peak RSS (printed, and written to test-output/concurrency.json).

``test_two_sessions_keep_their_own_selection``: the same through AppTest (no browser), interleaving two
sessions' reruns on one process's shared caches.

Playwright's sync API is not thread-safe: every browser thread has its own ``sync_playwright`` and its
own Chromium. Under this load the walk's own waits are too eager, so the test swaps walk.py's ``_idle``
and ``_wait_text`` for versions that wait until the page has settled (see ``_settled``), and gives every
wait 5 minutes. ``NVE_TEST_WALKERS`` (default 8) sets the number of walks for a quicker local run.
"""
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tests.browser.walk as walk_mod
from core import image_space
from core.store import Store
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, _serve
from tests.browser.walk import _sidebar, open_page, walk

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
WALKERS = int(os.environ.get("NVE_TEST_WALKERS", 8))
PREPARE_ID = "concurrent-demo"
PREPARE_PER_CLASS = 30
RSS_LIMIT = 4 * 2**30
STEP_TIMEOUT = 300_000  # ms per browser wait: 9 Chromiums and the server share 2 cores
REPORT = ROOT / "test-output" / "concurrency.json"

# Watches the page's websocket to Streamlit: each rerun request the page sends (a BackMsg with
# rerun_script, field 11) and each successful "script finished" the server sends back (a ForwardMsg with
# script_finished, field 6, status 0 or 3), read from the messages' top-level protobuf fields. Keeps the
# time of the last of each (the page is settled when the last request has been answered) and, per
# request, the seconds until its answer: a rerun the next request interrupted (status 2) counts until the
# one that completes. Times are the browser's clock (performance.timeOrigin + now(): epoch ms).
WS_RECORDER = """(() => {
  const Orig = window.WebSocket, now = () => performance.timeOrigin + performance.now();
  const state = (window.__nve = {sent: 0, finished: 0, pending: [], latencies: []});
  const fields = d => {
    const u8 = d instanceof ArrayBuffer ? new Uint8Array(d)
      : ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : null;
    const out = {};
    if (!u8) return out;
    let i = 0;
    const varint = () => { let x = 0, s = 1, b; do { b = u8[i++]; x += (b & 127) * s; s *= 128; }
                           while (b & 128 && i < u8.length); return x; };
    while (i < u8.length) {
      const tag = varint(), f = Math.floor(tag / 8), w = tag % 8;
      if (w === 0) out[f] = varint();
      else if (w === 2) { const n = varint(); out[f] = true; i += n; }
      else if (w === 1) i += 8; else if (w === 5) i += 4; else break;
    }
    return out;
  };
  class Recorded extends Orig {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', e => {
        const f = fields(e.data);
        if (f[6] === 0 || f[6] === 3) {
          const t = now();
          state.finished = t;
          for (const s of state.pending) state.latencies.push([t / 1000, (t - s) / 1000]);
          state.pending = [];
        }
      });
    }
    send(d) {
      if (fields(d)[11] !== undefined) { state.sent = now(); state.pending.push(state.sent); }
      super.send(d);
    }
  }
  window.WebSocket = Recorded;
})();"""


# -- measurement helpers -----------------------------------------------------------------------------------
def _family(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    family, todo = [], [root]
    while todo:
        p = todo.pop()
        family.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return family


def _rss(pids) -> int:
    total = 0
    for p in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(m.group(1)) * 1024 if m else 0
    return total


def _is_job(pid: int) -> bool:
    try:
        return b"core.jobs" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"streamlit" in b" ".join(argv) and port.encode() in argv:
            return int(d.name)
    raise AssertionError(f"no Streamlit server process on port {port}")


class Sampler(threading.Thread):
    """Samples the RSS of the server process and of its prepare jobs' processes (with their children),
    and watches the prepare's folders (start: its partial folder or lock appears; end: the published
    manifest appears). A sample is (time, server bytes, jobs bytes)."""

    def __init__(self, pid: int, cache: Path):
        super().__init__(daemon=True)
        self.pid, self.cache, self.stop = pid, cache, threading.Event()
        self.samples: list[tuple[float, int, int]] = []
        self.prepare_started = self.prepare_ended = None

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            family = _family(self.pid)
            jobs = [p for p in family if _is_job(p)]
            jobs = [q for p in jobs for q in _family(p)]
            self.samples.append((now, _rss([p for p in family if p not in jobs]), _rss(jobs)))
            if self.prepare_started is None and any(self.cache.glob(f".partial-{PREPARE_ID}*")):
                self.prepare_started = now
            if self.prepare_ended is None and (self.cache / PREPARE_ID / "manifest.json").is_file():
                self.prepare_ended = now
            self.stop.wait(0.2)

    @property
    def peak(self) -> int:
        """The peak of server + jobs together."""
        return max(s + j for _, s, j in self.samples)

    def peak_of(self, which: int) -> int:
        return max(sample[which] for sample in self.samples)


# -- browser sessions ------------------------------------------------------------------------------------
def _in_browser(fn):
    """Run ``fn(page)`` in a fresh Playwright + Chromium of this thread; returns (result, page info)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = open_page(browser)  # a page in a new context of its own: a session of its own
            pg.set_default_timeout(STEP_TIMEOUT)
            pg.add_init_script(WS_RECORDER)
            try:
                result = fn(pg)
                info = {"url": pg.url, "sidebar": _sidebar(pg), "errors": pg.errors + pg.failed,
                        "latencies": pg.evaluate("window.__nve.latencies")}
            except BaseException:
                shots = ROOT / "test-output" / "browser"
                shots.mkdir(parents=True, exist_ok=True)
                pg.screenshot(path=str(shots / f"concurrency-failed-{threading.current_thread().name}.png"))
                raise
            return result, info
        finally:
            browser.close()


def _prepare_from_the_page(pg, url: str) -> dict:
    """Start a small real prepare from the Prepare page and wait until the page says it is ready."""
    pg.goto(url + "/")
    pg.wait_for_selector("[data-testid=stSidebarNav]")
    pg.locator("[data-testid=stSidebarNav]").get_by_text("Prepare an experiment", exact=True).click()
    pg.wait_for_selector(".st-key-prepare_start button")
    for label, value in (("Images per class (0 = all)", str(PREPARE_PER_CLASS)),
                         ("Experiment id", PREPARE_ID)):
        box = pg.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        _idle_under_load(pg)
    pg.locator(".st-key-prepare_start button").click()
    pg.get_by_text(f"Preparing {PREPARE_ID}").first.wait_for()
    started = time.time()
    pg.get_by_text(f"{PREPARE_ID} is ready").first.wait_for(timeout=STEP_TIMEOUT * 2)
    return {"seen_running": started, "seen_ready": time.time()}


@pytest.fixture(scope="module")
def cache(demo_store, tmp_path_factory) -> Path:
    """A cache of its own holding a copy of the demo store (without its derived/ maps, so the sessions'
    maps are computed here, concurrently); the prepare writes its new experiment beside it."""
    folder = tmp_path_factory.mktemp("concurrency-cache")
    shutil.copytree(demo_store.path, folder / "demo", ignore=shutil.ignore_patterns("derived"))
    return folder


@pytest.fixture(scope="module")
def server(cache):
    # No file watcher: a source file edited while the server runs would make Streamlit re-import
    # modules under the running sessions' feet (a production server should set fileWatcherType = "none" too).
    old = os.environ.get("STREAMLIT_SERVER_FILE_WATCHER_TYPE")
    os.environ["STREAMLIT_SERVER_FILE_WATCHER_TYPE"] = "none"
    try:
        yield from _serve(cache)
    finally:
        if old is None:
            os.environ.pop("STREAMLIT_SERVER_FILE_WATCHER_TYPE", None)
        else:
            os.environ["STREAMLIT_SERVER_FILE_WATCHER_TYPE"] = old


# Under load a rerun's elements arrive over seconds, and the browser draws them (plotly charts are
# re-mounted, images fetched) a while after the server finished. "Settled", as a person would wait for
# it: the last rerun request has been answered, the app's own script state is idle
# (data-test-script-state on stApp) and every image has loaded; then the page's DOM has not changed for
# 0.5 s, and all that still holds. A text that appeared is read again only then. (Clicking on before
# the images arrived would make the next rerun drop them from Streamlit's media store, and the late
# requests would fail with 404s that no person would cause.) walk.py's _idle waits for the status
# widget, which Streamlit shows only a while after a run starts, and nothing waits for the charts to be
# redrawn: under load a click may find two copies of a chart, or read a page whose last elements have not
# arrived yet.
IDLE_JS = """() => window.__nve.finished >= window.__nve.sent
  && document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'
  && [...document.images].every(i => i.complete)"""
QUIET_JS = """(ms) => new Promise(resolve => {
  let timer;
  const done = () => { observer.disconnect(); resolve(true); };
  const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(done, ms); });
  observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
  timer = setTimeout(done, ms);
  setTimeout(done, 60000);  // a page that never settles is then caught by the next check
})"""


def _settled(pg) -> None:
    pg.wait_for_function(IDLE_JS, timeout=walk_mod.TIMEOUT)
    pg.evaluate(QUIET_JS, 500)
    pg.wait_for_function(IDLE_JS, timeout=walk_mod.TIMEOUT)


def _idle_under_load(pg) -> None:
    pg.wait_for_timeout(300)
    _settled(pg)


def _wait_text_under_load(pg, pattern: str):
    pg.wait_for_function(walk_mod.TEXT_JS.replace("AREA", "stMain"), arg=pattern, timeout=walk_mod.TIMEOUT)
    _settled(pg)
    pg.wait_for_function(walk_mod.TEXT_JS.replace("AREA", "stMain"), arg=pattern, timeout=walk_mod.TIMEOUT)
    return re.search(pattern, pg.locator("[data-testid=stMain]").inner_text())


def test_concurrent_walks_with_a_prepare_running(server, cache, monkeypatch):
    monkeypatch.setattr(walk_mod, "TIMEOUT", STEP_TIMEOUT)  # read by every wait of the walk
    monkeypatch.setattr(walk_mod, "_idle", _idle_under_load)
    monkeypatch.setattr(walk_mod, "_wait_text", _wait_text_under_load)
    sampler = Sampler(_server_pid(server), cache)
    sampler.start()
    outcomes: dict[str, tuple] = {}

    def session(name, fn):
        try:
            outcomes[name] = ("ok", _in_browser(fn))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            outcomes[name] = ("error", f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=session, name=f"walker-{i}", daemon=True, args=(
        f"walker-{i}", lambda pg, i=i: walk(pg, server, Store(cache / "demo"), cell_rank=i, shots=None)))
        for i in range(WALKERS)]
    threads.append(threading.Thread(target=session, name="preparer", daemon=True, args=(
        "preparer", lambda pg: _prepare_from_the_page(pg, server))))
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1500)
    wall = time.time() - started
    sampler.stop.set()
    sampler.join(5)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"sessions still running after 25 min: {stuck}"

    failed = {k: v[1] for k, v in outcomes.items() if v[0] != "ok"}
    assert not failed, "sessions failed:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items())

    # -- each session ends on its own selection: no leak between sessions ---------------------------
    store = Store(cache / "demo")
    matrix = image_space.prediction_matrix(store.pairs, len(store.classes))
    cells = [np.unravel_index(k, matrix.shape) for k in np.argsort(-matrix, axis=None, kind="stable")]
    chosen = {}
    for i in range(WALKERS):
        result, info = outcomes[f"walker-{i}"][1]
        chosen[i] = result
        t, a = cells[i]
        assert not info["errors"], f"walker {i}: browser errors:\n" + "\n".join(info["errors"])
        assert f"pair={result['pair']}&" in info["url"] + "&", (i, info["url"])
        assert f"neuron={result['neuron']}&" in info["url"] + "&", (i, info["url"])
        assert f"clusters={result['clusters']}&" in info["url"] + "&", (i, info["url"])
        assert f"cell={t}-{a}&" in info["url"] + "&", (i, info["url"])
        sidebar = info["sidebar"]
        assert f"Pair #{result['pair']}:" in sidebar and f"Neuron {result['neuron']}" in sidebar, sidebar
        assert f"Cell: {store.classes[t]} → {store.classes[a]}" in sidebar, sidebar
        assert len(re.findall(r"Pair #\d+", sidebar)) == 1, sidebar
    assert len({c["pair"] for c in chosen.values()}) == WALKERS, f"the walkers should explain {WALKERS} pairs"

    # -- the prepare ran beside them, published a complete store, and blocked nobody ------------------
    _, prep_info = outcomes["preparer"][1]
    assert not prep_info["errors"], prep_info["errors"]
    new = Store(cache / PREPARE_ID)
    assert new.counts["n_images"] == PREPARE_PER_CLASS * len(new.classes)
    assert sampler.prepare_started and sampler.prepare_ended, "the prepare's folders were not seen"
    per_walker = [outcomes[f"walker-{i}"][1][1]["latencies"] for i in range(WALKERS)]
    assert min(map(len, per_walker)) >= 12, "the websocket recorder missed the walk's reruns"
    interactions = [tuple(x) for w in per_walker for x in w]
    during = [s for t, s in interactions if sampler.prepare_started < t < sampler.prepare_ended]
    assert during, "no walk interaction completed while the prepare was running"

    # -- memory ------------------------------------------------------------------------------------------
    lat = np.array([s for _, s in interactions])
    report = {
        "sessions": WALKERS + 1, "walkers": WALKERS, "wall_s": round(wall, 1),
        "interactions": len(lat), "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3), "latency_max_s": round(float(lat.max()), 3),
        "interactions_during_prepare": len(during),
        "latency_p95_during_prepare_s": round(float(np.percentile(during, 95)), 3),
        "prepare_s": round(sampler.prepare_ended - sampler.prepare_started, 1),
        "rss_start_mb": round(sampler.samples[0][1] / 2**20),
        "rss_server_peak_mb": round(sampler.peak_of(1) / 2**20),
        "rss_job_peak_mb": round(sampler.peak_of(2) / 2**20), "rss_peak_mb": round(sampler.peak / 2**20),
        "rss_end_mb": round(sampler.samples[-1][1] / 2**20), "rss_samples": len(sampler.samples),
        "max_map_jobs": int(os.environ.get("NVE_MAX_MAP_JOBS") or max(1, (os.cpu_count() or 1) // 2)),
        "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "pairs": [c["pair"] for c in chosen.values()],
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1))
    print("\nconcurrency:", json.dumps(report))
    assert len(sampler.samples) > 10
    assert sampler.peak_of(2) > 0, "the prepare job never ran in a process of its own"
    assert sampler.peak < RSS_LIMIT, f"server + job RSS peaked at {sampler.peak / 2**20:.0f} MB"


# -- AppTest: two sessions, one process ---------------------------------------------------------------------
def test_two_sessions_keep_their_own_selection(cache):
    """Two sessions in one process (shared st.cache_resource, one shared Analysis) interleave reruns of
    the same pages on different pairs and neurons: each keeps its own selection, sidebar and URL."""
    from streamlit.testing.v1 import AppTest

    from bench.app import served  # app.py (sidebar, URL) around every page, as the server runs it
    from core.ui.state import KEY, Selection
    store = Store(cache / "demo")
    picks = {"a": (int(store.pairs["pair"].iloc[1]), 3), "b": (int(store.pairs["pair"].iloc[2]), 7)}
    with served(cache):
        sessions = {}
        for name, (pair, neuron) in picks.items():
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
            at.session_state[KEY] = Selection(experiment="demo", pair=pair, neuron=neuron)
            sessions[name] = at.run()
        for page in ("pages/receptive_fields.py", "pages/neuron_ranking.py", "pages/clustering.py"):
            for at in sessions.values():
                at.switch_page(page).run()
                assert not at.exception, at.exception
            for name, at in sessions.items():
                (pair, neuron), (other_pair, other_neuron) = picks[name], picks["b" if name == "a" else "a"]
                side = "\n".join(m.value for m in at.sidebar.markdown)
                assert f"Pair #{pair}:" in side and f"Neuron {neuron}" in side, (name, page, side)
                assert f"Pair #{other_pair}:" not in side and f"Neuron {other_neuron}" not in side, side
                assert (at.session_state[KEY].pair, at.session_state[KEY].neuron) == (pair, neuron)
                assert at.query_params["pair"] == str(pair), at.query_params
                assert at.query_params["neuron"] == str(neuron), at.query_params

"""A real Streamlit server and headless Debian Chromium (never `playwright install`)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _need

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def browser():
    _need(Path(CHROMIUM), "install Debian chromium (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _serve(cache: Path):
    """Serve app.py over the stores in ``cache`` on a free port; yield its URL."""
    port = _free_port()
    env = {**os.environ, "NVE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the Streamlit server did not start within 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(ROOT / ".streamlit" / "cache", ignore_errors=True)


@pytest.fixture(scope="session")
def app_url(cifar20_store):
    yield from _serve(cifar20_store.path.parent)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    """The shipped demo (Fashion-MNIST, 2,801 pairs), prepared as `make run` does (about a minute)."""
    from core.pipeline import prepare
    from core.presets import preset
    from core.store import Store
    if os.environ.get("NVE_TEST_DEMO_STORE"):  # a demo store prepared earlier (faster local reruns)
        return Store(os.environ["NVE_TEST_DEMO_STORE"])
    cache = tmp_path_factory.mktemp("demo-cache")
    return Store(prepare(preset("demo"), "demo", cache_dir=cache, show_bars=False))


@pytest.fixture(scope="session")
def demo_url(demo_store):
    yield from _serve(demo_store.path.parent)


@pytest.fixture(scope="session")
def cifar56_url(cifar56_store):
    yield from _serve(cifar56_store.path.parent)

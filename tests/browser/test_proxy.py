"""The reverse proxy, for real (issue 5, item 6): Debian nginx on loopback runs deploy/nginx-nve.conf
(ports rewritten) in front of the app served under --server.baseUrlPath nve, and the paper's §6.1.2
walk, a checkpoint upload and the login gate are driven through it in headless Chromium."""
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.conftest import ROOT, _free_port
from tests.browser.walk import TIMEOUT, open_page, walk
from tests.conftest import _need
from tests.reliability.test_deploy import NGINX, NGINX_WHY, nginx_conf, start_nginx

pytestmark = pytest.mark.reliability

BASE = "nve"  # deploy/nve.service's --server.baseUrlPath and the site's location


def _serve_under(cache: Path, base: str, *extra: str) -> tuple[subprocess.Popen, int]:
    """Like conftest's _serve, with the app under the sub-path ``base``; returns (process, port)."""
    port = _free_port()
    env = {**os.environ, "NVE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--server.baseUrlPath", base, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/{base}/_stcore/health", timeout=2)
            return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("the Streamlit server did not start within 60 s")


def _proxied(cache: Path, prefix: Path, *extra: str):
    """The app under /nve/ behind nginx; yields (url of the app through nginx, nginx's prefix)."""
    _need(NGINX, NGINX_WHY)
    app, app_port = _serve_under(cache, BASE, *extra)
    listen = _free_port()
    try:
        nginx = start_nginx(nginx_conf(prefix, app_port, listen), listen)
    except RuntimeError as e:
        app.kill()
        pytest.fail(str(e))
    try:
        yield f"http://127.0.0.1:{listen}/{BASE}", prefix
    finally:
        nginx.terminate()
        app.terminate()
        nginx.wait(timeout=10)
        app.wait(timeout=10)
        shutil.rmtree(ROOT / ".streamlit" / "cache", ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(demo_store, tmp_path_factory):
    yield from _proxied(demo_store.path.parent, tmp_path_factory.mktemp("nginx"))


def test_walk_through_nginx(browser, proxy, demo_store):
    url, prefix = proxy
    pg = open_page(browser)  # a page in a fresh context of its own
    picked = walk(pg, url, demo_store, shots="proxy-")
    assert picked["members"] >= 2
    assert pg.url.startswith(f"{url}/"), f"navigation left the sub-path: {pg.url}"
    assert not pg.errors, pg.errors
    assert not pg.failed, pg.failed
    pg.close()
    # the session's websocket went through nginx (101 Switching Protocols), under the sub-path; nginx
    # logs a websocket when it closes, a moment after the page does
    upgraded = f'"GET /{BASE}/_stcore/stream HTTP/1.1" 101'
    deadline = time.time() + 15
    while upgraded not in (log := (prefix / "access.log").read_text()) and time.time() < deadline:
        time.sleep(0.2)
    assert upgraded in log
    assert f"/{BASE}/static/" in log


def test_checkpoint_upload_through_nginx(browser, proxy, demo_store):
    """A real CNN checkpoint (the demo model's, over nginx's 1 MB default body limit) uploads through the
    proxy with the page's XSRF token, and the app reads it."""
    from core.presets import PRESETS

    url, _ = proxy
    data = Path(PRESETS["demo"].model.checkpoint).read_bytes()
    assert len(data) > 2 * 1024 * 1024
    ckpt = Path(os.environ.get("TMPDIR", "/tmp")) / f"nve-proxy-{os.getpid()}.safetensors"
    ckpt.write_bytes(data)
    pg = open_page(browser)
    try:
        # through the sidebar: a deep link makes Streamlit's frontend probe <url>/prepare/_stcore/health
        # (a 404) before it finds the app's base path
        pg.goto(f"{url}/")
        pg.locator("[data-testid=stSidebarNav]").get_by_text("Prepare an experiment", exact=True).click(
            timeout=TIMEOUT)
        pg.get_by_text("Upload a file", exact=True).click(timeout=TIMEOUT)
        pg.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(ckpt), timeout=TIMEOUT)
        pg.wait_for_function("() => /Checkpoint received and readable/.test("
                             "document.querySelector('[data-testid=stMain]')?.innerText ?? '')",
                             timeout=TIMEOUT)
        assert not pg.errors, (pg.errors, pg.failed)
        assert not pg.failed, pg.failed
    finally:
        pg.close()
        ckpt.unlink(missing_ok=True)
        # the app keeps uploads content-addressed under the cache folder: leave the demo cache as it was
        for f in demo_store.path.parent.rglob(f"{hashlib.sha256(data).hexdigest()}*"):
            f.unlink(missing_ok=True)


def _request(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_proxy_enforces_xsrf_upload_limit_and_sub_path(proxy):
    url, _ = proxy
    # an upload without the page's XSRF token: refused by Streamlit (behind nginx)
    status, _, body = _request(url, "PUT", f"/{BASE}/_stcore/upload_file/some-session/some-file",
                               {"Content-Length": "5", "Content-Type": "application/octet-stream"}, b"hello")
    assert status == 403 and b"XSRF" in body
    # a body over the limit: refused by nginx before it reaches the app
    status, headers, _ = _request(url, "PUT", f"/{BASE}/_stcore/upload_file/some-session/some-file",
                                  {"Content-Length": str(600 * 1024 * 1024)})
    assert status == 413 and headers.get("Server", "").startswith("nginx")
    # /nve without the slash goes to /nve/ (a relative redirect: right behind any host name or port)
    status, headers, _ = _request(url, "GET", f"/{BASE}", {})
    assert status == 301 and headers["Location"] == f"/{BASE}/"
    # the health check and the app's page answer through the proxy
    assert urllib.request.urlopen(f"{url}/_stcore/health", timeout=10).read() == b"ok"
    assert b"<div id=\"root\">" in urllib.request.urlopen(f"{url}/", timeout=10).read()


def test_login_gate_holds_for_the_first_deep_link(browser, tmp_path):
    """With [auth] configured, a fresh server's very first visitor, opening a page's URL through the
    proxy, sees the login prompt and not the experiments."""
    (tmp_path / "cache").mkdir()
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[auth]\nredirect_uri = "http://127.0.0.1/nve/oauth2callback"\n'
                       'cookie_secret = "a-long-random-cookie-secret-for-tests-only"\n'
                       'client_id = "nve-test"\nclient_secret = "not-a-real-secret"\n'
                       'server_metadata_url = "https://idp.invalid/.well-known/openid-configuration"\n')
    gen = _proxied(tmp_path / "cache", tmp_path / "nginx", "--secrets.files", str(secrets))
    url, _ = next(gen)
    try:
        pg = open_page(browser)
        for page in ("experiments", "prepare"):
            pg.goto(f"{url}/{page}")
            pg.wait_for_function("() => (document.querySelector('[data-testid=stMain]')?.innerText ?? '')"
                                 ".trim().length > 10", timeout=TIMEOUT)
            main = pg.locator("[data-testid=stMain]").inner_text()
            assert "Neuron Vulnerability Explorer" in main and "not-a-real-secret" not in main, page
            assert "Experiments" not in main and "Prepare" not in main, page
        pg.close()
    finally:
        gen.close()

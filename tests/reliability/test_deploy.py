"""Hosting for a lab (issue 5, item 1): the server config, the nginx site and systemd unit in deploy/,
`make run`'s host/port/base-URL options, and the optional OIDC login (core/ui/auth.py) through AppTest.

The nginx helpers here (``nginx_site``, ``nginx_conf``, ``start_nginx``) are also used by
tests/browser/test_proxy.py, which runs the paper's walk through the same site file."""
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.ui import auth
from tests.conftest import _need

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
CONFIG = ROOT / ".streamlit" / "config.toml"
SITE = ROOT / "deploy" / "nginx-nve.conf"
UNIT = ROOT / "deploy" / "nve.service"
NGINX = Path("/usr/sbin/nginx")
NGINX_WHY = "install Debian nginx (apt-get install nginx; make test does)"

# a complete [auth] section; none of these values may ever reach the page or the logs
AUTH = {"redirect_uri": "http://localhost:8501/nve/oauth2callback",
        "cookie_secret": "cookie-secret-9f2c1e7a5b3d4c6e8f0a",
        "client_id": "nve-client-id-4711",
        "client_secret": "client-secret-d41d8cd98f00b204",
        "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration"}
SECRET_VALUES = (AUTH["cookie_secret"], AUTH["client_secret"], AUTH["client_id"])


# -- nginx helpers (shared with tests/browser/test_proxy.py) ----------------------------------------------

def nginx_site(app_port: int, listen_port: int) -> str:
    """deploy/nginx-nve.conf with the app's port and a loopback listen port put in."""
    text = SITE.read_text()
    for old, new in (("server 127.0.0.1:8501;", f"server 127.0.0.1:{app_port};"),
                     ("listen 80;", f"listen 127.0.0.1:{listen_port};")):
        assert text.count(old) == 1, f"deploy/nginx-nve.conf should contain {old!r} exactly once"
        text = text.replace(old, new)
    return text


def nginx_conf(prefix: Path, app_port: int, listen_port: int) -> Path:
    """A self-contained nginx.conf under ``prefix`` (pid, logs, temp files there; one process, in the
    foreground) that includes the rendered site, as Debian's /etc/nginx/nginx.conf includes sites."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nve.conf").write_text(nginx_site(app_port, listen_port))
    temp = "\n".join(f"    {k}_temp_path {prefix / k};" for k in ("client_body", "proxy", "fastcgi",
                                                                  "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} info;
events {{ worker_connections 512; }}
http {{
    access_log {prefix / 'access.log'};
{temp}
    include {prefix / 'nve.conf'};
}}
""")
    return conf


def nginx_cmd(conf: Path, *args: str) -> list[str]:
    return [str(NGINX), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log"),
            *args]


def start_nginx(conf: Path, listen_port: int) -> subprocess.Popen:
    """Run nginx in the foreground on ``conf``; return once it accepts connections."""
    proc = subprocess.Popen(nginx_cmd(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}): {(conf.parent / 'error.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("nginx did not listen within 20 s")


def _config() -> dict:
    return tomllib.loads(CONFIG.read_text())


# -- .streamlit/config.toml -------------------------------------------------------------------------------

def test_streamlit_config_is_set_for_a_server():
    cfg = _config()
    server = cfg["server"]
    assert server["headless"] is True
    assert server["enableXsrfProtection"] is True
    assert server["enableCORS"] is True, "XSRF protection is only complete with CORS protection on"
    assert 100 <= server["maxUploadSize"] <= 2048, "room for a ResNet checkpoint, not for a disk filler"
    assert server["maxMessageSize"] >= 200
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["toolbarMode"] == "viewer"


def test_streamlit_knows_every_option_of_the_config():
    """A misspelt option (enableXSRFProtection) parses as TOML but Streamlit ignores it."""
    from streamlit import config
    options = config.get_config_options()
    for section, values in _config().items():
        for key in values:
            assert f"{section}.{key}" in options, f"{section}.{key} is not a Streamlit option"


def test_server_reads_the_config():
    """`streamlit config show`, run where the server runs, reports the file's values as in force."""
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # the listing is TOML between free-text comment lines: keep the section headers and the settings
    shown = tomllib.loads("\n".join(ln for ln in out.splitlines() if re.match(r"\[|\w+ = ", ln)))
    for section, values in _config().items():
        for key, value in values.items():
            assert shown[section][key] == value, f"{section}.{key}"


# -- deploy/nginx-nve.conf ----------------------------------------------------------------------------------

def _location(text: str, path: str) -> str:
    m = re.search(r"location\s+" + re.escape(path) + r"\s*\{(.*?)\n    \}", text, re.S)
    assert m, f"no location {path} in deploy/nginx-nve.conf"
    return m.group(1)


def test_nginx_site_proxies_the_sub_path_and_the_websocket():
    text = SITE.read_text()
    base = _base_url_of_unit()
    stream = _location(text, f"/{base}/_stcore/stream")
    assert "proxy_set_header Upgrade $http_upgrade;" in stream
    assert re.search(r"proxy_set_header Connection \$\w+;", stream), "Connection must follow Upgrade"
    assert "proxy_http_version 1.1;" in stream
    assert re.search(r"proxy_read_timeout\s+(\d+d|\d{4,}s?|\d+h);", stream), "a long websocket read timeout"
    site = _location(text, f"/{base}/")
    # the path goes through unchanged (no URI part after the upstream): the app has baseUrlPath set
    assert re.search(r"proxy_pass http://\w+;", site) and re.search(r"proxy_pass http://\w+;", stream)
    for block in (stream, site):  # Host with its port: Streamlit compares a websocket's Origin with it
        assert "proxy_set_header Host $http_host;" in block
    limit = re.search(r"client_max_body_size (\d+)m;", site)
    assert limit and int(limit.group(1)) == _config()["server"]["maxUploadSize"] + 1, \
        "nginx's upload limit should be Streamlit's (+1 MB multipart overhead)"


def test_nginx_accepts_the_site(tmp_path):
    _need(NGINX, NGINX_WHY)
    conf = nginx_conf(tmp_path / "nginx", 18501, 18080)
    r = subprocess.run(nginx_cmd(conf, "-t"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr


# -- deploy/nve.service ------------------------------------------------------------------------------------

def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _exec_start() -> list[str]:
    return shlex.split(_unit()["Service"]["ExecStart"][0])


def _base_url_of_unit() -> str:
    args = _exec_start()
    return args[args.index("--server.baseUrlPath") + 1]


def test_systemd_unit_runs_the_app_behind_the_proxy():
    unit = _unit()
    service = unit["Service"]
    assert service["User"][0] not in ("", "root"), "a dedicated user, not root"
    assert service["Restart"] == ["on-failure"]
    assert any(e.startswith("NVE_CACHE=") for e in service["Environment"])
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    args = _exec_start()
    assert args[0].endswith(".venv/bin/python") and args[1:4] == ["-m", "streamlit", "run"]
    assert args[4] == "app.py"
    opts = dict(zip(args[5::2], args[6::2], strict=True))
    assert opts["--server.address"] == "127.0.0.1", "only nginx should reach the app"
    # nginx forwards to this port and this sub-path
    site = SITE.read_text()
    assert f"server 127.0.0.1:{opts['--server.port']};" in site
    assert f"location /{opts['--server.baseUrlPath']}/ {{" in site


def test_make_run_passes_host_port_and_base_url():
    # --no-print-directory: under `make test` this is a nested make, which would add "Leaving directory"
    r = subprocess.run(["make", "--no-print-directory", "-n", "run", "HOST=127.0.0.1", "PORT=8600",
                        "BASE_URL=nve"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    line = r.stdout.strip().splitlines()[-1]
    assert "-m streamlit run app.py" in line
    args = shlex.split(line)
    opts = dict(zip(args[args.index("app.py") + 1::2], args[args.index("app.py") + 2::2], strict=True))
    assert opts == {"--server.port": "8600", "--server.address": "127.0.0.1", "--server.baseUrlPath": "nve"}


# -- optional OIDC login (core/ui/auth.py) -----------------------------------------------------------------

@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    return tmp_path


def _app(secrets: dict, user: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in secrets.items():
        at.secrets[k] = v
    if user is not None:
        at.user = user
    return at.run()


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "markdown", "error", "info", "warning", "caption")
             for e in getattr(at, kind)]
    parts += [b.label for b in at.button]
    return "\n".join(str(p) for p in parts)


def _closed(at: AppTest) -> None:
    assert not at.exception
    assert [t.value for t in at.title] == ["Neuron Vulnerability Explorer"]
    assert "Experiments" not in _texts(at)
    assert not at.sidebar.selectbox, "no experiment picker (app.py's sidebar) before the login"
    for secret in SECRET_VALUES:
        assert secret not in _texts(at)


def test_open_without_an_auth_section(empty_cache):
    at = _app({"lab": {"name": "vision"}})
    assert not at.exception
    assert [t.value for t in at.title] == ["Experiments"]
    assert not [b for b in at.button if b.label.startswith("Log")]


def test_configured_login_shows_only_the_login_prompt(empty_cache, monkeypatch, caplog):
    monkeypatch.setattr(auth, "authlib_installed", lambda: True)
    caplog.set_level("DEBUG")
    at = _app({"auth": dict(AUTH)})
    _closed(at)
    assert [b.label for b in at.button] == ["Log in"]
    for secret in SECRET_VALUES:
        assert secret not in caplog.text


def test_named_providers_get_one_button_each(empty_cache, monkeypatch):
    monkeypatch.setattr(auth, "authlib_installed", lambda: True)
    provider = {k: AUTH[k] for k in auth.PROVIDER_KEYS}
    at = _app({"auth": {"redirect_uri": AUTH["redirect_uri"], "cookie_secret": AUTH["cookie_secret"],
                        "okta": provider, "google": dict(provider)}})
    _closed(at)
    assert [b.label for b in at.button] == ["Log in with google", "Log in with okta"]


def test_incomplete_login_config_stays_closed_and_names_only_keys(empty_cache):
    at = _app({"auth": {"cookie_secret": AUTH["cookie_secret"], "client_secret": AUTH["client_secret"]}})
    _closed(at)
    assert not at.button
    (error,) = at.error
    for key in ("auth.redirect_uri", "auth.client_id", "auth.server_metadata_url"):
        assert key in error.value
    assert "auth.cookie_secret" not in error.value and "auth.client_secret" not in error.value


def test_login_without_authlib_stays_closed(empty_cache, monkeypatch):
    monkeypatch.setattr(auth, "authlib_installed", lambda: False)
    at = _app({"auth": dict(AUTH)})
    _closed(at)
    assert not at.button
    assert "Authlib" in at.error[0].value


def test_logged_in_user_gets_the_app_and_a_logout(empty_cache, monkeypatch):
    monkeypatch.setattr(auth, "authlib_installed", lambda: True)
    at = _app({"auth": dict(AUTH)}, user={"is_logged_in": True, "name": "Ada Lovelace", "email": "ada@lab"})
    assert not at.exception
    assert [t.value for t in at.title] == ["Experiments"]
    assert "Signed in: Ada Lovelace" in [c.value for c in at.sidebar.caption]
    assert [b.label for b in at.sidebar.button if b.key == "auth_logout"] == ["Log out"]


def test_unparsable_secrets_file_stays_closed(empty_cache, tmp_path):
    """A secrets.toml that doesn't parse might hold an [auth] section: closed, not open."""
    from streamlit import config
    from streamlit.runtime.secrets import secrets_singleton
    bad = tmp_path / "secrets.toml"
    bad.write_text(f'[auth]\nclient_secret = "{AUTH["client_secret"]}"\nredirect_uri = \n')
    old = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(bad)])
    secrets_singleton._reset()
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
    finally:
        config.set_option("secrets.files", old)
        secrets_singleton._reset()
    _closed(at)
    assert "does not parse" in at.error[0].value

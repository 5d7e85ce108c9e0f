"""Optional login through Streamlit's OpenID Connect support (``st.login`` / ``st.user`` / ``st.logout``).

Open by default. When ``.streamlit/secrets.toml`` has an ``[auth]`` section, every page requires a
logged-in user: a visitor sees only a "Log in" button (one per named provider, ``[auth.<name>]``).
An ``[auth]`` section that is incomplete, or a server without Authlib, stops the app with a message
for the administrator instead of opening it (fail closed). Only setting *names* are ever shown or
logged, never their values.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

from core.ui.text import plain

SHARED_KEYS = ("redirect_uri", "cookie_secret")
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")


class SecretsUnreadable(Exception):
    """A secrets file exists but can't be parsed: it may hold an [auth] section, so stay closed."""


def auth_section() -> Mapping | None:
    """The ``[auth]`` section of the secrets, or None when login is not configured (no secrets file,
    no section, or an empty one). Raises SecretsUnreadable for a secrets file that doesn't parse."""
    try:
        section = st.secrets.get("auth")
    except FileNotFoundError:  # StreamlitSecretNotFoundError: no secrets file, or a broken one
        if any(Path(p).exists() for p in st.get_option("secrets.files")):
            raise SecretsUnreadable from None
        return None
    return section if isinstance(section, Mapping) and section else None


def providers(section: Mapping) -> list[str | None]:
    """The named providers (``[auth.<name>]`` tables), or ``[None]``: the provider set in ``[auth]``."""
    named = [name for name, value in section.items() if isinstance(value, Mapping)]
    return sorted(named) or [None]


def problems(section: Mapping) -> list[str]:
    """What an ``[auth]`` section lacks for a login to work (names only, never values)."""
    missing = [f"auth.{k}" for k in SHARED_KEYS if not section.get(k)]
    for name in providers(section):
        table = section if name is None else section[name]
        where = "auth" if name is None else f"auth.{name}"
        missing += [f"{where}.{k}" for k in PROVIDER_KEYS if not table.get(k)]
    return missing


def authlib_installed() -> bool:
    return importlib.util.find_spec("authlib") is not None


def require_login() -> None:
    """Call once per run, before the app's navigation: returns when the app is open or the user is
    logged in (a sidebar line shows who, with "Log out"); otherwise the only page is the login prompt
    (so no page of the app can be reached by its URL either) and the run stops."""
    try:
        section, unreadable = auth_section(), False
    except SecretsUnreadable:
        section, unreadable = {}, True
    if section is None:
        return
    if not unreadable and st.user.get("is_logged_in", False):
        who = st.user.get("name") or st.user.get("email") or "logged in"
        st.sidebar.caption(f"Signed in: {plain(who)}")  # the name comes from the identity provider
        st.sidebar.button("Log out", key="auth_logout", on_click=st.logout)
        return
    page = st.Page(lambda: _login_page(section, unreadable), title="Log in", icon=":material/login:",
                   url_path="login")
    st.navigation([page], position="hidden").run()
    st.stop()


def _login_page(section: Mapping, unreadable: bool) -> None:
    st.title("Neuron Vulnerability Explorer")
    if unreadable:
        st.error("The server's .streamlit/secrets.toml does not parse as TOML, so the app stays closed "
                 "(it may configure a login). The administrator must fix it.")
        return
    missing = problems(section)
    if missing:
        st.error("Login is configured but incomplete, so the app stays closed. The administrator must set "
                 f"{', '.join(missing)} in .streamlit/secrets.toml (see README, “Hosting for your lab”).")
    elif not authlib_installed():
        st.error("Login is configured, but this server lacks Authlib, so the app stays closed. The "
                 "administrator must install it: .venv/bin/python -m pip install 'Authlib>=1.3.2'.")
    else:
        st.write("This server is for the lab's members: log in to explore the experiments.")
        for name in providers(section):
            label = "Log in" if name is None else f"Log in with {name}"
            st.button(label, key=f"auth_login_{name or 'default'}", type="primary",
                      on_click=st.login, args=() if name is None else (name,))

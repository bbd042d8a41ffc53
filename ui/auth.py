"""Sign-in for a team server: Streamlit's own login (st.login, an OIDC provider configured in
.streamlit/secrets.toml) or a trusted reverse proxy's user header, and the current user
handed to core.access (which makes the decisions and never imports Streamlit).

With an ``[auth]`` section in the secrets, a session that is not signed in gets the login
screen and nothing else: app.py registers the pages hidden and stops before running one.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import access
from core.render import escape_inline


def _auth_section() -> dict | None:
    try:
        section = st.secrets.get("auth")
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):  # no secrets file at all
        return None
    return dict(section) if section else None


def login_configured() -> bool:
    """Whether .streamlit/secrets.toml has an [auth] section (st.login is then required)."""
    return _auth_section() is not None


def providers() -> list[str | None]:
    """The named providers ([auth.google], ...), or [None] for the unnamed one."""
    section = _auth_section() or {}
    named = [name for name, value in section.items() if isinstance(value, Mapping)]
    return named or [None]


def _signed_in_name() -> str | None:
    """The signed-in user's e-mail (else name, else subject) from st.user."""
    user = st.user
    if not user.get("is_logged_in", False):
        return None
    for claim in ("email", "preferred_username", "name", "sub"):
        if user.get(claim):
            return str(user.get(claim))
    return "signed-in user"


def _session_user() -> str | None:
    """The current session's user, for core.access.current_user(); None outside a session."""
    if get_script_run_ctx() is None:
        return None
    if login_configured():
        return _signed_in_name()
    header = access.config().user_header
    if header:
        # Set by a reverse proxy that authenticated the user; trusted only because the app
        # listens on 127.0.0.1 behind it (see the README's "Security and failure model").
        return st.context.headers.get(header) or None
    return None


def install() -> None:
    """Make core.access.current_user() see this app's signed-in user."""
    access.set_user_provider(_session_user)


def may_enter() -> bool:
    """False when login is configured and this session is not signed in."""
    return not login_configured() or _signed_in_name() is not None


def login_screen() -> None:
    """The only thing an anonymous session sees on a server with login: a button per provider."""
    st.title("ThoughtScope")
    st.write("This ThoughtScope server needs you to sign in.")
    for provider in providers():
        label = "Sign in" if provider is None else f"Sign in with {provider}"
        st.button(label, key=f"auth_login_{provider or 'default'}", type="primary",
                  on_click=st.login, args=(provider,) if provider else ())
    st.stop()


def sidebar_user() -> None:
    """Who is signed in (and a sign-out button), or the read-only note, in the sidebar."""
    user = access.current_user()
    if login_configured() and user:
        st.sidebar.caption(f"Signed in as {escape_inline(user)}")
        st.sidebar.button("Sign out", key="auth_logout", on_click=st.logout)
    elif user:
        st.sidebar.caption(f"User: {escape_inline(user)}")
    if access.config().read_only:
        st.sidebar.caption("Read-only server: no ingests or jobs from the browser.")

"""Who is using ThoughtScope, and what the browser may make the server do.

The command line runs as the person at the shell and may do anything. The app can be
reached by anyone who reaches its port, so the decisions for it live here (no Streamlit):

* ``current_user()``: who is using the app. The logged-in user (``st.login``) or the user a
  trusted reverse proxy names, when the app has registered a provider for them
  (ui/auth.py); else the ``user`` setting or ``$THOUGHTSCOPE_USER``; else None.
* ``require_job_rights()``: may that user start, cancel or resume ingests and jobs? Not on
  a read-only server, and, when a list of job users is set, only the users on it.
* ``confine_to_roots()``: a path typed into the browser is ingested only when it lies, after
  symlinks are resolved, under one of the ingest roots (default: the data folder).
* ``label_refusal()``: may this session add human labels (core/labels.py), and under which name?

Labels on a read-only server. Read-only mode protects the store and the box: no ingest, no
upload, no job. Labels touch neither (they are kept beside the store, in a file of their own,
and each names who gave it), and they are the researchers' own judgement of what they read, as
recipes are (which read-only mode also keeps). So a *known* user (signed in, named by the
proxy, or the ``user`` setting) may label on a read-only server. Two things are refused there:
a name typed into the page (on a server meant to be looked at by many, anyone could write
labels in anyone's name), and importing a labels file from the browser (it writes labels under
other people's names, like an ingest: job users only, as ingests are, on any server).

Settings come from the environment, which overrides an optional TOML file
(``$THOUGHTSCOPE_CONFIG``, else ``thoughtscope.toml`` in the project folder, table
``[access]``):

    THOUGHTSCOPE_READ_ONLY=1                 read_only = true
    THOUGHTSCOPE_JOB_USERS=a@lab.org,b       job_users = ["a@lab.org", "b"]
    THOUGHTSCOPE_INGEST_ROOTS=/srv/a:/srv/b  ingest_roots = ["/srv/a", "/srv/b"]   (added to data/)
    THOUGHTSCOPE_USER=alice                  user = "alice"
    THOUGHTSCOPE_USER_HEADER=X-Forwarded-Email   user_header = "X-Forwarded-Email"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import store
from core.errors import UserError

CONFIG_FILE = store.ROOT / "thoughtscope.toml"


class AccessDenied(PermissionError, UserError):
    """The app may not do this for this user; the message says why and what to do instead.

    Also a UserError, so the pages' error guard shows it as a sentence."""


@dataclass(frozen=True)
class AccessConfig:
    read_only: bool = False
    job_users: frozenset[str] | None = None  # None: whoever may use the app may start jobs
    ingest_roots: tuple[Path, ...] = ()  # besides the data folder
    user: str | None = None
    user_header: str | None = None  # a header a trusted reverse proxy sets to the user's name


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _names(value) -> frozenset[str] | None:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names = frozenset(str(v).strip().lower() for v in items if str(v).strip())
    return names or None


def _paths(value) -> tuple[Path, ...]:
    items = value.split(os.pathsep) if isinstance(value, str) else list(value or [])
    return tuple(Path(str(v)).expanduser() for v in items if str(v).strip())


def config() -> AccessConfig:
    """The access settings now: the config file's [access] table, then the environment."""
    path = Path(os.environ.get("THOUGHTSCOPE_CONFIG") or CONFIG_FILE)
    table: dict = {}
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8")).get("access", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RuntimeError(f"{path}: not a readable TOML file ({exc}); fix or remove it.") from exc
    env = os.environ
    return AccessConfig(
        read_only=_flag(env.get("THOUGHTSCOPE_READ_ONLY", table.get("read_only", False))),
        job_users=_names(env.get("THOUGHTSCOPE_JOB_USERS", table.get("job_users"))),
        ingest_roots=_paths(env.get("THOUGHTSCOPE_INGEST_ROOTS", table.get("ingest_roots"))),
        user=(env.get("THOUGHTSCOPE_USER") or table.get("user") or None),
        user_header=(env.get("THOUGHTSCOPE_USER_HEADER") or table.get("user_header") or None),
    )


# ----------------------------------------------------------------------------- the user

_user_provider: Callable[[], str | None] | None = None


def set_user_provider(provider: Callable[[], str | None] | None) -> None:
    """Register how the app finds the user of the running session (ui/auth.py does, with
    st.user and the proxy header); it returns None outside a session or when nobody is
    signed in."""
    global _user_provider
    _user_provider = provider


def current_user() -> str | None:
    """Who is using ThoughtScope: the signed-in user (st.login) or the user named by a trusted
    reverse proxy, else the ``user`` setting or $THOUGHTSCOPE_USER, else None (nobody known).
    The one place to ask "who is this" (human labels, who started a job)."""
    if _user_provider is not None:
        name = _user_provider()
        if name:
            return name
    return config().user


# ----------------------------------------------------------------------------- jobs


def job_refusal(user: str | None = None, *, cfg: AccessConfig | None = None) -> str | None:
    """Why ``user`` (default: the current user) may not start ingests or jobs, or None if
    they may."""
    cfg = cfg or config()
    if cfg.read_only:
        return ("This ThoughtScope server is read-only: browsing, plots, selection and export work here, "
                "but ingests and jobs are not started from the browser. Run them on the command line "
                "(python -m core ...), or ask whoever runs the server.")
    if cfg.job_users is not None:
        user = user if user is not None else current_user()
        if not user:
            return "Only signed-in job users may start ingests and jobs on this server, and you are not signed in."
        if user.strip().lower() not in cfg.job_users:
            return (f"Only the server's job users may start ingests and jobs; {user} is not one of them. "
                    "Ask whoever runs the server to add you (THOUGHTSCOPE_JOB_USERS).")
    return None


def may_start_jobs(user: str | None = None) -> bool:
    return job_refusal(user) is None


def require_job_rights(user: str | None = None) -> None:
    """Raise AccessDenied, with the reason, unless ``user`` (default: the current user) may
    start, cancel and resume ingests and jobs."""
    reason = job_refusal(user)
    if reason:
        raise AccessDenied(reason)


# ----------------------------------------------------------------------------- labels


def label_refusal(user: str | None, *, typed: bool = False, cfg: AccessConfig | None = None) -> str | None:
    """Why this session may not add labels as ``user`` (None: it may). ``typed``: the name was
    typed into the page rather than known from sign-in, the proxy or the settings."""
    cfg = cfg or config()
    if not user or not str(user).strip():
        if cfg.read_only:
            return ("This server is read-only: labels here need a signed-in user (or the server's "
                    "THOUGHTSCOPE_USER); typed names are not taken.")
        return "Give your name to label (or sign in, or set THOUGHTSCOPE_USER): every label records who gave it."
    if typed and cfg.read_only:
        return ("This server is read-only: labels here need a signed-in user (or the server's THOUGHTSCOPE_USER), "
                "so that nobody can label in someone else's name; a typed name is not taken.")
    return None


def may_type_annotator(cfg: AccessConfig | None = None) -> bool:
    """Whether a session with no known user may give a name to label under (not on a read-only server)."""
    return not (cfg or config()).read_only


# ----------------------------------------------------------------------------- ingest roots


def ingest_roots(cfg: AccessConfig | None = None) -> tuple[Path, ...]:
    """The folders a browser-started ingest may read, symlinks resolved: the data folder
    (uploads land in it) and any configured roots."""
    cfg = cfg or config()
    roots: list[Path] = []
    for root in (store.data_dir(), *cfg.ingest_roots):
        resolved = Path(root).expanduser().resolve()
        if resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _outside(source: str, roots: tuple[Path, ...], detail: str = "") -> AccessDenied:
    listed = ", ".join(str(r) for r in roots)
    return AccessDenied(
        f"'{source}' is outside the folders this server ingests from{detail}. Allowed: {listed}. "
        "Upload the file instead, move it under one of those folders, or ingest it on the command line "
        "(python -m core ingest PATH), which reads any path."
    )


def confine_to_roots(source: str, fmt: str | None = None, *, roots: tuple[Path, ...] | None = None) -> str:
    """What a browser-started ingest of ``source`` may read: the path resolved (symlinks
    followed) when it and everything under it lies inside an ingest root, or a bare
    Hugging Face hub id unchanged (it reads no server file). Raises AccessDenied naming the
    allowed roots otherwise, and IngestError for a path that does not exist.

    A relative path is taken from the project folder, where the worker runs.
    """
    from core.formats import source_kind

    roots = roots if roots is not None else ingest_roots()
    text = str(source).strip()
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = store.ROOT / path
    if not os.path.lexists(path) and source_kind(text, fmt) == "hub":
        return text
    resolved = path.resolve()
    if not _under(resolved, roots):
        raise _outside(text, roots)
    if not resolved.exists():
        source_kind(str(resolved), fmt)  # raises the "no such file" error
    if resolved.is_dir():
        # a link inside the folder may lead out of it
        for folder, dirs, files in os.walk(resolved):
            for name in dirs + files:
                entry = Path(folder) / name
                if entry.is_symlink() and not _under(entry.resolve(), roots):
                    raise _outside(text, roots, f" (it holds {entry.relative_to(resolved)}, a link to elsewhere)")
    return str(resolved)

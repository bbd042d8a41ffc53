"""Who may do what from the browser (core.access, ui.auth, ui.serve): the listening address,
sign-in, read-only mode, job users and the ingest roots, on the real app (AppTest), real
job workers and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from core import access, jobs, store
from core.records import IngestError
from tests.helpers import omni_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
AUTH = {  # an [auth] section as .streamlit/secrets.toml would hold it; nothing here is contacted
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "test-cookie-secret",
    "client_id": "thoughtscope-test",
    "client_secret": "not-a-secret",
    "server_metadata_url": "https://login.example.invalid/.well-known/openid-configuration",
}


@pytest.fixture
def no_access_settings(monkeypatch, tmp_path):
    for name in ("THOUGHTSCOPE_READ_ONLY", "THOUGHTSCOPE_JOB_USERS", "THOUGHTSCOPE_INGEST_ROOTS",
                 "THOUGHTSCOPE_USER", "THOUGHTSCOPE_USER_HEADER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("THOUGHTSCOPE_CONFIG", str(tmp_path / "no-config.toml"))
    access.set_user_provider(None)
    yield
    access.set_user_provider(None)


def jobs_in_table() -> int:
    with jobs.connect() as con:
        return con.execute("SELECT count(*) FROM jobs").fetchone()[0]


# =========================================================================== settings and the user


def test_settings_from_file_then_environment(no_access_settings, tmp_path, monkeypatch):
    config = tmp_path / "thoughtscope.toml"
    config.write_text('[access]\nread_only = true\njob_users = ["Alice@Lab.org", "bob"]\n'
                      f'ingest_roots = ["{tmp_path / "a"}"]\nuser = "carol"\n')
    monkeypatch.setenv("THOUGHTSCOPE_CONFIG", str(config))
    cfg = access.config()
    assert (cfg.read_only, cfg.job_users, cfg.ingest_roots, cfg.user) == (
        True, frozenset({"alice@lab.org", "bob"}), (tmp_path / "a",), "carol")
    monkeypatch.setenv("THOUGHTSCOPE_READ_ONLY", "0")
    monkeypatch.setenv("THOUGHTSCOPE_JOB_USERS", "dave")
    monkeypatch.setenv("THOUGHTSCOPE_INGEST_ROOTS", os.pathsep.join([str(tmp_path / "b"), str(tmp_path / "c")]))
    cfg = access.config()
    assert (cfg.read_only, cfg.job_users, cfg.ingest_roots) == (False, frozenset({"dave"}), (tmp_path / "b", tmp_path / "c"))
    config.write_text("[access\nbroken")
    with pytest.raises(RuntimeError, match="not a readable TOML file"):
        access.config()


def test_current_user_is_the_signed_in_user_else_the_setting(no_access_settings, monkeypatch):
    assert access.current_user() is None
    monkeypatch.setenv("THOUGHTSCOPE_USER", "alice")
    assert access.current_user() == "alice"
    access.set_user_provider(lambda: "bob@lab.org")
    assert access.current_user() == "bob@lab.org"
    access.set_user_provider(lambda: None)  # no session, or nobody signed in
    assert access.current_user() == "alice"


def test_job_rights(no_access_settings, monkeypatch):
    assert access.job_refusal("anyone") is None and access.may_start_jobs()
    monkeypatch.setenv("THOUGHTSCOPE_JOB_USERS", "alice@lab.org, Bob")
    assert access.job_refusal("ALICE@lab.org") is None and access.job_refusal("bob") is None
    assert "carol is not one of them" in access.job_refusal("carol")
    assert "you are not signed in" in access.job_refusal(None)
    monkeypatch.setenv("THOUGHTSCOPE_READ_ONLY", "1")
    assert "read-only" in access.job_refusal("alice@lab.org")
    with pytest.raises(access.AccessDenied, match="read-only"):
        access.require_job_rights("alice@lab.org")


def test_read_only_refuses_job_starts_cancels_and_resumes(no_access_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(tmp_path / "s.duckdb"))
    job_id = jobs.submit("verify", {})  # allowed before the switch
    monkeypatch.setenv("THOUGHTSCOPE_READ_ONLY", "true")
    for attempt in (lambda: jobs.submit("verify", {}), lambda: jobs.submit("ingest", {"source": "x"}),
                    lambda: jobs.cancel(job_id), lambda: jobs.resume(job_id)):
        with pytest.raises(access.AccessDenied, match="read-only"):
            attempt()
    assert jobs_in_table() == 1
    monkeypatch.delenv("THOUGHTSCOPE_READ_ONLY")
    deadline = time.monotonic() + 120
    while jobs.get(job_id)["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


# =========================================================================== ingest roots


def test_ingest_roots_default_to_the_data_folder(no_access_settings, tmp_path):
    data = store.data_dir()
    assert access.ingest_roots() == (data.resolve(),)
    inside = write_jsonl(data / "uploads" / "a.jsonl", omni_rows(1))
    assert access.confine_to_roots(str(inside)) == str(inside.resolve())
    outside = write_jsonl(tmp_path / "elsewhere" / "b.jsonl", omni_rows(1))
    with pytest.raises(access.AccessDenied) as refused:
        access.confine_to_roots(str(outside))
    assert str(data.resolve()) in str(refused.value) and "outside the folders this server ingests from" in str(refused.value)
    # ../ cannot climb out of a root
    with pytest.raises(access.AccessDenied):
        access.confine_to_roots(str(data / ".." / "elsewhere" / "b.jsonl"))
    with pytest.raises(access.AccessDenied):
        access.confine_to_roots("/etc/passwd")
    with pytest.raises(access.AccessDenied):
        access.confine_to_roots("core/cli.py")  # relative: from the project folder, not a root
    # a bare hub id reads no server file; a missing path under a root is "no such file"
    assert access.confine_to_roots("open-r1/OpenR1-Math-220k") == "open-r1/OpenR1-Math-220k"
    with pytest.raises(IngestError, match="no such file"):
        access.confine_to_roots(str(data / "missing.jsonl"))


def test_symlinks_are_resolved_before_the_check(no_access_settings, tmp_path):
    data = store.data_dir()
    secret = write_jsonl(tmp_path / "private" / "secret.jsonl", omni_rows(1))
    link = data / "innocent.jsonl"
    link.symlink_to(secret)
    with pytest.raises(access.AccessDenied):
        access.confine_to_roots(str(link))
    # a folder under the root holding a link to a file elsewhere
    folder = data / "folder"
    folder.mkdir()
    write_jsonl(folder / "ok.jsonl", omni_rows(1))
    (folder / "sub").mkdir()
    (folder / "sub" / "leak.jsonl").symlink_to(secret)
    with pytest.raises(access.AccessDenied, match=r"it holds sub/leak.jsonl, a link to elsewhere"):
        access.confine_to_roots(str(folder))
    # a link inside the root to another place inside it is fine
    (folder / "sub" / "leak.jsonl").unlink()
    (folder / "sub" / "alias.jsonl").symlink_to(folder / "ok.jsonl")
    assert access.confine_to_roots(str(folder)) == str(folder.resolve())


def test_more_roots_by_environment(no_access_settings, tmp_path, monkeypatch):
    extra = tmp_path / "shared-datasets"
    source = write_jsonl(extra / "x.jsonl", omni_rows(1))
    with pytest.raises(access.AccessDenied):
        access.confine_to_roots(str(source))
    monkeypatch.setenv("THOUGHTSCOPE_INGEST_ROOTS", str(extra))
    assert access.confine_to_roots(str(source)) == str(source.resolve())
    assert access.ingest_roots() == (store.data_dir().resolve(), extra.resolve())


def test_ingest_job_outside_the_roots_fails_and_reads_nothing(no_access_settings, tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    outside = write_jsonl(tmp_path / "outside.jsonl", omni_rows(2))
    job_id = jobs.submit("ingest", {"source": str(outside)})
    deadline = time.monotonic() + 120
    while (job := jobs.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["state"] == "failed"
    assert "outside the folders this server ingests from" in job["error"] and str(store.data_dir()) in job["error"]
    assert store.read_rows("SELECT count(*) FROM datasets", db=db) == [(0,)]


def test_cli_still_reads_any_path(no_access_settings, tmp_path):
    src = write_jsonl(tmp_path / "anywhere" / "x.jsonl", omni_rows(1))
    db = tmp_path / "s.duckdb"
    out = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "ingest", str(src), "--no-verify", "--no-tokens", "--no-index"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert store.read_rows("SELECT count(*) FROM datasets", db=db) == [(1,)]


# =========================================================================== the app (AppTest)


def _app(user: dict | None = None, *, login: bool = False) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if login:
        at.secrets["auth"] = AUTH
    if user is not None:
        at.user = user
    return at


def test_with_login_configured_an_anonymous_session_sees_only_the_login(no_access_settings, app_store, demo_store):
    """The router's first run (AppTest's switch_page runs a page file without app.py, so deep
    links are checked on the real server in tests/browser/test_hostile_browser.py)."""
    app_store(demo_store)
    at = _app({"is_logged_in": False}, login=True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["ThoughtScope"]
    assert [b.label for b in at.button] == ["Sign in"]
    # nothing of the store, no widget of any page, no sidebar
    for kind in ("dataframe", "text_input", "text_area", "selectbox", "multiselect", "slider", "metric", "plotly_chart", "caption"):
        assert not at.get(kind), kind
    assert not at.sidebar.children
    # the same app with nobody required to sign in shows the Overview
    at = _app({"is_logged_in": False}).run()
    assert "Overview" in [t.value for t in at.title]


def test_named_providers_each_get_a_button(no_access_settings, app_store, demo_store):
    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "x",
                          "google": {"client_id": "a"}, "microsoft": {"client_id": "b"}}
    at.user = {"is_logged_in": False}
    at.run()
    assert [b.label for b in at.button] == ["Sign in with google", "Sign in with microsoft"]


def test_signed_in_user_sees_the_app_and_is_the_current_user(no_access_settings, app_store, demo_store):
    app_store(demo_store)
    at = _app({"is_logged_in": True, "email": "alice@lab.org", "name": "Alice"}, login=True).run()
    assert not at.exception
    assert "Overview" in [t.value for t in at.title]
    assert any(c.value == r"Signed in as alice\@lab\.org" for c in at.sidebar.caption)  # escaped Markdown
    assert any(b.label == "Sign out" for b in at.sidebar.button)


def test_read_only_app_refuses_ingests_and_job_starts(no_access_settings, app_store, demo_store, monkeypatch):
    app_store(demo_store)
    monkeypatch.setenv("THOUGHTSCOPE_READ_ONLY", "1")
    at = _app().run()
    at.switch_page("pages/overview.py").run()
    assert not at.exception
    assert any("read-only" in i.value for i in at.info)
    assert not [t for t in at.text_input if t.key == "ingest_path"]  # no ingest form, no upload
    assert not at.get("file_uploader")
    at.switch_page("pages/jobs.py").run()
    assert any("read-only" in i.value for i in at.info)
    start = next(b for b in at.button if b.label == "Start verification")
    at = start.click().run()
    assert not at.exception
    assert any("read-only" in e.value for e in at.error)
    assert jobs_in_table() == 0
    # browsing still works
    at = _app().run()
    at.switch_page("pages/explore.py").run()
    assert not at.exception and not at.error and at.dataframe


def test_job_users_list(no_access_settings, app_store, demo_store, monkeypatch):
    app_store(demo_store)
    monkeypatch.setenv("THOUGHTSCOPE_JOB_USERS", "alice@lab.org")
    at = _app({"is_logged_in": True, "email": "bob@lab.org"}, login=True).run()
    at.switch_page("pages/jobs.py").run()
    at = next(b for b in at.button if b.label == "Start verification").click().run()
    assert any("bob@lab.org is not one of them" in e.value for e in at.error)
    assert jobs_in_table() == 0
    at = _app({"is_logged_in": True, "email": "alice@lab.org"}, login=True).run()
    at.switch_page("pages/jobs.py").run()
    at = next(b for b in at.button if b.label == "Start verification").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Started job" in s.value for s in at.success)
    assert jobs_in_table() == 1


def test_proxy_header_names_the_user(no_access_settings, app_store, demo_store, monkeypatch):
    """Behind a reverse proxy that authenticates: the header it sets is the user."""
    from ui import auth

    monkeypatch.setenv("THOUGHTSCOPE_USER_HEADER", "X-Forwarded-Email")
    app_store(demo_store)
    seen = {}

    class FakeContext:  # AppTest cannot set request headers; the header lookup is all that changes
        headers = {"X-Forwarded-Email": "proxy-user@lab.org"}

    monkeypatch.setattr(auth.st, "context", FakeContext)
    monkeypatch.setattr(auth, "get_script_run_ctx", lambda: object())
    seen["user"] = auth._session_user()
    assert seen["user"] == "proxy-user@lab.org"


def test_overview_refuses_a_path_outside_the_roots(no_access_settings, app_store, tmp_path):
    db = app_store(tmp_path / "s.duckdb")
    outside = write_jsonl(tmp_path / "outside.jsonl", omni_rows(1))
    at = _app().run()
    at.switch_page("pages/overview.py").run()
    at.text_input(key="ingest_path").set_value(str(outside))
    at = next(b for b in at.button if b.label == "Ingest").click().run()
    assert any("outside the folders this server ingests from" in e.value and str(store.data_dir()) in e.value for e in at.error)
    assert jobs_in_table() == 0
    assert store.read_rows("SELECT count(*) FROM datasets", db=db) == [(0,)]


# =========================================================================== the listening address


def test_address_options():
    from ui.serve import address_options

    assert address_options(["--server.port", "1"], env={}) == ["--server.port", "1", "--server.address=127.0.0.1"]
    assert address_options(["--team"], env={}) == ["--server.address=0.0.0.0"]
    assert address_options(["--server.address", "10.0.0.5"], env={}) == ["--server.address", "10.0.0.5"]
    assert address_options([], env={"THOUGHTSCOPE_ADDRESS": "0.0.0.0"}) == ["--server.address=0.0.0.0"]
    assert address_options([], env={"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"}) == []


def _listening(args: list[str], tmp_path: Path) -> set[str]:
    """Start `python -m ui.serve` with ``args``; the addresses its port listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "THOUGHTSCOPE_DB": str(tmp_path / "s.duckdb"), "PYTHONPATH": str(ROOT)}
    env.pop("STREAMLIT_SERVER_ADDRESS", None)
    env.pop("THOUGHTSCOPE_ADDRESS", None)
    log = open(tmp_path / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ui.serve", *args, f"--server.port={port}", "--server.headless=true",
                             "--server.fileWatcherType=none"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
            if found:
                return found
            assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            time.sleep(0.2)
        raise AssertionError("the server never listened")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_server_listens_on_localhost_unless_serving_a_team(tmp_path):
    # run from another folder, so no .streamlit/config.toml helps: ui.serve itself decides
    assert _listening([], tmp_path) == {"127.0.0.1"}
    assert _listening(["--team"], tmp_path) <= {"0.0.0.0", "::"}

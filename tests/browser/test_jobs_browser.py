"""A judge re-scoring started from the Jobs page in a real browser, watched until it finishes.

    .venv/bin/python -m pytest tests/browser/test_jobs_browser.py -q

The page starts a real worker process that loads the offline default judge
(SmolLM2-135M-Instruct) and scores the first CoTs of the real Qwen2.5-Math store; the job list
refreshes itself (an st.fragment that reruns every 2 s), so the test only watches the page,
never reloads it. The server here has its own copy of the store and its own jobs file: the
new score source does not leak into the other browser tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import time

import pytest

from core import store
from core.models import DEFAULT_MODEL

from .conftest import SCREENSHOTS, open_page, screenshot, start_server, stop_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COTS, METRICS, MAX_NEW_TOKENS, BATCH = 3, ("rv", "logic"), 16, 1
SHORT_TOKENS = (1, 200)  # the filter set on Explore: CoTs of at most 200 tokens
# A limit, not a timing check: about a minute on an idle 2-core machine, 11 minutes when other
# work kept the load average above 20.
WAIT_S = 1500


@pytest.fixture
def jobs_server(browser_store, tmp_path):
    """An app server over a private copy of the browser store, with its own data folder
    (so its own jobs.sqlite); a worker still running at the end is killed."""
    db = tmp_path / "store.duckdb"
    shutil.copy(browser_store, db)
    data_dir = tmp_path / "data"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server(db, data_dir, SCREENSHOTS.parent / "streamlit-server-jobs.log")
    yield server
    jobs_file = data_dir / "jobs.sqlite"
    if jobs_file.exists():
        with sqlite3.connect(jobs_file) as con:
            live = [r[0] for r in con.execute("SELECT pid FROM jobs WHERE state IN ('queued', 'running') AND pid IS NOT NULL")]
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stop_server(server)


def job_card(page, job_id: int):
    """Job ``job_id``'s card: its container's key shows in the page as a class."""
    return page.locator(f"[data-testid='stMain'] .st-key-jobs_card_{job_id}")


def job_head(page, job_id: int) -> str:
    """The headline of job ``job_id``'s card ('Job 1 · score — running'), '' while none."""
    heads = job_card(page, job_id).locator("[data-testid='stMarkdownContainer']").filter(
        has_text=re.compile(rf"Job {job_id} · score — "))
    return heads.first.inner_text().strip() if heads.count() else ""


@pytest.mark.timeout(2400)  # the store copy, the server, the model and the job, with WAIT_S inside
def test_score_job_started_from_the_page_runs_to_done(page, jobs_server):
    # Narrow the sidebar filter on Explore to short CoTs (the judge's prompt is then mostly
    # its template), then go to Jobs through the sidebar: its form scores the current filter.
    short = f"n_tokens BETWEEN {SHORT_TOKENS[0]} AND {SHORT_TOKENS[1]}"
    matching = store.read_rows(f"SELECT count(*) FROM cots WHERE {short}", db=jobs_server.db)[0][0]
    first_cots = [r[0] for r in store.read_rows(f"SELECT cot_id FROM cots WHERE {short} ORDER BY cot_id LIMIT ?",
                                                [COTS], db=jobs_server.db)]
    assert len(first_cots) == COTS
    open_page(page, jobs_server, f"/explore?tokens_range={SHORT_TOKENS[0]},{SHORT_TOKENS[1]}")
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Jobs").click()
    main = page.locator("[data-testid='stMain']")
    main.get_by_role("heading", name="Jobs").wait_for()
    wait_idle(page)
    main.get_by_text("Start a job", exact=True).click()
    form = main.locator("[data-testid='stForm']").filter(has_text="Re-score CoTs with an LLM judge")
    form.get_by_text(f"{matching:,} CoTs match").wait_for()  # the filter came along from Explore
    # the defaults are the offline judge on the transformers backend
    assert form.get_by_role("textbox", name="Judge model").input_value() == DEFAULT_MODEL
    assert form.get_by_role("combobox", name="Backend").input_value() == "transformers"

    # Tab, not Enter, after each field: Enter inside a form submits it
    for label, value in (("At most this many CoTs (the first by id)", COTS), ("Batch size", BATCH),
                         ("Max new tokens", MAX_NEW_TOKENS)):
        field = form.get_by_role("spinbutton", name=label, exact=True)
        field.fill(str(value))
        field.press("Tab")
    metrics = form.locator("[data-testid='stMultiSelect']")

    def chosen_metrics() -> list[str]:
        return sorted(tag.get_attribute("aria-label") for tag in metrics.locator("[data-tag]").all())

    for unwanted in set(chosen_metrics()) - set(METRICS):
        metrics.get_by_role("button", name=f"Remove {unwanted}", exact=True).click()
    assert chosen_metrics() == sorted(METRICS)
    screenshot(page, "jobs-1-score-form")
    form.get_by_role("button", name="Start re-scoring").click()

    started = main.locator("[data-testid='stAlertContentSuccess']").filter(has_text="Started job")
    started.wait_for(timeout=60_000)
    job_id = int(re.search(r"Started job (\d+)", started.inner_text()).group(1))

    # Watch the card, never reloading or clicking: every headline it showed, in order.
    seen, deadline = [], time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        head = job_head(page, job_id)
        if head and (not seen or seen[-1] != head):
            seen.append(head)
        if re.search(r"— (done|failed|cancelled|interrupted)$", head):
            break
        page.wait_for_timeout(250)
    if not seen or not seen[-1].endswith("— done"):
        print(job_card(page, job_id).inner_text())  # its error and log, in the test's output
    if seen:
        job_card(page, job_id).scroll_into_view_if_needed()  # the app scrolls inside its main panel
    shot = screenshot(page, "jobs-2-score-done")
    assert seen and seen[-1].endswith("— done"), f"job {job_id} did not finish on the page: {seen} (screenshot {shot})"
    # the card changed state on its own (queued or running first), so the page refreshes itself
    assert len(seen) >= 2 and re.search(r"— (queued|running)$", seen[0]), seen

    # the store holds the new source with one score per (CoT, metric)
    source = f"judge:{DEFAULT_MODEL}:job{job_id}"
    rows = store.read_rows(
        "SELECT s.cot_id, s.metric FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ? ORDER BY 1, 2",
        [source], db=jobs_server.db)
    assert rows == sorted((c, m) for c in first_cots for m in METRICS)

    # and the finished card says so: a full progress bar, the counts and the source's name
    card = job_card(page, job_id)
    assert f"judge: {COTS * len(METRICS)} / {COTS * len(METRICS)}" in card.inner_text()
    written = card.locator("[data-testid='stMetric']").filter(has_text="Scores written")
    assert written.locator("[data-testid='stMetricValue']").inner_text() == str(COTS * len(METRICS))
    assert card.get_by_text(f"Score source '{source}'").count() == 1

"""Steps in a real browser: the Reader's step view shows a step carrying <script> as text,
jumps to the first wrong step, and the Distributions and Agreement step sections draw without
errors, over a store with the real Thought Anchors steps and a ProcessBench-shaped file.

    .venv/bin/python -m pytest tests/browser/test_steps_browser.py -q
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core import store
from tests.helpers import REALDATA

from .conftest import (
    SCREENSHOTS,
    StreamlitServer,
    _require_chromium,
    open_page,
    screenshot,
    start_server,
    stop_server,
    wait_idle,
)
from .test_browser_app import errors_on_screen

pytestmark = pytest.mark.browser

SCRIPT = "<script>alert(3)</script>"
TA = REALDATA / "thought_anchors"


@pytest.fixture(scope="module")
def steps_server(tmp_path_factory) -> Iterator[StreamlitServer]:
    _require_chromium()
    if not TA.exists():
        pytest.skip(f"real data not found at {TA}")
    from core.cli import main
    from core.step_labels import StepLabelOptions, run_step_labels
    from core.step_stage import StepOptions, run_steps

    folder = tmp_path_factory.mktemp("steps-browser")
    db = folder / "store.duckdb"
    assert main(["--db", str(db), "ingest", str(TA / "thought_anchors_math_base_solutions.jsonl"), "--name", "ta",
                 "--no-verify", "--no-tokens", "--no-index"]) == 0
    assert main(["--db", str(db), "ingest", str(TA / "thought_anchors_math_chunks_labeled.jsonl"), "--steps-for", "ta"]) == 0
    steps = [f"Step {i}: add {i} and 1." for i in range(50)]
    steps[3] = f"Careful: {SCRIPT} is text, not code."
    item = {"id": "pb-1", "generator": "m", "problem": "Add things?", "steps": steps, "final_answer_correct": False, "label": 44}
    (folder / "pb.jsonl").write_text(json.dumps(item) + "\n")
    run_step_labels(db, StepLabelOptions(path=str(folder / "pb.jsonl")))
    run_steps(db, StepOptions())
    run_steps(db, StepOptions(from_source="thought anchors"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server(db, folder / "data", SCREENSHOTS.parent / "streamlit-steps-server.log")
    yield server
    stop_server(server)


@pytest.fixture
def page(chromium, steps_server):
    """A fresh browser context per test over this module's server (not the Qwen store's),
    every dialog recorded on ``page.dialogs`` and dismissed."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.dialogs = []

    def on_dialog(dialog):
        pg.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    yield pg
    context.close()


def test_step_view_shows_tags_as_text_and_jumps_to_the_first_wrong_step(page, steps_server):
    problem_id = store.read_rows("SELECT problem_id FROM problems WHERE problem_key = 'pb-1'", db=steps_server.db)[0][0]
    open_page(page, steps_server, f"/reader?problem={problem_id}")
    main = page.locator("[data-testid='stMain']")
    main.locator("[data-testid='stExpander'] summary").filter(has_text="Steps (").first.click()
    wait_idle(page)
    choose_source = main.get_by_role("combobox", name="Step source", exact=True)
    if choose_source.input_value() != "processbench":
        choose_source.click()
        page.get_by_role("option", name="processbench", exact=True).click()
        wait_idle(page)
    page.wait_for_timeout(500)
    assert SCRIPT in main.inner_text(), "the step's <script> is not shown as text"
    assert page.dialogs == []
    assert page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"] script').length") == 0
    main.get_by_role("button", name="Jump to the first wrong step (44)").click()
    wait_idle(page)
    shot = screenshot(page, "reader-steps-jump")
    text = main.inner_text()
    assert "first wrong step" in text and "Step 44: add 44 and 1." in text, f"not on the wrong step's page ({shot})"
    assert errors_on_screen(page) == [], shot


def test_step_sections_on_distributions_and_agreement_draw(page, steps_server):
    open_page(page, steps_server, "/distributions")
    main = page.locator("[data-testid='stMain']")
    main.get_by_role("tab", name="Steps").click()  # only the open tab is computed and drawn
    wait_idle(page)
    main.get_by_text("Steps inside CoTs").scroll_into_view_if_needed()
    wait_idle(page)
    page.wait_for_timeout(1000)
    shot = screenshot(page, "distributions-steps")
    assert main.get_by_text("Share of step tokens per role, by correctness").count() >= 1, shot
    assert errors_on_screen(page) == [], shot

    open_page(page, steps_server, "/agreement")
    main.locator("[data-testid='stButtonGroup']").get_by_text("step labels").click()
    wait_idle(page)
    shot = screenshot(page, "agreement-steps")
    assert main.get_by_text("Cohen's kappa").count() >= 1, shot
    assert errors_on_screen(page) == [], shot

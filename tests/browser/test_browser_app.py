"""The real app in a real browser: every page opens without an error over the real
Qwen2.5-Math store, a threshold chosen on Select, saved as a recipe and exported on Export
gives a file with exactly the kept rows, and dataset text carrying <script> shows as text in
the Reader without running.

    .venv/bin/python -m pytest tests/browser -q    # needs Debian's chromium: `make browser`

Screenshots land in test-artifacts/screenshots/, the server's log beside them.
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from core import store
from .conftest import (
    ROOT,
    XSS_IMG,
    XSS_PAYLOAD,
    open_page,
    screenshot,
    wait_idle,
)

pytestmark = pytest.mark.browser

APP_CAPTION = "ThoughtScope · CoT data curation"  # app.py's sidebar caption: the router ran


def registered_pages() -> dict[str, str]:
    """url_path -> title of every visible st.Page in app.py, so a page added there is visited
    too (the hidden root page only sends the browser on to the Overview)."""
    pages = {}
    for node in ast.walk(ast.parse((ROOT / "app.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page":
            kwargs = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            if kwargs.get("visibility") != "hidden":
                pages[kwargs["url_path"]] = kwargs["title"]
    return pages


PAGES = registered_pages()


def errors_on_screen(page) -> list[str]:
    """Tracebacks and error boxes the page shows: with a full store, a page opened on its
    defaults has no reason to show either."""
    found = [f"exception: {t}" for t in page.locator("[data-testid='stException']").all_inner_texts()]
    found += [f"error: {t}" for t in page.locator("[data-testid='stAlertContentError']").all_inner_texts()]
    return found


def metric_value(page, label: str) -> int:
    """The integer an st.metric labelled ``label`` shows ('2,976' -> 2976)."""
    metric = page.locator("[data-testid='stMain'] [data-testid='stMetric']").filter(has_text=label)
    return int(metric.locator("[data-testid='stMetricValue']").inner_text().replace(",", ""))


def choose(page, select_label: str, option: str) -> None:
    """Pick ``option`` in the st.selectbox labelled ``select_label`` on the main panel."""
    combo = page.locator("[data-testid='stMain'] [data-testid='stSelectbox']").get_by_role("combobox", name=select_label, exact=True)
    if combo.input_value() == option:
        return
    combo.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)
    assert combo.input_value() == option


def test_pages_cover_the_app():
    assert {"overview", "explore", "reader", "distributions", "select", "export", "jobs", "sql"} <= set(PAGES)


@pytest.mark.parametrize("url_path", list(PAGES))
def test_every_page_opens_without_errors(page, app_server, url_path):
    # The first test to run opens a deep link on a fresh server: Streamlit treats an app with
    # a pages/ folder as an old-style multipage app until st.navigation has run once, so this
    # also checks that app.py's router and frame take over at once.
    open_page(page, app_server, f"/{url_path}")
    shot = screenshot(page, f"page-{url_path}")
    assert errors_on_screen(page) == [], f"/{url_path} shows errors (screenshot {shot})"
    # issue 11: /overview, the default page's own address, showed "Page not found" over it
    assert "Page not found" not in page.locator("body").inner_text(), f"/{url_path}: Page not found ({shot})"
    assert page.url.split("?")[0].endswith(f"/{url_path}")
    title = PAGES[url_path]
    heading = page.locator("[data-testid='stMain'] h1").filter(has_text=re.compile(rf"^\s*{re.escape(title)}", re.I))
    assert heading.first.is_visible(), f"/{url_path} shows no '{title}' heading (screenshot {shot})"
    sidebar = page.locator("[data-testid='stSidebar']")
    assert sidebar.get_by_text(APP_CAPTION).is_visible(), f"/{url_path} opened outside app.py's frame ({shot})"
    nav = sidebar.locator("[data-testid='stSidebarNav'] a")
    assert nav.all_inner_texts() == list(PAGES.values()), f"the sidebar lists other pages than app.py ({shot})"
    assert page.dialogs == []


def test_the_root_address_opens_the_overview_at_its_own_address(page, app_server):
    open_page(page, app_server, "/?datasets=qwen25-math-eval")
    assert page.url.split("?")[0] == f"{app_server.url}/overview"
    assert "datasets=qwen25-math-eval" in page.url  # the filter in the address goes along
    assert page.locator("[data-testid='stMain'] h1").filter(has_text="Overview").first.is_visible()
    assert "Page not found" not in page.locator("body").inner_text()


def test_select_threshold_recipe_exports_exactly_the_kept_rows(page, app_server, tmp_path):
    main = page.locator("[data-testid='stMain']")
    open_page(page, app_server, "/select")
    pool = metric_value(page, "Kept CoTs")

    # Threshold: cap the tokens. PageDown moves the slider's end by a tenth of its range.
    tokens = main.locator("[data-testid='stSlider']").filter(has_text="Tokens")
    upper = tokens.get_by_role("slider").last  # its end thumb (the label names the tokenizer)
    upper.focus()
    for _ in range(8):
        page.keyboard.press("PageDown")
    wait_idle(page)
    low = int(tokens.get_by_role("slider").first.input_value())
    high = int(upper.input_value())
    assert (low, high) != (0, int(upper.get_attribute("max"))), "the slider did not move"
    kept = metric_value(page, "Kept CoTs")
    screenshot(page, "flow-1-select-threshold")
    expected_ids = {row[0] for row in store.read_rows(
        "SELECT c.cot_id FROM cots c JOIN datasets d USING (dataset_id) "
        "WHERE d.status = 'ready' AND c.n_tokens BETWEEN ? AND ?", [low, high], db=app_server.db,
    )}
    assert 0 < kept < pool
    assert kept == len(expected_ids), f"Select keeps {kept} CoTs; the store has {len(expected_ids)} with {low}-{high} tokens"
    assert metric_value(page, "Dropped CoTs") == pool - kept

    recipe = "browser-token-cap"
    main.get_by_label("Recipe name").fill(recipe)
    main.get_by_role("button", name="Save the current selection as a recipe").click()
    wait_idle(page)
    saved = main.locator("[data-testid='stAlertContentSuccess']").filter(has_text="Saved as")
    assert f"keeps {kept:,} CoTs" in saved.inner_text()
    assert (app_server.data_dir / "recipes" / f"{recipe}.json").exists()

    # To Export through the sidebar, in the same session.
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Export").click()
    wait_idle(page)
    assert page.url.split("?")[0].endswith("/export")
    main.locator("[data-testid='stRadio']").filter(has_text="A saved recipe").get_by_text("A saved recipe").click()
    wait_idle(page)
    choose(page, "Recipe", recipe)
    choose(page, "Format", "JSONL, every field")
    assert metric_value(page, "CoTs to export") == kept
    main.get_by_role("button", name=re.compile(rf"^Write {kept:,} CoTs to ")).click()
    wait_idle(page)
    wrote = main.locator("[data-testid='stAlertContentSuccess']").filter(has_text="Wrote")
    assert wrote.inner_text().startswith(f"Wrote {kept:,} CoTs to ")
    screenshot(page, "flow-2-export-written")

    exports = sorted((app_server.data_dir / "exports").glob(f"{recipe}-jsonl-*.jsonl"))
    assert len(exports) == 1, exports
    lines = exports[0].read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == kept
    assert {row["cot_id"] for row in rows} == expected_ids
    assert all(low <= row["n_tokens"] <= high for row in rows)
    manifest = json.loads(exports[0].with_name(exports[0].name + ".manifest.json").read_text())
    assert manifest["counts"]["rows"] == kept

    # the file is read on the server only when the button is clicked (a deferred download)
    with page.expect_download(timeout=90_000) as download_info:
        main.locator("[data-testid='stDownloadButton'] button").click()
    downloaded = tmp_path / "download.jsonl"
    download_info.value.save_as(downloaded)
    assert downloaded.read_bytes() == exports[0].read_bytes()
    assert errors_on_screen(page) == []
    assert page.dialogs == []


def test_script_tags_in_a_cot_show_as_text_in_the_reader(page, app_server, xss_problem_id):
    open_page(page, app_server, f"/reader?problem={xss_problem_id}")
    main = page.locator("[data-testid='stMain']")
    # open the thinking too: it is rendered only when its expander opens
    main.locator("[data-testid='stExpander'] summary").filter(has_text="Thinking").first.click()
    wait_idle(page)
    page.wait_for_timeout(500)  # an onerror or a script would fire while the Markdown mounts
    shot = screenshot(page, "reader-xss-check")

    text = main.inner_text()
    assert "What is 2 + 2?" in text
    # question, thinking and solution each show the tag as characters
    assert text.count(XSS_PAYLOAD) == 3, f"the <script> tag is not shown as text 3 times (screenshot {shot})"
    assert text.count(XSS_IMG) == 2, f"the <img onerror> is not shown as text twice (screenshot {shot})"
    assert page.dialogs == [], f"dataset text ran as HTML: {page.dialogs}"
    injected = page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] script, [data-testid=\"stMain\"] img[onerror]')]"
        ".map(e => e.outerHTML)"
    )
    assert injected == []
    assert errors_on_screen(page) == []

"""Issue 11's daily flow in a real browser, over the real Qwen2.5-Math store: a CoT's permalink
copied and opened elsewhere, the CoT in focus scrolled to, the j/k/n/p keys, reflection
markers a reader can see, a click on a length bar that narrows the filter to exactly its CoTs,
and a recipe form that Enter does not submit.

    .venv/bin/python -m pytest tests/browser/test_reader_flow.py -q    # Debian's chromium
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlparse

import pytest

from core import store
from .conftest import open_page, screenshot, wait_idle

pytestmark = pytest.mark.browser

DATASET = "qwen25-math-eval"


def readable(db, cot_id: int) -> str:
    """A CoT's readable id, computed here from the store (not by core.ids)."""
    key, n = store.read_rows(
        "SELECT p.problem_key, (SELECT count(*) FROM cots o WHERE o.problem_id = c.problem_id AND o.cot_id < c.cot_id) "
        "FROM cots c JOIN problems p USING (problem_id) WHERE c.cot_id = ?", [int(cot_id)], db=db)[0]
    return f"{DATASET}:{key}:{n}"


def reader_order(db, where: str) -> list[tuple[int, int]]:
    """(problem_id, cot_id) in the order j/k step: problem by problem, then model, sample, id."""
    return store.read_rows(
        "SELECT c.problem_id, c.cot_id FROM cots c JOIN problems p USING (problem_id) JOIN datasets d "
        f"ON d.dataset_id = c.dataset_id WHERE {where} ORDER BY c.problem_id, c.model NULLS LAST, c.sample_idx, c.cot_id",
        db=db)


def address_cot(page) -> str | None:
    values = parse_qs(urlparse(page.url).query).get("cot")
    return values[0] if values else None


def test_keys_step_through_cots_and_problems_of_the_filter(page, app_server):
    db = app_server.db
    order = reader_order(db, "p.benchmark = 'math500'")
    problems = list(dict.fromkeys(p for p, _ in order))
    open_page(page, app_server, f"/reader?benchmarks=math500&cot={readable(db, order[0][1])}")
    assert address_cot(page) == readable(db, order[0][1])
    body = page.locator("[data-testid='stMain'] h1").first
    for key, expected in (("j", order[1]), ("j", order[2]), ("k", order[1])):
        body.click()  # focus on the page, not in a box
        page.keyboard.press(key)
        wait_idle(page)
        assert address_cot(page) == readable(db, expected[1]), key
    # n: the next problem's first CoT in the filter; p: back to this problem's first
    page.keyboard.press("n")
    wait_idle(page)
    nxt = problems[problems.index(order[1][0]) + 1]
    assert address_cot(page) == readable(db, next(c for p, c in order if p == nxt))
    page.keyboard.press("p")
    wait_idle(page)
    assert address_cot(page) == readable(db, order[0][1])
    # typing a j in a box types it, and moves nowhere
    find = page.get_by_placeholder("Find in this CoT")
    find.click()
    find.press_sequentially("jk")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert address_cot(page) == readable(db, order[0][1])
    assert find.input_value() == "jk"


def test_the_permalink_copies_and_opens_that_cot_elsewhere_scrolled_to(chromium, app_server):
    """Copy the permalink with the code block's button, open it in a fresh browser, and the
    CoT is there; from the whole problem, the CoT in focus is scrolled to with its thinking open."""
    db = app_server.db
    # an AIME problem that all 25 runs answered, and its 20th CoT in the Reader's order
    problem_id = store.read_rows(
        "SELECT problem_id FROM cots c JOIN problems p USING (problem_id) WHERE p.benchmark = 'aime24' "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1", db=db)[0][0]
    cots = [c for p, c in reader_order(db, f"c.problem_id = {int(problem_id)}")]
    target = cots[19]
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_server.url)
    context.set_default_timeout(60_000)
    try:
        page = context.new_page()
        open_page(page, app_server, f"/reader?cot={target}")  # the internal id works too
        assert address_cot(page) == readable(db, target)
        code = page.locator("[data-testid='stMain'] [data-testid='stCode']").first
        code.hover()
        code.get_by_role("button").first.click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == f"{app_server.url}/reader?cot={readable(db, target)}"

        other = chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            fresh = other.new_page()
            fresh.goto(copied, wait_until="domcontentloaded")
            fresh.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", state="attached",
                                    timeout=60_000)
            wait_idle(fresh)
            block = fresh.locator(f".st-key-reader_cot_{target}")
            assert block.count() == 1 and fresh.locator("[class*='st-key-reader_cot_']").count() == 1
            assert block.locator("details[open]").count() >= 1  # its thinking is open
            assert readable(db, target) in block.inner_text()
        finally:
            other.close()

        # the whole problem, one click away, with this CoT in focus: scrolled to, thinking open
        page.get_by_role("button", name="Whole problem (25 CoTs)").click()
        wait_idle(page)
        page.wait_for_timeout(1500)  # the scroll waits for the block to be drawn
        block = page.locator(f".st-key-reader_cot_{target}")
        top = block.evaluate("el => el.getBoundingClientRect().top")
        shot = screenshot(page, "reader-focus-scrolled")
        assert 0 <= top < 300, f"the CoT in focus is at {top}px, not scrolled to ({shot})"
        assert page.locator("[class*='st-key-reader_cot_']").count() == 25
        assert block.locator("details[open]").count() >= 1
    finally:
        context.close()


def _rgb(css: str) -> tuple[float, float, float]:
    parts = css[css.index("(") + 1:css.index(")")].split(",")
    return tuple(float(p) for p in parts[:3])


def _luminance(rgb) -> float:
    def channel(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_reflection_markers_stand_out_from_the_text_with_a_legend(page, app_server):
    """Issue 11: markers were a pale orange background (#fff6ed) a reader could not see."""
    db = app_server.db
    cot_id = store.read_rows(
        "SELECT cot_id FROM cots WHERE thinking IS NOT NULL AND n_reflections BETWEEN 3 AND 40 ORDER BY n_chars LIMIT 1",
        db=db)[0][0]
    open_page(page, app_server, f"/reader?cot={cot_id}")
    main = page.locator("[data-testid='stMain']")
    assert "reflection markers" in main.locator("[data-testid='stMarkdown']").filter(has_text="Highlighted:").inner_text()
    marker = main.locator(f".st-key-reader_cot_{cot_id} .stMarkdownColoredBackground .stMarkdownColoredText").first
    marker.wait_for()
    style = marker.evaluate("""el => {
        const s = getComputedStyle(el);
        const text = [...el.closest('[data-testid=stMarkdown]').querySelectorAll('p')].map(p => getComputedStyle(p).color)[0];
        return {color: s.color, weight: s.fontWeight, text: text,
                page: getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor};
    }""")
    shot = screenshot(page, "reader-markers")
    colour, text, background = _rgb(style["color"]), _rgb(style["text"]), _rgb(style["page"])
    assert contrast(colour, background) >= 4.5, (style, shot)  # readable on the page
    assert sum((a - b) ** 2 for a, b in zip(colour, text)) ** 0.5 > 80, (style, shot)  # and not the text's colour
    assert int(style["weight"]) >= 600, (style, shot)


def test_a_click_on_a_length_bar_narrows_the_filter_to_exactly_its_cots(page, app_server):
    """Issue 11: the caption promised that a click on a bar narrows the filter; on the length
    histogram it did not. The bar's count is what Explore then counts."""
    open_page(page, app_server, "/distributions")
    plot = page.locator("[data-testid='stMain'] .js-plotly-plot").first
    plot.wait_for()
    # the tallest "incorrect" bar, from the figure's own data
    trace_index, point_index, count, lo, hi = plot.evaluate("""el => {
        let best = null;
        el.data.forEach((t, i) => { if (t.type === 'bar' && t.name === 'incorrect') t.y.forEach((y, j) => {
            if (!best || y > best[2]) best = [i, j, y, t.customdata[j][0], t.customdata[j][1]]; }); });
        return best; }""")
    assert count > 0
    bar = plot.locator(".barlayer .trace").nth(trace_index).locator(".point").nth(point_index)
    bar.click(force=True)
    wait_idle(page)
    sidebar = page.locator("[data-testid='stSidebar']")
    assert sidebar.get_by_label(re.compile(r"^Tokens.*: from$")).input_value().replace(",", "") == str(lo)
    assert sidebar.get_by_label(re.compile(r"^Tokens.*: to$")).input_value().replace(",", "") == str(hi)
    assert sidebar.get_by_role("radio", name="incorrect").is_checked()
    sidebar.locator("[data-testid='stSidebarNav'] a").filter(has_text="Explore").click()
    wait_idle(page)
    metric = page.locator("[data-testid='stMain'] [data-testid='stMetric']").filter(has_text="Matching CoTs")
    assert int(metric.locator("[data-testid='stMetricValue']").inner_text().replace(",", "")) == count


def test_enter_in_the_recipe_form_does_not_save_it(page, app_server):
    """Issue 11: Enter saved the recipe with its description lost, then Save said 'already saved'."""
    open_page(page, app_server, "/select")
    main = page.locator("[data-testid='stMain']")
    name = "enter-does-not-save"
    main.get_by_label("Recipe name").fill(name)
    main.get_by_label("Recipe name").press("Enter")
    wait_idle(page)
    folder = app_server.data_dir / "recipes"
    assert not (folder / f"{name}.json").exists()
    main.get_by_label("Description (optional)").fill("kept on save")
    main.get_by_label("Description (optional)").press("Enter")
    wait_idle(page)
    assert not (folder / f"{name}.json").exists()
    main.get_by_role("button", name="Save the current selection as a recipe").click()
    wait_idle(page)
    saved = json.loads((folder / f"{name}.json").read_text())
    assert saved["description"] == "kept on save"
    assert page.locator("[data-testid='stAlertContentError']").count() == 0

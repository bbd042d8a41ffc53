"""The Map page in chromium: a lasso drawn with the mouse over the WebGL scatter (in the map
component's iframe) narrows the shared filter to exactly the problems inside it, and the other
pages see the same problems.

The expected problems are computed here, independently of the app: the lasso's pixel path is
turned into data coordinates with plotly's own axis functions in the page, and a plain
point-in-polygon test over the store's problem_map rows picks the problems inside.

    .venv/bin/python -m pytest tests/browser/test_map_browser.py -q
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from core import store
from .conftest import SCREENSHOTS, _require_chromium, open_page, screenshot, start_server, \
    stop_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def map_server(map_store_template, tmp_path_factory):
    _require_chromium()
    folder = tmp_path_factory.mktemp("map-browser")
    db = folder / "store.duckdb"
    shutil.copy(map_store_template, db)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server(db, folder / "data", SCREENSHOTS.parent / "streamlit-map-server.log")
    yield server
    stop_server(server)


@pytest.fixture
def map_page(chromium, map_server):
    context = chromium.new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


PLOT = ".js-plotly-plot"  # inside the map component's iframe (ui/map_chart.py)
IFRAME = "iframe[src*='thoughtscope_map']"


def map_frame(page):
    """The map component's frame, once plotly has drawn in it."""
    page.wait_for_selector(IFRAME, timeout=60_000)
    frame = page.frame_locator(IFRAME)
    frame.locator(f"{PLOT} .main-svg").first.wait_for(timeout=60_000)
    return next(f for f in page.frames if "thoughtscope_map" in f.url)


def inside(px: np.ndarray, py: np.ndarray, poly: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule point-in-polygon (ray casting), vectorised over the points."""
    result = np.zeros(len(px), dtype=bool)
    for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
        crosses = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            at_x = (x2 - x1) * (py - y1) / (y2 - y1) + x1
        result ^= crosses & (px < at_x)
    return result


def sidebar_selection_count(page) -> int | None:
    text = page.locator("[data-testid='stSidebar']").inner_text()
    match = re.search(r"Problems from the map: ([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else None


def test_lasso_narrows_the_filter_to_the_problems_inside(map_page, map_server):
    page = map_page
    open_page(page, map_server, "/map")
    frame = map_frame(page)
    wait_idle(page)
    assert sidebar_selection_count(page) is None
    # the plot area in page pixels (the iframe's offset plus plotly's), and plotly's pixel -> data
    # functions for it, evaluated in the component's frame
    offset = page.locator(IFRAME).bounding_box()
    area = frame.evaluate(f"""() => {{
        const gd = document.querySelector("{PLOT}");
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.getBoundingClientRect();
        return {{left: box.left + xa._offset, top: box.top + ya._offset, width: xa._length, height: ya._length}};
    }}""")
    area["left"] += offset["x"]
    area["top"] += offset["y"]
    # a pentagon over the left-centre of the map, in page pixels
    cx, cy = area["left"] + 0.40 * area["width"], area["top"] + 0.5 * area["height"]
    rx, ry = 0.25 * area["width"], 0.35 * area["height"]
    angles = np.linspace(0, 2 * np.pi, 6)[:-1] + 0.3
    path = [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in angles]
    poly = frame.evaluate(f"""([path, dx, dy]) => {{
        const gd = document.querySelector("{PLOT}");
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.getBoundingClientRect();
        return path.map(([x, y]) => [xa.p2d(x - dx - box.left - xa._offset), ya.p2d(y - dy - box.top - ya._offset)]);
    }}""", [path, offset["x"], offset["y"]])
    page.mouse.move(*path[0])
    page.mouse.down()
    for point in path[1:] + path[:1]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()
    page.wait_for_function("() => /Problems from the map: [0-9]/.test(document.body.innerText)", timeout=60_000)
    wait_idle(page)
    screenshot(page, "map-after-lasso")
    n = sidebar_selection_count(page)

    # independently: problems with a CoT (the page's default view) whose map position is inside the lasso
    sid = store.read_rows("SELECT source_id FROM score_sources WHERE name = 'map (all-MiniLM-L6-v2)'", db=map_server.db)[0][0]
    rows = store.read_rows(
        "SELECT m.problem_id, m.x, m.y FROM problem_map m WHERE m.source_id = ? AND EXISTS "
        "(SELECT 1 FROM cots c WHERE c.problem_id = m.problem_id) ORDER BY 1", [sid], db=map_server.db)
    ids = np.array([r[0] for r in rows])
    xs, ys = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    expected = set(ids[inside(xs, ys, [tuple(p) for p in poly])].tolist())
    assert 0 < len(expected) < len(ids)

    key = re.search(r"problem_set=([0-9a-f]+)", page.url).group(1)
    import pyarrow.parquet as pq

    saved = set(pq.read_table(map_server.data_dir / "problem_sets" / f"{key}.parquet").column("problem_id").to_pylist())
    assert n == len(saved)
    # the lasso's edge passes through a point only by a pixel's chance: allow one either way
    assert len(saved ^ expected) <= 1, (len(saved), len(expected))

    # the narrowed filter is the shared one: Explore counts the same problems
    page.get_by_role("link", name="Explore").click()
    page.wait_for_selector("[data-testid='stMetric']", timeout=60_000)
    wait_idle(page)
    problems = page.locator("[data-testid='stMain'] [data-testid='stMetric']").filter(has_text="Problems")
    assert int(problems.locator("[data-testid='stMetricValue']").inner_text().replace(",", "")) == n
    assert sidebar_selection_count(page) == n

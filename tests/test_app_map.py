"""The Map page through AppTest, on the real map store (tests/conftest.py build_map_store):
what it draws and the sidebar's map-selection line, checked against SQL written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import problem_sets, store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds the map with the real embedding model (once per session)


def open_map(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page("pages/map.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def drawn_points(at: AppTest) -> int:
    """Points in the map figure (both traces), from the chart's JSON spec."""
    charts = at.get("component_instance")  # ui.map_chart: the figure travels as the component's argument
    assert len(charts) == 1
    spec = json.loads(json.loads(charts[0].proto.json_args)["figure"])
    return sum(_length(trace["x"]) for trace in spec["data"])


def _length(values) -> int:
    if isinstance(values, dict) and "bdata" in values:  # plotly's base64 typed array
        import base64

        import numpy as np

        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


def _rows(db, sql, params=None):
    return store.read_rows(sql, params or [], db=db)


def test_map_page_draws_the_problems_the_filter_matches(map_store, app_store):
    app_store(map_store)
    at = open_map()
    with_cots = _rows(map_store, "SELECT count(DISTINCT problem_id) FROM cots")[0][0]
    assert with_cots == 530
    assert drawn_points(at) == with_cots
    clusters = _rows(map_store, "SELECT count(*) FROM map_clusters")[0][0]
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == clusters
    # every mapped problem, coloured by dataset: the benchmarks' problems (no CoTs) too
    at.radio(key="map_show").set_value("every mapped problem").run()
    at.selectbox(key="map_colour").set_value("dataset").run()
    assert not at.exception, [e.value for e in at.exception]
    assert drawn_points(at) == _rows(map_store, "SELECT count(*) FROM problems")[0][0] == 1090
    # a sidebar filter narrows the map: only AIME 2024's problems with a CoT
    at.radio(key="map_show").set_value("problems the filter matches").run()
    at.multiselect(key="f_benchmarks").set_value(["aime24"]).run()
    assert drawn_points(at) == 30


def test_a_saved_selection_narrows_the_map_and_the_sidebar_says_so(map_store, app_store):
    app_store(map_store)
    chosen = [r[0] for r in _rows(map_store, "SELECT DISTINCT problem_id FROM cots ORDER BY 1 LIMIT 40")]
    key = problem_sets.save(chosen, origin="test", db=map_store)
    at = open_map({"problem_set": key})
    assert drawn_points(at) == 40
    assert any(c.value == "Problems from the map: 40" for c in at.sidebar.caption)
    assert at.session_state["current_filter"].problem_set == key
    assert at.query_params["problem_set"] == key
    at.sidebar.button(key="filter_clear_problem_set").click().run()
    assert not at.exception
    assert drawn_points(at) == 530
    assert not any(c.value.startswith("Problems from the map") for c in at.sidebar.caption)
    assert "problem_set" not in at.query_params


def test_map_page_without_a_map_offers_to_compute_it(demo_store, app_store):
    app_store(demo_store)
    at = open_map()
    assert any("No map yet" in i.value for i in at.info)
    assert at.button(key="map_start") is not None
    assert len(at.get("component_instance")) == 0

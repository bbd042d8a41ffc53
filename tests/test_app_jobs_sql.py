"""The SQL and Jobs pages through Streamlit's AppTest, on real stores and real workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs, store

ROOT = Path(__file__).resolve().parents[1]


def _page(path: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    return at.switch_page(path).run()


def _run_sql(at: AppTest, sql: str) -> AppTest:
    at.text_area(key="sql_text").input(sql)
    return at.button(key="sql_run").click().run()


def test_sql_page_runs_a_query_and_shows_the_row_count(app_store, demo_store):
    app_store(demo_store)
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    at = _run_sql(_page("pages/sql.py"), "SELECT cot_id, model, n_tokens FROM cots ORDER BY cot_id")
    assert not at.exception
    assert len(at.dataframe[0].value) == n_cots
    assert any(c.value.startswith(f"{n_cots:,} rows") for c in at.caption)
    # the result is complete, so it can be charted
    assert len(at.get("plotly_chart")) == 1


def test_sql_page_pages_through_a_large_result_and_will_not_chart_a_part(app_store, demo_store):
    app_store(demo_store)
    at = _run_sql(_page("pages/sql.py"), "SELECT range AS i FROM range(25000)")
    assert any("Showing the first 10,000 of 25,000 rows" in c.value for c in at.caption)
    assert len(at.dataframe[0].value) == 10_000
    assert not at.get("plotly_chart")
    assert any("Aggregate in SQL" in i.value for i in at.info)
    at = at.number_input(key="sql_page").set_value(3).run()
    assert any("Showing rows 20,001–25,000 of 25,000" in c.value for c in at.caption)
    assert at.dataframe[0].value["i"].tolist() == list(range(20_000, 25_000))


def test_sql_page_example_and_chart(app_store, demo_store):
    app_store(demo_store)
    at = _page("pages/sql.py")
    name = "Accuracy per model and correctness source"
    at = at.selectbox(key="sql_example").set_value(name).run()
    assert "avg(s.value)" in at.text_area(key="sql_text").value
    at = at.button(key="sql_run").click().run()
    table = at.dataframe[0].value
    # the first chart is accuracy per model, one bar group per correctness source
    assert (at.selectbox(key="sql_chart_x").value, at.selectbox(key="sql_chart_y").value,
            at.selectbox(key="sql_chart_color").value) == ("model", "accuracy", "source")
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["type"] == "bar"
    assert sum(len(trace["x"]) for trace in spec["data"]) == len(table)
    assert {trace["name"] for trace in spec["data"]} == set(table["source"])
    at = at.radio(key="sql_chart_kind").set_value("scatter").run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["type"] == "scatter"
    # another query with other columns starts its chart afresh
    at = _run_sql(at, "SELECT n_reflections, count(*) AS cots FROM cots GROUP BY ALL ORDER BY 1")
    assert not at.exception
    assert (at.selectbox(key="sql_chart_x").value, at.selectbox(key="sql_chart_y").value) == ("n_reflections", "cots")


def test_sql_page_shows_a_refusal_as_an_error(app_store, demo_store):
    app_store(demo_store)
    before = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    at = _page("pages/sql.py")
    for sql, says in (("DROP TABLE cots", "read-only"), ("SELECT * FROM read_text('/etc/passwd')", "cannot read files"),
                      ("SELECT 1; DELETE FROM cots", "one statement at a time")):
        at = _run_sql(at, sql)
        assert not at.exception
        assert says in at.error[0].value
    assert store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0] == before


def _wait_done(job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while (job := jobs.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.mark.spawns_processes
def test_jobs_page_lists_a_job_and_its_final_state(app_store, demo_store, tmp_path):
    app_store(demo_store)
    not_a_tokenizer = tmp_path / "tokenizer.json"
    not_a_tokenizer.write_text("{}")
    job_id = jobs.submit("tokens", {"tokenizer": str(not_a_tokenizer)})
    failed = _wait_done(job_id)
    assert failed["state"] == "failed"
    assert failed["error"].startswith(f"The tokenizer '{not_a_tokenizer}' could not be loaded")

    at = _page("pages/jobs.py")
    assert not at.exception
    heads = [m.value for m in at.markdown]
    assert any(f"Job {job_id} · tokens** — failed" in h for h in heads)
    assert any(failed["error"] in e.value for e in at.error)
    table = at.dataframe[0].value
    assert table[["id", "kind", "state"]].values.tolist() == [[job_id, "tokens", "failed"]]

    # start a verification from the page; it runs in its own worker, and the page shows it end
    form_button = next(b for b in at.button if b.label == "Start verification")
    at = form_button.click().run()
    assert any("Started job" in s.value for s in at.success)
    new_id = max(jobs.list_jobs()["id"].to_list())
    assert jobs.get(new_id)["kind"] == "verify"
    _wait_done(new_id)
    at = at.run()
    states = dict(at.dataframe[0].value[["id", "state"]].values.tolist())
    assert states == {job_id: "failed", new_id: "done"}
    assert any(f"Job {new_id} · verify** — done" in m.value for m in at.markdown)
    # the failed job offers a resume button, the finished one none
    assert at.button(key=f"jobs_resume_{job_id}")
    assert not [b for b in at.button if b.key == f"jobs_resume_{new_id}"]

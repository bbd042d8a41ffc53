"""The reflection-marker stage (core/markers.py) on stores built by the real ingest: an old
store's counts are recounted (resumably) under the longest-match rule, and the density per
1,000 tokens is published as a figure that filters, against counts worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import cli, markers, queries, render, store
from core.figures import Condition
from core.formats import ReadOptions
from core.ingest import ingest
from core.progress import JobCancelled
from core.queries import CotFilter
from core.tokens import count_tokens_stage
from tests.helpers import write_jsonl, write_whitespace_tokenizer

# response, {marker: count} by hand under the bundled markers, whitespace-separated pieces
RESPONSES = [
    ("But wait, hmm. Let's pause. Wait.", {"but_wait": 1, "hmm": 1, "pause": 1, "wait": 1}, 6),
    ("hold-on, hold on, HMMMM, awaiting", {"hold_on": 2, "hmm": 1}, 5),
    ("No markers here at all", {}, 5),
    ("Alternatively, let me check. But\nwait.", {"alternatively": 1, "let_me_check": 1, "but_wait": 1}, 6),
    ("Double-check it, then double check again. Let me pause.", {"double_check": 2, "pause": 1}, 9),
]
OLD_STYLE_TOTALS = [4, 1, 0, 4, 2]  # what the per-marker scan counted: "But wait" twice, no pause, no hold-on


@pytest.fixture
def db(tmp_path: Path) -> Path:
    rows = [{"id": f"p{i}", "question": f"Question {i}?", "response": text, "model": "m"}
            for i, (text, _, _) in enumerate(RESPONSES)]
    src = write_jsonl(tmp_path / "cots.jsonl", rows)
    path = tmp_path / "store.duckdb"
    ingest(str(src), name="cots", db=path,
           opts=ReadOptions(mapping={"question": "question", "response": "response", "model": "model", "id": "id"}))
    return path


def _counts(db: Path) -> list[tuple[int, dict]]:
    rows = store.read_rows("SELECT n_reflections, map_entries(reflections) FROM cots ORDER BY cot_id", db=db)
    return [(n, {e["key"]: e["value"] for e in entries if e["value"]}) for n, entries in rows]


def _make_old(db: Path) -> None:
    """What an ingest before the longest-match rule left: other totals, no marker_counts row."""
    with store.connect(db, read_only=False) as con:
        ids = [r[0] for r in con.execute("SELECT cot_id FROM cots ORDER BY cot_id").fetchall()]
        for cot_id, total in zip(ids, OLD_STYLE_TOTALS):
            con.execute("UPDATE cots SET n_reflections = ?, reflections = MAP {'wait': ?} WHERE cot_id = ?",
                        [total, total, cot_id])
        con.execute("DELETE FROM marker_counts")


def test_ingest_counts_each_occurrence_once_and_records_the_marker_set(db):
    assert _counts(db) == [(sum(c.values()), c) for _, c, _ in RESPONSES]
    current = markers.markers_hash(markers.load_markers())
    assert store.read_rows("SELECT markers_hash, complete FROM marker_counts", db=db) == [(current, True)]
    assert markers.stale_datasets(db=db) == []


def test_an_old_store_is_recounted_and_a_killed_recount_resumes(db):
    _make_old(db)
    assert [n for n, _ in _counts(db)] == OLD_STYLE_TOTALS
    assert [d["name"] for d in markers.stale_datasets(db=db)] == ["cots"]

    seen = []

    def cancel_after_first_batch():
        return bool(seen)

    with pytest.raises(JobCancelled):
        markers.recount(db=db, batch_cots=2, progress=lambda stage, done, total: seen.append(done),
                        cancelled=cancel_after_first_batch)
    assert seen == [2]
    # the first batch is committed with the new rule, the rest still holds the old counts
    new = [(sum(c.values()), c) for _, c, _ in RESPONSES]
    old = [(n, {"wait": n} if n else {}) for n in OLD_STYLE_TOTALS]
    assert _counts(db) == new[:2] + old[2:]
    ((done_through, complete),) = store.read_rows("SELECT done_through, complete FROM marker_counts", db=db)
    second_id = store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id LIMIT 1 OFFSET 1", db=db)[0][0]
    assert (done_through, complete) == (second_id, False)

    result = markers.recount(db=db, batch_cots=2)
    assert result["recounted"] == 3  # only what the killed run had not done
    assert _counts(db) == new
    assert markers.stale_datasets(db=db) == []
    assert markers.recount(db=db)["recounted"] == 0


def test_density_is_a_figure_per_1000_tokens_that_filters(db, tmp_path):
    words = write_whitespace_tokenizer(tmp_path / "words")
    count_tokens_stage(db=db, tokenizer=str(words))
    assert markers.publish_density(db=db) == {"density": 5}
    rows = store.read_rows(
        "SELECT s.value, s.raw FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'reflection markers' AND s.metric = 'reflections_per_1k_tokens' ORDER BY s.cot_id", db=db)
    expected = [1000 * sum(c.values()) / n for _, c, n in RESPONSES]  # 4/6, 3/5, 0, 3/6, 3/9 per token
    assert [v for v, _ in rows] == pytest.approx(expected)
    assert {raw for _, raw in rows} == {str(words)}
    assert store.read_rows("SELECT kind FROM score_sources WHERE name = 'reflection markers'", db=db) == [("stage",)]
    # nothing out of date: a second run writes nothing
    assert markers.publish_density(db=db) == {"density": 0}

    # a condition on the figure keeps exactly the CoTs at or above 500 per 1,000 tokens
    f = CotFilter(conditions=(Condition(markers.DENSITY, lo=500),))
    kept = store.read_df(f"SELECT cot_id FROM ({queries.matching_sql(f, db=db)[0]}) ORDER BY cot_id",
                         queries.matching_sql(f, db=db)[1], db=db)["cot_id"].to_list()
    ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]
    assert kept == [i for i, e in zip(ids, expected) if e >= 500] == [ids[0], ids[1], ids[3]]

    # recounted with another tokenizer, every density is replaced and names the new one
    digits = write_whitespace_tokenizer(tmp_path / "digits", split_digits=True)
    count_tokens_stage(db=db, tokenizer=str(digits), recount=True)
    assert markers.publish_density(db=db) == {"density": 5}
    rows = store.read_rows(
        "SELECT count(*), min(s.raw), max(s.raw) FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'reflection markers'", db=db)
    assert rows == [(5, str(digits), str(digits))]


def test_another_marker_file_recounts_through_the_command_line(db, tmp_path, capsys):
    custom = tmp_path / "markers.yaml"
    custom.write_text("wait:\n  - wait\nbut:\n  - but\n", encoding="utf-8")
    assert [d["name"] for d in markers.stale_datasets(db=db, markers_path=str(custom))] == ["cots"]
    assert cli.main(["--db", str(db), "markers", "--markers", str(custom)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["recounted"] == 5 and out["datasets"] == 1
    # "But wait" is now a but + a wait: the only phrases are the two words
    assert [n for n, _ in _counts(db)] == [3, 0, 0, 2, 0]
    assert cli.main(["--db", str(db), "markers", "--markers", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_describe_counts_puts_densities_beside_the_raw_counts():
    line = markers.describe_counts({"wait": 3, "hmm": 2, "hold_on": 0}, 5, 2000, "SmolLM2-135M-Instruct")
    assert line == ("5 reflection markers, 2.5 per 1,000 tokens (SmolLM2-135M-Instruct): wait 3 (1.5), hmm 2 (1.0)")
    assert markers.describe_counts([{"key": "wait", "value": 1}], 1, None) == "1 reflection marker: wait 1"
    assert markers.describe_counts({}, 0, 10) == "0 reflection markers, 0.0 per 1,000 tokens"


def test_reader_shows_each_cots_densities_beside_its_counts(db, tmp_path, app_store):
    from streamlit.testing.v1 import AppTest

    count_tokens_stage(db=db, tokenizer=str(write_whitespace_tokenizer(tmp_path / "words")))
    app_store(db)
    problem_id = store.read_rows("SELECT problem_id FROM cots ORDER BY cot_id LIMIT 1", db=db)[0][0]
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.session_state["reader_problem_id"] = problem_id
    at.switch_page("pages/reader.py").run()
    assert not at.exception, [e.value for e in at.exception]
    # 4 markers in 6 tokens: 666.7 per 1,000; each marker once: 166.7
    expected = render.escape_inline("4 reflection markers, 666.7 per 1,000 tokens: wait 1 (166.7), hmm 1 (166.7), "
                                    "but_wait 1 (166.7), pause 1 (166.7)")
    assert any(expected in m.value for m in at.markdown), [m.value for m in at.markdown][3]


@pytest.mark.spawns_processes
def test_the_jobs_page_runs_a_markers_job_that_recounts_an_old_store(db, app_store):
    import time

    from streamlit.testing.v1 import AppTest

    from core import jobs

    _make_old(db)
    app_store(db)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at = at.switch_page("pages/jobs.py").run()
    assert at.text_input(key="jobs_markers_markers").value == ""  # default: the bundled file
    at = next(b for b in at.button if b.label == "Recount reflection markers").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (job_id,) = jobs.list_jobs(limit=None)["id"].to_list()
    deadline = time.monotonic() + 150
    while jobs.get(job_id)["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    job = jobs.get(job_id)
    assert (job["kind"], job["state"]) == ("markers", "done"), job["error"]
    assert job["result"]["recounted"] == 5
    assert _counts(db) == [(sum(c.values()), c) for _, c, _ in RESPONSES]

"""The read-only SQL console: SELECTs run, everything that writes or touches files is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from core import sqlconsole, store


def _fingerprint(db: Path) -> tuple:
    """The store's bytes, every table's row count and the external-access setting of a
    fresh connection, to show nothing changed."""
    tables = ("datasets", "problems", "cots", "score_sources", "scores", "run_metrics", "meta")
    counts = store.read_rows(
        "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)
        + ", current_setting('enable_external_access')",
        db=db,
    )[0]
    return hashlib.sha256(db.read_bytes()).hexdigest(), counts


def test_select_runs_and_counts_rows(demo_store):
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    frame = sqlconsole.run_readonly("SELECT cot_id, model FROM cots ORDER BY cot_id", db=demo_store)
    assert frame.height == n_cots
    assert frame["cot_id"].is_sorted()
    per_model = sqlconsole.run_readonly(
        "SELECT model, count(*) AS n FROM cots GROUP BY model ORDER BY model", db=demo_store
    )
    assert per_model["n"].sum() == n_cots


def test_results_are_capped_with_a_note_and_paged(demo_store):
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    first = sqlconsole.run_query("SELECT cot_id FROM cots ORDER BY cot_id", db=demo_store, limit=100)
    assert first.frame.height == 100 and first.total_rows == n_cots and not first.complete
    assert first.note.startswith(f"Showing the first 100 of {n_cots:,} rows")
    second = sqlconsole.run_query("SELECT cot_id FROM cots ORDER BY cot_id", db=demo_store, limit=100, offset=100)
    assert second.note.startswith(f"Showing rows 101–200 of {n_cots:,}")
    everything = sqlconsole.run_readonly("SELECT cot_id FROM cots ORDER BY cot_id", db=demo_store)
    assert pl.concat([first.frame, second.frame])["cot_id"].to_list() == everything["cot_id"].head(200).to_list()
    small = sqlconsole.run_query("SELECT 1 AS one", db=demo_store)
    assert small.complete and small.total_rows == 1


def test_examples_all_run(demo_store):
    for name, sql in sqlconsole.EXAMPLES.items():
        result = sqlconsole.run_query(sql, db=demo_store)
        assert result.total_rows > 0, name
    accuracy = sqlconsole.run_readonly(sqlconsole.EXAMPLES["Accuracy per model and correctness source"], db=demo_store)
    assert set(accuracy["source"]) >= {"math-verify"}
    assert accuracy["accuracy"].is_between(0, 1).all()


REFUSED = {
    "INSERT INTO datasets (dataset_id, name, source, format, status) VALUES (99, 'x', 'x', 'x', 'ready')": "INSERT",
    "UPDATE cots SET model = 'x'": "UPDATE",
    "DELETE FROM cots": "DELETE",
    "CREATE TABLE evil AS SELECT * FROM cots": "CREATE",
    "CREATE TEMP TABLE scratch (a INT)": "CREATE",
    "DROP TABLE cots": "DROP",
    "ALTER TABLE cots ADD COLUMN x INT": "ALTER",
    "ATTACH '/tmp/other.duckdb' AS other": "ATTACH",
    "COPY cots TO '/tmp/cots.csv'": "COPY",
    "COPY cots FROM '/tmp/cots.csv'": "COPY",
    "EXPORT DATABASE '/tmp/dump'": "EXPORT",
    "INSTALL httpfs": "INSTALL",
    "LOAD httpfs": "LOAD",
    "SET enable_external_access = true": "SET",
    "RESET lock_configuration": "SET",
    "PRAGMA version": "PRAGMA",
    "CALL pragma_version()": "CALL",
    "CHECKPOINT": "CALL",
    "BEGIN TRANSACTION": "transaction",
    "SELECT * FROM read_csv('/etc/passwd')": "read_csv()",
    "SELECT * FROM read_csv_auto('/etc/passwd')": "read_csv_auto()",
    "SELECT * FROM 'x.parquet'": "'x.parquet' in FROM names a file",
    "SELECT * FROM '/etc/passwd'": "names a file",
    "SELECT * FROM read_text('/etc/passwd')": "read_text()",
    "SELECT * FROM read_blob('/etc/passwd')": "read_blob()",
    "SELECT * FROM read_parquet('x.parquet')": "read_parquet()",
    "SELECT * FROM read_json('x.json')": "read_json()",
    "SELECT * FROM glob('/*')": "glob()",
    "SELECT * FROM sniff_csv('/etc/passwd')": "sniff_csv()",
    "SELECT count(*) FROM cots WHERE cot_id IN (SELECT column0 FROM read_csv('/etc/passwd'))": "read_csv()",
    "WITH t AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM t": "read_text()",
    "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')": "query()",
    "SELECT 1; SELECT 2": "one statement at a time",
    "SELECT 1; DROP TABLE cots": "one statement at a time",
    "EXPLAIN ANALYZE DELETE FROM cots": "DELETE",
}


@pytest.mark.parametrize("sql", list(REFUSED))
def test_refused_with_a_sentence_and_store_unchanged(demo_store, sql):
    before = _fingerprint(demo_store)
    with pytest.raises(ValueError) as refusal:
        sqlconsole.run_readonly(sql, db=demo_store)
    message = str(refusal.value)
    assert REFUSED[sql] in message
    assert message.endswith(".") and message[0].isupper()
    assert _fingerprint(demo_store) == before


def test_locked_connection_blocks_what_the_parse_check_lets_through(demo_store):
    """The second guard on its own: a function not on the list still cannot reach files."""
    before = _fingerprint(demo_store)
    with pytest.raises(ValueError, match="cannot read or write files"):
        sqlconsole.run_readonly("SELECT * FROM duckdb_extensions()", db=demo_store)
    assert _fingerprint(demo_store) == before
    # and the lock dies with the connection: the next ordinary reader may read files again
    assert store.read_rows("SELECT current_setting('enable_external_access')", db=demo_store)[0][0] is True


def test_bad_sql_and_long_queries_become_sentences(demo_store):
    with pytest.raises(ValueError, match="could not parse"):
        sqlconsole.run_readonly("SELEC 1", db=demo_store)
    with pytest.raises(ValueError, match="not found"):
        sqlconsole.run_readonly("SELECT no_such_column FROM cots", db=demo_store)
    with pytest.raises(ValueError, match="no query"):
        sqlconsole.run_readonly("  ;  ", db=demo_store)
    with pytest.raises(ValueError, match="ran too long"):
        sqlconsole.run_query(
            "SELECT count(*) FROM range(1000000000) a, range(1000000) b WHERE a.range * b.range = 7",
            db=demo_store, timeout_s=0.5,
        )


def test_quick_chart_uses_every_row(demo_store):
    frame = sqlconsole.run_readonly("SELECT model, count(*) AS n FROM cots GROUP BY model ORDER BY model", db=demo_store)
    fig = sqlconsole.quick_chart(frame, x="model", y="n", kind="bar")
    assert list(fig.data[0].x) == frame["model"].to_list()
    assert list(fig.data[0].y) == frame["n"].to_list()
    with pytest.raises(ValueError, match="no column"):
        sqlconsole.quick_chart(frame, x="model", y="missing")

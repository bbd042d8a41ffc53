"""The read-only SQL console: SELECTs run, everything that writes or touches files is refused."""

from __future__ import annotations

import hashlib
import time
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


def test_locked_connection_blocks_what_the_parse_check_lets_through(demo_store, tmp_path):
    """The second guard on its own: the console process, given file-reading SQL without the
    parse check, still cannot reach files."""
    from core import console_worker

    before = _fingerprint(demo_store)
    for sql in ("SELECT * FROM read_duckdb('/etc/hostname')", "SELECT * FROM read_text('/etc/hostname')",
                "SELECT * FROM duckdb_extensions()"):
        reply = console_worker.run({"sql": sql, "explain": False, "db": str(demo_store), "limit": 10, "offset": 0,
                                    "timeout_s": 30, "memory_mb": 256, "threads": 1, "out": str(tmp_path / "r.arrow")})
        assert reply["error"] == "PermissionException", reply
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


# =========================================================================== server paths


PATH_REVEALING = [
    "SELECT current_setting('temp_directory')",
    "SELECT * FROM duckdb_settings()",
    "SELECT path FROM duckdb_databases()",
    "SELECT * FROM pragma_database_list()",
    "SELECT * FROM duckdb_temporary_files()",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_extensions()",
    "WITH s AS (SELECT value FROM duckdb_settings()) SELECT * FROM s",
    "SELECT count(*) FROM cots WHERE model IN (SELECT current_setting('home_directory'))",
]


@pytest.mark.parametrize("sql", PATH_REVEALING)
def test_functions_that_reveal_server_paths_are_refused(demo_store, sql):
    with pytest.raises(ValueError, match="does not show the server's settings, files or environment") as refusal:
        sqlconsole.run_query(sql, db=demo_store)
    assert str(demo_store.parent) not in str(refusal.value)


def test_no_answer_or_error_shows_the_servers_folders(demo_store):
    folder = str(demo_store.parent)
    # the store's folder reaches an answer through the data (a dataset ingested from beside it)
    src = demo_store.parent / "beside.jsonl"
    from tests.helpers import omni_rows, write_jsonl

    write_jsonl(src, omni_rows(1))
    from core.ingest import ingest

    ingest(str(src), db=demo_store)
    assert store.read_rows("SELECT count(*) FROM datasets WHERE source = ?", [str(src)], db=demo_store) == [(1,)]
    sources = sqlconsole.run_readonly("SELECT source FROM datasets ORDER BY dataset_id", db=demo_store)["source"].to_list()
    assert "<store folder>/beside.jsonl" in sources
    assert not any(folder in s for s in sources)
    # and through an error message
    with pytest.raises(ValueError) as refusal:
        sqlconsole.run_query(f"SELECT error('cannot open {folder}/store.duckdb.tmp')", db=demo_store)
    assert folder not in str(refusal.value) and "<store folder>/store.duckdb.tmp" in str(refusal.value)
    # the project folder too
    with pytest.raises(ValueError) as refusal:
        sqlconsole.run_query(f"SELECT error('{store.ROOT}/core')", db=demo_store)
    assert str(store.ROOT) not in str(refusal.value)


# =========================================================================== its own process


def test_console_has_its_own_memory_cap(demo_store):
    with pytest.raises(ValueError, match="needed more than the console's 64 MB of memory"):
        sqlconsole.run_query("SELECT list(range) AS l FROM range(40000000) GROUP BY range % 3", db=demo_store, memory_mb=64)
    # the same query within a cap it fits
    ok = sqlconsole.run_query("SELECT count(*) AS n FROM range(4000) GROUP BY range % 3", db=demo_store, memory_mb=64)
    assert sorted(ok.frame["n"].to_list()) == [1333, 1333, 1334]


def _busy_console_processes() -> list:
    """This process's console children other than the idle spare (zombies aside)."""
    import psutil

    spare = sqlconsole._spare.proc.pid if sqlconsole._spare is not None else None
    return [p for p in psutil.Process().children()
            if p.pid != spare and p.status() != psutil.STATUS_ZOMBIE and "core.console_worker" in " ".join(p.cmdline())]


SLOW = "SELECT count(*) FROM range(1000000000000) a WHERE a.range % 7 = 99"


def test_a_stuck_console_process_is_killed(demo_store, monkeypatch):
    """The parent's kill, past the time limit and a grace period, when DuckDB's own interrupt
    does not end the query (here: the process was told a far longer limit)."""
    monkeypatch.setattr(sqlconsole, "GRACE_S", 0.5)
    request = {"sql": SLOW, "explain": False, "db": str(demo_store), "limit": 10, "offset": 0,
               "timeout_s": 600.0, "memory_mb": 256, "threads": 1}
    with pytest.raises(ValueError, match="ran too long"):
        sqlconsole._run_in_own_process(request, timeout_s=1.0)
    assert _busy_console_processes() == []




def _in_thread(target):
    import threading

    done = {}

    def run():
        try:
            done["value"] = target()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            done["error"] = exc
        done["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _console_running() -> bool:
    """A console process is working on a query (past its start-up)."""
    return any(p.cpu_times().user > 0.5 for p in _busy_console_processes())


def test_slow_console_query_does_not_hold_up_another_sessions_read(demo_store):
    """Two sessions of one app process: one runs a console query that takes its whole time
    limit, the other reads a page's numbers meanwhile. The read answers while the console
    query is still running (before, it waited behind the process-wide lock)."""
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    console, console_done = _in_thread(lambda: sqlconsole.run_query(SLOW, db=demo_store, timeout_s=10))
    deadline = time.monotonic() + 30
    while not _console_running():
        assert time.monotonic() < deadline and console.is_alive(), console_done
        time.sleep(0.05)
    rows = store.read_rows("SELECT count(*) FROM cots", db=demo_store)
    answered_at = time.monotonic()
    assert rows == [(n_cots,)]
    assert console.is_alive() and "at" not in console_done  # the console query had not finished
    console.join(60)
    assert isinstance(console_done.get("error"), ValueError) and "ran too long" in str(console_done["error"])
    assert console_done["at"] > answered_at


def test_long_in_process_read_does_not_hold_up_other_reads(demo_store):
    """Any long read in the app process (a new filter at 2M CoTs takes seconds): readers share
    the store lock, so another session's read goes ahead."""
    started = {}

    def long_read():
        with store.connect(demo_store, read_only=True) as con:
            started["yes"] = True
            timer = __import__("threading").Timer(8.0, con.interrupt)
            timer.start()
            try:
                con.execute(SLOW).fetchall()
            except Exception as exc:  # interrupted at 8 s
                return type(exc).__name__
            finally:
                timer.cancel()

    reader, reader_done = _in_thread(long_read)
    while "yes" not in started:
        time.sleep(0.01)
    rows = store.read_rows("SELECT count(*) FROM cots", db=demo_store)
    assert rows[0][0] > 0
    assert reader.is_alive() and "at" not in reader_done  # answered while the long read ran
    reader.join(60)
    assert reader_done["value"] == "InterruptException"


def test_a_writer_waits_for_readers_and_readers_then_wait_for_it(demo_store):
    """Read-only and read-write connections never overlap in one process (DuckDB refuses
    that), while readers overlap each other."""
    import threading

    events = []
    hold = threading.Event()

    def reader():
        with store.connect(demo_store, read_only=True):
            events.append("read open")
            hold.wait(10)
        events.append("read closed")

    def writer():
        with store.connect(demo_store, read_only=False) as con:
            events.append("write open")
            con.execute("SELECT 1")
        events.append("write closed")

    r1 = threading.Thread(target=reader)
    r1.start()
    while "read open" not in events:
        time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.3)  # give the writer the chance to (wrongly) open
    assert "write open" not in events
    hold.set()
    r1.join(10)
    w.join(10)
    assert events.index("read closed") < events.index("write open")


def test_a_store_held_by_a_writer_is_busy_not_a_crash(demo_store):
    """Another process holds the store read-write for longer than the console's time limit
    (an ingest's load transaction): the console says the store is busy, naming no folder."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(30)",
         str(demo_store)], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(store.StoreBusy) as busy:
            sqlconsole.run_query("SELECT count(*) FROM cots", db=demo_store, timeout_s=2)
        assert "stayed locked" in str(busy.value) and str(demo_store.parent) not in str(busy.value)
    finally:
        holder.kill()
        holder.wait()
    assert sqlconsole.run_query("SELECT count(*) AS n FROM cots", db=demo_store).frame["n"][0] > 0

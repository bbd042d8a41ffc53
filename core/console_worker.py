"""Runs one SQL console query in its own process (started by core.sqlconsole.run_query).

A console query gets its own DuckDB instance with its own memory limit and thread count, a
time limit enforced twice (DuckDB's interrupt here, a kill by the parent after a grace
period), and no way to hold up the app's own reads. It reads one JSON request on stdin,
writes the page of rows as an Arrow IPC file, and prints one JSON line: ``{"total": n}`` or
``{"error": kind, "message": text}``. It imports only duckdb, pyarrow, polars, core.store and
core.label_store (the store's connections merge the human labels in, so the console reads
them too: ``labels``, ``label_events``, and human sources in ``scores``), and does so before it
reads its request, so the app can keep one ready (a spare).
"""

from __future__ import annotations

import json
import os
import sys
import threading


def run(request: dict) -> dict:
    import duckdb
    import pyarrow as pa

    from core import store

    text, explain = request["sql"], request["explain"]
    limit, offset = int(request["limit"]), int(request["offset"])
    try:
        # a writer (an ingest, a job) holds the store for a few seconds at most per batch
        with store.connect(request["db"], read_only=True, timeout_s=float(request["timeout_s"])) as con:
            con.execute(f"SET memory_limit = '{int(request['memory_mb'])}MB'")
            con.execute(f"SET threads = {int(request['threads'])}")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            timer = threading.Timer(float(request["timeout_s"]), con.interrupt)
            timer.daemon = True
            timer.start()
            try:
                if explain:
                    table = con.sql(text).to_arrow_table()
                    total = table.num_rows
                else:
                    # The subquery keeps the user's ORDER BY; LIMIT + 1 tells whether there is more.
                    table = con.sql(f"SELECT * FROM ({text}\n) LIMIT {limit + 1} OFFSET {offset}").to_arrow_table()
                    if offset == 0 and table.num_rows <= limit:
                        total = table.num_rows
                    else:
                        total = con.execute(f"SELECT count(*) FROM ({text}\n)").fetchone()[0]
                    table = table.slice(0, limit)
            finally:
                timer.cancel()
    except (duckdb.Error, store.StoreBusy) as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    with pa.OSFile(request["out"], "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return {"total": int(total)}


def main() -> int:
    # Import first, then wait: the app keeps one such process ready, so a query does not
    # wait for Python and DuckDB to start.
    import duckdb  # noqa: F401
    import polars  # noqa: F401  (the human labels are merged into reads with it: 0.2-0.4 s to import)
    import pyarrow  # noqa: F401

    from core import label_store, store  # noqa: F401

    request = sys.stdin.read()
    if not request.strip():  # the app closed without using this spare process
        return 0
    reply = run(json.loads(request))
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # The answer is written and the store closed: skip the interpreter's teardown of DuckDB
    # and Arrow (a few hundred ms under load) so the app sees the process end at once.
    os._exit(code)

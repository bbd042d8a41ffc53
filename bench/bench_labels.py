"""Where a human label is written: into the DuckDB store, or into the SQLite log beside it.

    python bench/bench_labels.py --store data/omni-2m.duckdb --workdir /tmp/bench-labels [--labels 100] [--json]
    python bench/bench_labels.py --generate 5000 --workdir /tmp/bench-labels [--json]

The store is copied into ``--workdir`` first (the benchmark writes into the copy, never the
given store). In one process, as the app serves its browser sessions, ``--readers`` threads
read what a page reads (Explore's count and first 50 CoTs, through core.queries) in a loop
while one thread writes ``--labels`` labels, one RV label on a random CoT at a time, ``--gap-s``
apart (people clicking), in ``--rounds`` rounds of the three phases (no writes, then each way;
the next round in reverse order) pooled:

* baseline, *into the store*: each label a short read-write transaction on the DuckDB store
  (``store.connect(read_only=False)``, one row into ``scores`` under a ``human`` source), as a
  worker writes today; inside the app process it waits for every read in flight and holds new
  ones back while it commits;
* ours, *beside the store*: ``core.labels.record`` (one SQLite WAL transaction, the store not
  opened for writing).

Then one label each way while *another process* holds a read-only connection to the store for
``--hold-s`` seconds (a console query, a second app server, a CLI read): DuckDB cannot open the
file for writing then, so the store write waits the hold out; the label beside it does not.
Last, what merging the labels into every read costs: the same page read, and a bare read
connection opened and closed, with the labels merged and inside ``store.labels_off()``.

With ``--json`` the last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, log, machine_load  # noqa: E402

HOLDER = """
import sys, time, duckdb
from pathlib import Path
db, ready, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
con = duckdb.connect(db, read_only=True)
con.execute("SELECT count(*) FROM cots").fetchall()
Path(ready).write_text("holding")
time.sleep(hold_s)
con.close()
"""
STORE_SOURCE = "bench: labels in the store"


def generated_store(workdir: Path, n_cots: int) -> Path:
    from core.demo import n_problems_for_cots, write_omnithought
    from core.ingest import ingest

    target = workdir / f"labels-{n_cots}.duckdb"
    if not target.exists():
        src = workdir / f"labels-{n_cots}.parquet"
        write_omnithought(src, n_problems_for_cots(n_cots), seed=0, text_scale=0.05)
        ingest(str(src), name="bench (generated)", db=target, generated=True)
    return target


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "max_s": None, "n": 0}
    ordered = sorted(values)
    return {"p50_s": statistics.median(ordered), "max_s": ordered[-1], "n": len(ordered)}


def _page_read(db: Path) -> float:
    from core import queries

    started = time.perf_counter()
    queries.count(queries.CotFilter(), db=db)
    queries.page(queries.CotFilter(), limit=50, db=db)
    return time.perf_counter() - started


def _open(db: Path) -> float:
    """A read connection opened, asked ``SELECT 1`` and closed: what merging costs per connection."""
    from core import store

    started = time.perf_counter()
    with store.connect(db) as con:
        con.execute("SELECT 1").fetchall()
    return time.perf_counter() - started


def _store_label(db: Path, cot_id: int, value: int, source_id: int) -> None:
    """The baseline: a label as a row of the store's scores, in a short read-write transaction."""
    from core import store

    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM scores WHERE cot_id = ? AND source_id = ? AND metric = 'rv'", [cot_id, source_id])
        con.execute("INSERT INTO scores (cot_id, source_id, metric, value, raw) VALUES (?, ?, 'rv', ?, ?)",
                    [cot_id, source_id, float(value), str(value)])
        con.execute("COMMIT")


def _side_label(db: Path, cot_id: int, value: int) -> None:
    from core import labels

    labels.record(cot_id, {"rv": value}, annotator="bench", db=db)


def _phase(db: Path, write, ids: list[int], n_labels: int, readers: int, gap_s: float, seed: int) -> dict:
    """Readers loop page reads while one thread writes ``n_labels`` labels with ``write``
    (None: no writes, the readers run for ``n_labels * gap_s`` seconds)."""
    reads: list[float] = []
    writes: list[float] = []  # raw seconds; run() pools the rounds
    failures: list[str] = []
    lock = threading.Lock()
    running = threading.Event()
    running.set()

    def read_loop() -> None:
        while running.is_set():
            try:
                seconds = _page_read(db)
            except Exception as exc:  # a failed read is reported, not hidden
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                reads.append(seconds)

    threads = [threading.Thread(target=read_loop, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    rng = random.Random(seed)
    started = time.perf_counter()
    if write is None:
        time.sleep(n_labels * gap_s)
    else:
        for _ in range(n_labels):
            cot = rng.choice(ids)
            t0 = time.perf_counter()
            write(cot, rng.randrange(10))
            writes.append(time.perf_counter() - t0)
            time.sleep(gap_s)
    elapsed = time.perf_counter() - started
    running.clear()
    for t in threads:
        t.join()
    return {"writes": writes, "reads": reads, "elapsed_s": elapsed, "failures": failures[:5]}


def _while_held(db: Path, hold_s: float, write, cot_id: int, workdir: Path) -> float:
    """One label written while another process holds a read-only connection for ``hold_s``."""
    ready = workdir / "holding"
    ready.unlink(missing_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(ready), str(hold_s)])
    try:
        while not ready.exists():
            if holder.poll() is not None:
                raise RuntimeError("the holding process exited before it held the store")
            time.sleep(0.02)
        started = time.perf_counter()
        write(cot_id, 5)
        return time.perf_counter() - started
    finally:
        holder.wait(timeout=hold_s + 120)


def run(source: Path, workdir: Path, n_labels: int, readers: int, gap_s: float, hold_s: float, repeats: int,
        rounds: int = 1) -> dict:
    from core import label_store, store

    db = workdir / "bench-labels-copy.duckdb"
    label_store.path_for(db).unlink(missing_ok=True)
    for suffix in ("-wal", ".labels.sqlite-wal", ".labels.sqlite-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    log(f"copying {source} to {db}")
    shutil.copyfile(source, db)
    with store.labels_off():
        ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]
    with store.connect(db, read_only=False) as con:
        source_id = store.ensure_source(con, STORE_SOURCE, "human")

    result: dict = {"store": str(source), "cots": len(ids), "labels": n_labels, "readers": readers, "gap_s": gap_s,
                    "hold_s": hold_s, "rounds": rounds, "load_before": machine_load()}
    _page_read(db)  # warm the file's pages
    phases = {"alone": None, "into_store": lambda c, v: _store_label(db, c, v, source_id),
              "beside_store": lambda c, v: _side_label(db, c, v)}
    raw: dict[str, dict] = {name: {"writes": [], "reads": [], "elapsed_s": 0.0, "failures": []} for name in phases}
    # the phases in turn, A B C then C B A: on a shared machine whose load drifts, no phase
    # gets only the quiet or only the busy minutes
    for round_ in range(rounds):
        order = list(phases) if round_ % 2 == 0 else list(reversed(phases))
        for name in order:
            log(f"round {round_ + 1}/{rounds}: {name.replace('_', ' ')}, {n_labels} labels, {readers} threads reading")
            got = _phase(db, phases[name], ids, n_labels, readers, gap_s, seed=round_ * 10 + list(phases).index(name))
            for key in ("writes", "reads", "failures"):
                raw[name][key] += got[key]
            raw[name]["elapsed_s"] += got["elapsed_s"]
    for name, got in raw.items():
        result[name] = {"writes": _quantiles(got["writes"]), "reads": _quantiles(got["reads"]),
                        "elapsed_s": got["elapsed_s"], "reads_per_s": len(got["reads"]) / got["elapsed_s"],
                        "failures": got["failures"][:5]}

    log(f"one label each way while another process holds the store for {hold_s:g} s")
    result["held_into_store_s"] = _while_held(db, hold_s, lambda c, v: _store_label(db, c, v, source_id), ids[0], workdir)
    result["held_beside_store_s"] = _while_held(db, hold_s, lambda c, v: _side_label(db, c, v), ids[0], workdir)

    log("page reads and bare connections with the labels merged and without")
    merged, plain, open_merged, open_plain = [], [], [], []
    for _ in range(repeats):
        merged.append(_page_read(db))
        open_merged.append(_open(db))
        with store.labels_off():
            plain.append(_page_read(db))
            open_plain.append(_open(db))
    result["read_merged"] = _quantiles(merged)
    result["read_store_only"] = _quantiles(plain)
    result["open_merged"] = _quantiles(open_merged)
    result["open_store_only"] = _quantiles(open_plain)
    result["label_events"] = store.read_rows("SELECT count(*) FROM label_events", db=db)[0][0]
    result["load_after"] = machine_load()
    return result


def _ms(value) -> float | None:
    return None if value is None else value * 1000


def report(r: dict) -> str:
    alone, into, beside = r["alone"], r["into_store"], r["beside_store"]
    base = alone["reads"]["p50_s"]

    def ratio(x):
        return f"{x / base:.2f}x" if x is not None and base else "-"

    rows = [
        ["page reads, no labels written", "-", "-", _ms(base), _ms(alone["reads"]["max_s"]), alone["reads_per_s"], "baseline"],
        ["labels into the store (DuckDB write txn)", _ms(into["writes"]["p50_s"]), _ms(into["writes"]["max_s"]),
         _ms(into["reads"]["p50_s"]), _ms(into["reads"]["max_s"]), into["reads_per_s"], ratio(into["reads"]["p50_s"])],
        ["labels beside the store (ours, SQLite log)", _ms(beside["writes"]["p50_s"]), _ms(beside["writes"]["max_s"]),
         _ms(beside["reads"]["p50_s"]), _ms(beside["reads"]["max_s"]), beside["reads_per_s"], ratio(beside["reads"]["p50_s"])],
    ]
    held = [
        [f"a label while another process reads for {r['hold_s']:g} s: into the store", _ms(r["held_into_store_s"])],
        ["the same, beside the store (ours)", _ms(r["held_beside_store_s"])],
        ["page read, labels merged (p50)", _ms(r["read_merged"]["p50_s"])],
        ["page read, store only (p50)", _ms(r["read_store_only"]["p50_s"])],
        ["read connection opened and closed, labels merged (p50)", _ms(r["open_merged"]["p50_s"])],
        ["the same, store only (p50)", _ms(r["open_store_only"]["p50_s"])],
    ]
    failures = alone["failures"] + into["failures"] + beside["failures"]
    return (f"{r['cots']:,} CoTs; {r['rounds']} rounds of {r['labels']} labels {r['gap_s']:g} s apart; {r['readers']} reader threads; "
            f"{r['label_events']} label events at the end; load {r['load_before']['load_1m']} -> {r['load_after']['load_1m']}\n"
            + format_table(["writes", "label p50 ms", "label max ms", "read p50 ms", "read max ms", "reads/s", "read p50 vs baseline"], rows)
            + "\n" + format_table(["step", "ms"], held)
            + (f"\nFAILED READS: {failures}" if failures else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--store", type=Path, help="a store to copy and measure on")
    given.add_argument("--generate", type=int, help="generate a demo store of about this many CoTs")
    parser.add_argument("--workdir", type=Path, help="where the copy (and a generated store) go (default: a temporary folder)")
    parser.add_argument("--labels", type=int, default=100, help="labels written per phase")
    parser.add_argument("--readers", type=int, default=2, help="threads reading pages meanwhile")
    parser.add_argument("--gap-s", type=float, default=0.05, help="pause between two labels")
    parser.add_argument("--hold-s", type=float, default=3.0, help="how long another process holds the store")
    parser.add_argument("--repeats", type=int, default=20, help="page reads for the merge cost")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three phases (A B C, then C B A, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        source = args.store if args.store else generated_store(workdir, args.generate)
        result = run(source, workdir, args.labels, args.readers, args.gap_s, args.hold_s, args.repeats, args.rounds)
    print(report(result))
    if args.json:
        print(json.dumps(result, default=str))
    return 1 if result["alone"]["failures"] or result["into_store"]["failures"] or result["beside_store"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

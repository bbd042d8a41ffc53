"""Benchmark contamination: every problem of every non-benchmark dataset checked against every
benchmark in the store, as a resumable stage.

    python -m core contamination [--n 8] [--min-overlap 0.2] [--cots] [--json]

Benchmarks are the datasets ingested with the ``benchmark`` format (one benchmark per file,
named by ``problems.benchmark``: ``aime24_test.jsonl`` -> ``aime24``) and the benchmarks that
evaluation runs name (a Qwen2.5-Math ``<bench>_eval`` folder, an evaluate job). A benchmark's
reference problems are its distinct question keys (core.identity), taken from the benchmark
dataset where there is one, else from the evaluation runs.

A problem matches a benchmark problem when their question keys are equal (``exact``), or when
at least ``min_overlap`` of the benchmark problem's word n-grams (n = 8 by default, as s1) occur
in the problem's key (``overlap``: shared n-grams / the benchmark problem's n-grams; with
``min_overlap = 0`` any shared n-gram flags, s1's rule). A benchmark problem of fewer than n
words matches only exactly. When a benchmark is known only through evaluation runs, the runs'
problems are its reference set, and each of them matches itself: it is that benchmark's problem,
as it would match the benchmark file's copy once that is ingested.

Results:

* ``contamination_matches``: every match (problem, benchmark, benchmark problem, shared n-grams,
  overlap, exact; with the CoT check also the CoT), so both questions can be opened side by side;
* ``problem_scores`` under the score source ``contamination`` (kind ``stage``): per benchmark
  ``contaminated:<benchmark>`` = the best match's overlap (1.0 when exact; only for flagged
  problems; ``raw`` names the benchmark problem), and ``contaminated`` = 1/0 for every problem
  checked against every benchmark;
* with ``check_cots`` (off by default: it reads every CoT's text), ``scores`` rows
  ``quotes:<benchmark>`` for CoTs whose text holds at least ``cot_min_overlap`` of a benchmark
  problem other than their own.

Resumable: each (dataset, benchmark, scope) comparison records the benchmark's reference set
and the options it ran with (a fingerprint) and the last problem (or CoT) id committed. A
killed run resumes after it; a rerun with nothing new does nothing; a new dataset is checked
against every benchmark, a new benchmark against every dataset, and a benchmark whose
reference problems changed (or a change of options) is checked again.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl
import pyarrow as pa

from core import identity, queries, store
from core.errors import UserError
from core.figures import Condition, Figure
from core.options import option
from core.queries import CotFilter

SOURCE = "contamination"
DEFAULT_N = 8
DEFAULT_MIN_OVERLAP = 0.2
DEFAULT_COT_MIN_OVERLAP = 0.5

ProgressFn = Callable[[str, int, int | None], None]
CancelledFn = Callable[[], bool]


@dataclass
class ContaminationOptions:
    """Options of :func:`run_contamination` (``python -m core contamination``, job kind
    ``contamination``; the defaults are justified in the README)."""

    n: int = option(DEFAULT_N, help="words per n-gram (s1 uses 8)")
    min_overlap: float = option(DEFAULT_MIN_OVERLAP, help="share of a benchmark problem's n-grams a problem must "
                                                          "contain to be flagged; 0: any shared n-gram (s1's rule)")
    check_cots: bool = option(False, flag="--cots", label="Also check the CoT text (slow)",
                              help="also look for benchmark problems quoted in CoT text (reads every CoT)")
    cot_min_overlap: float = option(DEFAULT_COT_MIN_OVERLAP, help="with --cots: share of a benchmark problem's "
                                                                  "n-grams a CoT must quote")
    datasets: tuple[str, ...] = option((), flag="--dataset", help="only these datasets, comma-separated (checked and "
                                                                  "printed; default: every non-benchmark dataset)")
    batch_problems: int = option(20_000, help="problems per committed batch")
    batch_cots: int = option(2_000, help="CoTs per committed batch (their text is long)")

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"n (words per n-gram) must be at least 1 (got {self.n}).")
        for name in ("min_overlap", "cot_min_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"{name} is a share of n-grams between 0 and 1 (got {getattr(self, name)}).")
        if self.batch_problems < 1 or self.batch_cots < 1:
            raise UserError("batch problems and batch cots must be at least 1.")
        self.datasets = tuple(self.datasets)

    def fingerprint_part(self, scope: str) -> dict:
        part = {"n": self.n, "min_overlap": self.min_overlap, "key_version": identity.KEY_VERSION}
        if scope == "cot":
            part["cot_min_overlap"] = self.cot_min_overlap
        return part


# ---------------------------------------------------------------------------- n-grams


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """The distinct word n-grams of a word list (empty when it has fewer than n words)."""
    if len(words) < n:
        return set()
    return set(zip(*(words[i:] for i in range(n))))


def text_words(text: str) -> list[str]:
    """The words of a long text (a CoT) as :func:`core.identity.key_words` would give them for
    its key, without the key's instruction stripping (a CoT is not a question)."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = identity._FRAC.sub(r"\\frac", text)
    text = identity._LEFT_RIGHT.sub(" ", text)
    return identity.key_words(text)


@dataclass(frozen=True)
class Reference:
    benchmark: str
    problem_id: int
    dataset_id: int
    key: str
    n_grams: int


@dataclass(frozen=True)
class Match:
    reference: Reference
    shared: int
    overlap: float
    exact: bool


class BenchmarkIndex:
    """The reference problems of some benchmarks: their keys (for exact matches) and an
    inverted index from each n-gram to the references that have it."""

    def __init__(self, references: list[Reference], n: int):
        self.n = n
        self.refs = references
        self.by_key: dict[str, list[int]] = defaultdict(list)
        postings: dict[tuple, list[int]] = defaultdict(list)
        for i, ref in enumerate(references):
            self.by_key[ref.key].append(i)
            for gram in ngrams(identity.key_words(ref.key), n):
                postings[gram].append(i)
        self.postings = dict(postings)
        self.gram_set = frozenset(self.postings)  # set & set walks the smaller side

    def match(self, key: str | None, words: list[str], *, min_overlap: float, exclude_problem_id: int | None = None,
              exclude_keys: tuple[str, ...] = ()) -> list[Match]:
        """Every reference this text matches, best first (a CoT's check excludes its own problem)."""
        shared: dict[int, int] = defaultdict(int)
        hits = ngrams(words, self.n) & self.gram_set
        for gram in hits:
            for i in self.postings[gram]:
                shared[i] += 1
        out = []
        exact = set(self.by_key.get(key, ())) if key is not None else set()
        for i in exact | set(shared):
            ref = self.refs[i]
            if ref.problem_id == exclude_problem_id or ref.key in exclude_keys:
                continue
            if i in exact:
                out.append(Match(ref, ref.n_grams, 1.0, True))
                continue
            overlap = shared[i] / ref.n_grams
            if overlap >= min_overlap:
                out.append(Match(ref, shared[i], overlap, False))
        out.sort(key=lambda m: (-m.overlap, not m.exact, -m.shared, m.reference.problem_id))
        return out


# ---------------------------------------------------------------------------- the store side

_REFERENCES = """
SELECT coalesce(p.benchmark, d.name) AS benchmark, p.problem_id, p.dataset_id, k.question_key
FROM problems p JOIN datasets d USING (dataset_id)
JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ?
WHERE d.status = 'ready' AND (d.format = 'benchmark' OR p.benchmark IS NOT NULL)
ORDER BY benchmark, d.format <> 'benchmark', p.problem_id
"""


def benchmark_references(n: int = DEFAULT_N, *, db=None) -> dict[str, list[Reference]]:
    """Each benchmark's reference problems: one per distinct question key, the benchmark
    dataset's row where there is one, else the first evaluation run's."""
    out: dict[str, list[Reference]] = {}
    seen: set[tuple[str, str]] = set()
    for bench, problem_id, dataset_id, key in store.read_rows(_REFERENCES, [identity.KEY_VERSION], db=db):
        if (bench, key) in seen:
            continue
        seen.add((bench, key))
        distinct = len(ngrams(identity.key_words(key), n))  # overlap = shared / this
        out.setdefault(bench, []).append(Reference(bench, problem_id, dataset_id, key, distinct))
    return out


def _fingerprint(refs: list[Reference], options: ContaminationOptions, scope: str) -> str:
    digest = hashlib.sha256(json.dumps(options.fingerprint_part(scope), sort_keys=True).encode())
    for ref in sorted(refs, key=lambda r: r.problem_id):
        digest.update(f"{ref.problem_id}\t{ref.key}\n".encode())
    return digest.hexdigest()[:32]


def _targets(options: ContaminationOptions, *, db=None) -> list[tuple[int, str, int, int]]:
    """(dataset_id, name, problems, cots) of the datasets to check."""
    rows = store.read_rows(
        "SELECT dataset_id, name, n_problems, n_cots FROM datasets WHERE status = 'ready' AND format <> 'benchmark' "
        "ORDER BY dataset_id", db=db,
    )
    if options.datasets:
        unknown = set(options.datasets) - {r[1] for r in rows}
        if unknown:
            raise UserError(f"no non-benchmark dataset named {', '.join(sorted(unknown))} in the store; the datasets "
                            f"checked are {', '.join(r[1] for r in rows) or 'none'}.")
        rows = [r for r in rows if r[1] in options.datasets]
    return rows


def _clear(con, dataset_id: int, benchmark: str, scope: str, source_id: int) -> None:
    """Remove one (dataset, benchmark, scope) comparison's results and state."""
    lo, hi = dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT
    cot_clause = "cot_id IS NULL" if scope == "question" else "cot_id IS NOT NULL"
    con.execute(f"DELETE FROM contamination_matches WHERE problem_id >= ? AND problem_id < ? AND benchmark = ? AND {cot_clause}",
                [lo, hi, benchmark])
    if scope == "question":
        con.execute("DELETE FROM problem_scores WHERE source_id = ? AND metric = ? AND problem_id >= ? AND problem_id < ?",
                    [source_id, f"contaminated:{benchmark}", lo, hi])
    else:
        con.execute("DELETE FROM scores WHERE source_id = ? AND metric = ? AND cot_id >= ? AND cot_id < ?",
                    [source_id, f"quotes:{benchmark}", lo, hi])
    con.execute("DELETE FROM contamination_state WHERE dataset_id = ? AND benchmark = ? AND scope = ?",
                [dataset_id, benchmark, scope])


def _refresh_contaminated(con, dataset_id: int, source_id: int, have_benchmarks: bool) -> None:
    """The 0/1 ``contaminated`` figure of every problem of a dataset, from its question matches."""
    lo, hi = dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT
    con.execute("DELETE FROM problem_scores WHERE source_id = ? AND metric = 'contaminated' AND problem_id >= ? AND problem_id < ?",
                [source_id, lo, hi])
    if not have_benchmarks:
        return
    con.execute(
        "INSERT INTO problem_scores (problem_id, source_id, metric, value, raw) "
        "SELECT p.problem_id, ?, 'contaminated', CASE WHEN m.benchmarks IS NULL THEN 0 ELSE 1 END, m.benchmarks "
        "FROM problems p LEFT JOIN (SELECT problem_id, string_agg(DISTINCT benchmark, ', ' ORDER BY benchmark) AS benchmarks "
        "  FROM contamination_matches WHERE cot_id IS NULL AND problem_id >= ? AND problem_id < ? GROUP BY problem_id) m "
        "USING (problem_id) WHERE p.dataset_id = ?",
        [source_id, lo, hi, dataset_id],
    )


_MATCH_SCHEMA = pa.schema([
    ("problem_id", pa.int64()), ("benchmark", pa.string()), ("benchmark_problem_id", pa.int64()),
    ("cot_id", pa.int64()), ("shared_ngrams", pa.int32()), ("overlap", pa.float64()), ("exact", pa.bool_()),
])
_FIGURE_SCHEMA = pa.schema([("id", pa.int64()), ("metric", pa.string()), ("value", pa.float64()), ("raw", pa.string())])


def _raw(m: Match) -> str:
    return json.dumps({"benchmark_problem_id": m.reference.problem_id, "shared_ngrams": m.shared,
                       "overlap": round(m.overlap, 4), "exact": m.exact})


def _check_batch(index: BenchmarkIndex, rows: list[tuple], options: ContaminationOptions, scope: str):
    """Matches and per-item figures of one batch: rows are (problem_id, key) for questions,
    (cot_id, problem_id, own key, text) for CoTs."""
    matches = {name: [] for name in _MATCH_SCHEMA.names}
    figures = {name: [] for name in _FIGURE_SCHEMA.names}
    for row in rows:
        if scope == "question":
            problem_id, key = row
            cot_id, found = None, index.match(key, identity.key_words(key), min_overlap=options.min_overlap)
            item_id, prefix = problem_id, "contaminated:"
        else:
            cot_id, problem_id, own_key, text = row
            found = index.match(None, text_words(text), min_overlap=options.cot_min_overlap,
                                exclude_problem_id=problem_id, exclude_keys=(own_key,) if own_key else ())
            item_id, prefix = cot_id, "quotes:"
        best: dict[str, Match] = {}
        for m in found:
            best.setdefault(m.reference.benchmark, m)  # found is sorted best first
            for name, value in zip(_MATCH_SCHEMA.names, (problem_id, m.reference.benchmark, m.reference.problem_id,
                                                         cot_id, m.shared, m.overlap, m.exact)):
                matches[name].append(value)
        for bench, m in best.items():
            for name, value in zip(_FIGURE_SCHEMA.names, (item_id, prefix + bench, m.overlap, _raw(m))):
                figures[name].append(value)
    return (pa.Table.from_pydict(matches, schema=_MATCH_SCHEMA), pa.Table.from_pydict(figures, schema=_FIGURE_SCHEMA))


def _batch_rows(scope: str, dataset_id: int, after: int, limit: int, *, db=None) -> list[tuple]:
    if scope == "question":
        return store.read_rows(
            "SELECT p.problem_id, k.question_key FROM problems p "
            "JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? "
            "WHERE p.dataset_id = ? AND p.problem_id > ? ORDER BY p.problem_id LIMIT ?",
            [identity.KEY_VERSION, dataset_id, after, limit], db=db,
        )
    return store.read_rows(
        "SELECT c.cot_id, c.problem_id, k.question_key, c.full_text FROM cots c "
        "LEFT JOIN problem_keys k ON k.problem_id = c.problem_id AND k.key_version = ? "
        "WHERE c.dataset_id = ? AND c.cot_id > ? ORDER BY c.cot_id LIMIT ?",
        [identity.KEY_VERSION, dataset_id, after, limit], db=db,
    )


def _remaining(scope: str, dataset_id: int, after: int, *, db=None) -> int:
    table, column = ("problems", "problem_id") if scope == "question" else ("cots", "cot_id")
    return store.read_rows(f"SELECT count(*) FROM {table} WHERE dataset_id = ? AND {column} > ?",
                           [dataset_id, after], db=db)[0][0]


def run_contamination(db=None, options: ContaminationOptions | None = None, progress: ProgressFn | None = None,
                      cancelled: CancelledFn | None = None) -> dict:
    """Bring the contamination figures up to date (see the module docstring); returns what ran.

    Work is committed a batch at a time (problems, or CoTs with ``check_cots``); ``cancelled``
    is asked between batches, and a cancelled or killed run resumes where it stopped."""
    options = options or ContaminationOptions()
    started = time.perf_counter()
    identity.run_problem_keys(db)  # problems ingested before keys existed
    refs = benchmark_references(options.n, db=db)
    targets = _targets(options, db=db)
    scopes = ["question"] + (["cot"] if options.check_cots else [])
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, SOURCE, "stage")
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?",
                    [json.dumps({**asdict(options), "benchmarks": sorted(refs)}, default=list), source_id])
        con.execute("COMMIT")
    fingerprints = {(b, s): _fingerprint(r, options, s) for b, r in refs.items() for s in ("question", "cot")}
    state = {(d, b, s): (fp, done, complete) for d, b, s, fp, done, complete in store.read_rows(
        "SELECT dataset_id, benchmark, scope, fingerprint, done_through, complete FROM contamination_state", db=db)}

    # what each dataset still needs: (scope, benchmark) -> resume point; stale results go first
    target_ids = {t[0] for t in targets}
    plan: dict[int, dict[str, dict[str, int]]] = {}
    changed: set[int] = set()
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        for (dataset_id, bench, scope), (fp, _done, _complete) in state.items():
            still_wanted = bench in refs and fp == fingerprints[(bench, scope)]
            if dataset_id in target_ids and not still_wanted and (scope in scopes or bench not in refs):
                _clear(con, dataset_id, bench, scope, source_id)
                changed.add(dataset_id)
        con.execute("COMMIT")
    for dataset_id, _name, _n_problems, _n_cots in targets:
        for scope in scopes:
            for bench in refs:
                current = state.get((dataset_id, bench, scope))
                if current and current[0] == fingerprints[(bench, scope)]:
                    if current[2]:
                        continue
                    after = current[1]
                else:
                    after = -1
                plan.setdefault(dataset_id, {}).setdefault(scope, {})[bench] = after

    # benchmarks of one (dataset, scope) that resume from the same id run in one pass
    groups: list[tuple[int, str, str, int, list[str]]] = []
    for dataset_id, name, _n_problems, _n_cots in targets:
        for scope, benches in plan.get(dataset_id, {}).items():
            by_resume: dict[int, list[str]] = defaultdict(list)
            for bench, after in benches.items():
                by_resume[after].append(bench)
            groups += [(dataset_id, name, scope, after, sorted(b)) for after, b in sorted(by_resume.items())]
    total = sum(_remaining(scope, dataset_id, after, db=db) for dataset_id, _n, scope, after, _b in groups)
    done_items = 0
    stats = {"datasets": [], "benchmarks": sorted(refs), "matches": 0, "checked_problems": 0, "checked_cots": 0}
    if progress:
        progress("contamination", 0, total)

    for dataset_id, _name, scope, after, benches in groups:
        changed.add(dataset_id)
        index = BenchmarkIndex([r for b in benches for r in refs[b]], options.n)
        if after == -1:
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                for bench in benches:
                    con.execute("DELETE FROM contamination_state WHERE dataset_id = ? AND benchmark = ? AND scope = ?",
                                [dataset_id, bench, scope])
                    con.execute("INSERT INTO contamination_state VALUES (?, ?, ?, ?, -1, false)",
                                [dataset_id, bench, scope, fingerprints[(bench, scope)]])
                con.execute("COMMIT")
        limit = options.batch_problems if scope == "question" else options.batch_cots
        in_group = "AND benchmark IN (SELECT unnest(?::VARCHAR[]))"
        while True:
            if cancelled is not None and cancelled():
                stats.update(cancelled=True, seconds=time.perf_counter() - started)
                return stats
            rows = _batch_rows(scope, dataset_id, after, limit, db=db)
            if not rows:
                break
            matches, figures = _check_batch(index, rows, options, scope)
            after = rows[-1][0]
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                con.register("match_batch", matches)
                con.register("figure_batch", figures)
                con.execute("INSERT INTO contamination_matches SELECT * FROM match_batch")
                target = ("problem_scores (problem_id", "scores (cot_id")[scope == "cot"]
                con.execute(f"INSERT INTO {target}, source_id, metric, value, raw) "
                            "SELECT id, ?, metric, value, raw FROM figure_batch", [source_id])
                con.execute(f"UPDATE contamination_state SET done_through = ? WHERE dataset_id = ? AND scope = ? {in_group}",
                            [after, dataset_id, scope, benches])
                con.execute("COMMIT")
                con.unregister("match_batch")
                con.unregister("figure_batch")
            done_items += len(rows)
            stats["matches"] += matches.num_rows
            stats["checked_problems" if scope == "question" else "checked_cots"] += len(rows)
            if progress:
                progress("contamination", min(done_items, total), total)
        with store.connect(db, read_only=False) as con:
            con.execute(f"UPDATE contamination_state SET complete = true WHERE dataset_id = ? AND scope = ? {in_group}",
                        [dataset_id, scope, benches])
    # the 0/1 figure, for datasets whose matches changed (or whose last run stopped before it)
    flagged_rows = dict(store.read_rows(
        "SELECT problem_id >> 32, count(*) FROM problem_scores WHERE source_id = ? AND metric = 'contaminated' GROUP BY 1",
        [source_id], db=db))
    for dataset_id, name, n_problems, _n_cots in targets:
        if dataset_id in changed or flagged_rows.get(dataset_id, 0) != (n_problems if refs else 0):
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                _refresh_contaminated(con, dataset_id, source_id, bool(refs))
                con.execute("COMMIT")
            stats["datasets"].append(name)
    stats["seconds"] = time.perf_counter() - started
    return stats


# ---------------------------------------------------------------------------- reading the results


def counts(*, datasets: tuple[str, ...] = (), benchmarks: tuple[str, ...] = (), f: CotFilter | None = None,
           db=None) -> pl.DataFrame:
    """One row per (dataset, benchmark) compared: problems, problems flagged (any match of the
    question), of them exact, CoTs flagged (with the CoT check), and whether the comparison is
    complete. The Overview table and ``python -m core contamination``.

    With a filter ``f`` (the app's, core.queries), only the problems with a CoT the filter
    matches are counted (and only those CoTs for ``cots_flagged``), and a dataset with none of
    them has no row; without one, every problem of each dataset."""
    if not identity.tables_present("contamination_state", "contamination_matches", db=db):
        return pl.DataFrame(schema={"dataset": pl.String, "benchmark": pl.String, "problems": pl.Int64, "flagged": pl.Int64,
                                    "exact": pl.Int64, "cots_flagged": pl.Int64, "complete": pl.Boolean})
    filtered = f is not None and f != CotFilter()
    where, params = ["d.status = 'ready'"], []
    scope_cte, in_scope_problem, in_scope_cot, problems = "", "", "", "d.n_problems"
    if filtered:
        matching, params = queries.matching_sql(f, db=db)
        scope_cte = (f"m AS (SELECT cot_id, problem_id FROM ({matching})), "
                     "mp AS (SELECT problem_id >> 32 AS dataset_id, count(DISTINCT problem_id) AS problems FROM m GROUP BY 1), ")
        in_scope_problem = "AND problem_id IN (SELECT problem_id FROM m)"
        in_scope_cot = "AND cot_id IN (SELECT cot_id FROM m)"
        problems = "mp.problems"
    if datasets:
        where.append(f"d.name IN ({', '.join('?' * len(datasets))})")
        params += list(datasets)
    if benchmarks:
        where.append(f"s.benchmark IN ({', '.join('?' * len(benchmarks))})")
        params += list(benchmarks)
    return store.read_df(
        f"""
        WITH {scope_cte}
             q AS (SELECT problem_id >> 32 AS dataset_id, benchmark, count(DISTINCT problem_id) AS flagged,
                          count(DISTINCT problem_id) FILTER (WHERE exact) AS exact
                   FROM contamination_matches WHERE cot_id IS NULL {in_scope_problem} GROUP BY ALL),
             c AS (SELECT problem_id >> 32 AS dataset_id, benchmark, count(DISTINCT cot_id) AS cots_flagged
                   FROM contamination_matches WHERE cot_id IS NOT NULL {in_scope_cot} GROUP BY ALL),
             s AS (SELECT dataset_id, benchmark, bool_and(complete) FILTER (WHERE scope = 'question') AS complete,
                          bool_or(scope = 'cot') AS cots_checked
                   FROM contamination_state GROUP BY ALL)
        SELECT d.name AS dataset, s.benchmark, {problems} AS problems, coalesce(q.flagged, 0) AS flagged,
               coalesce(q.exact, 0) AS exact, CASE WHEN s.cots_checked THEN coalesce(c.cots_flagged, 0) END AS cots_flagged,
               coalesce(s.complete, false) AS complete
        FROM s JOIN datasets d USING (dataset_id) {"JOIN mp USING (dataset_id)" if filtered else ""}
        LEFT JOIN q USING (dataset_id, benchmark) LEFT JOIN c USING (dataset_id, benchmark)
        WHERE {' AND '.join(where)}
        ORDER BY d.dataset_id, s.benchmark
        """, params, db=db,
    )


def matches_of(problem_id: int, *, db=None) -> pl.DataFrame:
    """Every benchmark problem this problem (or one of its CoTs) matches, best first, with the
    benchmark problem's question so both can be read side by side."""
    if not identity.tables_present("contamination_matches", db=db):
        return pl.DataFrame(schema={"benchmark": pl.String, "benchmark_problem_id": pl.Int64, "benchmark_dataset": pl.String,
                                    "benchmark_problem_key": pl.String, "overlap": pl.Float64, "shared_ngrams": pl.Int32,
                                    "exact": pl.Boolean, "cot_id": pl.Int64, "benchmark_question": pl.String})
    return store.read_df(
        "SELECT m.benchmark, m.benchmark_problem_id, d.name AS benchmark_dataset, bp.problem_key AS benchmark_problem_key, "
        "m.overlap, m.shared_ngrams, m.exact, m.cot_id, bp.question AS benchmark_question "
        "FROM contamination_matches m JOIN problems bp ON bp.problem_id = m.benchmark_problem_id "
        "JOIN datasets d ON d.dataset_id = bp.dataset_id "
        "WHERE m.problem_id = ? ORDER BY m.cot_id NULLS FIRST, m.overlap DESC, m.benchmark",
        [problem_id], db=db,
    )


# ---------------------------------------------------------------------------- as conditions (filter, Select)
#
# The sidebar's "Benchmark contamination" control and Select's "drop contaminated problems" are
# ordinary conditions on this stage's figures (core.figures), so URLs, recipes, Explore's
# columns, drop reasons and the export manifest treat them like any other condition:
#
# * drop problems contaminated with B: ``contaminated:B`` has no value (the stage writes it for
#   flagged problems only), one condition per benchmark;
# * only problems contaminated with B: ``contaminated:B`` has a value;
# * only problems contaminated with any benchmark: ``contaminated`` >= 1 (1/0 per checked problem).

CONTAMINATED = "contaminated"
BENCHMARK_PREFIX = "contaminated:"
MODES = ("all", "drop", "only")


def benchmark_figure(benchmark: str) -> Figure:
    """``contaminated:<benchmark>``: the best overlap with that benchmark (flagged problems only)."""
    return Figure(BENCHMARK_PREFIX + benchmark, SOURCE, level="problem")


ANY_FIGURE = Figure(CONTAMINATED, SOURCE, level="problem")


def _benchmark_of(figure: Figure) -> str | None:
    if figure.source == SOURCE and figure.level == "problem" and figure.metric.startswith(BENCHMARK_PREFIX):
        return figure.metric[len(BENCHMARK_PREFIX):]
    return None


@dataclass(frozen=True)
class ContaminationFilter:
    """What the contamination control asks for. ``mode`` 'all' (no condition), 'drop' (problems
    contaminated with any of ``benchmarks``) or 'only' (problems contaminated with
    ``benchmarks[0]``; with no benchmark, with any)."""

    mode: str = "all"
    benchmarks: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"The contamination control's mode is one of {', '.join(MODES)}, not '{self.mode}'.")
        object.__setattr__(self, "benchmarks", tuple(dict.fromkeys(self.benchmarks)))
        if self.mode == "only" and len(self.benchmarks) > 1:
            raise UserError("Keep only the problems contaminated with one benchmark, or with any.")

    def conditions(self) -> tuple[Condition, ...]:
        if self.mode == "drop":
            return tuple(Condition(benchmark_figure(b), missing=True) for b in self.benchmarks)
        if self.mode == "only":
            return (Condition(benchmark_figure(self.benchmarks[0])),) if self.benchmarks else (Condition(ANY_FIGURE, lo=1),)
        return ()

    def describe(self) -> str:
        if self.mode == "drop" and self.benchmarks:
            return f"problems contaminated with {', '.join(self.benchmarks)} dropped"
        if self.mode == "only":
            return f"only problems contaminated with {self.benchmarks[0] if self.benchmarks else 'any benchmark'}"
        return "every problem, contaminated or not"


def _is_only(cond: Condition) -> bool:
    """'Only problems contaminated with B' (B has a value) or 'with any benchmark' (contaminated >= 1)."""
    if cond.missing:
        return False
    if _benchmark_of(cond.figure) is not None:
        return cond.lo is None and cond.hi is None
    return cond.figure == ANY_FIGURE and cond.lo == 1 and cond.hi in (None, 1)


def split_conditions(conditions, *, with_only: bool = True) -> tuple[ContaminationFilter, tuple[Condition, ...]]:
    """The contamination control's conditions among ``conditions`` (a URL's, a recipe's), and the
    rest in their order. Every 'drop' condition goes to the control; an 'only' one does when it
    is alone and ``with_only`` (the control shows one mode at a time; Select's has no 'only');
    anything else stays a plain condition."""
    drop = [c for c in conditions if c.missing and _benchmark_of(c.figure) is not None]
    only = [c for c in conditions if _is_only(c)] if with_only else []
    if drop:
        taken = drop
        control = ContaminationFilter("drop", tuple(_benchmark_of(c.figure) for c in drop))
    elif len(only) == 1:
        taken = only
        benchmark = _benchmark_of(only[0].figure)
        control = ContaminationFilter("only", (benchmark,) if benchmark is not None else ())
    else:
        return ContaminationFilter(), tuple(conditions)
    return control, tuple(c for c in conditions if c not in taken)


def dropped_benchmarks(conditions) -> tuple[str, ...]:
    """The benchmarks whose contaminated problems ``conditions`` drop."""
    return tuple(dict.fromkeys(b for c in conditions if c.missing and (b := _benchmark_of(c.figure)) is not None))


def checked_benchmarks(*, db=None) -> pl.DataFrame:
    """Each benchmark the stage has compared some dataset with: benchmark, datasets compared
    (complete), datasets not (completely) compared among the ready non-benchmark ones, and the
    problems flagged with it. What the contamination controls offer."""
    schema = {"benchmark": pl.String, "checked": pl.List(pl.String), "unchecked": pl.List(pl.String), "flagged": pl.Int64}
    if not identity.tables_present("contamination_state", "contamination_matches", db=db):
        return pl.DataFrame(schema=schema)
    return store.read_df(
        """
        WITH targets AS (SELECT dataset_id, name FROM datasets WHERE status = 'ready' AND format <> 'benchmark'),
             done AS (SELECT benchmark, dataset_id FROM contamination_state WHERE scope = 'question' AND complete),
             benches AS (SELECT DISTINCT benchmark FROM contamination_state)
        SELECT b.benchmark,
               list(t.name ORDER BY t.dataset_id) FILTER (WHERE d.dataset_id IS NOT NULL) AS checked,
               list(t.name ORDER BY t.dataset_id) FILTER (WHERE d.dataset_id IS NULL) AS unchecked,
               (SELECT count(DISTINCT m.problem_id) FROM contamination_matches m
                WHERE m.benchmark = b.benchmark AND m.cot_id IS NULL) AS flagged
        FROM benches b CROSS JOIN targets t LEFT JOIN done d ON d.benchmark = b.benchmark AND d.dataset_id = t.dataset_id
        GROUP BY b.benchmark ORDER BY b.benchmark
        """, db=db,
    ).with_columns(pl.col("checked", "unchecked").fill_null([]))


# ---------------------------------------------------------------------------- the export manifest


def _flagged_in(con, relation: str, params: list, benchmarks: list[str]) -> dict[str, dict[str, int]]:
    """Per benchmark, the problems and CoTs of ``relation`` (SQL with cot_id, problem_id) that
    the stage flagged with it; plus 'any': those flagged with at least one of ``benchmarks``."""
    if not benchmarks:
        return {}
    metrics = [BENCHMARK_PREFIX + b for b in benchmarks]
    flagged = (f"SELECT r.cot_id, r.problem_id, substr(ps.metric, {len(BENCHMARK_PREFIX) + 1}) AS benchmark "
               f"FROM ({relation}) r JOIN problem_scores ps ON ps.problem_id = r.problem_id "
               "JOIN score_sources ss ON ss.source_id = ps.source_id AND ss.name = ? "
               "WHERE ps.metric IN (SELECT unnest(?::VARCHAR[]))")
    rows = con.execute(
        f"SELECT benchmark, count(DISTINCT problem_id), count(DISTINCT cot_id) FROM ({flagged}) GROUP BY ROLLUP (benchmark)",
        [*params, SOURCE, metrics]).fetchall()
    return {("any" if b is None else b): {"problems": p, "cots": c} for b, p, c in rows}


def export_summary(base: CotFilter, selection_conditions, numbers: pl.DataFrame, *, db=None) -> dict:
    """The manifest's ``contamination`` section for an export of ``numbers`` (the kept CoTs:
    cot_id, problem_id, dataset) made with filter ``base`` and a selection's conditions.

    Per benchmark the stage knows: which exported datasets were checked against it (completely)
    and which were not; the problems (and CoTs) dropped because they are contaminated with it,
    by the filter's conditions (counted among the CoTs the filter matches without them) and by
    the selection's (counted in the pool, the CoTs the filter matches); and the exported problems
    still flagged with it (0 for a benchmark dropped)."""
    from_filter = dropped_benchmarks(base.conditions)
    from_selection = dropped_benchmarks(selection_conditions)
    checked = checked_benchmarks(db=db)  # empty when the tables are absent or the check never ran
    if checked.height == 0:
        return {"checked": False, "benchmarks": [], "dropped_benchmarks": list(dict.fromkeys(from_filter + from_selection)),
                "note": "this store was never checked for contamination (python -m core contamination)"}
    exported = set(numbers["dataset"].drop_nulls().unique().to_list())
    params = store.read_rows("SELECT params FROM score_sources WHERE name = ?", [SOURCE], db=db)
    options = json.loads(params[0][0]) if params and params[0][0] else {}
    benchmarks = checked["benchmark"].to_list()
    with store.connect(db, read_only=True) as con:
        # the filter's drops: among what the filter matches without its contamination drops
        undropped = base.with_(conditions=tuple(c for c in base.conditions
                                                if not (c.missing and _benchmark_of(c.figure) in from_filter)))
        sql, sql_params = queries.matching_sql(undropped, db=db)
        by_filter = _flagged_in(con, sql, sql_params, list(from_filter))
        # the selection's drops: in its pool, what the filter matches
        sql, sql_params = queries.matching_sql(base, db=db)
        by_selection = _flagged_in(con, sql, sql_params, list(from_selection))
        con.register("export_kept", numbers.select("cot_id", "problem_id").to_arrow())
        try:
            still = _flagged_in(con, "SELECT cot_id, problem_id FROM export_kept", [], benchmarks)
        finally:
            con.unregister("export_kept")
    rows = []
    for r in checked.iter_rows(named=True):
        b = r["benchmark"]
        dropped = {where: counts_of[b] if b in counts_of else {"problems": 0, "cots": 0}
                   for where, counts_of, drops in (("filter", by_filter, from_filter), ("selection", by_selection, from_selection))
                   if b in drops}
        rows.append({
            "benchmark": b,
            "datasets_checked": [d for d in r["checked"] if d in exported],
            "datasets_not_checked": [d for d in r["unchecked"] if d in exported],
            "dropped": dropped or None,
            "exported_problems_flagged": still.get(b, {}).get("problems", 0),
        })
    dropped_total = {where: counts_of.get("any", {"problems": 0, "cots": 0})
                     for where, counts_of, drops in (("filter", by_filter, from_filter), ("selection", by_selection, from_selection))
                     if drops}
    keep = ("n", "min_overlap", "check_cots", "cot_min_overlap", "benchmarks")
    return {
        "checked": True,
        "options": {k: options[k] for k in keep if k in options},
        "benchmarks": rows,
        "dropped_benchmarks": list(dict.fromkeys(from_filter + from_selection)),
        "problems_dropped": dropped_total,
    }


def describe_export(section: dict) -> list[tuple[str, str]]:
    """What a manifest's contamination section means, as (level, sentence) pairs for the Export
    page: 'info' for what was checked and dropped, 'warning' for exported problems still flagged
    and exported datasets never checked."""
    if not section.get("checked"):
        return [("warning", "This store was never checked for benchmark contamination "
                            "(Overview, or `python -m core contamination`).")]
    out = []
    rows = section["benchmarks"]
    checked = [r["benchmark"] for r in rows if r["datasets_checked"]]
    if checked:
        out.append(("info", f"Checked against {', '.join(checked)}."))
    for r in rows:
        for where, n in (r["dropped"] or {}).items():
            out.append(("info", f"{r['benchmark']}: {n['problems']:,} problems ({n['cots']:,} CoTs) dropped by the {where}."))
    still = [f"{r['benchmark']} ({r['exported_problems_flagged']:,})" for r in rows if r["exported_problems_flagged"]]
    if still:
        out.append(("warning", f"Exported problems flagged as contaminated: {', '.join(still)}."))
    unchecked = sorted({d for r in rows for d in r["datasets_not_checked"]})
    if unchecked:
        out.append(("warning", f"Not (completely) checked for contamination: {', '.join(unchecked)}."))
    return out

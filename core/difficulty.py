"""Problem difficulty from samples, and a student's view of the same problems.

Two resumable stages publish figures (core/figures.py), so the sidebar, Explore, Select,
recipes and the export manifest read them with no code of their own:

**difficulty** (:func:`run_difficulty`, ``python -m core difficulty``, job kind ``difficulty``).
Per dataset, each CoT's verdict from a correctness source (default: each dataset's own, as the
sidebar: its label, else math-verify), then per problem and model:

* ``n`` samples with a verdict (a CoT without one is not a sample), ``c`` correct ones, pass
  rate ``c / n``, and the unbiased pass@k ``1 - C(n-c, k) / C(n, k)`` (core.metrics.pass_at_k) for
  each k of ``ks`` with ``k <= n``;
* the shortest correct CoT's tokens, and the median tokens of the correct and of the incorrect
  CoTs (no token figure for a problem whose CoTs were counted by different tokenizers).

Published under the stage's score source (``difficulty``; ``difficulty (<source>)`` for a named
correctness source):

* ``problem_scores``, pooled over the problem's models: ``n``, ``c``, ``pass_rate`` (raw
  ``c/n``), ``pass@k``, ``shortest_correct_tokens`` (raw: that CoT's id),
  ``median_tokens_correct``, ``median_tokens_incorrect``, ``models`` (models with a sample),
  ``models_solved`` (models with a correct sample), ``solved_by_all`` (1 when every model with a
  sample solved it at least once) and ``unsolved_by_all`` (1 when no sample is correct);
* ``scores``, per CoT for the CoT's own model: ``model_n``, ``model_c``, ``model_pass_rate`` ("pass
  rate of this problem for this CoT's model"), and ``relative_length``: the CoT's tokens over
  the problem's shortest correct CoT's (same tokenizer);
* ``problem_model_figures``: the per-model detail (``python -m core problems`` shows it).

The bands a researcher names are conditions on these: LIMO's "solved 1-3 of 32" is
``c`` in 1-3 and ``n`` in 32-32, a pass-rate range is ``pass_rate`` in lo-hi, "unsolved by every
model" is ``unsolved_by_all`` >= 1, "solved by every model" ``solved_by_all`` >= 1
(:data:`BANDS`).

Worked example (tests/test_difficulty.py checks it): a problem with CoTs of 400 tokens (model A,
correct), 1,000 (A, correct), 250 (A, incorrect) and 700 (B, incorrect). Pooled: n = 4, c = 2,
pass rate 0.5, pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6 = 0.833; shortest correct 400, median
correct 700, median incorrect 475; models 2, models_solved 1, solved_by_all 0, unsolved_by_all 0.
Per CoT: the A CoTs have model pass rate 2/3, the B CoT 0; relative lengths 1.0, 2.5, 0.625, 1.75.

**student** (:func:`run_student`, ``python -m core student``, job kind ``student``). An
evaluation of a student model (an evaluate job's dataset, or an ingested eval run, optionally
one model of it) gives each problem it answered its ``n``, ``c``, ``pass_rate``, ``pass@k`` and
``failed`` (1 when no sample is correct). Every problem of the other ready datasets with the
same question key (core/identity.py) gets these under the source ``student: <evaluation>``
(``... (<model>)`` for one model of it), so Select keeps the teacher CoTs of problems the
student fails (``failed`` >= 1) or solves rarely (``pass_rate`` <= 0.25) with a condition, and
:func:`student_report` counts such problems per dataset.

Both stages work dataset by dataset and commit in chunks of problems; ``stage_state`` keeps
each (source, dataset)'s fingerprint (its CoTs, token counts and verdicts, the options) and the
last problem committed. A rerun with nothing changed reads the fingerprints and returns; a
killed run resumes after its last chunk; a dataset whose inputs changed (new verdicts, a
recount) is computed again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from core import identity, store
from core.errors import UserError
from core.metrics import pass_at_k
from core.options import option
from core.progress import CancelledFn, JobCancelled, LogFn, ProgressFn

STAGE = "difficulty"
STUDENT_STAGE = "student"
SOURCE = "difficulty"
OWN = "@own"  # queries.OWN_CORRECTNESS: each dataset's own correctness (its label, else math-verify)
DEFAULT_KS = (4, 8, 16, 32)
CHUNK_PROBLEMS = 50_000
NO_MODEL = "(no model)"

# Pooled per-problem metrics, in the order `problems` prints them.
PROBLEM_METRICS = ("n", "c", "pass_rate", "shortest_correct_tokens", "median_tokens_correct", "median_tokens_incorrect",
                   "models", "models_solved", "solved_by_all", "unsolved_by_all")
COT_METRICS = ("model_n", "model_c", "model_pass_rate", "relative_length")
STUDENT_METRICS = ("n", "c", "pass_rate", "failed")

# Named difficulty bands as conditions on the stage's figures: (label, [(metric, lo, hi), ...]).
BANDS: dict[str, tuple[str, list[tuple[str, float | None, float | None]]]] = {
    "limo": ("solved 1-3 of 32 (LIMO)", [("c", 1, 3), ("n", 32, 32)]),
    "unsolved": ("unsolved by every model", [("unsolved_by_all", 1, None)]),
    "solved_by_all": ("solved by every model", [("solved_by_all", 1, None)]),
    "hard": ("pass rate at most 0.25", [("pass_rate", None, 0.25)]),
    "medium": ("pass rate 0.25-0.75", [("pass_rate", 0.25, 0.75)]),
    "easy": ("pass rate at least 0.75", [("pass_rate", 0.75, None)]),
}


class DifficultyError(UserError):
    """A difficulty or student run that cannot go ahead as asked (the message says why)."""


def _check_ks(ks: tuple[int, ...]) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in ks}))
    if any(k < 2 for k in ks):
        raise DifficultyError(f"pass@k needs k >= 2 (pass@1 is the pass rate); got {', '.join(map(str, ks))}.")
    return ks


@dataclass
class DifficultyOptions:
    """A difficulty run (``python -m core difficulty``; the Jobs form is made from it)."""

    datasets: tuple[str, ...] = option((), help="only these datasets, comma-separated (default: every ready dataset with CoTs)")
    correct_source: str = option(OWN, help="where each CoT's verdict comes from: @own (each dataset's own: its label, else "
                                           "math-verify, as the sidebar) or a score source's name")
    ks: tuple[int, ...] = option(DEFAULT_KS, help="pass@k for these k (a problem gets pass@k when it has at least k "
                                                  "samples with a verdict)")
    name: str | None = option(None, help="the score source's name (default 'difficulty', or 'difficulty (<source>)' for a "
                                         "named correctness source)")
    chunk_problems: int = option(CHUNK_PROBLEMS, cli=False, help="problems per committed chunk")

    def __post_init__(self):
        self.ks = _check_ks(self.ks)
        if not (self.correct_source or "").strip():
            self.correct_source = OWN
        if self.chunk_problems < 1:
            raise DifficultyError(f"chunk problems must be at least 1, got {self.chunk_problems}.")

    def source_name(self) -> str:
        if self.name:
            return self.name
        return SOURCE if self.correct_source == OWN else f"{SOURCE} ({self.correct_source})"


@dataclass
class StudentOptions:
    """A student's view (``python -m core student``): pass rates of one evaluation on every
    problem of the other datasets with the same question key."""

    evaluation: str | None = option(None, help="the evaluation dataset: an evaluate job's dataset or an ingested eval run")
    model: str | None = option(None, help="the student model inside it (needed when it holds several models)")
    correct_source: str = option(OWN, help="where each answer's verdict comes from: @own (the dataset's own: its label, "
                                           "else math-verify) or a score source's name")
    datasets: tuple[str, ...] = option((), help="give the figures to these datasets only (default: every other ready dataset)")
    ks: tuple[int, ...] = option(DEFAULT_KS, help="pass@k for these k (with at least k samples)")
    name: str | None = option(None, help="the score source's name (default 'student: <evaluation>[ (<model>)]')")

    def __post_init__(self):
        if not (self.evaluation or "").strip():
            raise DifficultyError("Choose the student's evaluation: a dataset made by an evaluate job, or an ingested eval run.")
        self.ks = _check_ks(self.ks)
        if not (self.correct_source or "").strip():
            self.correct_source = OWN

    def source_name(self) -> str:
        if self.name:
            return self.name
        name = f"student: {self.evaluation}" + (f" ({self.model})" if self.model else "")
        return name if self.correct_source == OWN else f"{name} by {self.correct_source}"


# ---------------------------------------------------------------------------- shared pieces


def correctness_sources(source: str, *, db=None) -> list[str]:
    """The score sources a correctness choice reads, in priority order (OWN: every label source,
    then every verifier, as queries.own_correctness_sources). A named source must have given
    'correct' to some CoT."""
    from core import queries

    if source == OWN:
        names = list(queries.own_correctness_sources(db=db))
        if not names:
            raise DifficultyError("No CoT has a verdict yet: ingest a dataset with correctness labels, or run "
                                  "`python -m core verify` (math-verify) first.")
        return names
    known = queries.sources("correct", db=db)
    if source not in known:
        raise DifficultyError(f"The score source '{source}' gave no verdict ('correct'); sources with verdicts: "
                              f"{', '.join(known) or 'none'}.")
    return [source]


def _verdicts_sql(where: str) -> str:
    """Each CoT's verdict from the first source (by priority) that judged it, as column ``ok``
    (NULL: no verdict). Parameters: source names, priorities, cot id range [lo, hi), then
    ``where``'s own."""
    return (
        "WITH w AS (SELECT ss.source_id, w.priority FROM (SELECT unnest(?::VARCHAR[]) AS name, "
        "  unnest(?::INTEGER[]) AS priority) w JOIN score_sources ss USING (name)), "
        "v AS (SELECT s.cot_id, arg_min(s.value, w.priority) AS value FROM scores s JOIN w USING (source_id) "
        "  WHERE s.metric = 'correct' AND s.value IS NOT NULL AND s.cot_id >= ? AND s.cot_id < ? GROUP BY s.cot_id) "
        f"SELECT c.cot_id, c.problem_id, coalesce(c.model, '{NO_MODEL}') AS model, c.n_tokens, c.tokenizer, "
        f"  v.value >= 0.5 AS ok FROM cots c LEFT JOIN v USING (cot_id) WHERE {where}"
    )


def _range(dataset_id: int) -> tuple[int, int]:
    return dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT


def _fingerprint(con, dataset_id: int, reads: list[str], extra: dict, model: str | None = None) -> str:
    """What a dataset's figures depend on: its content, token counts and the verdicts of the
    sources read (counts per source), and the options."""
    lo, hi = _range(dataset_id)
    model_sql, model_params = ("AND coalesce(c.model, ?) = ?", [NO_MODEL, model]) if model is not None else ("", [])
    cots = con.execute(
        f"SELECT d.content_hash, count(*), count(c.n_tokens), sum(c.n_tokens), string_agg(DISTINCT c.tokenizer, ',' ORDER BY c.tokenizer) "
        f"FROM cots c JOIN datasets d USING (dataset_id) WHERE c.dataset_id = ? {model_sql} GROUP BY d.content_hash",
        [dataset_id, *model_params]).fetchall()
    verdicts = con.execute(
        "SELECT ss.name, count(s.value), count(*) FILTER (WHERE s.value >= 0.5) FROM scores s "
        "JOIN score_sources ss USING (source_id) WHERE ss.name IN (SELECT unnest(?::VARCHAR[])) "
        "AND s.metric = 'correct' AND s.cot_id >= ? AND s.cot_id < ? GROUP BY ss.name ORDER BY ss.name",
        [reads, lo, hi]).fetchall()
    payload = {"cots": [list(map(str, r)) for r in cots], "verdicts": [list(r) for r in verdicts], "reads": reads, **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _state(con, stage: str, source_id: int, dataset_id: int) -> tuple[str, int, bool] | None:
    row = con.execute("SELECT fingerprint, done_through, complete FROM stage_state WHERE stage = ? AND source_id = ? "
                      "AND dataset_id = ?", [stage, source_id, dataset_id]).fetchone()
    return row if row else None


def _set_state(con, stage: str, source_id: int, dataset_id: int, fingerprint: str, done_through: int, complete: bool) -> None:
    con.execute("DELETE FROM stage_state WHERE stage = ? AND source_id = ? AND dataset_id = ?", [stage, source_id, dataset_id])
    con.execute("INSERT INTO stage_state VALUES (?, ?, ?, ?, ?, ?)", [stage, source_id, dataset_id, fingerprint, done_through, complete])


def _open_source(name: str, params: dict, *, db=None) -> int:
    """The stage's score source, created if new; its parameters brought up to date."""
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, name, "stage", params=json.dumps(params))
        kind = con.execute("SELECT kind FROM score_sources WHERE source_id = ?", [source_id]).fetchone()[0]
        if kind != "stage":
            con.execute("ROLLBACK")
            raise DifficultyError(f"The score source '{name}' already exists as a {kind} source; give the run another --name.")
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?", [json.dumps(params), source_id])
        con.execute("COMMIT")
    return source_id


def _pass_table(con, table: str, ks: tuple[int, ...]) -> None:
    """``diff_pass`` (n, c, k, value): pass@k of every distinct (n, c) of ``table`` with n >= k,
    computed by core.metrics.pass_at_k (a few hundred pairs for millions of problems)."""
    import pyarrow as pa

    pairs = con.execute(f"SELECT DISTINCT n, c FROM {table} WHERE n > 0").fetchall()
    rows = [(n, c, k, pass_at_k(n, c, k)) for n, c in pairs for k in ks if n >= k]
    con.register("diff_pass_arrow", pa.table({
        "n": pa.array([r[0] for r in rows], pa.int64()), "c": pa.array([r[1] for r in rows], pa.int64()),
        "k": pa.array([r[2] for r in rows], pa.int64()), "value": pa.array([r[3] for r in rows], pa.float64())}))
    con.execute("CREATE OR REPLACE TEMP TABLE diff_pass AS SELECT * FROM diff_pass_arrow")
    con.unregister("diff_pass_arrow")


def _datasets(names: tuple[str, ...], *, with_cots: bool, db=None) -> list[tuple[int, str]]:
    rows = store.read_rows("SELECT dataset_id, name, n_cots FROM datasets WHERE status = 'ready' ORDER BY dataset_id", db=db)
    if names:
        known = {r[1] for r in rows}
        missing = [n for n in names if n not in known]
        if missing:
            raise DifficultyError(f"No ready dataset named {', '.join(repr(m) for m in missing)}; the datasets are "
                                  f"{', '.join(sorted(known)) or 'none'}.")
        rows = [r for r in rows if r[1] in names]
    return [(r[0], r[1]) for r in rows if r[2] or not with_cots]


def _next_chunk(con, dataset_id: int, after: int, size: int) -> int | None:
    """The last problem id of the next ``size`` problems of a dataset after ``after``."""
    return con.execute("SELECT max(problem_id) FROM (SELECT problem_id FROM problems WHERE dataset_id = ? AND problem_id > ? "
                       "ORDER BY problem_id LIMIT ?)", [dataset_id, after, size]).fetchone()[0]


# ---------------------------------------------------------------------------- the difficulty stage


def _write_difficulty_chunk(con, source_id: int, dataset_id: int, after: int, through: int, reads: list[str],
                            ks: tuple[int, ...]) -> int:
    """Compute and insert one chunk's figures (problems (after, through] of the dataset) inside
    the caller's transaction; returns the problems written."""
    lo, hi = _range(dataset_id)
    con.execute("CREATE OR REPLACE TEMP TABLE diff_cots AS " + _verdicts_sql(
        "c.dataset_id = ? AND c.problem_id > ? AND c.problem_id <= ?"),
        [reads, list(range(len(reads))), lo, hi, dataset_id, after, through])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE diff_p AS SELECT problem_id, count(ok)::BIGINT AS n, "
        "count(*) FILTER (WHERE ok)::BIGINT AS c, count(DISTINCT tokenizer) FILTER (WHERE n_tokens IS NOT NULL) AS tokenizers, "
        "min(n_tokens) FILTER (WHERE ok) AS shortest, first(cot_id ORDER BY n_tokens, cot_id) FILTER (WHERE ok AND n_tokens IS NOT NULL) "
        "AS shortest_cot, median(n_tokens) FILTER (WHERE ok) AS med_ok, median(n_tokens) FILTER (WHERE NOT ok) AS med_bad "
        "FROM diff_cots GROUP BY problem_id")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE diff_pm AS SELECT problem_id, model, count(ok)::BIGINT AS n, "
        "count(*) FILTER (WHERE ok)::BIGINT AS c, min(n_tokens) FILTER (WHERE ok) AS shortest, "
        "median(n_tokens) FILTER (WHERE ok) AS med_ok, median(n_tokens) FILTER (WHERE NOT ok) AS med_bad "
        "FROM diff_cots GROUP BY problem_id, model")
    _pass_table(con, "diff_p", ks)
    # token figures only where the problem's CoTs were counted by one tokenizer
    same = "p.tokenizers = 1"
    con.execute(
        "INSERT INTO problem_model_figures SELECT m.problem_id, ?, m.model, m.n, m.c, "
        f"CASE WHEN {same} THEN m.shortest END, CASE WHEN {same} THEN m.med_ok END, CASE WHEN {same} THEN m.med_bad END "
        "FROM diff_pm m JOIN diff_p p USING (problem_id)", [source_id])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE diff_models AS SELECT problem_id, count(*) FILTER (WHERE n > 0) AS models, "
        "count(*) FILTER (WHERE c > 0) AS solved FROM diff_pm GROUP BY problem_id")
    con.execute(
        f"""INSERT INTO problem_scores (problem_id, source_id, metric, value, raw)
        SELECT problem_id, ?, metric, value, raw FROM (
            SELECT problem_id, 'n' AS metric, n::DOUBLE AS value, NULL AS raw FROM diff_p
            UNION ALL SELECT problem_id, 'c', c::DOUBLE, NULL FROM diff_p
            UNION ALL SELECT problem_id, 'pass_rate', c / n, c || '/' || n FROM diff_p WHERE n > 0
            UNION ALL SELECT p.problem_id, 'pass@' || k.k, k.value, NULL FROM diff_p p JOIN diff_pass k ON k.n = p.n AND k.c = p.c
            UNION ALL SELECT problem_id, 'shortest_correct_tokens', shortest::DOUBLE, shortest_cot::VARCHAR FROM diff_p p
                WHERE shortest IS NOT NULL AND {same}
            UNION ALL SELECT problem_id, 'median_tokens_correct', med_ok::DOUBLE, NULL FROM diff_p p WHERE med_ok IS NOT NULL AND {same}
            UNION ALL SELECT problem_id, 'median_tokens_incorrect', med_bad::DOUBLE, NULL FROM diff_p p WHERE med_bad IS NOT NULL AND {same}
            UNION ALL SELECT problem_id, 'models', models::DOUBLE, NULL FROM diff_models WHERE models > 0
            UNION ALL SELECT problem_id, 'models_solved', solved::DOUBLE, NULL FROM diff_models WHERE models > 0
            UNION ALL SELECT problem_id, 'solved_by_all', (solved = models)::INTEGER::DOUBLE, NULL FROM diff_models WHERE models > 0
            UNION ALL SELECT problem_id, 'unsolved_by_all', (c = 0)::INTEGER::DOUBLE, NULL FROM diff_p WHERE n > 0
        )""", [source_id])
    con.execute(
        f"""INSERT INTO scores (cot_id, source_id, metric, value, raw)
        SELECT cot_id, ?, metric, value, raw FROM (
            SELECT x.cot_id, 'model_n' AS metric, m.n::DOUBLE AS value, NULL AS raw FROM diff_cots x JOIN diff_pm m USING (problem_id, model)
            UNION ALL SELECT x.cot_id, 'model_c', m.c::DOUBLE, NULL FROM diff_cots x JOIN diff_pm m USING (problem_id, model)
            UNION ALL SELECT x.cot_id, 'model_pass_rate', m.c / m.n, m.c || '/' || m.n FROM diff_cots x
                JOIN diff_pm m USING (problem_id, model) WHERE m.n > 0
            UNION ALL SELECT x.cot_id, 'relative_length', x.n_tokens / p.shortest, x.n_tokens || '/' || p.shortest FROM diff_cots x
                JOIN diff_p p USING (problem_id) WHERE x.n_tokens IS NOT NULL AND p.shortest > 0 AND {same}
        )""", [source_id])
    written = con.execute("SELECT count(*) FROM diff_p").fetchone()[0]
    for table in ("diff_cots", "diff_p", "diff_pm", "diff_models", "diff_pass"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return written


def _clear_dataset(con, source_id: int, dataset_id: int) -> None:
    lo, hi = _range(dataset_id)
    con.execute("DELETE FROM problem_scores WHERE source_id = ? AND problem_id >= ? AND problem_id < ?", [source_id, lo, hi])
    con.execute("DELETE FROM scores WHERE source_id = ? AND cot_id >= ? AND cot_id < ?", [source_id, lo, hi])
    con.execute("DELETE FROM problem_model_figures WHERE source_id = ? AND problem_id >= ? AND problem_id < ?", [source_id, lo, hi])


def run_difficulty(db=None, options: DifficultyOptions | None = None, progress: ProgressFn | None = None,
                   cancelled: CancelledFn | None = None, log: LogFn | None = None) -> dict:
    """Bring the difficulty figures of every (chosen) dataset up to date; see the module
    docstring. Returns the source, per dataset what was done, and the time taken. A cancel
    (``cancelled()``) stops between chunks with ``cancelled`` set in the result."""
    options = options or DifficultyOptions()
    started = time.perf_counter()
    store.init_store(db)
    reads = correctness_sources(options.correct_source, db=db)
    name = options.source_name()
    params = {"stage": STAGE, "correctness": options.correct_source, "reads": reads, "ks": list(options.ks)}
    targets = _datasets(options.datasets, with_cots=True, db=db)
    source_id = _open_source(name, params, db=db)
    extra = {"ks": list(options.ks), "version": 1}
    with store.connect(db, read_only=True) as con:
        plans = []
        for dataset_id, dataset in targets:
            fingerprint = _fingerprint(con, dataset_id, reads, extra)
            state = _state(con, STAGE, source_id, dataset_id)
            total = con.execute("SELECT count(*) FROM problems WHERE dataset_id = ?", [dataset_id]).fetchone()[0]
            plans.append((dataset_id, dataset, fingerprint, state, total))
    out: dict[str, Any] = {"source": name, "reads": reads, "datasets": {}, "cancelled": False}
    grand_total = sum(p[4] for p in plans)
    done_all = 0
    for dataset_id, dataset, fingerprint, state, total in plans:
        if state is not None and state[0] == fingerprint and state[2]:
            out["datasets"][dataset] = {"problems": total, "computed": 0, "current": True}
            done_all += total
            if progress:
                progress("difficulty", done_all, grand_total)
            continue
        after = state[1] if state is not None and state[0] == fingerprint else -1
        with store.connect(db, read_only=False) as con:
            if after < 0:  # new, or its inputs changed: start the dataset again
                con.execute("BEGIN")
                _clear_dataset(con, source_id, dataset_id)
                _set_state(con, STAGE, source_id, dataset_id, fingerprint, -1, False)
                con.execute("COMMIT")
            before = con.execute("SELECT count(*) FROM problems WHERE dataset_id = ? AND problem_id <= ?",
                                 [dataset_id, after]).fetchone()[0] if after >= 0 else 0
        computed = 0
        if progress:
            progress("difficulty", done_all + before, grand_total)
        while True:
            if cancelled is not None and cancelled():
                out["cancelled"] = True
                out["datasets"][dataset] = {"problems": total, "computed": computed, "current": False}
                out["seconds"] = time.perf_counter() - started
                return out
            with store.connect(db, read_only=False) as con:
                through = _next_chunk(con, dataset_id, after, options.chunk_problems)
                con.execute("BEGIN")
                if through is not None:
                    _write_difficulty_chunk(con, source_id, dataset_id, after, through, reads, options.ks)
                    computed += con.execute("SELECT count(*) FROM problems WHERE dataset_id = ? AND problem_id > ? "
                                            "AND problem_id <= ?", [dataset_id, after, through]).fetchone()[0]
                _set_state(con, STAGE, source_id, dataset_id, fingerprint, through if through is not None else after,
                           through is None)
                con.execute("COMMIT")
            if through is None:
                break
            after = through
            if progress:
                progress("difficulty", done_all + before + computed, grand_total)
        done_all += total
        out["datasets"][dataset] = {"problems": total, "computed": computed, "current": False}
        if log:
            log(f"difficulty: {dataset}: {computed:,} problems")
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------- the student stage


def _student_models(dataset_id: int, *, db=None) -> list[str]:
    return [r[0] for r in store.read_rows(
        f"SELECT DISTINCT coalesce(model, '{NO_MODEL}') FROM cots WHERE dataset_id = ? ORDER BY 1", [dataset_id], db=db)]


def run_student(db=None, options: StudentOptions | None = None, progress: ProgressFn | None = None,
                cancelled: CancelledFn | None = None, log: LogFn | None = None) -> dict:
    """Publish the student's pass rates on the problems of the other datasets (matched by question
    key); see the module docstring. One transaction per target dataset; a rerun with nothing
    changed returns at once."""
    if options is None:
        raise DifficultyError("Choose the student's evaluation.")
    started = time.perf_counter()
    store.init_store(db)
    identity.run_problem_keys(db)  # a store ingested before keys existed: keys first (a no-op otherwise)
    rows = store.read_rows("SELECT dataset_id, content_hash FROM datasets WHERE status = 'ready' AND name = ?",
                           [options.evaluation], db=db)
    if not rows:
        names = [r[0] for r in store.read_rows("SELECT name FROM datasets WHERE status = 'ready' AND n_cots > 0 ORDER BY 1", db=db)]
        raise DifficultyError(f"No ready dataset named '{options.evaluation}'; datasets with answers: {', '.join(names) or 'none'}.")
    eval_id, content_hash = rows[0]
    models = _student_models(eval_id, db=db)
    if not models:
        raise DifficultyError(f"'{options.evaluation}' holds no answers (a benchmark file?): evaluate a model on it first.")
    if options.model is not None and options.model not in models:
        raise DifficultyError(f"'{options.evaluation}' has no answers of the model '{options.model}'; its models: {', '.join(models)}.")
    if options.model is None and len(models) > 1:
        raise DifficultyError(f"'{options.evaluation}' holds answers of {len(models)} models; choose the student with --model "
                              f"(one of {', '.join(models)}).")
    model = options.model if options.model is not None else models[0]
    reads = correctness_sources(options.correct_source, db=db)
    name = options.source_name()
    with store.connect(db, read_only=True) as con:
        fingerprint = _fingerprint(con, eval_id, reads, {"ks": list(options.ks), "version": 1, "key": identity.KEY_VERSION},
                                   model=model)
    lo, hi = _range(eval_id)
    verdicts = _verdicts_sql("c.dataset_id = ? AND coalesce(c.model, ?) = ?")
    verdict_params = [reads, list(range(len(reads))), lo, hi, eval_id, NO_MODEL, model]
    with store.connect(db, read_only=True) as con:
        evaluated, samples, judged = con.execute(
            f"SELECT count(DISTINCT k.key_hash), count(*), count(v.ok) FROM ({verdicts}) v "
            "JOIN problem_keys k ON k.problem_id = v.problem_id AND k.key_version = ?", [*verdict_params, identity.KEY_VERSION],
        ).fetchone()
    params = {"stage": STUDENT_STAGE, "evaluation": options.evaluation, "student_of_dataset_id": eval_id,
              "content_hash": content_hash, "model": model, "correctness": options.correct_source, "reads": reads,
              "ks": list(options.ks), "problems_evaluated": evaluated, "samples": samples, "samples_judged": judged}
    source_id = _open_source(name, params, db=db)
    targets = [t for t in _datasets(options.datasets, with_cots=False, db=db) if t[0] != eval_id]
    out: dict[str, Any] = {"source": name, "evaluation": options.evaluation, "model": model, "problems_evaluated": evaluated,
                           "datasets": {}, "cancelled": False}
    for i, (dataset_id, dataset) in enumerate(targets):
        if cancelled is not None and cancelled():
            out["cancelled"] = True
            break
        t_lo, t_hi = _range(dataset_id)
        with store.connect(db, read_only=False) as con:
            state = _state(con, STUDENT_STAGE, source_id, dataset_id)
            target_print = fingerprint + ":" + str(con.execute("SELECT content_hash FROM datasets WHERE dataset_id = ?",
                                                               [dataset_id]).fetchone()[0])
            if state is not None and state[0] == target_print and state[2]:
                out["datasets"][dataset] = {"matched": None, "current": True}
                continue
            con.execute("BEGIN")
            con.execute("DELETE FROM problem_scores WHERE source_id = ? AND problem_id >= ? AND problem_id < ?",
                        [source_id, t_lo, t_hi])
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE stu_keys AS SELECT k.key_hash, k.question_key, count(v.ok)::BIGINT AS n, "
                f"count(*) FILTER (WHERE v.ok)::BIGINT AS c FROM ({verdicts}) v JOIN problem_keys k ON k.problem_id = v.problem_id "
                "AND k.key_version = ? GROUP BY ALL", [*verdict_params, identity.KEY_VERSION])
            con.execute(
                "CREATE OR REPLACE TEMP TABLE stu_p AS SELECT t.problem_id, s.n, s.c FROM problem_keys t JOIN stu_keys s "
                "ON s.key_hash = t.key_hash AND s.question_key = t.question_key WHERE t.key_version = ? "
                "AND t.problem_id >= ? AND t.problem_id < ?", [identity.KEY_VERSION, t_lo, t_hi])
            _pass_table(con, "stu_p", options.ks)
            con.execute(
                """INSERT INTO problem_scores (problem_id, source_id, metric, value, raw)
                SELECT problem_id, ?, metric, value, raw FROM (
                    SELECT problem_id, 'n' AS metric, n::DOUBLE AS value, NULL AS raw FROM stu_p
                    UNION ALL SELECT problem_id, 'c', c::DOUBLE, NULL FROM stu_p
                    UNION ALL SELECT problem_id, 'pass_rate', c / n, c || '/' || n FROM stu_p WHERE n > 0
                    UNION ALL SELECT problem_id, 'failed', (c = 0)::INTEGER::DOUBLE, NULL FROM stu_p WHERE n > 0
                    UNION ALL SELECT p.problem_id, 'pass@' || k.k, k.value, NULL FROM stu_p p JOIN diff_pass k ON k.n = p.n AND k.c = p.c
                )""", [source_id])
            matched = con.execute("SELECT count(*) FROM stu_p").fetchone()[0]
            for table in ("stu_keys", "stu_p", "diff_pass"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
            _set_state(con, STUDENT_STAGE, source_id, dataset_id, target_print, t_hi - 1, True)
            con.execute("COMMIT")
        out["datasets"][dataset] = {"matched": matched, "current": False}
        if log and matched:
            log(f"student: {dataset}: {matched:,} problems matched")
        if progress:
            progress("student", i + 1, len(targets))
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------- job runners (core/job_kinds.py)


def difficulty_job(opts: DifficultyOptions, ctx) -> dict:
    result = run_difficulty(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)
    if result["cancelled"]:
        raise JobCancelled()
    return result


def student_job(opts: StudentOptions, ctx) -> dict:
    result = run_student(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)
    if result["cancelled"]:
        raise JobCancelled()
    return result


# ---------------------------------------------------------------------------- reading the figures


def stage_sources(stage: str, *, db=None) -> list[dict[str, Any]]:
    """The score sources a stage of this module made (stage 'difficulty' or 'student'), oldest
    first: name, source_id, params (a dict)."""
    rows = store.read_rows("SELECT name, source_id, params FROM score_sources WHERE kind = 'stage' "
                           "AND json_extract_string(params, '$.stage') = ? ORDER BY source_id", [stage], db=db)
    return [{"name": r[0], "source_id": r[1], "params": json.loads(r[2]) if r[2] else {}} for r in rows]


def is_student_source(name: str, *, db=None) -> bool:
    return any(s["name"] == name for s in stage_sources(STUDENT_STAGE, db=db))


def student_report(source: str, *, rare: float = 0.25, db=None) -> pl.DataFrame:
    """Per dataset that got the student's figures: problems, matched (the student answered them),
    failed (no correct sample), rare (pass rate above 0 and at most ``rare``), solved (above
    ``rare``), and the CoTs of the failed and of the rare problems."""
    schema = {"dataset": pl.String, "problems": pl.Int64, "matched": pl.Int64, "failed": pl.Int64, "rare": pl.Int64,
              "solved": pl.Int64, "cots_of_failed": pl.Int64, "cots_of_rare": pl.Int64}
    if not identity.tables_present("stage_state", db=db):
        return pl.DataFrame(schema=schema)
    return store.read_df(
        f"""
        WITH src AS (SELECT source_id FROM score_sources WHERE name = ?),
             rate AS (SELECT ps.problem_id, ps.value FROM problem_scores ps JOIN src USING (source_id) WHERE ps.metric = 'pass_rate'),
             cot_counts AS (SELECT problem_id, count(*) AS cots FROM cots WHERE problem_id IN (SELECT problem_id FROM rate) GROUP BY 1),
             done AS (SELECT dataset_id FROM stage_state JOIN src USING (source_id) WHERE stage = '{STUDENT_STAGE}')
        SELECT d.name AS dataset, d.n_problems AS problems, count(r.problem_id) AS matched,
               count(*) FILTER (WHERE r.value = 0) AS failed, count(*) FILTER (WHERE r.value > 0 AND r.value <= ?) AS rare,
               count(*) FILTER (WHERE r.value > ?) AS solved,
               coalesce(sum(cc.cots) FILTER (WHERE r.value = 0), 0)::BIGINT AS cots_of_failed,
               coalesce(sum(cc.cots) FILTER (WHERE r.value > 0 AND r.value <= ?), 0)::BIGINT AS cots_of_rare
        FROM datasets d JOIN done USING (dataset_id)
        LEFT JOIN rate r ON (r.problem_id >> {store.ID_SHIFT}) = d.dataset_id
        LEFT JOIN cot_counts cc ON cc.problem_id = r.problem_id
        WHERE d.status = 'ready' GROUP BY d.dataset_id, d.name, d.n_problems ORDER BY d.dataset_id
        """, [source, rare, rare, rare], db=db,
    ).cast(schema)


def band_conditions(band: str, source: str = SOURCE) -> tuple:
    """The conditions of a named band (BANDS) on a difficulty source's figures."""
    from core.figures import Condition, Figure

    if band not in BANDS:
        raise DifficultyError(f"unknown band '{band}'; the bands are {', '.join(BANDS)}")
    return tuple(Condition(Figure(metric, source, level="problem"), lo=lo, hi=hi) for metric, lo, hi in BANDS[band][1])


def options_dict(opts) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}


# ---------------------------------------------------------------------------- python -m core problems


def _pivot(con, source_id: int | None, ids_table: str) -> dict[int, dict[str, float]]:
    """{problem_id: {metric: value}} of one source's problem figures for the registered ids."""
    if source_id is None:
        return {}
    out: dict[int, dict[str, float]] = {}
    for pid, metric, value in con.execute(
            f"SELECT problem_id, metric, value FROM problem_scores WHERE source_id = ? AND value IS NOT NULL "
            f"AND problem_id IN (SELECT problem_id FROM {ids_table})", [source_id]).fetchall():
        out.setdefault(pid, {})[metric] = value
    return out


def _ordered(values: dict[str, float], ks: list[int]) -> dict[str, float | int]:
    """A problem's pooled figures in PROBLEM_METRICS order (counts as ints), pass@k after the pass rate."""
    out: dict[str, float | int] = {}
    for metric in PROBLEM_METRICS:
        if metric in values:
            value = values[metric]
            out[metric] = int(value) if metric in ("n", "c", "shortest_correct_tokens", "models", "models_solved", "solved_by_all",
                                                   "unsolved_by_all") else value
        if metric == "pass_rate":
            out.update({f"pass@{k}": values[f"pass@{k}"] for k in ks if f"pass@{k}" in values})
    return out


def problems_report(f=None, *, difficulty_source: str = SOURCE, limit: int | None = None, offset: int = 0,
                    db=None) -> tuple[int, list[dict[str, Any]]]:
    """The problems with a CoT filter ``f`` matches (a CotFilter, as the app's; None: every CoT),
    in problem-id order: (how many match, one dict per problem of the page) with its dataset,
    keys, question, the matching CoTs, its difficulty figures (pooled and per model, with pass@k
    per model), each student's figures, its contamination matches and its near-duplicate
    cluster. What ``python -m core problems`` prints."""
    import pyarrow as pa

    from core import queries

    f = f if f is not None else queries.CotFilter()
    sql, params = queries.matching_sql(f, db=db)
    with store.connect(db, read_only=True) as con:
        total = con.execute(f"SELECT count(DISTINCT problem_id) FROM ({sql})", params).fetchone()[0]
        page = con.execute(f"SELECT problem_id, count(*) AS cots FROM ({sql}) GROUP BY problem_id ORDER BY problem_id "
                           f"LIMIT ? OFFSET ?", [*params, limit if limit is not None else 1 << 62, int(offset)]).fetchall()
        if not page:
            return total, []
        cots = dict(page)
        con.register("report_ids", pa.table({"problem_id": pa.array([p for p, _ in page], pa.int64())}))
        have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        problems = con.execute(
            "SELECT p.problem_id, d.name, p.problem_key, p.benchmark, p.question, p.reference_answer, k.question_key "
            "FROM problems p JOIN datasets d USING (dataset_id) "
            + ("LEFT JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? " if "problem_keys" in have
               else "LEFT JOIN (SELECT NULL::BIGINT AS problem_id, NULL AS question_key) k ON false ")
            + "WHERE p.problem_id IN (SELECT problem_id FROM report_ids) ORDER BY p.problem_id",
            [identity.KEY_VERSION] if "problem_keys" in have else []).fetchall()
        sources = {name: (sid, json.loads(p) if p else {}) for name, sid, p in con.execute(
            "SELECT name, source_id, params FROM score_sources WHERE kind = 'stage'").fetchall()}
        diff_id, diff_params = sources.get(difficulty_source, (None, {}))
        ks = list(diff_params.get("ks", []))
        pooled = _pivot(con, diff_id, "report_ids")
        per_model: dict[int, list[dict]] = {}
        if diff_id is not None and "problem_model_figures" in have:
            for pid, model, n, c, short, med_ok, med_bad in con.execute(
                    "SELECT problem_id, model, n, c, shortest_correct_tokens, median_tokens_correct, median_tokens_incorrect "
                    "FROM problem_model_figures WHERE source_id = ? AND problem_id IN (SELECT problem_id FROM report_ids) "
                    "ORDER BY problem_id, model", [diff_id]).fetchall():
                entry: dict[str, Any] = {"model": model, "n": n, "c": c, "pass_rate": c / n if n else None}
                entry.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks if n >= k})
                entry.update(shortest_correct_tokens=short, median_tokens_correct=med_ok, median_tokens_incorrect=med_bad)
                per_model.setdefault(pid, []).append(entry)
        students = {name: (sid, p) for name, (sid, p) in sources.items() if p.get("stage") == STUDENT_STAGE}
        student_values = {name: _pivot(con, sid, "report_ids") for name, (sid, _) in students.items()}
        matches: dict[int, list[dict]] = {}
        if "contamination_matches" in have:
            for pid, bench, bpid, bkey, overlap, exact in con.execute(
                    "SELECT m.problem_id, m.benchmark, m.benchmark_problem_id, bp.problem_key, m.overlap, m.exact "
                    "FROM contamination_matches m JOIN problems bp ON bp.problem_id = m.benchmark_problem_id "
                    "WHERE m.cot_id IS NULL AND m.problem_id IN (SELECT problem_id FROM report_ids) "
                    "ORDER BY m.problem_id, m.overlap DESC, m.benchmark").fetchall():
                matches.setdefault(pid, []).append({"benchmark": bench, "benchmark_problem_id": bpid,
                                                    "benchmark_problem_key": bkey, "overlap": overlap, "exact": exact})
        near = _pivot(con, sources.get("near-duplicates", (None, {}))[0], "report_ids")
        con.unregister("report_ids")
    out = []
    for pid, dataset, key, benchmark, question, reference, question_key in problems:
        student_figures = {}
        for name, (_, p) in students.items():
            values = student_values[name].get(pid)
            if values:
                student_figures[name] = {"evaluation": p.get("evaluation"), "model": p.get("model"),
                                         **{m: (int(values[m]) if m in ("n", "c", "failed") else values[m])
                                            for m in (*STUDENT_METRICS, *(f"pass@{k}" for k in p.get("ks", []))) if m in values}}
        cluster = near.get(pid, {})
        out.append({
            "problem_id": pid, "dataset": dataset, "problem_key": key, "benchmark": benchmark, "question": question,
            "reference_answer": reference, "question_key": question_key, "cots": cots[pid],
            "difficulty": ({"source": difficulty_source, **_ordered(pooled.get(pid, {}), ks), "models_detail": per_model.get(pid, [])}
                           if diff_id is not None else None),
            "students": student_figures,
            "contamination": matches.get(pid, []),
            "near_duplicates": ({"cluster_id": int(cluster["cluster_id"]), "cluster_size": int(cluster.get("cluster_size", 1))}
                                if "cluster_id" in cluster else None),
        })
    return total, out


def problems_table(report: list[dict[str, Any]]) -> pl.DataFrame:
    """problems_report's dicts as one flat row each (the text output of ``problems``)."""
    rows = []
    for r in report:
        d = r["difficulty"] or {}
        rows.append({
            "problem_id": r["problem_id"], "dataset": r["dataset"], "question": " ".join((r["question"] or "").split())[:60],
            "cots": r["cots"], "n": d.get("n"), "c": d.get("c"), "pass_rate": d.get("pass_rate"),
            "shortest_correct": d.get("shortest_correct_tokens"),
            "per_model": "; ".join(f"{m['model']} {m['c']}/{m['n']}" for m in d.get("models_detail", [])) or None,
            "students": "; ".join(f"{name.removeprefix('student: ')} {s.get('c')}/{s.get('n')}" for name, s in r["students"].items())
            or None,
            "contaminated": ", ".join(sorted({m["benchmark"] for m in r["contamination"]})) or None,
            "cluster_size": (r["near_duplicates"] or {}).get("cluster_size"),
        })
    schema = {"problem_id": pl.Int64, "dataset": pl.String, "question": pl.String, "cots": pl.Int64, "n": pl.Int64,
              "c": pl.Int64, "pass_rate": pl.Float64, "shortest_correct": pl.Float64, "per_model": pl.String,
              "students": pl.String, "contaminated": pl.String, "cluster_size": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def filter_from_args(args):
    """The CotFilter a command's filter flags describe: ``--filter`` (the app's URL query, e.g.
    ``datasets=X&conditions=[...]``, as the address bar shows it), else a saved ``--recipe``'s
    base filter, narrowed by ``--dataset``/``--model``/``--benchmark`` and ``--condition`` JSON
    (core.figures.Condition.as_dict form)."""
    from urllib.parse import parse_qs

    from core import queries
    from core.figures import Condition, FigureError

    if getattr(args, "recipe", None):
        from core import recipes

        f = recipes.load(args.recipe).selection.base
    else:
        f = queries.CotFilter.from_params(parse_qs(args.filter or "", keep_blank_values=False))
    changes: dict[str, Any] = {}
    for name, flag in (("datasets", "dataset"), ("models", "model"), ("benchmarks", "benchmark")):
        given = tuple(v.strip() for v in (getattr(args, flag, None) or "").split(",") if v.strip())
        if given:
            changes[name] = given
    conditions = []
    for text in getattr(args, "condition", None) or []:
        try:
            conditions.append(Condition.from_dict(json.loads(text)))
        except json.JSONDecodeError as exc:
            raise FigureError(f"--condition {text!r} is not JSON: {exc}") from exc
    if conditions:
        changes["conditions"] = (*f.conditions, *conditions)
    return f.with_(**changes) if changes else f


def add_filter_arguments(p) -> None:
    p.add_argument("--filter", help="the app's filter as its URL query (the part after '?' in the address bar)")
    p.add_argument("--recipe", help="a saved recipe's filter instead")
    p.add_argument("--dataset", help="only these datasets, comma-separated")
    p.add_argument("--model", help="only these models, comma-separated")
    p.add_argument("--benchmark", help="only these benchmarks, comma-separated")
    p.add_argument("--condition", action="append", help='a condition on a figure as JSON, e.g. '
                   '\'{"level": "problem", "source": "difficulty", "metric": "pass_rate", "hi": 0.25}\' (repeatable)')


def cmd_problems(args) -> int:
    import sys

    f = filter_from_args(args)
    limit = args.limit if args.limit is not None else (None if args.json else 100)
    total, report = problems_report(f, difficulty_source=args.difficulty_source, limit=limit, offset=args.offset, db=args.db)
    if args.json:
        print(json.dumps(report, indent=1, default=str, ensure_ascii=False))
    elif not report:
        print("No problem matches the filter." if not total else f"No problem at offset {args.offset:,} (of {total:,}).")
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=240, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
            print(problems_table(report))
    shown = f"{args.offset + 1:,}-{args.offset + len(report):,}" if report else "none"
    print(f"{total:,} problems match; shown {shown}. Figures of '{args.difficulty_source}'"
          + ("" if report and report[0]["difficulty"] is not None else " (not computed: run `python -m core difficulty`)")
          + ".", file=sys.stderr)
    return 0


def add_cli(sub) -> None:
    """``python -m core problems`` (the stages' own commands come from their job kinds)."""
    p = sub.add_parser("problems", help="per problem: difficulty (pooled and per model), students, contamination, "
                                        "near-duplicates, for the problems the filter matches")
    add_filter_arguments(p)
    p.add_argument("--difficulty-source", default=SOURCE, help="the difficulty stage's source (default %(default)s)")
    p.add_argument("--limit", type=int, help="at most this many problems (default: 100 as a table, all with --json)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one object per problem, every figure")
    p.set_defaults(func=cmd_problems)


# ---------------------------------------------------------------------------- export manifest


def manifest_section(conditions: list, score_source: str | None, problem_ids: list[int], target, *, db=None) -> dict | None:
    """What an export's manifest says about the difficulty and student figures it used (None when
    it used none): each source with its parameters and the figures its conditions or score read,
    the student evaluations the problems were matched against, and a file beside the export,
    ``<export>.problem_figures.jsonl``, with every exported problem's figures of those sources
    (one line per problem: problem_id, dataset, question_key, then {source: {metric: value}})."""
    import hashlib as _hashlib

    import pyarrow as pa

    ours = {s["name"]: s for stage in (STAGE, STUDENT_STAGE) for s in stage_sources(stage, db=db)}
    used: dict[str, set[str]] = {}
    for cond in conditions:
        if cond.figure.source in ours:
            used.setdefault(cond.figure.source, set()).add(cond.figure.metric)
    if score_source in ours:
        used.setdefault(score_source, set())
    if not used:
        return None
    names = list(used)
    with store.connect(db, read_only=True) as con:
        con.register("manifest_ids", pa.table({"problem_id": pa.array(sorted(set(problem_ids)), pa.int64())}))
        base = store.fetch_pl(
            con, "SELECT p.problem_id, d.name AS dataset, k.question_key FROM problems p JOIN datasets d USING (dataset_id) "
                 "LEFT JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? "
                 "WHERE p.problem_id IN (SELECT problem_id FROM manifest_ids) ORDER BY p.problem_id", [identity.KEY_VERSION])
        values = store.fetch_pl(
            con, "SELECT ps.problem_id, ss.name AS source, ps.metric, ps.value FROM problem_scores ps "
                 "JOIN score_sources ss USING (source_id) WHERE ss.name IN (SELECT unnest(?::VARCHAR[])) "
                 "AND ps.problem_id IN (SELECT problem_id FROM manifest_ids) AND ps.value IS NOT NULL", [names])
        con.unregister("manifest_ids")
    per_problem: dict[int, dict[str, dict[str, float]]] = {}
    for pid, source, metric, value in values.iter_rows():
        per_problem.setdefault(pid, {}).setdefault(source, {})[metric] = value
    path = target.with_name(target.name + ".problem_figures.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for pid, dataset, key in base.iter_rows():
            fh.write(json.dumps({"problem_id": pid, "dataset": dataset, "question_key": key,
                                 **{name: per_problem.get(pid, {}).get(name) for name in names}}, ensure_ascii=False) + "\n")
    digest = _hashlib.sha256(path.read_bytes()).hexdigest()
    students = []
    for name in names:
        params = ours[name]["params"]
        if params.get("stage") == STUDENT_STAGE:
            students.append({"source": name, **{k: params.get(k) for k in (
                "evaluation", "model", "content_hash", "problems_evaluated", "samples", "samples_judged", "correctness",
                "reads")}})
    return {
        "sources": [{"name": name, "stage": ours[name]["params"].get("stage"), "params": ours[name]["params"],
                     "figures_used": sorted(used[name])} for name in names],
        "student_evaluations": students,
        "problems": base.height,
        "problems_with_figures": sum(1 for pid in base["problem_id"].to_list() if pid in per_problem),
        "file": path.name, "sha256": digest, "bytes": path.stat().st_size,
    }

"""Problem identity across datasets: a normalised question key, so that a teacher dataset, a
benchmark and a student's evaluation of the same problem meet.

The key of a question (:func:`question_key`, version :data:`KEY_VERSION`) is the question with
everything that does not change which problem it is taken away:

1. Unicode NFKC, then lower case (``casefold``);
2. answer-format instructions at either end removed, repeatedly: a sentence that asks for the
   answer in ``\\boxed{}`` ("Return your final response within \\boxed{}.", "Please reason step
   by step, and put your final answer within \\boxed{}.", "You MUST put your final answer in
   \\boxed{}."), "Let's think step by step.", "Solve this (math) problem (step by step).", and
   the labels "Problem:" / "Question:" at the start, "Solution:" / "Answer:" (and an opened
   ``<think>``) at the end;
3. LaTeX spelling: math delimiters (``$``, ``$$``, ``\\(`` ``\\)``, ``\\[`` ``\\]``) dropped,
   ``\\dfrac`` / ``\\tfrac`` -> ``\\frac``, ``\\left`` / ``\\right`` dropped, LaTeX spaces
   (``\\,`` ``\\;`` ``\\:`` ``\\!`` ``\\ `` ``~``) -> a space;
4. whitespace: runs become one space, and a space next to anything that is not a letter or digit
   goes (``x + y`` -> ``x+y``, ``\\frac {1} {2}`` -> ``\\frac{1}{2}``), so spacing never
   separates two keys; trailing punctuation and spaces go.

Each problem's key is stored in ``problem_keys`` (computed at ingest; :func:`run_problem_keys`
fills it for problems ingested before, or after a change of :data:`KEY_VERSION`). The word
tokens of a key (:func:`key_words`, runs of letters and digits) are what the contamination check
and the near-duplicate stage compare.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from core import store
from core.errors import UserError
from core.options import option

KEY_VERSION = 1

# ---------------------------------------------------------------------------- normalisation

_BOX = r"\\(?:boxed|fbox)\s*\{\s*\}"
# One instruction sentence at the start: it ends at its full stop (or colon, or line break), which
# is found after the \boxed{} it mentions, so "Return your final response within \boxed{}." goes
# whole.
# Each pattern comes with a word it cannot match without, checked first: most questions have
# no instruction, and the plain substring test keeps the key cheap (34k questions/s, was 19k).
_LEADING = [
    ("box", re.compile(r"^(?:[^.?!\n]*?" + _BOX + r"[^.?!:\n]*?)(?:[.!:]+|$|(?=\n))\s*")),
    ("step", re.compile(r"^(?:please\s+)?(?:let'?s|let\s+us)\s+(?:think|reason)\s+step\s+by\s+step[.:]?\s*")),
    ("problem", re.compile(r"^(?:please\s+)?(?:solve|answer)\s+(?:this|the\s+following)\s+(?:math\s+|mathematical\s+)?"
                           r"problem(?:\s+step\s+by\s+step)?\s*[.:]\s*")),
    ("question", re.compile(r"^(?:please\s+)?(?:solve|answer)\s+(?:this|the\s+following)\s+(?:math\s+|mathematical\s+)?"
                            r"question(?:\s+step\s+by\s+step)?\s*[.:]\s*")),
    (":", re.compile(r"^(?:problem|question)\s*(?:\d+\s*)?:\s*")),
]
# One instruction sentence at the end: from the previous sentence end (or line break) to the end.
_TRAILING = [
    ("box", re.compile(r"(?:^|(?<=[.?!:\n]))[^.?!\n]*?" + _BOX + r"[^.?!\n]*?[.!]*\s*$")),
    ("step", re.compile(r"(?:^|(?<=[.?!:\n]))\s*(?:please\s+)?(?:let'?s|let\s+us)\s+(?:think|reason)\s+step\s+by\s+step[.!]?\s*$")),
    ("step", re.compile(r"(?:^|(?<=[.?!:\n]))\s*(?:please\s+)?(?:reason|think)\s+step\s+by\s+step[.!]?\s*$")),
    (":", re.compile(r"\s*(?:solution|answer)\s*:\s*(?:<think>)?\s*$")),
]
_DELIMITERS = re.compile(r"\$+|\\[()\[\]]")
_FRAC = re.compile(r"\\[dt]frac(?![a-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-z])\s*")
_LATEX_SPACE = re.compile(r"\\[,;:! ]|~")
_SPACES = re.compile(r"\s+")
# a space with a non-alphanumeric character on either side carries no meaning
_LOOSE_SPACE = re.compile(r"(?<=[^\w\s]) | (?=[^\w\s])|(?<=_) | (?=_)")
_TRAILING_PUNCT = re.compile(r"[\s.?!,;:]+$")
_WORD = re.compile(r"[^\W_]+")


def _strip_instructions(text: str) -> str:
    changed = True
    while changed and text:
        changed = False
        for needle, pattern in _LEADING:
            if needle not in text:
                continue
            stripped = pattern.sub("", text, count=1).lstrip()
            if stripped != text and stripped:
                text, changed = stripped, True
        for needle, pattern in _TRAILING:
            if needle not in text:
                continue
            stripped = pattern.sub("", text, count=1).rstrip()
            if stripped != text and stripped:
                text, changed = stripped, True
    return text


def question_key(question: str) -> str:
    """The normalised question (see the module docstring); equal keys mean the same problem.

    >>> question_key("Return your final response within \\\\boxed{}. Find $x + 1$ if $x=\\\\dfrac {1} {2}$.")
    'find x+1 if x=\\\\frac{1}{2}'
    """
    text = unicodedata.normalize("NFKC", question or "").casefold()
    text = _strip_instructions(text.strip())  # before the line breaks go: they end sentences too
    text = _DELIMITERS.sub(" ", text)
    if "\\" in text:  # LaTeX commands
        text = _FRAC.sub(r"\\frac", text)
        text = _LEFT_RIGHT.sub("", text)
        text = _LATEX_SPACE.sub(" ", text)
    elif "~" in text:
        text = text.replace("~", " ")
    text = _SPACES.sub(" ", text).strip()
    text = _LOOSE_SPACE.sub("", text)
    return _TRAILING_PUNCT.sub("", text)


def key_hash(key: str) -> int:
    """A stable signed 64-bit hash of a key (for joins; equal keys, equal hashes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


def key_words(key: str) -> list[str]:
    """The word tokens of a key: runs of letters and digits (LaTeX commands give their name,
    ``\\frac{m}{n}`` -> frac, m, n). The unit of the n-grams and shingles."""
    return _WORD.findall(key)


# ---------------------------------------------------------------------------- the key stage

ProgressFn = Callable[[str, int, int | None], None]
CancelledFn = Callable[[], bool]

KEYS_SCHEMA = pa.schema([
    ("problem_id", pa.int64()), ("key_version", pa.int32()), ("question_key", pa.string()), ("key_hash", pa.int64()),
])


def key_columns(problem_ids: list[int], questions: list[str]) -> pa.Table:
    """The ``problem_keys`` rows of these problems (the ingest stages them beside the problems)."""
    keys = [question_key(q) for q in questions]
    return pa.Table.from_arrays([
        pa.array(problem_ids, pa.int64()), pa.array([KEY_VERSION] * len(keys), pa.int32()),
        pa.array(keys, pa.string()), pa.array([key_hash(k) for k in keys], pa.int64()),
    ], schema=KEYS_SCHEMA)


@dataclass
class KeyOptions:
    """Options of :func:`run_problem_keys` (``python -m core keys``, job kind ``keys``)."""

    dataset_id: int | None = option(None, help="only this dataset's problems (default: every ready dataset)")
    batch_problems: int = option(20_000, help="problems per committed batch")

    def __post_init__(self):
        if self.batch_problems < 1:
            raise UserError(f"batch problems must be at least 1, got {self.batch_problems}.")


_KEY_TODO = """
FROM problems p JOIN datasets d USING (dataset_id)
WHERE d.status = 'ready' AND p.problem_id > ? {dataset}
  AND NOT EXISTS (SELECT 1 FROM problem_keys k WHERE k.problem_id = p.problem_id AND k.key_version = ?)
"""


def run_problem_keys(db=None, options: KeyOptions | None = None, progress: ProgressFn | None = None,
                     cancelled: CancelledFn | None = None) -> dict:
    """Give every problem of the ready datasets its question key (resumable, batch by batch).

    New ingests stage their keys themselves; this fills stores ingested before keys existed,
    and recomputes every key after a change of :data:`KEY_VERSION`. A killed run keeps the
    batches it committed; a rerun with nothing missing reads one count and returns."""
    options = options or KeyOptions()
    started = time.perf_counter()
    store.init_store(db)
    dataset = "AND p.dataset_id = ?" if options.dataset_id is not None else ""
    extra = [options.dataset_id] if options.dataset_id is not None else []
    todo_sql = _KEY_TODO.format(dataset=dataset)
    with store.connect(db, read_only=False) as con:  # keys of an older normalisation are recomputed
        stale = con.execute("SELECT count(*) FROM problem_keys WHERE key_version <> ?", [KEY_VERSION]).fetchone()[0]
        if stale:
            con.execute("DELETE FROM problem_keys WHERE key_version <> ?", [KEY_VERSION])
    total = store.read_rows(f"SELECT count(*) {todo_sql}", [-1 << 62, *extra, KEY_VERSION], db=db)[0][0]
    done, after = 0, -1 << 62
    if progress:
        progress("question keys", 0, total)
    while done < total:
        if cancelled is not None and cancelled():
            return {"problems": done, "remaining": total - done, "cancelled": True, "seconds": time.perf_counter() - started}
        rows = store.read_rows(
            f"SELECT p.problem_id, p.question {todo_sql} ORDER BY p.problem_id LIMIT ?",
            [after, *extra, KEY_VERSION, options.batch_problems], db=db,
        )
        if not rows:
            break
        table = key_columns([r[0] for r in rows], [r[1] for r in rows])
        with store.connect(db, read_only=False) as con:
            con.register("key_batch", table)
            con.execute("INSERT INTO problem_keys SELECT * FROM key_batch")
            con.unregister("key_batch")
        done += len(rows)
        after = rows[-1][0]
        if progress:
            progress("question keys", done, total)
    return {"problems": done, "stale_recomputed": stale, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------- identity queries


def tables_present(*names: str, db=None) -> bool:
    """Whether the store has these tables. The app reads with read-only connections, which never
    create tables, so a store made before a table existed lacks it until its next ingest or
    stage (both run store.init_store); readers then show what they can without it."""
    found = store.read_rows("SELECT count(DISTINCT table_name) FROM duckdb_tables() WHERE table_name IN "
                            "(SELECT unnest(?::VARCHAR[]))", [list(names)], db=db)[0][0]
    return found == len(set(names))


def problem_counts(*, db=None) -> dict[str, int]:
    """Problems in the ready datasets: ``rows`` (one per problem per dataset, what the datasets
    table sums) and ``distinct`` (one per question key: a benchmark's problem and the copies of
    it in its evaluation runs count once; a problem without a key yet counts alone)."""
    if not tables_present("problem_keys", db=db):
        rows = store.read_rows("SELECT count(*) FROM problems p JOIN datasets d USING (dataset_id) "
                               "WHERE d.status = 'ready'", db=db)[0][0]
        return {"rows": int(rows), "distinct": int(rows)}
    rows, distinct = store.read_rows(
        "SELECT count(*), count(DISTINCT k.key_hash) + count(*) FILTER (WHERE k.key_hash IS NULL) "
        "FROM problems p JOIN datasets d USING (dataset_id) "
        "LEFT JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? "
        "WHERE d.status = 'ready'", [KEY_VERSION], db=db,
    )[0]
    return {"rows": int(rows), "distinct": int(distinct)}


def same_problem(problem_id: int, *, db=None):
    """The other problems with this problem's question key, in any ready dataset: the benchmark
    problem an evaluation run's problem attaches to, the runs that answered a benchmark problem,
    a teacher dataset's copy. Columns: problem_id, dataset, format, problem_key, benchmark,
    cots; benchmark datasets first."""
    if not tables_present("problem_keys", db=db):
        return pl.DataFrame(schema={"problem_id": pl.Int64, "dataset": pl.String, "format": pl.String,
                                    "problem_key": pl.String, "benchmark": pl.String, "cots": pl.Int64})
    return store.read_df(
        "WITH me AS (SELECT question_key, key_hash FROM problem_keys WHERE problem_id = ? AND key_version = ?) "
        "SELECT p.problem_id, d.name AS dataset, d.format, p.problem_key, p.benchmark, "
        "  (SELECT count(*) FROM cots c WHERE c.problem_id = p.problem_id) AS cots "
        "FROM problem_keys k JOIN me ON k.key_hash = me.key_hash AND k.question_key = me.question_key "
        "JOIN problems p ON p.problem_id = k.problem_id JOIN datasets d ON d.dataset_id = p.dataset_id "
        "WHERE d.status = 'ready' AND k.key_version = ? AND p.problem_id <> ? "
        "ORDER BY d.format <> 'benchmark', p.problem_id",
        [problem_id, KEY_VERSION, KEY_VERSION, problem_id], db=db,
    )

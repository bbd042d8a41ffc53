"""Readable ids: what a researcher sees, types and shares instead of the store's 11-digit ids.

A problem is ``<dataset short name>:<problem key>`` and a CoT ``<dataset short name>:<problem
key>:<n>``:

* the dataset's short name is its name in lower case, each run of other characters than
  letters and digits one ``-``, cut at 24 characters (``qwen25_math_eval`` gives
  ``qwen25-math-eval``, ``demo (generated)`` gives ``demo-generated``); when two datasets
  would share one, the later one (by id) gets ``-<its id>`` after it;
* the problem key is the input's own id for the problem, as the ingest stored it (a harness
  run's ``aime24/3``, an OmniThought or benchmark ``id``, else ``<file>:<line>``);
* ``n`` numbers the problem's CoTs 0, 1, ... in the order they were ingested (by id): a
  teacher's or a model's samples in their order, a harness tree's runs in path order.

So ``qwen25-math-eval:aime24/3:2`` is the third CoT of AIME 2024 problem 3 in the dataset
``qwen25_math_eval``. It depends only on the dataset's name and content, not on the store: the
same files ingested under the same name elsewhere give the same ids. Everywhere an id is typed
(Explore's "Open a CoT by id", the Reader's ``?cot=`` and ``?problem=``), the internal id is
accepted too.

    >>> short_name("Qwen2.5 Math eval (generated)")  # cut at 24 characters
    'qwen2-5-math-eval-genera'
    >>> split_readable("qwen25-math-eval:aime24/3:2")
    ('qwen25-math-eval', 'aime24/3', 2)
"""

from __future__ import annotations

import re
import unicodedata

import polars as pl

from core import store

SHORT_NAME_CHARS = 24
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def short_name(name: str, dataset_id: int | None = None) -> str:
    """A dataset name as the first part of a readable id (see the module docstring)."""
    ascii_name = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode().lower()
    slug = _NOT_ALNUM.sub("-", ascii_name).strip("-")[:SHORT_NAME_CHARS].strip("-")
    return slug or (f"d{dataset_id}" if dataset_id is not None else "d")


def short_names(datasets: list[tuple[int, str]]) -> dict[int, str]:
    """{dataset_id: short name} for (id, name) pairs; a name two datasets would share gets the
    later dataset's id after it."""
    out: dict[int, str] = {}
    taken: set[str] = set()
    for dataset_id, name in sorted(datasets):
        slug = short_name(name, dataset_id)
        if slug in taken:
            slug = f"{slug}-{dataset_id}"
        taken.add(slug)
        out[dataset_id] = slug
    return out


def dataset_short_names(*, db=None) -> dict[int, str]:
    """{dataset_id: short name} of every ready dataset of the store."""
    rows = store.read_rows("SELECT dataset_id, name FROM datasets WHERE status = 'ready'", db=db)
    return short_names([(int(i), n) for i, n in rows])


def split_readable(text: str) -> tuple[str, str, int | None] | None:
    """(short name, rest, n) of a typed id: ``rest`` is the problem key when ``n`` is given
    (the text ends in ``:<digits>``), else everything after the short name. None when the text
    has no ``:``."""
    text = (text or "").strip()
    if ":" not in text:
        return None
    short, rest = text.split(":", 1)
    key, sep, n = rest.rpartition(":")
    if sep and n.isdigit() and key:
        return short.strip().lower(), key, int(n)
    return short.strip().lower(), rest, None


# The CoTs asked for, their problem's key and their number within the problem. Only the
# problems of the wanted CoTs are ranked (a scan of cots.problem_id, then a sort of their CoTs).
_ORDINALS = """
WITH wanted AS (SELECT unnest(?::BIGINT[]) AS cot_id),
probs AS (SELECT DISTINCT c.problem_id FROM cots c WHERE c.cot_id IN (SELECT cot_id FROM wanted)),
ranked AS (
    SELECT c.cot_id, c.problem_id, c.dataset_id,
           row_number() OVER (PARTITION BY c.problem_id ORDER BY c.cot_id) - 1 AS n
    FROM cots c WHERE c.problem_id IN (SELECT problem_id FROM probs)
)
SELECT r.cot_id, r.dataset_id, p.problem_key, r.n
FROM ranked r JOIN problems p ON p.problem_id = r.problem_id
WHERE r.cot_id IN (SELECT cot_id FROM wanted)
"""


def cot_ids_frame(cot_ids: list[int], *, db=None, names: dict[int, str] | None = None) -> pl.DataFrame:
    """cot_id, readable_id, problem_key and readable problem id (problem_rid) of each CoT
    asked for (CoTs not in the store are left out)."""
    schema = {"cot_id": pl.Int64, "readable_id": pl.String, "problem_key": pl.String, "problem_rid": pl.String}
    ids = [int(i) for i in dict.fromkeys(cot_ids)]
    if not ids:
        return pl.DataFrame(schema=schema)
    names = names if names is not None else dataset_short_names(db=db)
    rows = store.read_rows(_ORDINALS, [ids], db=db)
    out = []
    for cot_id, dataset_id, key, n in rows:
        short = names.get(int(dataset_id), f"d{dataset_id}")
        out.append((int(cot_id), f"{short}:{key}:{n}", key, f"{short}:{key}"))
    return pl.DataFrame(out, schema=schema, orient="row")


def readable_cot_ids(cot_ids: list[int], *, db=None) -> dict[int, str]:
    """{cot_id: readable id} of the CoTs asked for."""
    frame = cot_ids_frame(cot_ids, db=db)
    return dict(zip(frame["cot_id"].to_list(), frame["readable_id"].to_list()))


def readable_cot_id(cot_id: int, *, db=None) -> str | None:
    return readable_cot_ids([cot_id], db=db).get(int(cot_id))


def readable_problem_id(problem_id: int, *, db=None) -> str | None:
    rows = store.read_rows(
        "SELECT p.dataset_id, p.problem_key FROM problems p JOIN datasets d USING (dataset_id) "
        "WHERE p.problem_id = ? AND d.status = 'ready'", [int(problem_id)], db=db)
    if not rows:
        return None
    dataset_id, key = rows[0]
    return f"{dataset_short_names(db=db).get(int(dataset_id), f'd{dataset_id}')}:{key}"


def _dataset_of_short(short: str, *, db=None) -> int | None:
    matches = [i for i, s in dataset_short_names(db=db).items() if s == short]
    return matches[0] if matches else None


def _problem_by_key(dataset_id: int, key: str, *, db=None) -> int | None:
    rows = store.read_rows("SELECT problem_id FROM problems WHERE dataset_id = ? AND problem_key = ?",
                           [dataset_id, key], db=db)
    return int(rows[0][0]) if rows else None


def _nth_cot(problem_id: int, n: int, *, db=None) -> int | None:
    rows = store.read_rows("SELECT cot_id FROM cots WHERE problem_id = ? ORDER BY cot_id LIMIT 1 OFFSET ?",
                           [problem_id, int(n)], db=db)
    return int(rows[0][0]) if rows else None


def resolve(text: str, *, db=None) -> tuple[str, int] | None:
    """What a typed id names: ("cot", cot_id) or ("problem", problem_id), or None.

    Digits alone are an internal id: a CoT's if a CoT has it, else a problem's. A readable id is
    read as a CoT's (``short:key:n``) when that problem has an n-th CoT, else as a problem's
    (``short:key``, where the key itself may end in ``:<digits>``, as ``file.jsonl:12``)."""
    text = (text or "").strip()
    if not text:
        return None
    if text.isdigit():
        value = int(text)
        if value >= 2 ** 63:
            return None
        if store.read_rows("SELECT 1 FROM cots c JOIN datasets d USING (dataset_id) "
                           "WHERE c.cot_id = ? AND d.status = 'ready'", [value], db=db):
            return "cot", value
        if store.read_rows("SELECT 1 FROM problems p JOIN datasets d USING (dataset_id) "
                           "WHERE p.problem_id = ? AND d.status = 'ready'", [value], db=db):
            return "problem", value
        return None
    parts = split_readable(text)
    if parts is None:
        return None
    short, rest, n = parts
    dataset_id = _dataset_of_short(short, db=db)
    if dataset_id is None:
        return None
    if n is not None:
        problem_id = _problem_by_key(dataset_id, rest, db=db)
        if problem_id is not None:
            cot_id = _nth_cot(problem_id, n, db=db)
            if cot_id is not None:
                return "cot", cot_id
        whole = f"{rest}:{n}"
    else:
        whole = rest
    problem_id = _problem_by_key(dataset_id, whole, db=db)
    return ("problem", problem_id) if problem_id is not None else None


def resolve_cot(text: str, *, db=None) -> int | None:
    """The CoT a typed id (readable or internal) names, or None."""
    found = resolve(text, db=db)
    return found[1] if found and found[0] == "cot" else None


def resolve_problem(text: str, *, db=None) -> int | None:
    """The problem a typed id names: a problem's id, or the problem of a CoT's id."""
    found = resolve(text, db=db)
    if found is None:
        return None
    if found[0] == "problem":
        return found[1]
    rows = store.read_rows("SELECT problem_id FROM cots WHERE cot_id = ?", [found[1]], db=db)
    return int(rows[0][0]) if rows else None

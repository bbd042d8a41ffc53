"""Efficiency and overthinking per CoT: where the answer first appears in the thinking, what is
spent after it, and how often the CoT switches strategy.

    python -m core efficiency [--datasets D,..] [--workers N] [--ray-address local|auto|...]

The stage (:func:`run_efficiency`, job kind ``efficiency``) writes per CoT, under the stage score
source ``efficiency`` (figures: core/figures.py), with the CoT's *step text* (its thinking, or
the whole response when it has no thinking markers, as core/steps.py) and the tokenizer that
counted the CoT (``cots.tokenizer``; a CoT not counted yet waits for ``python -m core tokens``):

* ``thinking_tokens``: tokens of the step text;
* ``first_correct_tokens``: tokens up to the end of the first *candidate span* that states the
  reference answer (tokens whose first character lies before the span's end), and
  ``first_correct_frac`` = first_correct_tokens / thinking_tokens;
* ``overthinking_tail`` = thinking_tokens - first_correct_tokens: what the CoT spent after it
  already had the answer. All three are NULL (with the reason in ``error``) when the answer
  never appears;
* ``strategy_switches``: sentences with a switch phrase (:data:`SWITCH_PHRASES`:
  "alternatively", "another approach", "let me try", ...), and ``switches_per_1k`` = 1,000 x
  switches / thinking_tokens, the underthinking signal. (Reflection density per 1,000 tokens is
  the reflection-marker figure of the trace stage; it is not made again here.)

Candidate spans (:func:`candidate_spans`), in text order of where they end: the content of a
``\\boxed{...}`` (or ``\\fbox``), the answer after "the answer is" / "final answer is" (up to
the sentence end), and "= N" and "is N" at a sentence end (what follows the last "=" or "is"
before a full stop, a line break or the end, closing math delimiters aside, when it is a number,
a number and a unit word ("204 minutes" states 204), or a numeric LaTeX expression such as
``\\frac{1}{2}``, ``2\\sqrt{3}``; when the reference answer is not a number, also a short
formula such as ``x^3 + 3x - 6``). Each is checked against the reference answer with the verifier
of correctness (math-verify, as core/verify.py: the reference parsed as math, the span as
``\\boxed{span}``), after two shortcuts that cannot disagree with it: the same text
(whitespace and ``$`` aside, ``\\dfrac`` read as ``\\frac``) is a match, and two integers compare as integers.
The first span that matches is the first-correct position; the spans after it are not checked.

The reference is the problem's reference answer; a problem without one (OmniThought has none)
uses the CoT's own final answer when the CoT is verified correct (by ``correct_source``, default
each dataset's own), so a correct CoT's thinking is searched for the answer it ends with; an
incorrect CoT without a reference gets NULL.

Worked example (tests/test_efficiency.py, with a tokenizer that makes each whitespace-separated
word a token): the thinking "Let x = 3. Then 2x = 6. Wait, check: 6 / 2 = 3. So the answer is 6.
Alternatively, let me try 3 + 3 = 6." with reference 6 has 29 tokens. Its spans, in order: "3"
(after "x ="), "6" (after "2x ="), "3" (after "2 ="), "6" (after "the answer is", and again as
"is 6"), "6" (after "3 + 3 ="). The first "= 6." ends in token 8 ("6."), so first_correct_tokens = 8, first_correct_frac
= 8/29 = 0.276, overthinking_tail = 21. One sentence holds switch phrases ("Alternatively",
"let me try"): strategy_switches = 1, switches_per_1k = 1000/29 = 34.5.

Where it runs: locally in a pool of worker processes (``workers``, default one per core;
math-verify's time limits need a main thread), or with ``ray_address`` on a Ray cluster the way
judge scoring does (core/judge_ray.py): this process alone reads and writes the store, the
pending CoTs go to Ray's object store in parts, one actor per ``ray_cpus_per_actor`` CPUs
computes them, and the rows stream back and commit in batches. Either way a batch of CoTs
commits in one transaction, the CoTs without the stage's rows are what a rerun does, so a
killed run resumes without doing a CoT twice.
"""

from __future__ import annotations

import bisect
import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from core import store
from core.errors import UserError
from core.options import option
from core.progress import CancelledFn, JobCancelled, LogFn, ProgressFn

SOURCE = "efficiency"
STAGE = "efficiency"
OWN = "@own"
METRICS = ("thinking_tokens", "first_correct_tokens", "first_correct_frac", "overthinking_tail", "strategy_switches",
           "switches_per_1k")
DONE_METRIC = "strategy_switches"  # every processed CoT has it
BATCH_COTS = 512

# Phrases that open another line of attack (the surveys' underthinking signal); matched as whole
# words, case-insensitive, a space matching any whitespace. A sentence with several counts once.
SWITCH_PHRASES = ("alternatively", "another approach", "a different approach", "another way", "a different way",
                  "let me try", "let's try", "let us try", "try another", "try a different")


class EfficiencyError(UserError):
    """An efficiency run that cannot go ahead as asked."""


# ---------------------------------------------------------------------------- candidate spans


@dataclass(frozen=True)
class Span:
    """A place where the text states an answer: ``text`` is the answer, [start, end) its
    characters; ``kind`` is boxed, answer_is or equals."""

    start: int
    end: int
    kind: str
    text: str


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")
_ANSWER_IS = re.compile(r"(?<![\w])(?:the|final)\s+answer\s+is\b[ \t]*:?[ \t]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
# "= rhs" / "is rhs" right before a sentence end (closing math delimiters allowed in between):
# rhs holds no "=" and no line break and is short
_TAIL = r"((?:[^=\n]){1,60}?)(?:\s|\$|\\\)|\\\])*(?:[.!?](?=\s|$)|\n|$)"
_EQUALS = re.compile(r"=(?![=<>])" + _TAIL)
_IS = re.compile(r"(?<![\w])is\s+(?!not\b)" + _TAIL)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_DELIMITERS = re.compile(r"\$|\\[()\[\]]")
_NUMERIC = re.compile(r"[-+]?[\d.,/^(){}\[\]+\-*\s]*\d[\d.,/^(){}\[\]+\-*\s]*")
_NUMBER_UNIT = re.compile(r"([-+]?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z]+(?:\s+[A-Za-z]+)?")
_WORD = re.compile(r"[A-Za-z]{3,}")


def _brace_end(text: str, open_at: int) -> int | None:
    """Index of the brace closing the one at ``open_at`` (escaped braces skipped); None if unbalanced."""
    depth = 0
    i, n = open_at, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def numeric(text: str) -> bool:
    """Whether ``text`` is a number or a numeric LaTeX expression (``\\frac{1}{2}``, ``2\\sqrt{3}``)."""
    bare = _LATEX_COMMAND.sub("", _DELIMITERS.sub("", text))
    return bool(_NUMERIC.fullmatch(bare.strip()))


def _stated(rhs: str, symbolic: bool) -> str | None:
    """The answer an "= rhs" or "is rhs" states, or None: a number (a unit word or two after it
    dropped) or a numeric expression; with ``symbolic``, also a short formula (no word of three
    letters or more outside LaTeX commands)."""
    answer = _DELIMITERS.sub(" ", rhs).strip().rstrip(".,;:").strip()
    if not answer:
        return None
    if numeric(answer):
        return answer
    unit = _NUMBER_UNIT.fullmatch(answer)
    if unit:
        return unit.group(1)
    if symbolic and len(answer) <= 60 and not _WORD.search(_LATEX_COMMAND.sub("", answer)):
        return answer
    return None


def candidate_spans(text: str, *, symbolic: bool = False) -> list[Span]:
    """Every candidate span of ``text`` (see the module docstring), ordered by where it ends.
    ``symbolic`` (a reference answer that is not a number) lets "= rhs" and "is rhs" be short
    formulas too, not only numbers."""
    spans: list[Span] = []
    for m in _BOX.finditer(text):
        close = _brace_end(text, m.end() - 1)
        if close is not None and text[m.end():close].strip():
            spans.append(Span(m.end(), close, "boxed", text[m.end():close].strip()))
    for m in _ANSWER_IS.finditer(text):
        start = m.end()
        stop = _SENTENCE_END.search(text, start)
        end = stop.start() if stop else len(text)
        raw = text[start:end]
        answer = raw.strip().strip("*").strip().strip("$").strip().rstrip(".,;:").strip()
        if answer and len(answer) <= 200:
            offset = raw.find(answer)
            spans.append(Span(start + offset, start + offset + len(answer), "answer_is", answer))
    for kind, pattern in (("equals", _EQUALS), ("is", _IS)):
        for m in pattern.finditer(text):
            rhs = m.group(1)
            answer = _stated(rhs, symbolic)
            if answer is not None:
                offset = max(0, rhs.find(answer))
                spans.append(Span(m.start(1) + offset, m.start(1) + offset + len(answer), kind, answer))
    spans.sort(key=lambda s: (s.end, s.start))
    return spans


# ---------------------------------------------------------------------------- the verifier

_SPACING = re.compile(r"\s+|\$")
_INT = re.compile(r"[-+]?\d+")


def _normal(text: str) -> str:
    """The form the same-text shortcut compares: whitespace and ``$`` dropped, ``\\dfrac`` /
    ``\\tfrac`` as ``\\frac`` (math-verify reads each pair alike)."""
    return _SPACING.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


class Reference:
    """A reference answer parsed once by math-verify (as core.verify does), with the two
    shortcuts' forms of it."""

    def __init__(self, answer: str):
        from math_verify import parse

        from core.text import _as_math

        self.answer = answer
        self.normal = _normal(answer)
        self.integer = int(self.normal) if _INT.fullmatch(self.normal) else None
        self.is_number = numeric(answer)
        self.gold = parse(_as_math(answer.strip()), parsing_timeout=_timeout())
        self._seen: dict[str, bool] = {}
        self.verified = 0  # spans math-verify was asked about (the shortcuts and the cache aside)

    def matches(self, span_text: str) -> bool:
        """Whether ``span_text`` states this answer, by math-verify (see the module docstring)."""
        normal = _normal(span_text)
        if normal == self.normal:
            return True
        if self.integer is not None and _INT.fullmatch(normal):
            return int(normal) == self.integer
        found = self._seen.get(normal)
        if found is None:
            found = self._seen[normal] = _math_verify(self.gold, span_text)
            self.verified += 1
        return found


def _timeout() -> int | None:
    import threading

    from core.text import _MATH_VERIFY_TIMEOUT_S

    return _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _math_verify(gold, span_text: str) -> bool:
    """The verify stage's check of one answer: ``\\boxed{answer}`` parsed and compared with the gold."""
    from math_verify import parse, verify

    limit = _timeout()
    try:
        candidate = parse("\\boxed{" + span_text + "}", parsing_timeout=limit)
        return bool(candidate) and bool(verify(gold, candidate, timeout_seconds=limit))
    except Exception:  # a pathological expression is no match, as the verify stage counts it
        return False


# ---------------------------------------------------------------------------- one CoT

_SWITCH = re.compile(r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, p.split())) for p in
                                               sorted(SWITCH_PHRASES, key=len, reverse=True)) + r")(?!\w)")


def strategy_switches(text: str) -> int:
    """Sentences of ``text`` holding at least one of SWITCH_PHRASES (case-insensitive)."""
    lowered = text.lower()
    hits = [m.start() for m in _SWITCH.finditer(lowered)]
    if not hits:
        return 0
    bounds = [m.end() for m in _SENTENCE_END.finditer(lowered)]
    return len({bisect.bisect_right(bounds, h) for h in hits})


def first_correct(text: str, reference: Reference) -> tuple[Span | None, int]:
    """The first candidate span of ``text`` that states ``reference``, and how many spans were
    looked at (all of them when none matches)."""
    spans = candidate_spans(text, symbolic=not reference.is_number)
    for i, span in enumerate(spans):
        if reference.matches(span.text):
            return span, i + 1
    return None, len(spans)


_tokenizers: dict[str, Any] = {}
_references: dict[str, Reference] = {}


def _tokenizer(name: str):
    found = _tokenizers.get(name)
    if found is None:
        from core.tokens import load_tokenizer

        found = _tokenizers[name] = load_tokenizer(name)
        found.no_truncation()
        found.no_padding()
    return found


def _reference(answer: str) -> Reference:
    found = _references.get(answer)
    if found is None:
        if len(_references) > 4096:
            _references.clear()
        found = _references[answer] = Reference(answer)
    return found


def analyse(item: tuple) -> list[tuple]:
    """The stage's rows for one CoT: ``item`` is (cot_id, step text, reference answer or None,
    own final answer or None, own verdict (True/False/None), tokenizer name). Returns score rows
    (cot_id, metric, value, raw, error)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout
    cot_id, text, reference, own_answer, own_correct, tokenizer = item
    text = text or ""
    encoding = _tokenizer(tokenizer).encode(text, add_special_tokens=False)
    starts = [a for a, _ in encoding.offsets]
    total = len(starts)
    switches = strategy_switches(text)
    rows = [(cot_id, "thinking_tokens", float(total), None, None),
            (cot_id, "strategy_switches", float(switches), None, None),
            (cot_id, "switches_per_1k", 1000.0 * switches / total if total else None, None,
             None if total else "no thinking tokens")]
    answer, origin = ((reference, "reference answer") if reference else (own_answer, "own final answer") if own_correct
                      else (None, None))
    error = None
    span = None
    checked = 0
    if not text.strip():
        error = "no thinking text"
    elif answer is None:
        error = ("no reference answer, and the CoT's own answer is not verified correct" if own_answer
                 else "no reference answer and no final answer")
    else:
        ref = _reference(answer)
        if not ref.gold:
            error = f"math-verify cannot parse the {origin} '{answer[:80]}'"
        else:
            span, checked = first_correct(text, ref)
            if span is None:
                error = f"the {origin} never appears in the thinking ({checked} candidate spans checked)"
    if span is None:
        rows += [(cot_id, m, None, None, error) for m in ("first_correct_tokens", "first_correct_frac", "overthinking_tail")]
        return rows
    upto = bisect.bisect_left(starts, span.end)
    raw = json.dumps({"kind": span.kind, "span": span.text[:200], "char": span.end, "answer": origin,
                      "spans_checked": checked}, ensure_ascii=False)
    rows += [(cot_id, "first_correct_tokens", float(upto), raw, None),
             (cot_id, "first_correct_frac", upto / total if total else None, None, None if total else "no thinking tokens"),
             (cot_id, "overthinking_tail", float(total - upto), None, None)]
    return rows


def analyse_batch(items: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for item in items:
        out.extend(analyse(item))
    return out


# ---------------------------------------------------------------------------- options


@dataclass
class EfficiencyOptions:
    """An efficiency run (``python -m core efficiency``; the Jobs form is made from it)."""

    OPTION_GROUP: ClassVar[str] = "the stage"

    datasets: tuple[str, ...] = option((), help="only these datasets, comma-separated (default: every ready dataset)")
    correct_source: str = option(OWN, help="for problems without a reference answer: whose verdict says a CoT's own final "
                                           "answer may stand in for it (@own: each dataset's own, or a source's name)")
    workers: int | None = option(None, help="worker processes (default: one per core); ignored on Ray")
    batch_cots: int = option(BATCH_COTS, help="CoTs per committed batch")
    recompute: bool = option(False, help="drop the stage's figures of the chosen datasets and compute them again")

    def __post_init__(self):
        if self.batch_cots < 1:
            raise EfficiencyError(f"batch cots must be at least 1, got {self.batch_cots}.")
        if self.workers is not None and self.workers < 1:
            raise EfficiencyError(f"workers must be at least 1, got {self.workers}.")
        if not (self.correct_source or "").strip():
            self.correct_source = OWN


@dataclass
class EfficiencyRayOptions:
    """Where the efficiency stage runs on Ray (flags ``--ray-*``, params ``ray_*``)."""

    OPTION_PREFIX: ClassVar[str] = "ray_"
    OPTION_GROUP: ClassVar[str] = "on a Ray cluster"

    address: str | None = option(None, help="auto (this machine's cluster), ray://HOST:10001, HOST:6379, local (a throw-away "
                                            "instance here) or none; default $THOUGHTSCOPE_RAY_ADDRESS, else no Ray")
    actors: int | None = option(None, help="actors computing CoTs (default: the cluster's CPUs / cpus per actor)")
    cpus_per_actor: float = option(1.0, help="CPUs each actor takes")
    part_rows: int = option(2048, cli=False, help="CoTs per object-store part")
    ship_code: bool | None = option(None, cli=False, help="send this checkout's core package to the workers (default: for "
                                                          "any address but local)")

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise EfficiencyError(f"actors must be at least 1, got {self.actors}.")
        if self.cpus_per_actor <= 0 or self.part_rows < 1:
            raise EfficiencyError("cpus per actor must be above 0 and part rows at least 1.")
        self.resolved_address()

    def resolved_address(self) -> str | None:
        from core.judge_ray import ray_address_from

        return ray_address_from(self.address)


# ---------------------------------------------------------------------------- the stage


def _pending_ids(con, dataset_id: int, source_id: int) -> list[int]:
    """CoTs of the dataset with a token count and without the stage's rows."""
    lo, hi = dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT
    rows = con.execute(
        "SELECT c.cot_id FROM cots c WHERE c.dataset_id = ? AND c.n_tokens IS NOT NULL AND c.cot_id NOT IN "
        "(SELECT s.cot_id FROM scores s WHERE s.source_id = ? AND s.metric = ? AND s.cot_id >= ? AND s.cot_id < ?) "
        "ORDER BY c.cot_id", [dataset_id, source_id, DONE_METRIC, lo, hi]).fetchnumpy()["cot_id"]
    return [int(x) for x in rows]


def _read_items(con, ids: list[int], reads: list[str]) -> list[tuple]:
    """The analyse() items of ``ids`` (one short read)."""
    from core.steps import STEP_TEXT_SQL

    con.register("eff_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
    try:
        rows = con.execute(
            "WITH w AS (SELECT ss.source_id, w.priority FROM (SELECT unnest(?::VARCHAR[]) AS name, "
            " unnest(?::INTEGER[]) AS priority) w JOIN score_sources ss USING (name)), "
            "v AS (SELECT s.cot_id, arg_min(s.value, w.priority) AS value FROM scores s JOIN w USING (source_id) "
            " WHERE s.metric = 'correct' AND s.value IS NOT NULL AND s.cot_id BETWEEN ? AND ? "
            " AND s.cot_id IN (SELECT cot_id FROM eff_ids) GROUP BY s.cot_id) "
            f"SELECT c.cot_id, {STEP_TEXT_SQL}, p.reference_answer, c.answer, v.value >= 0.5, c.tokenizer "
            "FROM cots c JOIN problems p ON p.problem_id = c.problem_id LEFT JOIN v ON v.cot_id = c.cot_id "
            "WHERE c.cot_id BETWEEN ? AND ? AND c.cot_id IN (SELECT cot_id FROM eff_ids) ORDER BY c.cot_id",
            [reads, list(range(len(reads))), ids[0], ids[-1], ids[0], ids[-1]]).fetchall()
    finally:
        con.unregister("eff_ids")
    return rows


def commit_rows(db, source_id: int, rows: list[tuple]) -> None:
    """Insert score rows (cot_id, metric, value, raw, error) in one transaction; a CoT already
    done (a Ray batch repeated after a failure) is not written twice."""
    if not rows:
        return
    table = pa.table({
        "cot_id": pa.array([r[0] for r in rows], pa.int64()), "metric": pa.array([r[1] for r in rows], pa.string()),
        "value": pa.array([r[2] for r in rows], pa.float64()), "raw": pa.array([r[3] for r in rows], pa.string()),
        "error": pa.array([r[4] for r in rows], pa.string()),
    })
    lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.register("eff_rows", table)
        con.execute(
            "INSERT INTO scores (cot_id, source_id, metric, value, raw, error) SELECT cot_id, ?, metric, value, raw, error "
            "FROM eff_rows WHERE cot_id NOT IN (SELECT cot_id FROM scores WHERE source_id = ? AND metric = ? "
            "AND cot_id BETWEEN ? AND ?)", [source_id, source_id, DONE_METRIC, lo, hi])
        con.unregister("eff_rows")
        con.execute("COMMIT")


def _prepare(db, options: EfficiencyOptions) -> tuple[int, list[str], list[tuple[int, str, list[int]]], int]:
    """(source id, correctness sources read, [(dataset id, name, pending ids)], CoTs without a
    token count) for a run."""
    from core.difficulty import _datasets, correctness_sources

    store.init_store(db)
    try:
        reads = correctness_sources(options.correct_source, db=db)
    except UserError:
        if options.correct_source != OWN:
            raise
        reads = []  # no verdict anywhere: only problems with a reference answer get a first-correct position
    targets = _datasets(options.datasets, with_cots=True, db=db)
    params = {"stage": STAGE, "correctness": options.correct_source, "reads": reads, "switch_phrases": list(SWITCH_PHRASES),
              "verifier": "math-verify"}
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, SOURCE, "stage", params=json.dumps(params))
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?", [json.dumps(params), source_id])
        if options.recompute:
            for dataset_id, _ in targets:
                lo, hi = dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT
                con.execute("DELETE FROM scores WHERE source_id = ? AND cot_id >= ? AND cot_id < ?", [source_id, lo, hi])
        con.execute("COMMIT")
    with store.connect(db, read_only=True) as con:
        plans = [(dataset_id, name, _pending_ids(con, dataset_id, source_id)) for dataset_id, name in targets]
        uncounted = con.execute(
            "SELECT count(*) FROM cots WHERE n_tokens IS NULL AND dataset_id IN (SELECT unnest(?::INTEGER[]))",
            [[t[0] for t in targets]]).fetchone()[0]
    return source_id, reads, plans, uncounted


def _batches(ids: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _die_with_parent() -> None:
    from core.verify import _die_with_parent as die

    die()


def run_efficiency(db=None, options: EfficiencyOptions | None = None, ray_options: EfficiencyRayOptions | None = None,
                   progress: ProgressFn | None = None, cancelled: CancelledFn | None = None, log: LogFn | None = None) -> dict:
    """Compute the efficiency figures of every CoT that lacks them (see the module docstring);
    on Ray when ``ray_options`` names an address. Returns counts and the time taken; a cancel
    stops after the current batch (``cancelled`` in the result)."""
    options = options or EfficiencyOptions()
    ray_options = ray_options or EfficiencyRayOptions()
    started = time.perf_counter()
    source_id, reads, plans, uncounted = _prepare(db, options)
    total = sum(len(p[2]) for p in plans)
    result: dict[str, Any] = {"source": SOURCE, "cots": 0, "found": 0, "pending": total, "without_token_count": uncounted,
                              "cancelled": False, "ray": None}
    if log and uncounted:
        log(f"efficiency: {uncounted:,} CoTs have no token count yet and wait for `python -m core tokens`")
    if progress:
        progress("efficiency", 0, total)
    address = ray_options.resolved_address()
    if total:
        if address is None:
            _run_local(db, options, source_id, reads, plans, total, result, progress, cancelled)
        else:
            _run_ray(db, options, ray_options, address, source_id, reads, plans, total, result, progress, cancelled)
    result["seconds"] = time.perf_counter() - started
    result["cots_per_s"] = result["cots"] / result["seconds"] if result["seconds"] else None
    return result


def _count(rows: list[tuple], result: dict) -> None:
    result["cots"] += sum(1 for r in rows if r[1] == DONE_METRIC)
    result["found"] += sum(1 for r in rows if r[1] == "first_correct_tokens" and r[2] is not None)


def _run_local(db, options, source_id, reads, plans, total, result, progress, cancelled) -> None:
    workers = options.workers or os.cpu_count() or 1
    # spawned, not forked (as core.verify): math-verify's time limits need each worker's main thread
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent) as pool:
        for _, _, ids in plans:
            for batch in _batches(ids, options.batch_cots):
                if cancelled is not None and cancelled():
                    result["cancelled"] = True
                    return
                with store.connect(db, read_only=True) as con:
                    items = _read_items(con, batch, reads)
                chunk = max(1, len(items) // (workers * 4))
                parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
                rows = [row for part in pool.map(analyse_batch, parts) for row in part]
                commit_rows(db, source_id, rows)
                _count(rows, result)
                if progress:
                    progress("efficiency", result["cots"], total)


class EfficiencyActor:
    """A Ray Data actor: analyse() over a batch of CoTs (an Arrow table of items), score rows back."""

    def __init__(self):
        import logging

        logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = list(zip(*(batch.column(c).to_pylist() for c in ("cot_id", "text", "reference", "answer", "own_correct",
                                                                   "tokenizer"))))
        # one output row per CoT (its score rows as JSON), so a CoT's rows never straddle two commits
        return pa.table({
            "cot_id": pa.array([item[0] for item in items], pa.int64()),
            "rows": pa.array([json.dumps(analyse(item)) for item in items], pa.large_string()),
        })


def _item_tables(db, plans, reads, part_rows: int) -> Iterator[pa.Table]:
    for _, _, ids in plans:
        for batch in _batches(ids, part_rows):
            with store.connect(db, read_only=True) as con:
                items = _read_items(con, batch, reads)
            yield pa.table({
                "cot_id": pa.array([i[0] for i in items], pa.int64()), "text": pa.array([i[1] for i in items], pa.large_string()),
                "reference": pa.array([i[2] for i in items], pa.string()), "answer": pa.array([i[3] for i in items], pa.string()),
                "own_correct": pa.array([i[4] for i in items], pa.bool_()), "tokenizer": pa.array([i[5] for i in items], pa.string()),
            })


def _run_ray(db, options, ray_options, address, source_id, reads, plans, total, result, progress, cancelled) -> None:
    try:
        import ray
        import ray.data
        from ray.data import ActorPoolStrategy
    except ImportError as exc:
        raise EfficiencyError('Running on Ray needs Ray Data: pip install "ray[data]" (requirements.txt pins it).') from exc
    from pathlib import Path

    started_ray = not ray.is_initialized()
    if started_ray:
        init: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
        ship = ray_options.ship_code if ray_options.ship_code is not None else address != "local"
        if ship:
            init["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)], "excludes": ["__pycache__", "*.pyc"]}
        try:
            ray.init(address=address, **init)
        except Exception as exc:
            raise EfficiencyError(f"Could not connect to Ray at '{address}': {exc}") from exc
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars, context.print_on_execution_start = False, False
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = ray_options.actors or max(1, int(cpus // ray_options.cpus_per_actor))
        result["ray"] = {"address": address, "actors": actors, "cpus_per_actor": ray_options.cpus_per_actor}
        refs = [ray.put(t) for t in _item_tables(db, plans, reads, ray_options.part_rows)]
        dataset = ray.data.from_arrow_refs(refs)
        size = max(1, min(64, ray_options.part_rows // max(1, actors)))
        rows_out = dataset.map_batches(EfficiencyActor, batch_size=size, batch_format="pyarrow",
                                       compute=ActorPoolStrategy(size=actors), num_cpus=ray_options.cpus_per_actor)
        batches = iter(rows_out.iter_batches(batch_size=options.batch_cots, batch_format="pyarrow"))
        try:
            for batch in batches:
                rows = [tuple(row) for text in batch.column("rows").to_pylist() for row in json.loads(text)]
                commit_rows(db, source_id, rows)
                _count(rows, result)
                if progress:
                    progress("efficiency", result["cots"], total)
                if cancelled is not None and cancelled():
                    result["cancelled"] = True
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        if started_ray:
            ray.shutdown()


def efficiency_job(opts: EfficiencyOptions, ray_opts: EfficiencyRayOptions, ctx) -> dict:
    result = run_efficiency(ctx.db, opts, ray_opts, progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)
    if result["cancelled"]:
        raise JobCancelled()
    return result


# ---------------------------------------------------------------------------- models side by side
#
# Per model (and dataset, benchmark), over the CoTs a filter matches that have a verdict (from
# the filter's correctness source) and a token count:
#
# * acc_per_1k_tokens = 1,000 x correct CoTs / their tokens (= accuracy / mean tokens x 1,000);
# * tokens_per_correct = tokens / correct CoTs: what one correct answer costs;
# * median_overthinking_tail: median of the efficiency stage's overthinking_tail over the group's
#   CoTs that have one (the answer appears in the thinking);
# * accuracy by CoT length: CoTs binned by tokens (LENGTH_EDGES, doubling from 512), accuracy and
#   count per bin.
#
# Worked example (tests/test_efficiency.py): CoTs of 1,000 (correct), 3,000 (incorrect) and
# 2,000 (correct) tokens: accuracy 2/3, acc_per_1k_tokens = 1000 x 2 / 6000 = 0.333,
# tokens_per_correct = 6000 / 2 = 3,000; by length they fall in [512, 1024), [2048, 4096) and
# [1024, 2048): one CoT each, accuracy 1, 0 and 1.

EFFICIENCY_GROUPS = ("dataset", "model", "benchmark")
LENGTH_EDGES = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
EFFICIENCY_SCHEMA = {"dataset": "String", "model": "String", "benchmark": "String", "cots": "Int64", "judged": "Int64",
                     "correct": "Int64", "accuracy": "Float64", "tokens": "Int64", "acc_per_1k_tokens": "Float64",
                     "tokens_per_correct": "Float64", "with_tail": "Int64", "median_overthinking_tail": "Float64"}


def tails(*, db=None):
    """Every CoT's overthinking tail from the efficiency stage (cot_id, tail), CoTs without one
    left out: joined to a metric frame by :func:`efficiency_of`."""
    return store.read_df(
        "SELECT s.cot_id, any_value(s.value) AS tail FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? AND s.metric = 'overthinking_tail' AND s.value IS NOT NULL GROUP BY s.cot_id", [SOURCE], db=db)


def _keys_as_text(frame, group_by, *then: str):
    """The group keys as plain text, sorted (then by ``then``) as SQL's ORDER BY sorts them
    (NULL last)."""
    import polars as pl

    frame = frame.with_columns(pl.col(k).cast(pl.String) for k in group_by)
    return frame.sort([*group_by, *then], nulls_last=True)


def efficiency_of(frame, tail_rows, *, group_by: tuple[str, ...] = EFFICIENCY_GROUPS):
    """model_efficiency over a metric frame (``queries.metric_frame`` columns: the group keys,
    cot_id, n_tokens, correct) and the stage's ``tails()``: the app computes it on the filter's
    frame already in memory instead of asking the store again."""
    import polars as pl

    judged = pl.col("correct").is_not_null() & pl.col("n_tokens").is_not_null()
    with_tail = frame.select(*group_by, "cot_id", "n_tokens", "correct").join(
        tail_rows.select("cot_id", pl.col("tail").cast(pl.Float64)), on="cot_id", how="left")
    out = with_tail.group_by(list(group_by)).agg(
        cots=pl.len().cast(pl.Int64), judged=judged.sum().cast(pl.Int64),
        correct=(judged & pl.col("correct").fill_null(False)).sum().cast(pl.Int64),
        tokens=pl.col("n_tokens").filter(pl.col("correct").is_not_null()).sum().cast(pl.Int64),
        with_tail=pl.col("tail").count().cast(pl.Int64), median_overthinking_tail=pl.col("tail").median())
    out = _keys_as_text(out, group_by).with_columns(
        # SQL's sum over no row is NULL, polars' is 0: a group without a judged CoT has no tokens
        tokens=pl.when(pl.col("judged") > 0).then(pl.col("tokens")))
    frame = out.with_columns(
        accuracy=pl.when(pl.col("judged") > 0).then(pl.col("correct") / pl.col("judged")),
        acc_per_1k_tokens=pl.when(pl.col("tokens") > 0).then(1000.0 * pl.col("correct") / pl.col("tokens")),
        tokens_per_correct=pl.when(pl.col("correct") > 0).then(pl.col("tokens") / pl.col("correct")),
    )
    schema = {k: getattr(pl, v) for k, v in EFFICIENCY_SCHEMA.items() if k in frame.columns}
    return frame.select([c for c in EFFICIENCY_SCHEMA if c in frame.columns]).cast(schema)


def length_bins_of(frame, *, group_by: tuple[str, ...] = EFFICIENCY_GROUPS):
    """accuracy_by_length over a metric frame (see :func:`efficiency_of`)."""
    import polars as pl

    edges = list(LENGTH_EDGES)
    judged = frame.filter(pl.col("correct").is_not_null() & pl.col("n_tokens").is_not_null())
    # bin 0 is [0, 512), bin b >= 1 is [256 * 2^b, 256 * 2^(b+1)), the last one open: the number
    # of edges above 0 that a count reaches (integer comparisons, no floating log2 at the edges)
    bin_of = pl.sum_horizontal([(pl.col("n_tokens") >= e).cast(pl.Int32) for e in edges[1:]]).cast(pl.Int32)
    out = judged.group_by([*group_by, bin_of.alias("bin")]).agg(
        cots=pl.len().cast(pl.Int64), correct=pl.col("correct").sum().cast(pl.Int64))
    out = _keys_as_text(out, group_by, "bin")
    lo = [edges[b] for b in out["bin"].to_list()]
    hi = [edges[b + 1] if b + 1 < len(edges) else None for b in out["bin"].to_list()]
    return out.with_columns(lo=pl.Series(lo, dtype=pl.Int64), hi=pl.Series(hi, dtype=pl.Int64),
                            accuracy=pl.col("correct") / pl.col("cots")).select(
        *group_by, "bin", "lo", "hi", "cots", "correct", "accuracy")


def model_efficiency(f=None, *, group_by: tuple[str, ...] = EFFICIENCY_GROUPS, db=None):
    """Per group of the CoTs filter ``f`` matches (default: every CoT, each dataset's own
    correctness): cots, judged (with a verdict and a token count), correct, accuracy, tokens (of
    the judged), acc_per_1k_tokens, tokens_per_correct, with_tail, median_overthinking_tail."""
    from core import queries
    from core.queries import OWN_CORRECTNESS, CotFilter

    f = f if f is not None else CotFilter(correct_source=OWN_CORRECTNESS)
    return efficiency_of(queries.metric_frame(f, db=db), tails(db=db), group_by=group_by)


def accuracy_by_length(f=None, *, group_by: tuple[str, ...] = EFFICIENCY_GROUPS, db=None):
    """Per group and length bin (LENGTH_EDGES; the last bin is open): bin, lo, hi (None: open),
    cots (judged CoTs in it), correct, accuracy."""
    from core import queries
    from core.queries import OWN_CORRECTNESS, CotFilter

    f = f if f is not None else CotFilter(correct_source=OWN_CORRECTNESS)
    return length_bins_of(queries.metric_frame(f, db=db), group_by=group_by)


def summary_figures(*, db=None):
    """model_efficiency and accuracy_by_length per (dataset, model, benchmark), each dataset's
    own correctness: the columns ``python -m core summary`` adds (accuracy_by_length as a list of
    {lo, hi, cots, accuracy} per row)."""
    import polars as pl

    from core import queries
    from core.queries import OWN_CORRECTNESS, CotFilter

    frame = queries.metric_frame(CotFilter(correct_source=OWN_CORRECTNESS), db=db)  # read once for both
    eff = efficiency_of(frame, tails(db=db)).select("dataset", "model", "benchmark", "acc_per_1k_tokens",
                                                    "tokens_per_correct", "median_overthinking_tail")
    bins = length_bins_of(frame)
    nested = bins.group_by(list(EFFICIENCY_GROUPS), maintain_order=True).agg(
        accuracy_by_length=pl.struct("lo", "hi", "cots", "accuracy"))
    return eff.join(nested, on=list(EFFICIENCY_GROUPS), how="left", nulls_equal=True)


# ---------------------------------------------------------------------------- charts (Distributions)

EFFICIENCY_CHARTS = {
    "acc_per_1k_tokens": ("Accuracy per 1,000 tokens", "accuracy per 1,000 tokens"),
    "tokens_per_correct": ("Tokens per correct answer", "tokens per correct answer"),
    "median_overthinking_tail": ("Median overthinking tail", "median tokens after the first correct answer"),
}


def _group_label(row: dict, varying: list[str]) -> str:
    return " · ".join("(no model)" if row[c] is None else str(row[c]) for c in varying)


def efficiency_bar_figure(frame, metric: str, *, n_cots: int):
    """One bar per (dataset, model, benchmark) group of model_efficiency's ``frame`` for
    ``metric``; a bar's customdata is its model, so a click narrows the filter to it."""
    import plotly.graph_objects as go

    from core.render import inert_figure

    title, axis = EFFICIENCY_CHARTS[metric]
    rows = [r for r in frame.to_dicts() if r[metric] is not None]
    varying = [c for c in ("model", "dataset", "benchmark") if len({r[c] for r in rows}) > 1] or ["model"]
    count = "with_tail" if metric == "median_overthinking_tail" else "judged"
    fig = go.Figure(go.Bar(
        x=[_group_label(r, varying) for r in rows], y=[r[metric] for r in rows], customdata=[[r["model"]] for r in rows],
        text=[f"{r[count]:,} CoTs" for r in rows], textposition="none",
        hovertemplate="%{x}<br>" + axis + ": %{y:,.4g}<br>%{text}<extra></extra>", marker_color="#1f77b4"))
    fig.update_layout(title=dict(text=f"{title} ({n_cots:,} CoTs)", font=dict(size=14)), height=320,
                      margin=dict(l=10, r=10, t=40, b=10), yaxis_title=axis, clickmode="event+select")
    if not rows:
        fig.add_annotation(text="no values (see the caption)", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return inert_figure(fig)


def accuracy_length_figure(bins, *, n_cots: int):
    """Accuracy against CoT length: one line per (dataset, model, benchmark) group of
    accuracy_by_length's ``bins``, a point per length bin with its count; a point's customdata
    is [model, lo, hi] so a click narrows the filter to that model and token range."""
    import plotly.graph_objects as go

    from core.render import inert_figure

    rows = bins.to_dicts()
    varying = [c for c in ("model", "dataset", "benchmark") if len({r[c] for r in rows}) > 1] or ["model"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group_label(r, varying), []).append(r)
    fig = go.Figure()
    for label, points in groups.items():
        fig.add_trace(go.Scatter(
            x=[(p["lo"] + (p["hi"] if p["hi"] is not None else 2 * p["lo"])) / 2 or 256 for p in points],
            y=[p["accuracy"] for p in points], mode="lines+markers", name=label,
            customdata=[[p["model"], p["lo"], p["hi"] if p["hi"] is not None else -1] for p in points],
            text=[f"{p['lo']:,}–{p['hi'] - 1:,} tokens" if p["hi"] is not None else f"{p['lo']:,}+ tokens" for p in points],
            hovertext=[f"{p['cots']:,} CoTs" for p in points],
            hovertemplate="%{text}<br>accuracy %{y:.1%}<br>%{hovertext}<extra>" + label + "</extra>",
            marker=dict(size=[6 + min(14, (p["cots"] ** 0.5) / 3) for p in points])))
    fig.update_layout(title=dict(text=f"Accuracy against CoT length ({n_cots:,} CoTs; bins double from 512 tokens)",
                                 font=dict(size=14)), height=360, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(type="log", title="tokens (bin centre)"), yaxis=dict(title="accuracy", tickformat=".0%",
                                                                                        range=[-0.02, 1.02]),
                      clickmode="event+select", legend=dict(font=dict(size=10)))
    return inert_figure(fig)

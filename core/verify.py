"""The verification stage: each CoT's final answer checked against its problem's reference
answer with math-verify, stored as the correctness source "math-verify" beside the dataset's
own labels (so disagreements can be counted). Resumable: a CoT that already has a
math-verify score is not checked again."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from core import store
from core.options import option
from core.progress import ProgressFn

SOURCE = "math-verify"
BATCH_COTS = 512

_TODO = """
    FROM cots c JOIN problems p USING (problem_id)
    WHERE p.reference_answer IS NOT NULL
      AND c.cot_id NOT IN (SELECT s.cot_id FROM scores s JOIN score_sources ss USING (source_id)
                           WHERE ss.name = ? AND s.metric = 'correct')
"""


@dataclass
class VerifyOptions:
    """A verification job (``python -m core verify``)."""

    dataset_id: int | None = option(None, help="only this dataset's CoTs (default: every dataset)")


def _die_with_parent() -> None:
    """Pool worker initializer: on Linux, ask the kernel to kill this worker when the process
    that started it dies, so a killed ingest or job leaves no workers waiting forever."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _check(item: tuple[int, str | None, str]) -> tuple[int, float | None, str | None]:
    import logging

    from core.text import verify_answer

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout
    cot_id, answer, reference = item
    if answer is None:
        # No final answer to grade (e.g. a run cut off mid-thought): wrong, as graders count it.
        return cot_id, 0.0, "no final answer found"
    text = "\\boxed{" + answer + "}"
    try:
        result = verify_answer(text, reference)
    except Exception as exc:  # a pathological expression must not stop the stage
        return cot_id, None, f"math-verify failed: {type(exc).__name__}: {exc}"[:300]
    if result is None:
        return cot_id, None, "no parsable answer"
    return cot_id, float(result), None


def verify_stage(
    *,
    db=None,
    dataset_id: int | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    where_ds = " AND c.dataset_id = ?" if dataset_id is not None else ""
    params = [SOURCE] + ([dataset_id] if dataset_id is not None else [])
    total = store.read_rows(f"SELECT count(*) {_TODO}{where_ds}", params, db=db)[0][0]
    started = time.perf_counter()
    done = correct = 0
    if total == 0:
        return {"cots": 0, "correct": 0, "seconds": 0.0}
    with store.connect(db, read_only=False) as con:
        source_id = store.ensure_source(con, SOURCE, "verifier", model="math-verify")
    # Worker processes: math-verify's timeouts use signals, which work only in a main thread.
    # Started fresh ("spawn"), not forked: a fork of a process running other threads (DuckDB,
    # polars, a Streamlit server's) copies their half-done state, and a worker segfaulted in
    # its garbage collector that way during a test run.
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent) as pool:
        while True:
            rows = store.read_rows(
                # The extracted final answer alone, as eval harnesses grade: much faster than
                # parsing a whole response, and a stray box in the reasoning cannot sway it.
                f"SELECT c.cot_id, c.answer, p.reference_answer "
                f"{_TODO}{where_ds} ORDER BY c.cot_id LIMIT {BATCH_COTS}",
                params, db=db,
            )
            if not rows:
                break
            results = list(pool.map(_check, rows, chunksize=16))
            table = pa.table({
                "cot_id": pa.array([r[0] for r in results], pa.int64()),
                "value": pa.array([r[1] for r in results], pa.float64()),
                "raw": pa.array([r[2] if r[1] is not None else None for r in results], pa.string()),
                "error": pa.array([r[2] if r[1] is None else None for r in results], pa.string()),
            })
            with store.connect(db, read_only=False) as con:
                con.register("verify_batch", table)
                con.execute(
                    "INSERT INTO scores (cot_id, source_id, metric, value, raw, error) "
                    "SELECT cot_id, ?, 'correct', value, raw, error FROM verify_batch",
                    [source_id],
                )
                con.unregister("verify_batch")
            done += len(rows)
            correct += sum(1 for r in results if r[1] == 1.0)
            if progress:
                progress("verify", done, total)
    return {"cots": done, "correct": correct, "seconds": time.perf_counter() - started}

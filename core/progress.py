"""How long work reports on itself: progress, work in flight, cancellation, process liveness.

Every long function in core/ (an ingest, a stage, a judge run, a fine-tune, an evaluation)
takes the same three optional callbacks, and this module, which imports nothing of ThoughtScope,
defines them once, so that domain code never imports the job queue or the CLI:

* ``progress: ProgressFn`` -- ``progress(stage, done, total)``: ``done`` units of ``stage``
  are *committed* (in the store, or on disk where a resume finds them); ``total`` is None
  when unknown. A job records it (core.worker), the CLI draws a bar (:class:`ProgressBar`).
* ``cancelled: CancelledFn`` -- ``cancelled()`` is True once the user asked to stop; long
  loops (and a generation, at every token) look at it. A job's ``progress`` also raises
  :class:`JobCancelled` by itself, so a stage that only reports progress stops too.
* ``log: LogFn`` -- one line of text for the job's log or the terminal.

Work in flight (the tokens a batch has generated so far, before its answers are committed)
is not progress: :func:`report_activity` hands a line and an estimated time left to a
``progress`` that can show them (a job's, the CLI bar); a plain function is left alone, so
``lambda stage, done, total: ...`` stays a valid ``progress``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ProgressFn = Callable[[str, int, "int | None"], None]
CancelledFn = Callable[[], bool]
LogFn = Callable[[str], None]


class JobCancelled(BaseException):
    """The user asked the running work to stop; what was committed stays.

    A BaseException, like KeyboardInterrupt, so a job's own ``except Exception`` cannot
    swallow it; clean-up written as ``except BaseException`` / ``finally`` still runs.
    """


def raise_if_cancelled(cancelled: CancelledFn | None) -> None:
    """Raise :class:`JobCancelled` when ``cancelled()`` says so (None: never)."""
    if cancelled is not None and cancelled():
        raise JobCancelled()


def report_activity(progress: Any, text: str, *, eta_s: float | None = None) -> None:
    """Show work in flight on ``progress`` if it can: a line such as "batch 2 of 5: 1,204
    tokens generated (31/s), 3 of 8 answers complete", and ``eta_s``, the estimated seconds
    until the whole stage is done (None: unknown). Committed counts still go through
    ``progress(stage, done, total)`` only."""
    show = getattr(progress, "activity", None)
    if show is not None:
        show(text, eta_s=eta_s)


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is running; a zombie (exited, not yet reaped) counts as dead."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # exited but not yet reaped by its parent: a zombie is not working
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def duration_text(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressBar:
    """A ``progress`` for the command line: one tqdm bar per stage on stderr, work in flight
    (:func:`report_activity`) as the bar's postfix. Use it as a context manager::

        with ProgressBar("ingest") as bar:
            ingest(path, progress=bar)
    """

    UNITS = {"read": "row", "load": "chunk", "train": "step", "generate": "problem", "judge": "pair",
             "embed": "problem", "project": "problem", "cluster": "problem", "publish": "problem"}

    def __init__(self, desc: str):
        self.desc = desc
        self._bars: dict[str, Any] = {}
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=f"{self.desc}: {stage}",
                                           unit=self.UNITS.get(stage, "cot"), file=sys.stderr)
        self._stage = stage
        bar.total = total
        bar.n = done
        bar.refresh()

    def activity(self, text: str, *, eta_s: float | None = None) -> None:
        bar = self._bars.get(self._stage) if self._stage else None
        if bar is not None:
            bar.set_postfix_str(text + (f", about {duration_text(eta_s)} left" if eta_s is not None else ""))

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunContext:
    """What a job runner gets besides its options when it runs outside a worker (the CLI):
    the same attributes as a job's context (core.worker.JobContext)."""

    def __init__(self, *, db: Any = None, progress: ProgressFn | None = None, cancelled: CancelledFn | None = None,
                 log: LogFn = print, job_id: int | None = None):
        self.db = db
        self.progress = progress
        self.cancelled = cancelled if cancelled is not None else (lambda: False)
        self.log = log
        self.job_id = job_id

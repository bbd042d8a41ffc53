"""Helpers shared by the benchmarks: measured child processes, machine load, tables.

Every measured step runs in its own child process, so one step's heap never inflates the
next one's, and its peak RSS and CPU time are its own. The peak RSS needs care: Linux
carries a process's RSS high-water mark over an exec into the new program, and
``subprocess`` starts a child from a copy of this process, so a 100 MB child of a 1 GB
benchmark would report 1 GB in ``ru_maxrss``. :func:`run_child` therefore starts the command
through a small launcher that forks it afresh and reports its rusage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6  # throughputs are in decimal megabytes per second


# Runs as `python -I -S -c LAUNCHER RUSAGE_FILE CMD...`: a few MB of interpreter that forks
# CMD (a forked process starts a new high-water mark), waits, writes CMD's own rusage.
_LAUNCHER = """
import json, os, sys
report, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as fh:
    json.dump({"maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class ChildFailed(RuntimeError):
    """A measured child process exited with an error; the message carries its stderr tail."""


@dataclass
class ChildRun:
    seconds: float  # wall clock, process start to exit (interpreter start-up included)
    cpu_seconds: float  # user + system CPU of the child, all its threads
    max_rss_bytes: int  # the child's own peak resident set size
    stdout: str
    stderr: str

    def last_json(self) -> dict:
        """The last stdout line that parses as a JSON object (children report through it)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise ChildFailed(f"the child printed no JSON line; stdout ends with: {self.stdout[-500:]!r}")


def run_child(cmd: list[str], *, logdir: Path, name: str, env: dict | None = None) -> ChildRun:
    """Run ``cmd`` to completion from the repository root; its wall time, CPU and peak RSS.

    stdout and stderr go to files in ``logdir`` (progress bars can be long; a pipe nobody
    reads would block the child)."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path, usage_path = (logdir / f"{name}.{ext}" for ext in ("out", "err", "rusage.json"))
    usage_path.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(usage_path), *cmd]
        code = subprocess.run(launcher, stdout=out, stderr=err, cwd=ROOT, env=child_env).returncode
        seconds = time.perf_counter() - started
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if code != 0:
        raise ChildFailed(f"{' '.join(cmd)} exited with {code}:\n{stderr[-2000:]}")
    usage = json.loads(usage_path.read_text())
    return ChildRun(seconds, usage["cpu"], usage["maxrss_kib"] * 1024, stdout, stderr)  # KiB on Linux


def python_child(module_args: list[str]) -> list[str]:
    """A command line running this interpreter (the project's venv) with ``module_args``."""
    return [sys.executable, *module_args]


def machine_load() -> dict:
    """Load averages and core count, recorded beside the figures: the machine is shared."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2), "cpus": os.cpu_count()}


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str], raw: list | None = None) -> str:
        parts = []
        for i, value in enumerate(values):
            numeric = raw is not None and isinstance(raw[i], (int, float))
            parts.append(value.rjust(widths[i]) if numeric else value.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(c, r) for c, r in zip(cells, rows)]
    return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def log(message: str) -> None:
    """Progress notes go to stderr, so stdout stays the table and the JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

"""Shared builders for the ingest and store tests: small inputs in every supported format,
a store snapshot for "unchanged" checks, and the location of the real data.

Every builder writes under a folder the test passes in (its tmp_path); nothing here touches
the default store.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from core import store

REPO = Path(__file__).resolve().parents[1]
# ../shared/realdata beside the repository (absent on a user's machine)
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"

TABLES = ("datasets", "problems", "problem_keys", "cots", "scores", "score_sources", "problem_scores", "run_metrics", "meta")


def require_realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real data not found at {REALDATA} (the ../shared/realdata folder beside the repo)")
    return REALDATA


# --------------------------------------------------------------------------- OmniThought


def omni_cot(
    i: int = 0,
    *,
    teacher: str = "DeepSeek-R1",
    correct: bool = True,
    rv: int = 3,
    cd: int = 5,
    rv_judge: str = "DeepSeek-R1",
    cd_judge: str = "QwQ-32B",
    answer: str = "42",
    **extra: Any,
) -> dict:
    """One OmniThought reasoning record, exactly the published keys (plus ``extra``)."""
    thought = f"Thought {i}. Let me compute.\n\nWait, let me check that again."
    solution = f"Solution {i}: the answer is $\\boxed{{{answer}}}$"
    cot = {
        "thought": thought,
        "solution": solution,
        "full_response": f"<think>\n{thought}\n</think>\n\n{solution}",
        "teacher": teacher,
        "thought_correctness_verify": correct,
        "Reasoning_Verbosity": {"level": rv, "judge": rv_judge},
        "Cognitive_Difficulty": {"level": cd, "judge": cd_judge},
    }
    cot.update(extra)
    return cot


def omni_row(q: int, n_cots: int = 2, **extra: Any) -> dict:
    """One OmniThought row: question + ``n_cots`` reasoning records (plus ``extra`` fields)."""
    row = {
        "question": f"Question {q}: what is 6 times 7?",
        "reasoning": [
            omni_cot(j, teacher=("DeepSeek-R1", "QwQ-32B")[j % 2], correct=(j % 2 == 0), rv=j % 10, cd=(q + j) % 10)
            for j in range(n_cots)
        ],
    }
    row.update(extra)
    return row


def omni_rows(n_problems: int = 3, n_cots: int = 2) -> list[dict]:
    return [omni_row(q, n_cots) for q in range(n_problems)]


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    """A JSONL file from raw lines (bytes kept as they are, for broken input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- Qwen2.5-Math eval

QWEN_RUN_FILE = "test_x_-1_seed0_t0.0_s0_e-1.jsonl"
QWEN_METRICS_FILE = "test_x_-1_seed0_t0.0_s0_e-1_x_metrics.json"


def qwen_row(idx: int, *, correct: bool, n_samples: int = 1, gt: str = "2") -> dict:
    """One line of a Qwen2.5-Math eval output file (one problem, ``n_samples`` samples)."""
    pred = gt if correct else "5"
    return {
        "idx": idx,
        "question": f"Problem {idx}: what is 1 + 1?",
        "gt": gt,
        "gt_cot": "1 + 1 = 2",
        "solution": "Add: 1 + 1 = 2.",
        "answer": gt,
        "code": [
            f"<|begin_of_thought|>\nThinking about {idx}, sample {s}.\n\nWait, check.\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\nSo the answer is $\\boxed{{{pred}}}$\n<|end_of_solution|>"
            for s in range(n_samples)
        ],
        "pred": [pred] * n_samples,
        "report": [None] * n_samples,
        "score": [correct] * n_samples,
    }


def write_qwen_run(outputs: Path, model: str, bench: str, correct: list[bool]) -> Path:
    """outputs/<model>/<bench>_eval/<bench>/test_x_...jsonl plus its *_metrics.json."""
    folder = outputs / model / f"{bench}_eval" / bench
    run = write_jsonl(folder / QWEN_RUN_FILE, [qwen_row(i, correct=c) for i, c in enumerate(correct)])
    acc = round(100 * sum(correct) / len(correct), 1)
    (folder / QWEN_METRICS_FILE).write_text(json.dumps({
        "num_samples": len(correct), "num_scores": len(correct), "timeout_samples": 0,
        "empty_samples": 0, "acc": acc, "time_use_in_second": 1.5, "time_use_in_minite": "0:01",
    }))
    return run


# --------------------------------------------------------------------------- OpenR1


def openr1_row(i: int) -> dict:
    return {
        "problem": f"OpenR1 problem {i}: compute 3 + 4.",
        "solution": "3 + 4 = 7",
        "answer": "7",
        "uuid": f"u-{i}",
        "source": "olympiads",
        "generations": [
            "<think>\n3 plus 4 is 7.\n</think>\n\nThe answer is $\\boxed{7}$",
            "<think>\n3 plus 4 is... let me think, hmm, 8? Wait",  # cut off
        ],
        "correctness_math_verify": [True, False],
        "correctness_llama": [True, None],
        "finish_reasons": ["stop", "length"],
        "is_reasoning_complete": [True, False],
    }


# --------------------------------------------------------------------------- store


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a canonical order, for "the store is unchanged" checks."""
    with store.connect(db, read_only=True) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


def seeded_store(tmp_path: Path) -> Path:
    """A store that already holds one ready dataset (OmniThought, 2 problems x 2 CoTs)."""
    from core.ingest import ingest

    db = tmp_path / "store.duckdb"
    src = write_jsonl(tmp_path / "seed" / "seed_omni.jsonl", omni_rows(2, 2))
    result = ingest(str(src), db=db)
    assert result.cots == 4 and not result.already_present
    return db


def counts(db: Path) -> dict[str, int]:
    with store.connect(db, read_only=True) as con:
        # the tables an ingest writes (problem_scores is filled by later stages)
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES if t not in ("meta", "problem_scores")}


def staging_leftovers(folder: Path) -> list[Path]:
    """Staging folders an ingest left beside the store (it must remove them)."""
    return sorted(p for p in folder.glob("ingest-*") if p.is_dir())

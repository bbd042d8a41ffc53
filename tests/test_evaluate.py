"""Evaluation for real: a tiny randomly initialised Llama answers a small GSM8K-style
benchmark (a killed run's generations file, torn last line included, is finished without
redoing complete problems), and the real SmolLM2 answers real GSM8K problems (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from core import queries, store
from core.evaluate import EvalOptions, benchmark_problems, evaluate, run_dir
from core.verify import SOURCE as VERIFY_SOURCE
from helpers import GSM8K, VLLM_PYTHON, build_tiny_llama, require_vllm_env

ROOT = Path(__file__).resolve().parents[1]

MINI = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "5 * 6 = <<5*6=30>>30 eggs.\n#### 30"),
    ("Sara reads 12 pages a day. How many pages does she read in 3 days?", "12 * 3 = <<12*3=36>>36.\n#### 36"),
    ("A shirt costs $20 and is 25% off. What does it cost now?", "20 * 0.75 = <<20*0.75=15>>15.\n#### 15"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-eval-model"), corpus=[q + " " + a for q, a in MINI] * 3)


@pytest.fixture
def mini_bench(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A store holding a four-problem GSM8K-shaped benchmark, ingested as a benchmark."""
    from core.ingest import ingest

    db = tmp_path / "eval.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    src = tmp_path / "mini_gsm8k_test.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in MINI))
    name = ingest(str(src), fmt="benchmark", db=db).name
    return db, name


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_killed_run_is_finished_without_redoing_complete_problems(tiny_model, mini_bench, capsys):
    db, bench = mini_bench
    opts = EvalOptions(benchmark=bench, model=str(tiny_model), label="tiny", problems=3, k=2, max_new_tokens=8, batch_size=2)
    problems = benchmark_problems(bench, 3, db=db)
    assert [p["reference"] for p in problems] == ["7", "30", "36"] and problems[0]["benchmark"] == "mini_gsm8k"

    # What a run killed mid-batch leaves: problem 1 complete (answers no model would write),
    # problem 2 with one sample and a line torn by the kill.
    folder = run_dir(opts)
    folder.mkdir(parents=True)
    kept = [{"id": problems[0]["key"], "benchmark": "mini_gsm8k", "question": problems[0]["question"], "reference": "7",
             "model": "tiny", "sample": j, "response": f"Kept from the killed run {j}: \\boxed{{7}}", "finish_reason": "stop"}
            for j in range(2)]
    half = dict(kept[0], id=problems[1]["key"], question=problems[1]["question"], reference="30", response="half")
    (folder / "generations.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kept) + json.dumps(half) + "\n" + json.dumps(half)[:25])

    result = evaluate(opts, db=db, log=lambda _: None)
    lines = _lines(folder / "generations.jsonl")
    assert lines[:2] == kept  # complete problems are not generated again
    assert result["generated_now"] == 2
    assert sorted((r["id"], r["sample"]) for r in lines) == sorted((p["key"], j) for p in problems for j in range(2))
    assert "half" not in [r["response"] for r in lines]  # the unfinished problem was redone whole
    assert {r["model"] for r in lines} == {"tiny"}
    assert {r["finish_reason"] for r in lines[2:]} <= {"stop", "length"}

    # the budget each new answer was generated under rides along into the CoT's extra
    assert result["max_new_tokens"] == 8 and result["max_new_tokens_from"] == "given"
    assert result["hit_max_new_tokens"] == sum(r["finish_reason"] == "length" for r in lines)
    assert all(r["max_new_tokens"] == 8 and 0 < r["completion_tokens"] <= 8 for r in lines[2:])
    extra = store.read_rows("SELECT json_extract(c.extra, '$.max_new_tokens')::INTEGER, c.finish_reason FROM cots c "
                            "JOIN datasets d USING (dataset_id) WHERE d.name = ? AND c.full_text NOT LIKE 'Kept%'",
                            [result["dataset"]], db=db)
    assert len(extra) == 4 and {e[0] for e in extra} == {8}

    # ingested as a new dataset, verified and counted
    assert result["dataset"] == "eval tiny on mini_gsm8k_test n3 k2 t8"
    n_cots, n_counted = store.read_rows(
        "SELECT count(*), count(n_tokens) FROM cots JOIN datasets d USING (dataset_id) WHERE d.name = ?", [result["dataset"]], db=db)[0]
    assert (n_cots, n_counted) == (6, 6)
    verdicts = store.read_rows(
        "SELECT c.full_text, s.value FROM scores s JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
        "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE ss.name = ? AND d.name = ?", [VERIFY_SOURCE, result["dataset"]], db=db)
    assert len(verdicts) == 6
    assert {v for text, v in verdicts if text.startswith("Kept from")} == {1.0}
    assert result["accuracy"] == pytest.approx(100 * sum(v for _, v in verdicts) / 6, abs=0.01)
    assert result["model"] == "tiny" and "tiny" in queries.distinct_values("model", db=db)

    # the same options again, from the command line: nothing to generate, the same dataset
    from core.cli import build_parser

    args = build_parser().parse_args(["--db", str(db), "evaluate", "--benchmark", bench, "--model", str(tiny_model), "--label", "tiny",
                              "--problems", "3", "--k", "2", "--max-new-tokens", "8", "--batch-size", "3"])
    assert args.func(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["generated_now"] == 0 and again["dataset"] == result["dataset"]
    assert store.read_rows("SELECT count(*) FROM datasets", db=db)[0][0] == 2  # the benchmark and one evaluation


def test_other_options_generate_afresh_and_bad_input_says_what_to_do(tiny_model, mini_bench):
    db, bench = mini_bench
    base = EvalOptions(benchmark=bench, model=str(tiny_model), problems=2, k=1, max_new_tokens=4)
    assert run_dir(base) == run_dir(EvalOptions(**{**vars(base), "batch_size": 1}))  # batching changes no answer
    assert run_dir(base) != run_dir(EvalOptions(**{**vars(base), "max_new_tokens": 5}))
    assert run_dir(base) != run_dir(EvalOptions(**{**vars(base), "problems": 3}))
    with pytest.raises(ValueError, match="no benchmark dataset named 'nope'"):
        evaluate(EvalOptions(benchmark="nope", model=str(tiny_model)), db=db, log=lambda _: None)
    with pytest.raises(ValueError, match="not a LoRA adapter folder"):
        evaluate(EvalOptions(**{**vars(base), "adapter": str(tiny_model)}), db=db, log=lambda _: None)
    with pytest.raises(ValueError, match="choose transformers or vllm"):
        evaluate(EvalOptions(**{**vars(base), "backend": "tgi"}), db=db, log=lambda _: None)


def test_the_default_budget_is_what_the_context_leaves_for_long_cots(tiny_model, mini_bench, tmp_path):
    from transformers import AutoTokenizer

    from core.evaluate import LONG_COT_TOKENS, PROMPT_SUFFIX, default_max_new_tokens, estimate_cost

    db, bench = mini_bench
    problems = benchmark_problems(bench, 4, db=db)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    longest = max(len(tokenizer.apply_chat_template([{"role": "user", "content": p["question"] + PROMPT_SUFFIX}],
                                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
                  for p in problems)
    opts = EvalOptions(benchmark=bench, model=str(tiny_model), problems=4)
    assert opts.max_new_tokens is None
    assert default_max_new_tokens(opts, [p["question"] for p in problems]) == (
        2048 - longest, f"the model's context (2,048) less the longest prompt ({longest:,})")
    # the cost estimate uses the budget the run will have
    assert estimate_cost(opts, db=db).max_new_tokens == 2048 - longest
    # a model with a longer context than long CoTs need: the long-CoT ceiling
    big = tmp_path / "long-context"
    shutil.copytree(tiny_model, big)
    config = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    assert default_max_new_tokens(EvalOptions(benchmark=bench, model=str(big)), ["q"])[0] == LONG_COT_TOKENS == 32768
    # given, it is used as it is
    assert default_max_new_tokens(EvalOptions(benchmark=bench, model=str(big), max_new_tokens=300), ["q"]) == (300, "given")


@pytest.mark.slow
def test_smollm2_on_real_gsm8k_problems(tmp_path, monkeypatch):
    if not GSM8K.exists():
        pytest.skip(f"real data not found at {GSM8K}")
    db = tmp_path / "gsm8k.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    result = evaluate(EvalOptions(benchmark=str(GSM8K), problems=4, k=2, max_new_tokens=64, batch_size=4), db=db,
                      log=lambda _: None)
    assert result["dataset"] == "eval SmolLM2-135M-Instruct on gsm8k_test n4 k2 t64"
    assert result["temperature"] == 0.7 and result["problems"] == 4
    bench = queries.datasets(db=db).filter(pl.col("format") == "benchmark")
    assert bench["name"].to_list() == ["gsm8k_test"] and bench["n_problems"][0] == 1319
    rows = store.read_rows(
        "SELECT c.sample_idx, c.n_tokens, c.finish_reason, p.reference_answer FROM cots c JOIN problems p USING (problem_id) "
        "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE d.name = ? ORDER BY p.problem_key, c.sample_idx",
        [result["dataset"]], db=db)
    assert len(rows) == 8 and sorted({r[0] for r in rows}) == [0, 1]
    assert all(r[1] is not None and 0 < r[1] for r in rows)
    assert rows[0][3] == "18"  # Janet's ducks
    assert {r[2] for r in rows} <= {"stop", "length"}
    assert VERIFY_SOURCE in queries.sources("correct", db=db)
    judged = store.read_rows("SELECT count(s.value) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ?",
                             [VERIFY_SOURCE], db=db)[0][0]
    assert judged == 8
    assert 0.0 <= result["accuracy"] <= 100.0
    # SmolLM2's context is 8,192 tokens: by default an answer may use what the longest prompt leaves
    from transformers import AutoTokenizer

    from core.evaluate import PROMPT_SUFFIX, default_max_new_tokens
    from core.models import DEFAULT_MODEL, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    questions = [p["question"] for p in benchmark_problems(str(GSM8K), 4, db=db)]
    longest = max(len(tokenizer.apply_chat_template([{"role": "user", "content": q + PROMPT_SUFFIX}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"]) for q in questions)
    assert json.loads((Path(resolve_model(DEFAULT_MODEL)) / "config.json").read_text())["max_position_embeddings"] == 8192
    assert default_max_new_tokens(EvalOptions(benchmark="gsm8k_test"), questions) == (
        8192 - longest, f"the model's context (8,192) less the longest prompt ({longest:,})")


VLLM_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from core.evaluate import EvalOptions, generate_answers

if __name__ == "__main__":  # vLLM's engine spawns processes
    problems = json.loads(open({problems!r}).read())
    opts = EvalOptions(benchmark="gsm8k_test", problems=len(problems), k=1, max_new_tokens={max_new_tokens}, backend="vllm")
    # float32 like transformers on a CPU: vLLM would otherwise run bfloat16, and greedy answers
    # part at the first near-tie (2 of these 4 did)
    answers = generate_answers(opts, problems, 0.0, backend_options={{"dtype": "float32", "enforce_eager": True}})
    print("RESULT " + json.dumps([[(g.text, g.finish_reason) for g in samples] for samples in answers]))
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)  # vLLM's CPU engine alone takes 2-6 minutes to start on 2 cores; 12 under heavy load
def test_vllm_generation_matches_transformers_greedy(tmp_path, monkeypatch):
    """The vLLM path of an evaluation, run by vLLM's CPU build in its own environment, gives
    the same greedy answers as the transformers path."""
    require_vllm_env()
    if not GSM8K.exists():
        pytest.skip(f"real data not found at {GSM8K}")
    import subprocess

    from core.evaluate import generate_answers
    from core.models import DEFAULT_MODEL, resolve_model

    resolve_model(DEFAULT_MODEL)  # materialise the plain folder once, here, not in two processes
    db = tmp_path / "gsm8k.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    problems = benchmark_problems(str(GSM8K), 4, db=db)
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    script = tmp_path / "vllm_eval.py"
    script.write_text(VLLM_SCRIPT.format(root=str(ROOT), problems=str(tmp_path / "problems.json"), max_new_tokens=32))
    proc = subprocess.run([str(VLLM_PYTHON), str(script)], capture_output=True, text=True, timeout=1700, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vllm_out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    tf_out = [[(g.text, g.finish_reason) for g in samples] for samples in
              generate_answers(EvalOptions(benchmark="gsm8k_test", problems=4, k=1, max_new_tokens=32), problems, 0.0)]
    assert [len(samples) for samples in vllm_out] == [1, 1, 1, 1]
    same = sum(v[0][0].strip() == t[0][0].strip() for v, t in zip(vllm_out, tf_out))
    # greedy in float32 on both sides; a near-tie between two tokens may still split one answer
    assert same >= 3, [(v[0][0], t[0][0]) for v, t in zip(vllm_out, tf_out)]
    assert all(v[0][1] == t[0][1] for v, t in zip(vllm_out, tf_out) if v[0][0].strip() == t[0][0].strip())


def test_a_cancel_stops_the_batch_in_flight_and_a_rerun_finishes(tiny_model, mini_bench):
    """Cancelled during its second batch, an evaluation keeps the first batch's answers on
    disk and raises JobCancelled at once; run again, it generates only the rest."""
    from core.progress import JobCancelled

    db, bench = mini_bench
    opts = EvalOptions(benchmark=bench, model=str(tiny_model), label="tiny", problems=4, k=1, max_new_tokens=120, batch_size=2)
    generations = run_dir(opts) / "generations.jsonl"
    asked = {"after_first_batch": 0}

    def cancelled() -> bool:
        if not generations.exists() or len(_lines(generations)) < 2:
            return False  # the first batch (two problems) is not written yet
        asked["after_first_batch"] += 1
        return asked["after_first_batch"] >= 3  # a couple of decoding steps into the second batch

    with pytest.raises(JobCancelled, match="generation stopped at decoding step 2 of at most 120"):
        evaluate(opts, db=db, cancelled=cancelled, log=lambda _: None)
    assert asked["after_first_batch"] == 3  # it stopped at the first yes
    assert sorted(r["id"] for r in _lines(generations)) == [p["key"] for p in benchmark_problems(bench, 2, db=db)]
    result = evaluate(opts, db=db, log=lambda _: None)
    assert result["generated_now"] == 2 and len(_lines(generations)) == 4

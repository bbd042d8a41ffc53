"""The token-count stage on a real store: counts agree with the tokenizer, batches shrink
when the texts are long, and a second run has nothing left to count."""

from __future__ import annotations

import core.tokens as tokens_mod
from core import store
from core.demo import write_omnithought
from core.ingest import ingest
from core.tokens import DEFAULT_TOKENIZER, count_tokens_stage, load_tokenizer


def test_counts_match_the_tokenizer_and_long_texts_make_smaller_batches(tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    src = tmp_path / "omni.jsonl"
    info = write_omnithought(src, 40, seed=3, text_scale=0.01)
    ingest(str(src), db=db)
    texts = store.read_rows("SELECT full_text FROM cots ORDER BY cot_id", db=db)
    mean_chars = sum(len(t) for (t,) in texts) // len(texts)
    # a character budget of about 10 mean texts: after the first batch, about 10 CoTs a batch
    monkeypatch.setattr(tokens_mod, "BATCH_CHARS", 10 * mean_chars)
    monkeypatch.setattr(tokens_mod, "MIN_BATCH_COTS", 4)
    seen = []
    result = count_tokens_stage(db=db, batch_cots=64, progress=lambda stage, done, total: seen.append((done, total)))
    assert result["cots"] == info["cots"] and seen[-1] == (info["cots"], info["cots"])
    sizes = [b - a for (a, _), (b, _) in zip([(0, None), *seen], seen)]
    assert sizes[0] == min(64, info["cots"])  # the first batch knows no lengths yet
    assert all(4 <= size <= 30 for size in sizes[1:-1]), sizes

    tok = load_tokenizer(DEFAULT_TOKENIZER)
    stored = store.read_rows("SELECT full_text, n_tokens, tokenizer FROM cots ORDER BY cot_id", db=db)
    assert [n for _, n, _ in stored] == [len(tok.encode(t, add_special_tokens=False).ids) for t, _, _ in stored]
    assert {name for _, _, name in stored} == {DEFAULT_TOKENIZER}
    assert result["tokens"] == sum(n for _, n, _ in stored)
    # resumable: a second run finds nothing without a count
    assert count_tokens_stage(db=db)["cots"] == 0


# ---------------------------------------------------------------------------- per-model tokenizers

# model, response; whitespace pieces by hand, and pieces with each digit split off
PER_MODEL = [
    ("Teacher-A", "x 12 y", 3, 4),
    ("teacher-b", "The answer is 345.", 4, 7),  # digits: The answer is 3 4 5 .
    ("models/Teacher-C", "a b", 2, 2),
    ("Unknown-D", "1 2 3 45", 4, 5),
]


def _per_model_store(tmp_path):
    import json

    from core.formats import ReadOptions

    src = tmp_path / "cots.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Q{i}?", "response": text, "model": model}) + "\n"
                           for i, (model, text, _, _) in enumerate(PER_MODEL)))
    db = tmp_path / "store.duckdb"
    ingest(str(src), db=db, opts=ReadOptions(mapping={"question": "question", "response": "response", "model": "model",
                                                      "id": "id"}))
    return db


def test_each_model_is_counted_with_its_own_tokenizer_where_the_mapping_names_one_that_loads(tmp_path):
    from tests.helpers import write_whitespace_tokenizer

    words = str(write_whitespace_tokenizer(tmp_path / "words"))
    digits = str(write_whitespace_tokenizer(tmp_path / "digits", split_digits=True))
    mapping = tmp_path / "map.yaml"
    # case and a path's leading folders do not matter; C's tokenizer does not exist
    mapping.write_text(f"teacher-a: {digits}\nTEACHER-B: {digits}\nTeacher-C: {tmp_path / 'missing'}\n")
    db = _per_model_store(tmp_path)
    count_tokens_stage(db=db, tokenizer=words)  # first everything with one tokenizer
    logged = []
    result = count_tokens_stage(db=db, tokenizer=words, per_model=True, tokenizer_map=str(mapping), log=logged.append)
    assert result["tokenizers"] == {"Teacher-A": digits, "teacher-b": digits, "models/Teacher-C": words, "Unknown-D": words}
    assert result["cots"] == 2  # A and B recounted; C and D were already counted with the fallback
    stored = store.read_rows("SELECT model, n_tokens, tokenizer FROM cots ORDER BY cot_id", db=db)
    assert stored == [("Teacher-A", 4, digits), ("teacher-b", 7, digits), ("models/Teacher-C", 2, words),
                      ("Unknown-D", 4, words)]
    assert any("models/Teacher-C: its tokenizer" in line and "could not be loaded" in line for line in logged)
    assert any(line.startswith("Unknown-D: not in the model-tokenizer mapping") for line in logged)
    # a second run finds each CoT counted by its model's tokenizer
    assert count_tokens_stage(db=db, tokenizer=words, per_model=True, tokenizer_map=str(mapping))["cots"] == 0

    # the store now mixes two tokenizers, and says so
    counts = tokens_mod.tokenizer_counts(db=db)
    assert counts == {digits: 2, words: 2} or counts == {words: 2, digits: 2}
    assert tokens_mod.token_unit(counts).startswith("tokens (2 tokenizers: ")
    assert "2 tokenizers" in tokens_mod.mixed_tokenizers_note(counts)
    assert tokens_mod.token_unit({words: 4}) == "tokens (tmp/words)".replace("tmp", tmp_path.name)
    assert tokens_mod.token_unit({DEFAULT_TOKENIZER: 1}) == f"tokens ({DEFAULT_TOKENIZER})"
    assert tokens_mod.mixed_tokenizers_note({DEFAULT_TOKENIZER: 1}) is None


def test_the_command_line_counts_per_model_and_refuses_a_missing_mapping(tmp_path, capsys):
    import json

    from core import cli
    from tests.helpers import write_whitespace_tokenizer

    words = str(write_whitespace_tokenizer(tmp_path / "words"))
    digits = str(write_whitespace_tokenizer(tmp_path / "digits", split_digits=True))
    mapping = tmp_path / "map.yaml"
    mapping.write_text(f"Unknown-D: {digits}\n")
    db = _per_model_store(tmp_path)
    assert cli.main(["--db", str(db), "tokens", "--per-model", "--tokenizer-map", str(mapping), "--tokenizer", words]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cots"] == 4 and out["tokenizers"]["Unknown-D"] == digits
    assert store.read_rows("SELECT n_tokens FROM cots ORDER BY cot_id", db=db) == [(3,), (4,), (2,), (5,)]
    assert cli.main(["--db", str(db), "tokens", "--per-model", "--tokenizer-map", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_bundled_mapping_names_the_omnithought_teachers():
    mapping = tokens_mod.model_tokenizers()
    assert tokens_mod.tokenizer_for_model("DeepSeek-R1", mapping) == "deepseek-ai/DeepSeek-R1"
    assert tokens_mod.tokenizer_for_model("QwQ-32B", mapping) == "Qwen/QwQ-32B"
    assert tokens_mod.tokenizer_for_model("outputs/qwen/Qwen2.5-Math-7B-Instruct/", mapping) == "Qwen/Qwen2.5-Math-7B-Instruct"
    assert tokens_mod.tokenizer_for_model("SmolLM2-135M-Instruct", mapping) == DEFAULT_TOKENIZER
    assert tokens_mod.tokenizer_for_model("my-model", mapping) is None


def test_an_evaluation_is_counted_with_the_evaluated_models_tokenizer(tiny_llama, tmp_path, monkeypatch):
    import json

    from core.evaluate import EvalOptions, evaluate

    db = tmp_path / "eval.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    src = tmp_path / "mini_gsm8k_test.jsonl"
    src.write_text(json.dumps({"question": "What is 17 + 25?", "answer": "17 + 25 = 42\n#### 42"}) + "\n")
    bench = ingest(str(src), fmt="benchmark", db=db).name
    result = evaluate(EvalOptions(benchmark=bench, model=str(tiny_llama), label="tiny", problems=1, k=2,
                                  max_new_tokens=6, batch_size=1), db=db, log=lambda _: None)
    rows = store.read_rows("SELECT c.full_text, c.n_tokens, c.tokenizer FROM cots c JOIN datasets d USING (dataset_id) "
                           "WHERE d.name = ?", [result["dataset"]], db=db)
    tok = load_tokenizer(str(tiny_llama))
    assert len(rows) == 2
    assert [(n, name) for _, n, name in rows] == [(len(tok.encode(t, add_special_tokens=False).ids), str(tiny_llama))
                                                 for t, _, _ in rows]
    # and the reflection-marker density of its CoTs is published over those counts
    densities = store.read_rows("SELECT s.raw FROM scores s JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
                                "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE ss.name = 'reflection markers' "
                                "AND d.name = ?", [result["dataset"]], db=db)
    assert densities == [(str(tiny_llama),)] * sum(1 for _, n, _ in rows if n)

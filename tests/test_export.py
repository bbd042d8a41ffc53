"""Exports: every format's rows and fields against the store, the manifest, streaming in
batches, and TRL's SFTTrainer training one step on the exported file as it is."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core import export, recipes, selection, store
from core.demo import write_omnithought
from core.ingest import ingest
from core.queries import CotFilter
from core.selection import CapacityMatched, Selection, Thresholds
from helpers import BOTH, TINY, build_store, omnithought_rows


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory) -> Path:
    # TINY and one more problem whose CoT passes the ThoughtX thresholds
    return build_store(tmp_path_factory.mktemp("tiny_export"), TINY + [("p4", "QwQ-32B", True, 4, 4, 3)])


@pytest.fixture
def thoughtx(tiny_db) -> recipes.Recipe:
    return recipes.Recipe("thoughtx", Selection(CotFilter(), Thresholds(rv_range=(3, 5), require_correct=True), BOTH))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def store_text(db: Path, ids) -> dict[int, dict]:
    rows = store.read_df(
        "SELECT c.cot_id, p.question, c.thinking, c.solution, c.full_text, c.model FROM cots c "
        "JOIN problems p USING (problem_id) WHERE c.cot_id IN (SELECT unnest(?::BIGINT[]))", [list(ids)], db=db,
    )
    return {r["cot_id"]: r for r in rows.iter_rows(named=True)}


def test_every_format_has_one_row_per_kept_cot_with_its_fields(tiny_db, thoughtx):
    kept = recipes.apply(thoughtx, db=tiny_db).to_list()
    assert len(kept) == 5
    text = store_text(tiny_db, kept)
    order = sorted(kept)  # exports are in cot_id order

    jsonl = read_jsonl(export.export(thoughtx, "jsonl", db=tiny_db).path)
    assert [r["cot_id"] for r in jsonl] == order
    assert set(jsonl[0]) == set(export.RECORD_COLUMNS)
    for row in jsonl:
        t = text[row["cot_id"]]
        assert (row["question"], row["thinking"], row["solution"], row["full_text"], row["model"]) == \
            (t["question"], t["thinking"], t["solution"], t["full_text"], t["model"])
        assert row["correct"] is True and 3 <= row["rv"] <= 5

    table = pq.read_table(export.export(thoughtx, "parquet", db=tiny_db).path)
    assert table.column_names == list(export.RECORD_COLUMNS)
    assert table.column("cot_id").to_pylist() == order
    assert table.column("full_text").to_pylist() == [text[i]["full_text"] for i in order]

    # every row carries its ids (issue 11: a row could not be traced without the manifest)
    truth = {r[0]: r[1:] for r in store.read_rows(
        "SELECT c.cot_id, p.problem_key, d.name, c.model, (SELECT count(*) FROM cots o WHERE o.problem_id = c.problem_id "
        "AND o.cot_id < c.cot_id) FROM cots c JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = c.dataset_id",
        db=tiny_db)}
    for row in jsonl:
        key, name, model, n = truth[row["cot_id"]]
        assert (row["problem_key"], row["readable_id"]) == (key, f"{name}:{key}:{n}")

    trl = read_jsonl(export.export(thoughtx, "trl", thinking="think_tags", db=tiny_db).path)
    assert len(trl) == 5 and all(set(r) == {"messages", "metadata"} for r in trl)
    for fmt in ("trl", "sharegpt", "alpaca"):
        rows = read_jsonl(export.export(thoughtx, fmt, db=tiny_db).path)
        for row, cot_id in zip(rows, order):
            key, name, model, n = truth[cot_id]
            assert row["metadata"] == {"cot_id": cot_id, "readable_id": f"{name}:{key}:{n}", "problem_key": key,
                                       "dataset": name, "model": model}
    for row, cot_id in zip(trl, order):
        t = text[cot_id]
        assert row["messages"] == [
            {"role": "user", "content": t["question"]},
            {"role": "assistant", "content": f"<think>\n{t['thinking']}\n</think>\n\n{t['solution']}"},
        ]

    sharegpt = read_jsonl(export.export(thoughtx, "sharegpt", thinking="begin_of_thought", db=tiny_db).path)
    for row, cot_id in zip(sharegpt, order):
        t = text[cot_id]
        assert [m["from"] for m in row["conversations"]] == ["human", "gpt"]
        assert row["conversations"][0]["value"] == t["question"]
        assert row["conversations"][1]["value"] == (
            f"<|begin_of_thought|>\n\n{t['thinking']}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{t['solution']}\n\n<|end_of_solution|>"
        )

    alpaca = read_jsonl(export.export(thoughtx, "alpaca", thinking="none", db=tiny_db).path)
    for row, cot_id in zip(alpaca, order):
        assert {k: v for k, v in row.items() if k != "metadata"} == {
            "instruction": text[cot_id]["question"], "input": "", "output": text[cot_id]["solution"]}


def test_the_manifest_describes_the_file(tiny_db, thoughtx):
    result = export.export(thoughtx, "trl", thinking="think_tags", db=tiny_db)
    assert result.path.parent == store.data_dir() / "exports"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest == result.manifest
    assert manifest["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert manifest["bytes"] == result.path.stat().st_size
    assert result.read_bytes() == result.path.read_bytes()
    assert (manifest["format"], manifest["thinking"]) == ("trl", "think_tags")
    assert recipes.Recipe.from_dict(manifest["recipe"]) == thoughtx
    assert manifest["counts"]["rows"] == 5 and sum(manifest["counts"]["by_model"].values()) == 5
    assert manifest["counts"]["by_dataset"] == {"tiny": 5}
    (dataset,) = manifest["source_datasets"]
    digest = store.read_rows("SELECT content_hash FROM datasets", db=tiny_db)[0][0]
    assert (dataset["name"], dataset["content_hash"]) == ("tiny", digest)
    assert [s["name"] for s in manifest["score_sources"]] == [*BOTH.rv, "omnithought"]
    assert manifest["created_at"].endswith("+00:00")
    listed = export.list_exports()
    assert listed["file"].to_list() == [result.path.name] and listed["rows"].to_list() == [5]


def test_a_plain_filter_exports_every_matching_cot(tiny_db):
    result = export.export(CotFilter(models=("QwQ-32B",)), "alpaca", db=tiny_db)
    n = store.read_rows("SELECT count(*) FROM cots WHERE model = 'QwQ-32B'", db=tiny_db)[0][0]
    assert result.rows == n == len(read_jsonl(result.path))
    assert result.manifest["recipe"] is None and result.manifest["filter"]["models"] == ["QwQ-32B"]


def test_a_cot_without_thinking_markers_exports_its_solution(tmp_path):
    row = omnithought_rows([("plain", "QwQ-32B", True, 4, 4, 3)])[0]
    cot = row["reasoning"][0]
    cot.pop("thought"), cot.pop("solution")
    cot["full_response"] = "Just the answer: 42. <script>alert(1)</script>"
    src = tmp_path / "plain.jsonl"
    src.write_text(json.dumps(row) + "\n")
    db = tmp_path / "plain.duckdb"
    ingest(str(src), name="plain", db=db)
    (out,) = read_jsonl(export.export(CotFilter(), "trl", thinking="think_tags", db=db).path)
    assert out["messages"][1]["content"] == "Just the answer: 42. <script>alert(1)</script>"


def test_an_empty_selection_writes_an_empty_file(tiny_db):
    nothing = Selection(CotFilter(), Thresholds(rv_range=(100, 200)), BOTH)
    result = export.export(nothing, "parquet", db=tiny_db)
    assert result.rows == 0 and pq.read_table(result.path).num_rows == 0
    assert export.export(nothing, "jsonl", db=tiny_db).path.read_bytes() == b""


def test_bad_arguments_are_sentences(tiny_db, thoughtx):
    with pytest.raises(export.ExportError, match="unknown export format"):
        export.export(thoughtx, "csv", db=tiny_db)
    with pytest.raises(export.ExportError, match="thinking style"):
        export.export(thoughtx, "trl", thinking="xml", db=tiny_db)


def test_export_streams_in_batches(tmp_path):
    src = tmp_path / "demo.parquet"
    write_omnithought(src, 450, seed=3, text_scale=0.02)
    db = tmp_path / "demo.duckdb"
    ingest(str(src), name="demo", db=db)
    total = store.read_rows("SELECT count(*) FROM cots", db=db)[0][0]
    assert total > 2500
    out = tmp_path / "out"
    seen = []

    def progress(stage, done, n):
        # the rows are appended to a temporary file while the batches come in
        (part,) = out.glob(".*.part")
        seen.append((done, n, part.stat().st_size))

    sel = Selection(CotFilter(), CapacityMatched(k=5), selection.default_score_sources(db=db), seed=1)
    kept = len(selection.kept_ids(sel, db=db))
    result = export.export(sel, "sharegpt", db=db, batch_size=300, out_dir=out, progress=progress)
    assert result.rows == kept == len(read_jsonl(result.path)) > 1500
    assert result.batches == math.ceil(kept / 300) == len(seen) == result.manifest["batches"]
    assert [d for d, _, _ in seen] == [min(300 * (i + 1), kept) for i in range(len(seen))]
    assert seen[-1][2] > seen[0][2] > 0
    assert not list(out.glob(".*.part"))  # renamed into place when complete


def _tiny_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                      bos_token="<|im_start|>", eos_token="<|im_end|>")
    wrapped.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return wrapped


@pytest.mark.slow
def test_trl_sft_trainer_takes_the_export_as_it_is(tiny_db, thoughtx, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    path = export.export(thoughtx, "trl", thinking="think_tags", db=tiny_db).path
    data = load_dataset("json", data_files=str(path), split="train")
    assert data.num_rows == 5 and data.column_names == ["messages", "metadata"]  # SFTTrainer drops what it does not use
    tokenizer = _tiny_tokenizer([m["content"] for row in data for m in row["messages"]])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to=[], save_strategy="no", logging_steps=1, max_length=512)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0


def test_the_manifest_records_conditions_drops_and_the_sources_they_read(tmp_path):
    from core.figures import Condition, Figure
    from core.queries import OWN_CORRECTNESS
    from helpers import JUDGE, STAGE, build_figures_store

    db = build_figures_store(tmp_path / "figures")
    filter_condition = Condition(Figure("contaminated", STAGE, level="problem"), missing=True)
    logic = Condition(Figure("logic", JUDGE), lo=1)
    sel = Selection(CotFilter(correct_source=OWN_CORRECTNESS, conditions=(filter_condition,)),
                    Thresholds(require_correct=True), selection.default_score_sources(db=db), conditions=(logic,))
    result = export.export(recipes.Recipe("logic 1, clean", sel), "jsonl", db=db)
    manifest = result.manifest
    assert [(c["applies_to"], c["condition"]) for c in manifest["conditions"]] == [
        ("filter", "contaminated · difficulty (per problem): has no value"), ("selection", "logic · judge smollm ≥ 1")]
    assert Condition.from_dict({k: v for k, v in manifest["conditions"][1].items()
                                if k not in ("applies_to", "condition")}) == logic
    report = selection.evaluate(sel, db=db)
    assert manifest["dropped_by_reason"] == dict(zip(report.reasons["reason"], report.reasons["cots"]))
    assert manifest["dropped_by_reason"]["logic · judge smollm below 1"] > 0
    assert manifest["counts"]["rows"] == report.kept_cots == len(read_jsonl(result.path)) > 0
    assert manifest["filter_correctness"] == {"source": "each dataset's own (its label, else math-verify)",
                                              "reads": ["omnithought", "math-verify"]}
    used = {s["name"]: s for s in manifest["score_sources"]}
    assert {JUDGE, STAGE, "omnithought", "math-verify"} <= set(used)
    assert (used[JUDGE]["kind"], used[JUDGE]["model"]) == ("judge", "SmolLM2")
    assert json.loads(used[STAGE]["params"]) == {"k": 4} and used[STAGE]["kind"] == "stage"

"""Ingest tests: every input format, format detection, bad input (located exactly, store left
as it was), re-ingest, failures in the middle of the load, abandoned loads, the CLI, and the
real Qwen2.5-Math eval outputs and benchmark files from ../shared/realdata.

Every test uses its own store file under tmp_path and passes ``db=`` explicitly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import core.ingest as ingest_mod
from core import store
from core.formats import ReadOptions, detect_format, input_files
from core.ingest import clean_abandoned_loads, ingest
from core.records import IngestError

from helpers import (
    QWEN_RUN_FILE,
    REPO,
    counts,
    omni_cot,
    omni_row,
    omni_rows,
    openr1_row,
    require_realdata,
    seeded_store,
    snapshot,
    staging_leftovers,
    write_csv,
    write_json,
    write_jsonl,
    write_lines,
    write_parquet,
    write_qwen_run,
)


def rows(sql: str, params=None, *, db) -> list[tuple]:
    return store.read_rows(sql, params, db=db)


def scores_of(db, dataset_id: int) -> set[tuple]:
    """(problem_key, sample_idx, source name, source kind, metric, value, raw) per score."""
    return set(rows(
        "SELECT p.problem_key, c.sample_idx, ss.name, ss.kind, s.metric, s.value, s.raw "
        "FROM scores s JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
        "JOIN problems p ON p.problem_id = c.problem_id WHERE c.dataset_id = ?",
        [dataset_id], db=db,
    ))


# =========================================================================== OmniThought


def _omni_input() -> list[dict]:
    a = omni_row(0, 2, id="p0", source="unit-test", reference_answer="42")
    b = omni_row(1, 3, id="p1", source="unit-test", reference_answer="42")
    b["reasoning"][2] = omni_cot(2, teacher="DeepSeek-R1-0528", correct=False, rv=9, cd=0,
                                 rv_judge="QwQ-32B", cd_judge="DeepSeek-R1", cot_note="hello")
    return [a, b]


WRITERS = {"jsonl": write_jsonl, "json": write_json, "parquet": write_parquet}


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_omnithought_formats(tmp_path, suffix):
    db = tmp_path / "s.duckdb"
    data = _omni_input()
    src = WRITERS[suffix](tmp_path / f"omni.{suffix}", data)
    res = ingest(str(src), db=db)  # format detected
    assert (res.format, res.problems, res.cots, res.skipped_rows, res.already_present) == ("omnithought", 2, 5, 0, False)
    assert res.name == "omni"

    ds = rows("SELECT dataset_id, name, format, status, n_problems, n_cots, generated FROM datasets", db=db)
    assert ds == [(res.dataset_id, "omni", "omnithought", "ready", 2, 5, False)]
    assert counts(db) == {"datasets": 1, "problems": 2, "problem_keys": 2, "cots": 5, "scores": 15, "score_sources": 3, "run_metrics": 0}

    probs = rows("SELECT problem_key, question, reference_answer, extra FROM problems ORDER BY problem_key", db=db)
    assert [(k, q, r) for k, q, r, _ in probs] == [("p0", data[0]["question"], "42"), ("p1", data[1]["question"], "42")]
    for (_, _, _, extra), row in zip(probs, data):
        assert json.loads(extra) == {"id": row["id"], "source": "unit-test"}  # unknown fields kept

    cots = rows(
        "SELECT p.problem_key, c.sample_idx, c.model, c.thinking, c.solution, c.full_text, c.answer, "
        "c.thinking_unclosed, c.truncated, c.extra, c.n_chars, c.n_reflections "
        "FROM cots c JOIN problems p USING (problem_id) ORDER BY 1, 2", db=db,
    )
    assert len(cots) == 5
    for key, idx, model, thinking, solution, full, answer, unclosed, truncated, extra, n_chars, n_refl in cots:
        cot = data[int(key[1])]["reasoning"][idx]
        assert model == cot["teacher"]
        assert thinking == cot["thought"] and solution == cot["solution"] and full == cot["full_response"]
        assert answer == "42"
        assert (unclosed, truncated) == (False, False)
        assert n_chars == len(cot["full_response"])
        assert n_refl >= 1  # "Wait, let me check"
        note = json.loads(extra or "{}").get("cot_note")
        assert note == cot.get("cot_note")  # unknown CoT fields kept in extra (null elsewhere in Parquet)
    assert [c[9] for c in cots if c[0] == "p1" and c[1] == 2] == ['{"cot_note": "hello"}']

    expected = set()
    for row in data:
        for i, cot in enumerate(row["reasoning"]):
            v = cot["thought_correctness_verify"]
            expected.add((row["id"], i, "omnithought", "label", "correct", float(v), str(v)))
            for key, metric in (("Reasoning_Verbosity", "rv"), ("Cognitive_Difficulty", "cd")):
                lv = cot[key]
                expected.add((row["id"], i, f"omnithought ({lv['judge']})", "label", metric, float(lv["level"]), None))
    got = {(k, i, n, kind, m, v, raw if m == "correct" else None) for k, i, n, kind, m, v, raw in scores_of(db, res.dataset_id)}
    assert got == expected
    # The raw value of a level is the {level, judge} object as given.
    raws = rows("SELECT DISTINCT s.raw FROM scores s WHERE s.metric = 'rv' ORDER BY 1", db=db)
    assert all(json.loads(r[0]).keys() == {"level", "judge"} for r in raws)
    assert sorted(r[0] for r in rows("SELECT name FROM score_sources", db=db)) == [
        "omnithought", "omnithought (DeepSeek-R1)", "omnithought (QwQ-32B)"]
    assert staging_leftovers(tmp_path) == []


def test_omnithought_without_full_response_and_truncated(tmp_path):
    """full_response missing: it is rebuilt from thought + solution; an unclosed think block
    marks the CoT truncated."""
    db = tmp_path / "s.duckdb"
    row = omni_row(0, 2)
    del row["reasoning"][0]["full_response"]
    row["reasoning"][1]["full_response"] = "<think>\nlong thought that never ends"
    row["reasoning"][1]["thought"] = "long thought that never ends"
    row["reasoning"][1]["solution"] = ""
    src = write_jsonl(tmp_path / "o.jsonl", [row])
    ingest(str(src), db=db)
    got = rows("SELECT sample_idx, full_text, thinking, thinking_unclosed, truncated FROM cots ORDER BY 1", db=db)
    c0 = row["reasoning"][0]
    assert got[0] == (0, f"<think>\n{c0['thought']}\n</think>\n\n{c0['solution']}", c0["thought"], False, False)
    assert got[1][2:] == ("long thought that never ends", True, True)


# =========================================================================== Qwen2.5-Math eval


def _qwen_tree(tmp_path: Path) -> Path:
    outputs = tmp_path / "outputs"
    write_qwen_run(outputs, "OrgA/ModelA", "math500", [True, False, True, True])
    write_qwen_run(outputs, "OrgA/ModelA", "aime24", [False, False, True])
    write_qwen_run(outputs, "home/user/runs/SkyLike-7B/checkpoint-20", "aime24", [True, True, False])
    # Editor litter must be ignored: a hidden copy with an extra line, and a vim swap file.
    hidden = outputs / "OrgA/ModelA/aime24_eval/aime24"
    (hidden / f".{QWEN_RUN_FILE}").write_text((hidden / QWEN_RUN_FILE).read_text() + '{"broken": \n')
    (hidden / f".{QWEN_RUN_FILE}.swp").write_bytes(b"b0VIM 8.2\x00\xff\xfe")
    return outputs


def test_qwen_eval_tree(tmp_path):
    db = tmp_path / "s.duckdb"
    outputs = _qwen_tree(tmp_path)
    assert detect_format(str(outputs), ReadOptions()) == "qwen_eval"
    assert [p.name for p in input_files(str(outputs), "qwen_eval")] == [QWEN_RUN_FILE] * 3
    res = ingest(str(outputs), db=db)
    assert (res.format, res.cots) == ("qwen_eval", 10)
    # problems are keyed by benchmark/idx: runs of one benchmark share them
    assert res.problems == 4 + 3

    per_run = rows(
        "SELECT c.model, p.benchmark, count(*), sum(s.value), min(ss.name), min(ss.kind) "
        "FROM cots c JOIN problems p USING (problem_id) JOIN scores s USING (cot_id) "
        "JOIN score_sources ss USING (source_id) GROUP BY ALL ORDER BY ALL", db=db,
    )
    assert per_run == [
        ("OrgA/ModelA", "aime24", 3, 1.0, "harness", "label"),
        ("OrgA/ModelA", "math500", 4, 3.0, "harness", "label"),
        ("SkyLike-7B/checkpoint-20", "aime24", 3, 2.0, "harness", "label"),
    ]
    metrics = rows("SELECT model, benchmark, metric, value FROM run_metrics WHERE metric IN ('acc', 'num_samples') ORDER BY ALL", db=db)
    assert metrics == [
        ("OrgA/ModelA", "aime24", "acc", 33.3), ("OrgA/ModelA", "aime24", "num_samples", 3.0),
        ("OrgA/ModelA", "math500", "acc", 75.0), ("OrgA/ModelA", "math500", "num_samples", 4.0),
        ("SkyLike-7B/checkpoint-20", "aime24", "acc", 66.7), ("SkyLike-7B/checkpoint-20", "aime24", "num_samples", 3.0),
    ]
    # non-numeric metrics ("time_use_in_minite": "0:01") are left out
    assert rows("SELECT count(*) FROM run_metrics WHERE metric = 'time_use_in_minite'", db=db) == [(0,)]

    p = rows("SELECT problem_key, reference_answer, reference_solution, extra FROM problems WHERE problem_key = 'math500/1'", db=db)
    assert p[0][:3] == ("math500/1", "2", "Add: 1 + 1 = 2.")
    assert json.loads(p[0][3]) == {"gt_cot": "1 + 1 = 2", "answer": "2"}
    c = rows(
        "SELECT c.thinking, c.solution, c.answer, c.thinking_unclosed, c.extra FROM cots c JOIN problems p USING (problem_id) "
        "WHERE p.problem_key = 'math500/1' AND c.model = 'OrgA/ModelA'", db=db,
    )
    thinking, solution, answer, unclosed, extra = c[0]
    assert thinking == "Thinking about 1, sample 0.\n\nWait, check."
    assert solution == "So the answer is $\\boxed{5}$"
    assert (answer, unclosed) == ("5", False)
    extra = json.loads(extra)
    assert extra["prompt_type"] == "x" and extra["harness_pred"] == "5"
    assert extra["run_file"] == str(outputs / "OrgA/ModelA/math500_eval/math500" / QWEN_RUN_FILE)

    from core.summary import summary

    df = summary(db=db)
    assert df.height == 3
    for r in df.iter_rows(named=True):
        assert abs(r["acc[harness]"] - r["harness_acc"]) <= 0.1
        assert r["cots"] == r["harness_num_samples"]


def test_qwen_eval_single_file_takes_model_from_path(tmp_path):
    db = tmp_path / "s.duckdb"
    run = write_qwen_run(tmp_path / "outputs", "OrgA/ModelA", "math500", [True, False])
    res = ingest(str(run), db=db)
    assert res.format == "qwen_eval"
    assert rows("SELECT DISTINCT c.model, p.benchmark FROM cots c JOIN problems p USING (problem_id)", db=db) == [
        ("OrgA/ModelA", "math500")]


def test_qwen_eval_ignores_hidden_folders(tmp_path):
    db = tmp_path / "s.duckdb"
    outputs = tmp_path / "outputs"
    run = write_qwen_run(outputs, "OrgA/ModelA", "aime24", [True, False])
    checkpoints = run.parent / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / run.name.replace(".jsonl", "-checkpoint.jsonl")).write_bytes(run.read_bytes())
    res = ingest(str(outputs), db=db)
    assert res.cots == 2


def test_qwen_eval_three_seed_runs_of_one_model(tmp_path):
    db = tmp_path / "s.duckdb"
    outputs = tmp_path / "outputs"
    run = write_qwen_run(outputs, "OrgA/ModelA", "aime24", [True, False])
    two = ingest(str(outputs), db=db, name="one-seed")
    assert two.cots == 2
    (run.parent / run.name.replace("seed0", "seed1")).write_bytes(run.read_bytes())
    assert ingest(str(outputs), db=db, name="two-seeds").cots == 4  # accepted today
    (run.parent / run.name.replace("seed0", "seed2")).write_bytes(run.read_bytes())
    assert ingest(str(outputs), db=db, name="three-seeds").cots == 6  # rejected today


# =========================================================================== OpenR1


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_openr1(tmp_path, suffix):
    db = tmp_path / "s.duckdb"
    data = [openr1_row(0), openr1_row(1)]
    src = WRITERS[suffix](tmp_path / f"r1.{suffix}", data)
    res = ingest(str(src), db=db)
    assert (res.format, res.problems, res.cots) == ("openr1", 2, 4)
    probs = rows("SELECT problem_key, question, reference_answer, reference_solution, extra FROM problems ORDER BY 1", db=db)
    assert [p[:4] for p in probs] == [(f"u-{i}", data[i]["problem"], "7", "3 + 4 = 7") for i in range(2)]
    assert json.loads(probs[0][4]) == {"uuid": "u-0", "source": "olympiads"}
    got = rows("SELECT sample_idx, finish_reason, truncated, thinking_unclosed, answer, extra FROM cots "
               "WHERE problem_id = (SELECT problem_id FROM problems WHERE problem_key = 'u-0') ORDER BY 1", db=db)
    assert got == [
        (0, "stop", False, False, "7", '{"is_reasoning_complete": true}'),
        (1, "length", True, True, None, '{"is_reasoning_complete": false}'),
    ]
    sc = scores_of(db, res.dataset_id)
    assert {(k, i, n, m, v) for k, i, n, _, m, v, _ in sc if k == "u-0"} == {
        ("u-0", 0, "openr1 math_verify", "correct", 1.0), ("u-0", 1, "openr1 math_verify", "correct", 0.0),
        ("u-0", 0, "openr1 llama judge", "correct", 1.0), ("u-0", 1, "openr1 llama judge", "correct", None),
    }
    assert len(sc) == 8


def test_openr1_length_mismatch_is_located(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    bad = openr1_row(1)
    bad["finish_reasons"] = ["stop"]
    src = write_jsonl(tmp_path / "r1.jsonl", [openr1_row(0), bad])
    with pytest.raises(IngestError) as err:
        ingest(str(src), db=db)
    assert (err.value.file, err.value.line, err.value.field) == (str(src), 2, "finish_reasons")
    assert snapshot(db) == before


# =========================================================================== generic


GENERIC_MAP = {"question": "prompt", "response": "output", "model": "gen_model", "correct": "is_correct",
               "score:rv": "verbosity", "answer": "ref"}


def _generic_rows() -> list[dict]:
    return [
        {"prompt": "Q one?", "output": "<think>hm</think> It is \\boxed{1}", "gen_model": "m1", "is_correct": "true", "verbosity": "3", "ref": "1", "note": "a"},
        {"prompt": "Q one?", "output": "It is \\boxed{2}", "gen_model": "m2", "is_correct": "false", "verbosity": "7.5", "ref": "1", "note": "b"},
        {"prompt": "Q two?", "output": "It is \\boxed{5}", "gen_model": "m1", "is_correct": "true", "verbosity": "1", "ref": "5", "note": "c"},
    ]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_generic_with_mapping(tmp_path, suffix):
    db = tmp_path / "s.duckdb"
    writer = write_csv if suffix == "csv" else write_jsonl
    src = writer(tmp_path / f"gen.{suffix}", _generic_rows())
    opts = ReadOptions(mapping=dict(GENERIC_MAP))
    assert detect_format(str(src), opts) == "generic"  # a mapping and no known shape
    res = ingest(str(src), db=db, opts=opts, name="gen-ds")
    assert (res.format, res.problems, res.cots) == ("generic", 2, 3)  # rows grouped by question
    got = rows(
        "SELECT p.question, p.reference_answer, c.model, c.sample_idx, c.full_text, c.thinking, c.answer, c.extra "
        "FROM cots c JOIN problems p USING (problem_id) ORDER BY 1, 3", db=db,
    )
    assert [g[:7] for g in got] == [
        # no sample column: each (problem, model) is numbered from 0 in reading order
        ("Q one?", "1", "m1", 0, "<think>hm</think> It is \\boxed{1}", "hm", "1"),
        ("Q one?", "1", "m2", 0, "It is \\boxed{2}", None, "2"),
        ("Q two?", "5", "m1", 0, "It is \\boxed{5}", None, "5"),
    ]
    assert [json.loads(g[7]) for g in got] == [{"note": "a"}, {"note": "b"}, {"note": "c"}]
    # score columns become the dataset's own label source, named after the dataset
    assert rows("SELECT name, kind FROM score_sources", db=db) == [("gen-ds", "label")]
    sc = rows("SELECT c.model, p.question, s.metric, s.value FROM scores s JOIN cots c USING (cot_id) "
              "JOIN problems p ON p.problem_id = c.problem_id ORDER BY ALL", db=db)
    assert sc == [
        ("m1", "Q one?", "correct", 1.0), ("m1", "Q one?", "rv", 3.0),
        ("m1", "Q two?", "correct", 1.0), ("m1", "Q two?", "rv", 1.0),
        ("m2", "Q one?", "correct", 0.0), ("m2", "Q one?", "rv", 7.5),
    ]


def test_generic_id_and_sample_columns(tmp_path):
    db = tmp_path / "s.duckdb"
    data = [{"qid": 7, "q": "Same text", "r": f"resp {k}", "k": k} for k in range(3)]
    data.append({"qid": 8, "q": "Same text", "r": "other", "k": 0})  # same text, other id: another problem
    src = write_jsonl(tmp_path / "g.jsonl", data)
    opts = ReadOptions(mapping={"question": "q", "response": "r", "id": "qid", "sample": "k"}, model="fixed-model")
    res = ingest(str(src), db=db, opts=opts)
    assert (res.problems, res.cots) == (2, 4)
    assert rows("SELECT p.problem_key, c.sample_idx, c.model FROM cots c JOIN problems p USING (problem_id) ORDER BY ALL", db=db) == [
        ("7", 0, "fixed-model"), ("7", 1, "fixed-model"), ("7", 2, "fixed-model"), ("8", 0, "fixed-model")]


def test_generic_duplicate_cot_is_located(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    data = [{"q": "A?", "r": "x", "k": 0}, {"q": "B?", "r": "y", "k": 0}, {"q": "A?", "r": "z", "k": 0}]
    src = write_jsonl(tmp_path / "g.jsonl", data)
    with pytest.raises(IngestError) as err:
        ingest(str(src), db=db, opts=ReadOptions(mapping={"question": "q", "response": "r", "sample": "k"}))
    assert (err.value.file, err.value.line, err.value.field) == (str(src), 3, "sample")
    assert snapshot(db) == before


def test_generic_needs_a_mapping(tmp_path):
    db = tmp_path / "s.duckdb"
    src = write_jsonl(tmp_path / "g.jsonl", [{"foo": "a", "bar": "b"}])
    with pytest.raises(IngestError, match="--format") as err:
        ingest(str(src), db=db)  # no known shape, no mapping
    assert (err.value.file, err.value.line, err.value.field) == (str(src), 1, None)
    with pytest.raises(IngestError, match="--map question=COL,response=COL"):
        ingest(str(src), db=db, fmt="generic")


# =========================================================================== datasets folder


def test_datasets_save_to_disk_folder(tmp_path):
    import datasets

    db = tmp_path / "s.duckdb"
    folder = tmp_path / "r1_ds"
    datasets.Dataset.from_list([openr1_row(i) for i in range(3)]).save_to_disk(str(folder))
    assert detect_format(str(folder), ReadOptions()) == "openr1"
    res = ingest(str(folder), db=db)
    assert (res.format, res.name, res.problems, res.cots) == ("openr1", "r1_ds", 3, 6)
    assert rows("SELECT count(*) FILTER (WHERE truncated), count(*) FROM cots", db=db) == [(3, 6)]
    # the same folder again is recognised by its content hash
    assert ingest(str(folder), db=db).already_present


def test_datasets_dict_split(tmp_path):
    import datasets

    db = tmp_path / "s.duckdb"
    folder = tmp_path / "omni_dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(omni_rows(4, 2)),
        "test": datasets.Dataset.from_list(omni_rows(1, 3)),
    }).save_to_disk(str(folder))
    res = ingest(str(folder), db=db, opts=ReadOptions(split="test"))
    assert (res.format, res.problems, res.cots) == ("omnithought", 1, 3)
    res2 = ingest(str(folder), db=db, name="omni_train")  # default split: train
    assert (res2.problems, res2.cots, res2.already_present) == (4, 8, False)
    with pytest.raises(IngestError, match="no split 'validation'"):
        ingest(str(folder), db=db, name="v", opts=ReadOptions(split="validation"))


# =========================================================================== benchmarks


def test_benchmark_gsm8k_and_math500(tmp_path):
    db = tmp_path / "s.duckdb"
    gsm = write_jsonl(tmp_path / "gsm8k_test.jsonl", [
        {"question": "Janet has 16 eggs...", "answer": "16 - 3 - 4 = 9\n9 * 2 = <<9*2=18>>18\n#### 18"},
        {"question": "A robe takes 2 bolts...", "answer": "2 + 1 = 3\n#### 3"},
    ])
    res = ingest(str(gsm), db=db)
    assert (res.format, res.problems, res.cots) == ("benchmark", 2, 0)
    got = rows("SELECT benchmark, question, reference_answer, reference_solution FROM problems ORDER BY problem_key", db=db)
    assert got[0] == ("gsm8k", "Janet has 16 eggs...", "18", "16 - 3 - 4 = 9\n9 * 2 = <<9*2=18>>18\n#### 18")
    assert got[1][2] == "3"

    m5 = write_jsonl(tmp_path / "math500_test.jsonl", [
        {"problem": "Convert (0,3).", "solution": "r = 3 ... \\boxed{(3, \\frac{\\pi}{2})}", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
         "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"},
    ])
    res = ingest(str(m5), db=db)
    got = rows("SELECT problem_key, benchmark, reference_answer, extra FROM problems WHERE dataset_id = ?", [res.dataset_id], db=db)
    assert got[0][:3] == ("test/precalculus/807.json", "math500", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert json.loads(got[0][3]) == {"subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}


# =========================================================================== detection / override


def test_detection_of_each_format(tmp_path):
    import datasets

    cases = {
        "omnithought": write_jsonl(tmp_path / "a.jsonl", omni_rows(1)),
        "openr1": write_parquet(tmp_path / "b.parquet", [openr1_row(0)]),
        "qwen_eval": write_qwen_run(tmp_path / "outputs", "O/M", "gsm8k", [True]),
        "benchmark": write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "answer": 70}]),
    }
    for fmt, path in cases.items():
        assert detect_format(str(path), ReadOptions()) == fmt, path
    assert detect_format(str(tmp_path / "outputs"), ReadOptions()) == "qwen_eval"
    assert detect_format(str(write_json(tmp_path / "d.json", omni_rows(1))), ReadOptions()) == "omnithought"
    datasets.Dataset.from_list(omni_rows(2)).save_to_disk(str(tmp_path / "ds"))
    assert detect_format(str(tmp_path / "ds"), ReadOptions()) == "omnithought"
    (tmp_path / "plain").mkdir()
    with pytest.raises(IngestError, match="a folder must be"):
        detect_format(str(tmp_path / "plain"), ReadOptions())


def test_format_override(tmp_path):
    """Rows with question + answer look like a benchmark; --format generic reads their
    responses as CoTs instead."""
    data = [{"question": f"Q{i}", "answer": str(i), "response": f"The answer is \\boxed{{{i}}}", "model": "m"} for i in range(3)]
    src = write_jsonl(tmp_path / "qa.jsonl", data)
    assert detect_format(str(src), ReadOptions()) == "benchmark"
    db = tmp_path / "s.duckdb"
    detected = ingest(str(src), db=db)
    assert (detected.format, detected.cots) == ("benchmark", 0)
    opts = ReadOptions(mapping={"question": "question", "response": "response", "model": "model", "answer": "answer"})
    forced = ingest(str(src), db=db, fmt="generic", opts=opts, name="qa-generic")
    assert (forced.format, forced.problems, forced.cots, forced.already_present) == ("generic", 3, 3, False)
    assert rows("SELECT format FROM datasets ORDER BY dataset_id", db=db) == [("benchmark",), ("generic",)]
    # an explicit format that does not fit the rows fails on the first row, located
    with pytest.raises(IngestError) as err:
        ingest(str(src), db=db, fmt="openr1", name="qa-r1")
    assert (err.value.line, err.value.field) == (1, "problem")


# =========================================================================== bad input


def _big_line(mb: float) -> str:
    row = omni_row(1)
    row["reasoning"][0]["thought"] = "x" * int(mb * 1024 * 1024)
    return json.dumps(row)


def _case_broken_json(d: Path):
    good = json.dumps(omni_row(0))
    return write_lines(d / "broken.jsonl", [good, '{"question": "q", "reasoning": [{"thought": ', good]), {}, 2, None


def _case_wrong_type(d: Path):
    bad = omni_row(1)
    bad["reasoning"] = "a string, not a list"
    return write_jsonl(d / "wrong_type.jsonl", [omni_row(0), bad]), {}, 2, "reasoning"


def _case_wrong_nested_type(d: Path):
    bad = omni_row(2, 3)
    bad["reasoning"][1]["Reasoning_Verbosity"]["level"] = "high"
    return write_jsonl(d / "nested.jsonl", [omni_row(0), omni_row(1), bad]), {}, 3, "reasoning[1].Reasoning_Verbosity.level"


def _case_level_out_of_range_parquet(d: Path):
    bad = omni_row(1)
    bad["reasoning"][0]["Cognitive_Difficulty"]["level"] = 12
    return write_parquet(d / "levels.parquet", [omni_row(0), bad]), {}, 2, "reasoning[0].Cognitive_Difficulty.level"


def _case_missing_field(d: Path):
    bad = omni_row(2)
    del bad["question"]
    return write_jsonl(d / "missing.jsonl", [omni_row(0), omni_row(1), bad]), {}, 3, "question"


def _case_missing_field_json_array(d: Path):
    bad = omni_row(1)
    bad["question"] = None
    return write_json(d / "missing.json", [omni_row(0), bad]), {}, 2, "question"


def _case_non_utf8(d: Path):
    good = json.dumps(omni_row(0))
    bad = json.dumps(omni_row(1)).encode().replace(b"Question 1", b"Question \xff\xfe 1")
    return write_lines(d / "latin.jsonl", [good, bad]), {}, 2, None


def _case_empty(d: Path):
    (d / "empty.jsonl").write_bytes(b"")
    return d / "empty.jsonl", {}, None, None


def _case_blank_lines_only(d: Path):
    (d / "blank.jsonl").write_bytes(b"\n  \n\n")
    return d / "blank.jsonl", {"fmt": "omnithought"}, None, None


def _case_header_only_csv(d: Path):
    (d / "header.csv").write_text("prompt,output\n")
    return d / "header.csv", {"opts": ReadOptions(mapping={"question": "prompt", "response": "output"})}, None, None


def _case_empty_csv_value(d: Path):
    path = write_csv(d / "gen.csv", [{"prompt": "a", "output": "x"}, {"prompt": "b", "output": ""}])
    return path, {"opts": ReadOptions(mapping={"question": "prompt", "response": "output"})}, 3, "output"


def _case_line_over_limit(d: Path):
    path = write_lines(d / "long.jsonl", [json.dumps(omni_row(0)), _big_line(2.0), json.dumps(omni_row(2))])
    return path, {"opts": ReadOptions(max_line_mb=1)}, 2, None


def _case_duplicate_id(d: Path):
    rows_ = [omni_row(0, id="dup-1"), omni_row(1, id="other"), omni_row(0, id="dup-1")]
    return write_jsonl(d / "dups.jsonl", rows_), {}, 3, "id"


def _case_not_an_object(d: Path):
    return write_lines(d / "list.jsonl", [json.dumps(omni_row(0)), "[1, 2, 3]"]), {}, 2, None


BAD_CASES = {
    "broken_json": _case_broken_json,
    "wrong_type": _case_wrong_type,
    "wrong_nested_type": _case_wrong_nested_type,
    "level_out_of_range_parquet": _case_level_out_of_range_parquet,
    "missing_field": _case_missing_field,
    "missing_field_json_array": _case_missing_field_json_array,
    "non_utf8": _case_non_utf8,
    "empty_file": _case_empty,
    "blank_lines_only": _case_blank_lines_only,
    "header_only_csv": _case_header_only_csv,
    "empty_csv_value": _case_empty_csv_value,
    "line_over_limit": _case_line_over_limit,
    "duplicate_id": _case_duplicate_id,
    "not_an_object": _case_not_an_object,
}


def _assert_rejected(tmp_path: Path, db: Path, path: Path, kwargs: dict, line, field):
    before = snapshot(db)
    with pytest.raises(IngestError) as err:
        ingest(str(path), db=db, **kwargs)
    exc = err.value
    assert (exc.file, exc.line, exc.field) == (str(path), line, field), str(exc)
    assert str(exc).startswith(str(path) + (f", {exc.unit} {line}" if line is not None else ""))
    assert snapshot(db) == before  # the store is as it was, row for row
    assert staging_leftovers(db.parent) == []
    assert not list(db.parent.glob("*bad-rows*"))
    return exc


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_located_and_store_unchanged(tmp_path, case):
    db = seeded_store(tmp_path)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    path, kwargs, line, field = BAD_CASES[case](bad_dir)
    exc = _assert_rejected(tmp_path, db, path, kwargs, line, field)
    expected_unit = {"parquet": "row", "json": "item"}.get(path.suffix.lstrip("."), "line")
    assert exc.unit == expected_unit
    if case == "line_over_limit":
        assert "over the 1 MB limit" in exc.message
    if case == "non_utf8":
        assert "UTF-8" in exc.message
    if case == "duplicate_id":
        assert "dup-1" in exc.message and "line 1" in exc.message
    if case in ("empty_file", "blank_lines_only", "header_only_csv"):
        assert "empty" in exc.message
    # with the format given explicitly the same error comes from the read stage
    if "fmt" not in kwargs and case not in ("empty_file", "header_only_csv"):
        fmt = "generic" if path.suffix == ".csv" else "omnithought"
        _assert_rejected(tmp_path, db, path, kwargs | {"fmt": fmt}, line, field)


def test_real_50mb_line_rejected_at_default_limit(tmp_path):
    db = seeded_store(tmp_path)
    path = write_lines(tmp_path / "huge.jsonl", [json.dumps(omni_row(0)), _big_line(50)])
    t0 = time.perf_counter()
    exc = _assert_rejected(tmp_path, db, path, {}, 2, None)
    assert "over the 32 MB limit" in exc.message
    assert time.perf_counter() - t0 < 20


def test_non_utf8_csv_is_located(tmp_path):
    db = seeded_store(tmp_path)
    path = tmp_path / "latin.csv"
    path.write_bytes(b"prompt,output\nQ1,fine\nQ2,caf\xe9 au lait\nQ3,fine\n")
    _assert_rejected(tmp_path, db, path, {"opts": ReadOptions(mapping={"question": "prompt", "response": "output"})}, 3, None)


def test_unknown_suffix_and_missing_input(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(IngestError, match="unknown file type '.txt'") as err:
        ingest(str(txt), db=db)
    assert (err.value.file, err.value.line) == (str(txt), None)
    assert snapshot(db) == before


# --------------------------------------------------------------------------- skip_bad


def _mixed_file(d: Path) -> Path:
    wrong = omni_row(3)
    wrong["reasoning"] = "not a list"
    lines = [
        json.dumps(omni_row(0, id="a")),           # 1 good
        '{"question": "q", "reasoning": [',        # 2 broken JSON
        json.dumps(omni_row(1, id="b")),           # 3 good
        json.dumps(wrong | {"id": "c"}),           # 4 wrong type
        json.dumps(omni_row(0, id="a")),           # 5 duplicate id
        json.dumps(omni_row(4, 3, id="d")),        # 6 good
    ]
    return write_lines(d / "mixed.jsonl", lines)


def test_skip_bad_ingests_good_rows_and_reports_bad(tmp_path):
    db = seeded_store(tmp_path)
    before = counts(db)
    src = _mixed_file(tmp_path)
    report = tmp_path / "report.jsonl"
    res = ingest(str(src), db=db, skip_bad=True, report_path=report)
    assert (res.problems, res.cots, res.skipped_rows, res.bad_rows_report) == (3, 7, 3, str(report))
    got = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(g["file"], g["line"], g["field"], g["unit"]) for g in got] == [
        (str(src), 2, None, "line"), (str(src), 4, "reasoning", "line"), (str(src), 5, "id", "line")]
    assert all(g["message"] for g in got)
    assert rows("SELECT problem_key FROM problems WHERE dataset_id = ? ORDER BY 1", [res.dataset_id], db=db) == [("a",), ("b",), ("d",)]
    assert counts(db)["cots"] == before["cots"] + 7
    # the problem of a skipped duplicate keeps only its first row's CoTs
    assert rows("SELECT count(*) FROM cots c JOIN problems p USING (problem_id) WHERE p.problem_key = 'a'", db=db) == [(2,)]


def test_skip_bad_default_report_path(tmp_path):
    db = tmp_path / "s.duckdb"
    res = ingest(str(_mixed_file(tmp_path)), db=db, skip_bad=True, name="mixed")
    assert res.bad_rows_report == str(tmp_path / "ingest-mixed-bad-rows.jsonl")
    assert len(Path(res.bad_rows_report).read_text().splitlines()) == 3


def test_skip_bad_cannot_skip_file_level_errors_or_all_bad(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="empty"):
        ingest(str(empty), db=db, fmt="omnithought", skip_bad=True)
    all_bad = write_lines(tmp_path / "all_bad.jsonl", ["{", "{"])
    with pytest.raises(IngestError, match="no valid rows") as err:
        ingest(str(all_bad), db=db, fmt="omnithought", skip_bad=True)
    assert err.value.file == str(all_bad) and "2 bad rows" in err.value.message
    assert snapshot(db) == before


# =========================================================================== twice


def test_same_file_twice_is_already_present(tmp_path):
    db = tmp_path / "s.duckdb"
    src = write_jsonl(tmp_path / "o.jsonl", omni_rows(3, 2))
    first = ingest(str(src), db=db)
    assert not first.already_present
    before = snapshot(db)
    again = ingest(str(src), db=db)
    assert (again.already_present, again.dataset_id, again.problems, again.cots, again.name) == (True, first.dataset_id, 3, 6, "o")
    renamed = ingest(str(src), db=db, name="other-name")  # same content under another name
    assert (renamed.already_present, renamed.dataset_id) == (True, first.dataset_id)
    assert snapshot(db) == before
    # a copy elsewhere with the same bytes and file name is the same content
    copy = tmp_path / "elsewhere" / "o.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    assert ingest(str(copy), db=db).already_present
    # other content under a taken name is refused, located at the source
    other = write_jsonl(tmp_path / "x" / "o.jsonl", omni_rows(4, 2))
    with pytest.raises(IngestError, match="already in the store") as err:
        ingest(str(other), db=db)
    assert err.value.file == str(other)
    assert snapshot(db) == before


def test_same_file_other_mapping_is_new(tmp_path):
    db = tmp_path / "s.duckdb"
    src = write_jsonl(tmp_path / "g.jsonl", [{"q": "A?", "r": "x", "s": "1"}])
    a = ingest(str(src), db=db, opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    b = ingest(str(src), db=db, name="g2", opts=ReadOptions(mapping={"question": "q", "response": "r", "score:rv": "s"}))
    assert not b.already_present and b.dataset_id != a.dataset_id


# =========================================================================== failure mid-load


def _chunked_input(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(ingest_mod, "CHUNK_COTS", 3)
    monkeypatch.setattr(ingest_mod, "LOAD_COTS", 3)  # one transaction per staged chunk
    return write_jsonl(tmp_path / "chunky.jsonl", omni_rows(10, 2))  # 10 problems x 2 CoTs: 5 chunks of 4


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc_type", [Boom, KeyboardInterrupt])
def test_failure_after_committed_chunks_leaves_store_as_it_was(tmp_path, monkeypatch, exc_type):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    src = _chunked_input(tmp_path, monkeypatch)
    seen = {}

    def progress(stage, done, total):
        if stage == "load":
            seen["total"] = total
            if done == 2:
                # two chunks are committed under the invisible 'loading' dataset row
                seen["mid"] = store.read_rows(
                    "SELECT d.status, count(c.cot_id) FROM datasets d JOIN cots c USING (dataset_id) GROUP BY ALL ORDER BY 1",
                    db=db)
                raise exc_type("stop after chunk 2")

    with pytest.raises(exc_type):
        ingest(str(src), db=db, progress=progress)
    assert seen["total"] == 5
    assert seen["mid"] == [("loading", 8), ("ready", 4)]
    assert snapshot(db) == before
    assert staging_leftovers(tmp_path) == []
    # and the same file ingests cleanly afterwards (nothing half-registered blocks it)
    monkeypatch.setattr(ingest_mod, "CHUNK_COTS", 5000)
    res = ingest(str(src), db=db)
    assert (res.already_present, res.cots) == (False, 20)


def test_database_error_inside_a_chunk_leaves_store_as_it_was(tmp_path, monkeypatch):
    """Chunk 2's staged file is damaged: its transaction fails inside DuckDB, after chunks 0
    and 1 were committed."""
    db = seeded_store(tmp_path)
    before = snapshot(db)
    src = _chunked_input(tmp_path, monkeypatch)
    real = ingest_mod._load_chunks
    calls = []

    def damaged(db_, folder, dataset_id, chunks, progress):
        calls.append(chunks)
        (folder / "cots" / "000002.parquet").write_bytes(b"PAR1 this is not parquet")
        return real(db_, folder, dataset_id, chunks, progress)

    monkeypatch.setattr(ingest_mod, "_load_chunks", damaged)
    with pytest.raises(Exception) as err:
        ingest(str(src), db=db)
    assert not isinstance(err.value, IngestError)
    assert calls == [5]
    assert snapshot(db) == before
    assert staging_leftovers(tmp_path) == []


def test_failed_load_leaves_no_new_score_sources(tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    ingest(str(write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"question": "q", "answer": "#### 1"}])), db=db)
    before = snapshot(db)
    assert before["score_sources"] == []
    src = _chunked_input(tmp_path, monkeypatch)

    def progress(stage, done, total):
        if stage == "load" and done == 2:
            raise Boom("stop after chunk 2")

    with pytest.raises(Boom):
        ingest(str(src), db=db, progress=progress)
    after = snapshot(db)
    assert {t: v for t, v in after.items() if t != "score_sources"} == {t: v for t, v in before.items() if t != "score_sources"}
    assert after["score_sources"] == before["score_sources"]


@pytest.mark.spawns_processes
def test_chunks_load_in_groups_of_a_row_group_with_the_same_rows(tmp_path, monkeypatch):
    """Staged chunks of 4 CoTs load in transactions of at least LOAD_COTS (8) CoTs: 5 chunks
    make 3 transactions, and the store holds exactly what one transaction per chunk gives."""
    from core.text import MarkerCounter, load_markers

    src = write_jsonl(tmp_path / "chunky.jsonl", omni_rows(10, 2))
    monkeypatch.setattr(ingest_mod, "CHUNK_COTS", 3)
    tables = {}
    for load_cots in (3, 8):
        monkeypatch.setattr(ingest_mod, "LOAD_COTS", load_cots)
        db = tmp_path / f"s{load_cots}.duckdb"
        seen = []
        res = ingest(str(src), db=db, progress=lambda stage, done, total: stage == "load" and seen.append((done, total)))
        assert res.cots == 20
        assert seen == [(i, 5 if load_cots == 3 else 3) for i in range(1, len(seen) + 1)]
        tables[load_cots] = {
            "problems": rows("SELECT * FROM problems ORDER BY problem_id", db=db),
            "cots": rows("SELECT * EXCLUDE (reflections), map_entries(reflections) FROM cots ORDER BY cot_id", db=db),
            # source ids follow the order sources are first met, which DISTINCT leaves open
            "scores": rows("SELECT s.* EXCLUDE (source_id), ss.name FROM scores s JOIN score_sources ss USING (source_id) ORDER BY ALL", db=db),
        }
    assert tables[3] == tables[8]
    # the column-wise reflections map holds every marker name with its count, in order
    counter = MarkerCounter(load_markers())
    for row in rows("SELECT full_text, map_entries(reflections), n_reflections FROM cots", db=tmp_path / "s8.duckdb"):
        expected = counter.count(row[0])
        assert [(e["key"], e["value"]) for e in row[1]] == list(expected.items())
        assert row[2] == sum(expected.values())


# --------------------------------------------------------------------------- abandoned loads


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_loading_dataset(db: Path, dataset_id: int, pid: int) -> None:
    base = dataset_id << store.ID_SHIFT
    with store.connect(db, read_only=False) as con:
        con.execute(
            "INSERT INTO datasets (dataset_id, name, source, format, status, options) VALUES (?, ?, 'x', 'omnithought', 'loading', ?)",
            [dataset_id, f"half-{dataset_id}", json.dumps({"pid": pid})])
        con.execute("INSERT INTO problems (problem_id, dataset_id, problem_key, question) VALUES (?, ?, 'k', 'q')", [base, dataset_id])
        con.execute(
            "INSERT INTO cots (cot_id, problem_id, dataset_id, sample_idx, full_text, thinking_unclosed, truncated, "
            "n_chars, n_paragraphs, n_reflections) VALUES (?, ?, ?, 0, 't', false, false, 1, 1, 0)",
            [base + (1 << 31), base, dataset_id])
        con.execute("INSERT INTO scores (cot_id, source_id, metric, value) VALUES (?, 1, 'correct', 1)", [base + (1 << 31)])
        con.execute("INSERT INTO run_metrics VALUES (?, 'm', 'b', 'acc', 1.0)", [dataset_id])


@pytest.mark.spawns_processes
def test_clean_abandoned_loads(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    dead = _dead_pid()
    _fake_loading_dataset(db, 7, dead)
    _fake_loading_dataset(db, 8, __import__("os").getpid())  # still loading in a live process
    assert clean_abandoned_loads(db) == [7]
    after = snapshot(db)
    assert [r[0] for r in after["datasets"]] == [1, 8]
    assert rows("SELECT count(*) FROM cots WHERE dataset_id = 7", db=db) == [(0,)]
    assert rows("SELECT count(*) FROM scores WHERE cot_id >= ? AND cot_id < ?", [7 << 32, 8 << 32], db=db) == [(0,)]
    assert rows("SELECT count(*) FROM run_metrics WHERE dataset_id = 7", db=db) == [(0,)]
    # removing the live one too gives back exactly the original store
    store.drop_dataset(8, db=db)
    assert snapshot(db) == before
    # an ingest starts by cleaning abandoned loads
    _fake_loading_dataset(db, 9, dead)
    res = ingest(str(write_jsonl(tmp_path / "next.jsonl", omni_rows(1, 2))), db=db)
    assert [r[0] for r in rows("SELECT dataset_id FROM datasets ORDER BY 1", db=db)] == [1, res.dataset_id]
    assert rows("SELECT count(*) FROM problems WHERE dataset_id = 9", db=db) == [(0,)]


# =========================================================================== CLI


def cli(db: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "--db", str(db), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_ingest_with_stages_summary_and_twice(tmp_path):
    db = tmp_path / "cli.duckdb"
    src = write_jsonl(tmp_path / "omni_cli.jsonl", [omni_row(0, 2, reference_answer="42"), omni_row(1, 2, reference_answer="42")])
    out = cli(db, "ingest", str(src))
    assert out.returncode == 0, out.stderr
    assert "Ingested 'omni_cli' (id 1, format omnithought): 2 problems, 4 CoTs." in out.stdout
    # verify and token stages ran
    assert rows("SELECT count(n_tokens), count(*) FROM cots", db=db) == [(4, 4)]
    assert rows("SELECT count(*), sum(s.value) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'math-verify'", db=db) == [(4, 4.0)]

    again = cli(db, "ingest", str(src))
    assert again.returncode == 0 and "Already in the store as dataset 'omni_cli' (id 1" in again.stdout

    summ = cli(db, "summary", "--json")
    assert summ.returncode == 0, summ.stderr
    table = json.loads(summ.stdout)
    assert {(r["dataset"], r["model"], r["cots"]) for r in table} == {("omni_cli", "DeepSeek-R1", 2), ("omni_cli", "QwQ-32B", 2)}
    assert all(r["acc[math-verify]"] == 100.0 for r in table)
    assert {r["model"]: r["acc[omnithought]"] for r in table} == {"DeepSeek-R1": 100.0, "QwQ-32B": 0.0}


def test_cli_bad_input_exit_2(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    path, _, line, _ = _case_wrong_type(tmp_path)
    out = cli(db, "ingest", str(path), "--no-verify", "--no-tokens")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert f"error: {path}, line {line}, field 'reasoning'" in out.stderr
    assert "The store was not changed." in out.stderr
    assert snapshot(db) == before


def test_cli_generic_map_format_and_skip_bad(tmp_path):
    db = tmp_path / "cli.duckdb"
    src = write_csv(tmp_path / "gen.csv", _generic_rows() + [dict(_generic_rows()[0], prompt="Q three?", verbosity="lots")])
    report = tmp_path / "bad.jsonl"
    out = cli(db, "ingest", str(src), "--format", "generic", "--name", "g",
              "--map", "question=prompt,response=output,model=gen_model,correct=is_correct,score:rv=verbosity",
              "--skip-bad", "--report", str(report), "--no-verify", "--no-tokens")
    assert out.returncode == 0, out.stderr
    assert "Ingested 'g' (id 1, format generic): 2 problems, 3 CoTs." in out.stdout
    assert f"Skipped 1 bad rows; report: {report}" in out.stdout
    bad = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(b["file"], b["line"], b["field"]) for b in bad] == [(str(src), 5, "verbosity")]
    out = cli(db, "ingest", str(src), "--format", "nonsense")
    assert out.returncode != 0 and "--format must be one of" in out.stderr


# =========================================================================== real data


@pytest.fixture(scope="module")
def real_eval(tmp_path_factory):
    realdata = require_realdata()
    from core.summary import summary
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    db = tmp_path_factory.mktemp("real") / "real.duckdb"
    res = ingest(str(realdata / "qwen25_math_eval" / "outputs"), db=db)
    verified = verify_stage(db=db, dataset_id=res.dataset_id)
    tokens = count_tokens_stage(db=db, dataset_id=res.dataset_id)
    return {"db": db, "result": res, "verify": verified, "tokens": tokens, "summary": summary(db=db)}


def test_real_qwen_eval_matches_harness(real_eval):
    res, df = real_eval["result"], real_eval["summary"]
    assert (res.format, res.cots, res.problems) == ("qwen_eval", 25 * 30 + 5 * 500, 30 + 500)
    assert df.height == 30
    assert df.filter(df["benchmark"] == "aime24").height == 25
    assert df.filter(df["benchmark"] == "math500").height == 5
    assert df.select(["model", "benchmark"]).unique().height == 30
    for r in df.iter_rows(named=True):
        where = (r["model"], r["benchmark"])
        assert r["harness_acc"] is not None, where
        assert abs(r["acc[harness]"] - r["harness_acc"]) <= 0.1, where
        assert r["cots"] == r["harness_num_samples"], where
        assert r["counted"] == r["cots"], where  # every CoT has a token count
        assert r["acc[math-verify]"] is not None, where
    models = set(df["model"])
    assert {"Qwen/Qwen2.5-Math-7B", "meta-llama/Llama-3.1-8B", "skyov1-dl/Sky-T1-math-correct-5K-14B", "icml_models/Sky-T1-math-corrupt-0.2-32B",
            "Sky-T1-math-correct-5K-32B-ckpts/checkpoint-105"} <= models


def test_real_qwen_eval_stages_and_hidden_files(real_eval):
    db = real_eval["db"]
    assert real_eval["verify"]["cots"] == 3250
    assert real_eval["tokens"]["cots"] == 3250 and real_eval["tokens"]["tokens"] > 1_000_000
    outputs = require_realdata() / "qwen25_math_eval" / "outputs"
    assert list(outputs.rglob(".*.swp")), "the real data should hold the vim swap file this test is about"
    files = input_files(str(outputs), "qwen_eval")
    assert len(files) == 30 and not any(p.name.startswith(".") for p in files)
    run_files = rows("SELECT DISTINCT json_extract_string(extra, '$.run_file') FROM cots", db=db)
    assert len(run_files) == 30 and not any(Path(f).name.startswith(".") for (f,) in run_files)
    assert rows("SELECT json_extract(options, '$.files')::INT FROM datasets", db=db) == [(30,)]
    assert rows("SELECT count(*) FROM run_metrics WHERE metric = 'acc'", db=db) == [(30,)]
    # long-CoT runs are split at <|begin_of_thought|> ... <|end_of_thought|>
    assert rows("SELECT count(*) > 0 FROM cots WHERE thinking IS NOT NULL AND model LIKE '%Sky-T1%'", db=db) == [(True,)]


@pytest.mark.parametrize("name,n,bench", [
    ("math500_test.jsonl", 500, "math500"), ("aime24_test.jsonl", 30, "aime24"),
    ("aime25_test.jsonl", 30, "aime25"), ("gsm8k_test.jsonl", 1319, "gsm8k"),
])
def test_real_benchmarks(tmp_path, name, n, bench):
    path = require_realdata() / "benchmarks" / name
    db = tmp_path / "b.duckdb"
    res = ingest(str(path), db=db)
    assert (res.format, res.problems, res.cots) == ("benchmark", n, 0)
    got = rows("SELECT count(*), count(DISTINCT problem_key), count(reference_answer), min(benchmark), max(benchmark) FROM problems", db=db)
    assert got == [(n, n, n, bench, bench)]
    if bench == "gsm8k":
        first = rows("SELECT question, reference_answer FROM problems ORDER BY problem_id LIMIT 1", db=db)[0]
        assert first[0].startswith("Janet") and first[1] == "18"
        assert rows("SELECT count(*) FROM problems WHERE reference_answer LIKE '%#%'", db=db) == [(0,)]
    assert ingest(str(path), db=db).already_present


def test_generic_without_sample_column_numbers_repeated_responses(tmp_path):
    """Several responses of one model to one question, no sample column: samples 0, 1, 2."""
    src = write_jsonl(tmp_path / "many.jsonl", [
        {"prompt": "Q?", "output": f"answer \\boxed{{{i}}}", "who": "m1"} for i in range(3)
    ])
    res = ingest(str(src), db=tmp_path / "s.duckdb",
                 opts=ReadOptions(mapping={"question": "prompt", "response": "output", "model": "who"}))
    assert (res.problems, res.cots) == (1, 3)
    assert rows("SELECT sample_idx, answer FROM cots ORDER BY sample_idx", db=tmp_path / "s.duckdb") == [
        (0, "0"), (1, "1"), (2, "2")]


def test_generic_repeated_explicit_sample_is_an_error(tmp_path):
    src = write_jsonl(tmp_path / "dup.jsonl", [
        {"prompt": "Q?", "output": "a", "who": "m1", "i": 0},
        {"prompt": "Q?", "output": "b", "who": "m1", "i": 0},
    ])
    with pytest.raises(IngestError) as err:
        ingest(str(src), db=tmp_path / "s.duckdb",
               opts=ReadOptions(mapping={"question": "prompt", "response": "output", "model": "who", "sample": "i"}))
    assert (err.value.line, err.value.field) == (2, "sample")


# =========================================================================== names (issue 11)


def test_a_harness_tree_is_named_after_the_folder_that_holds_it_and_says_so(tmp_path):
    """Issue 11: ingesting an outputs/ tree without --name named the dataset 'outputs'."""
    db = tmp_path / "names.duckdb"
    outputs = tmp_path / "sky-evals" / "outputs"
    write_qwen_run(outputs, "OrgA/ModelA", "aime24", [True, False])
    out = cli(db, "ingest", str(outputs), "--no-verify", "--no-tokens")
    assert out.returncode == 0, out.stderr
    assert ("Ingested 'sky-evals' (id 1, format qwen_eval): 2 problems, 2 CoTs. "
            "The name comes from the folder that holds outputs/; --name sets another.") in out.stdout
    # a tree whose folders above say nothing either is named after its benchmarks
    bare = tmp_path / "results" / "eval" / "outputs"
    write_qwen_run(bare, "OrgA/ModelA", "math500", [True])
    write_qwen_run(bare, "OrgA/ModelA", "aime24", [True, True, True])
    from core.ingest import default_name, input_files

    files = input_files(str(bare), "qwen_eval")
    assert default_name(str(bare), "qwen_eval", files)[0] == tmp_path.name  # the first folder that is not generic
    assert default_name(str(outputs), "qwen_eval", files)[0] == "sky-evals"
    # other content under the same default name is refused like any taken name, and --name helps
    other = tmp_path / "x" / "sky-evals" / "outputs"
    write_qwen_run(other, "OrgB/ModelB", "aime24", [False])
    with pytest.raises(IngestError, match="already in the store"):
        ingest(str(other), db=db, opts=ReadOptions())
    res = ingest(str(other), db=db, name="sky-evals-b")
    assert (res.name, res.name_from) == ("sky-evals-b", None)


def test_model_names_take_the_last_two_folders_of_their_path(tmp_path):
    """Issue 11: one documented rule, where icml_models/... was kept and home/ubuntu/... dropped."""
    db = tmp_path / "models.duckdb"
    outputs = tmp_path / "outputs"
    for model in ("Qwen/Qwen2.5-Math-7B", "icml_models/Sky-T1-32B", "home/ubuntu/skyov1-dl/Sky-T1-14B",
                  "home/ubuntu/runs/Sky-T1-7B/checkpoint-20", "single"):
        write_qwen_run(outputs, model, "aime24", [True])
    ingest(str(outputs), name="m", db=db)
    assert {r[0] for r in rows("SELECT DISTINCT model FROM cots", db=db)} == {
        "Qwen/Qwen2.5-Math-7B", "icml_models/Sky-T1-32B", "skyov1-dl/Sky-T1-14B", "Sky-T1-7B/checkpoint-20", "single"}
    # the model's own folder ingested: its path names it by the same rule
    own = tmp_path / "own.duckdb"
    ingest(str(outputs / "home/ubuntu/skyov1-dl/Sky-T1-14B"), name="own", db=own)
    assert rows("SELECT DISTINCT model FROM cots", db=own) == [("skyov1-dl/Sky-T1-14B",)]


def test_the_cli_says_what_a_benchmark_holds_instead_of_an_empty_store(tmp_path):
    """Issue 11: after counting a benchmark's 40 problems the CLI said "the store is empty"."""
    db = tmp_path / "bench.duckdb"
    source = write_jsonl(tmp_path / "mini_test.jsonl", [{"problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(4)])
    out = cli(db, "ingest", str(source), "--no-verify", "--no-tokens")
    assert out.returncode == 0, out.stderr
    assert "Ingested 'mini_test' (id 1, format benchmark): 4 problems, 0 CoTs." in out.stdout
    assert "empty" not in out.stdout
    assert "'mini_test' holds 4 problems and no CoTs" in out.stdout
    summ = cli(db, "summary")
    assert "The store holds 1 dataset(s) with 4 problems and no CoTs" in summ.stdout and "empty" not in summ.stdout
    assert "The store is empty" in cli(tmp_path / "none.duckdb", "summary").stdout

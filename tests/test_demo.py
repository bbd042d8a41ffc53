"""Tests for the synthetic OmniThought generator (core/demo.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


from core import demo  # noqa: E402

TEACHERS = {"DeepSeek-R1", "QwQ-32B", "DeepSeek-R1-0528"}
ROW_KEYS = ["question", "reasoning", "reference_answer", "source"]
COT_KEYS = ["thought", "solution", "full_response", "teacher", "thought_correctness_verify",
            "Reasoning_Verbosity", "Cognitive_Difficulty"]
BOXED_END = re.compile(r"The final answer is \$\\boxed\{(-?\d+)\}\$\Z")

SMALL = 0.02  # text_scale for the bigger statistical runs: structure is identical, text short


@pytest.fixture(scope="module")
def rows2000():
    return list(demo.iter_problems(2000, seed=7, text_scale=SMALL))


def _is_truncated(c: dict) -> bool:
    return "</think>" not in c["full_response"]


def test_deterministic_iter():
    a = [json.dumps(r) for r in demo.iter_problems(30, seed=3, text_scale=0.1)]
    b = [json.dumps(r) for r in demo.iter_problems(30, seed=3, text_scale=0.1)]
    assert a == b
    c = [json.dumps(r) for r in demo.iter_problems(30, seed=4, text_scale=0.1)]
    assert a != c
    # A prefix does not depend on how many problems were asked for.
    d = [json.dumps(r) for r in demo.iter_problems(10, seed=3, text_scale=0.1)]
    assert d == a[:10]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_deterministic_files(tmp_path, suffix):
    p1, p2 = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    s1 = demo.write_omnithought(p1, 40, seed=11, text_scale=0.05, batch_rows=16)
    s2 = demo.write_omnithought(p2, 40, seed=11, text_scale=0.05, batch_rows=16)
    assert s1 == s2
    assert p1.read_bytes() == p2.read_bytes()
    assert s1["problems"] == 40 and s1["bytes"] == p1.stat().st_size
    assert 80 <= s1["cots"] <= 440


def test_schema_exact():
    for row in demo.iter_problems(60, seed=0, text_scale=0.05):
        assert list(row) == ROW_KEYS
        assert isinstance(row["question"], str) and row["question"]
        assert isinstance(row["reference_answer"], str)
        int(row["reference_answer"])  # an integer, as text
        assert row["source"] == "thoughtscope-demo (generated)"
        assert isinstance(row["reasoning"], list)
        assert 2 <= len(row["reasoning"]) <= 11
        for c in row["reasoning"]:
            assert list(c) == COT_KEYS
            for k in ("thought", "solution", "full_response", "teacher"):
                assert isinstance(c[k], str)
            assert c["teacher"] in TEACHERS
            assert isinstance(c["thought_correctness_verify"], bool)
            for k in ("Reasoning_Verbosity", "Cognitive_Difficulty"):
                assert list(c[k]) == ["level", "judge"]
                lvl = c[k]["level"]
                assert type(lvl) is int and 0 <= lvl <= 9
                assert isinstance(c[k]["judge"], str) and c[k]["judge"]
            if _is_truncated(c):
                assert c["solution"] == ""
                assert c["full_response"] == "<think>\n" + c["thought"]
                assert c["thought_correctness_verify"] is False
            else:
                assert c["full_response"] == ("<think>\n" + c["thought"] + "\n</think>\n\n"
                                              + c["solution"])


def test_cots_per_problem_range(rows2000):
    ns = np.array([len(r["reasoning"]) for r in rows2000])
    assert ns.min() == 2 and ns.max() == 11
    assert abs(ns.mean() - demo.MEAN_COTS_PER_PROBLEM) < 0.2
    assert demo.n_problems_for_cots(0) == 0
    n = demo.n_problems_for_cots(100_000)
    assert abs(n * demo.MEAN_COTS_PER_PROBLEM - 100_000) < demo.MEAN_COTS_PER_PROBLEM


def test_truncation_share(rows2000):
    cots = [c for r in rows2000 for c in r["reasoning"]]
    share = np.mean([_is_truncated(c) for c in cots])
    assert 0.02 <= share <= 0.04, share


def test_correctness_falls_with_cd(rows2000):
    cots = [c for r in rows2000 for c in r["reasoning"]]
    cd = np.array([c["Cognitive_Difficulty"]["level"] for c in cots])
    ok = np.array([c["thought_correctness_verify"] for c in cots])
    easy, hard = ok[cd <= 2].mean(), ok[cd >= 7].mean()
    assert easy > 0.8 and hard < 0.55 and easy - hard > 0.3, (easy, hard)


def test_rv_tracks_length_and_cd(rows2000):
    cots = [c for r in rows2000 for c in r["reasoning"]]
    rv = np.array([c["Reasoning_Verbosity"]["level"] for c in cots])
    cd = np.array([c["Cognitive_Difficulty"]["level"] for c in cots])
    ln = np.log([len(c["thought"]) for c in cots])
    assert np.corrcoef(rv, ln)[0, 1] > 0.5
    assert np.corrcoef(rv, cd)[0, 1] > 0.3
    assert len({c["teacher"] for c in cots}) == 3


def test_boxed_answer_matches_verify(rows2000):
    n_correct = n_wrong = 0
    for r in rows2000:
        for c in r["reasoning"]:
            if _is_truncated(c):
                assert c["solution"] == "" and not c["thought_correctness_verify"]
                continue
            m = BOXED_END.search(c["solution"])
            assert m, c["solution"][-80:]
            same = m.group(1) == r["reference_answer"]
            assert same == c["thought_correctness_verify"]
            n_correct += same
            n_wrong += not same
    assert n_correct > 0 and n_wrong > 0


def test_full_length_text_profile():
    """At text_scale 1: median ~3-5k tokens (4 chars each), a tail past 32k, reflections."""
    cots = [c for r in demo.iter_problems(400, seed=5) for c in r["reasoning"]]
    toks = np.array([len(c["thought"]) / 4 for c in cots])
    assert 2500 < np.median(toks) < 6000
    assert toks.max() > 32_000
    words = ("Wait,", "Hmm,", "Alternatively,", "Let me check", "But wait", "double-check")
    text = "".join(c["thought"] for c in cots[:200])
    for w in words:
        assert w in text
    assert "\n\n" in cots[0]["thought"] and "$" in text


def test_text_scale_changes_only_text():
    big = list(demo.iter_problems(25, seed=2, text_scale=1.0))
    small = list(demo.iter_problems(25, seed=2, text_scale=0.01))
    total_big = total_small = 0
    for rb, rs in zip(big, small):
        assert rb["question"] == rs["question"]
        assert rb["reference_answer"] == rs["reference_answer"]
        assert len(rb["reasoning"]) == len(rs["reasoning"])
        for cb, cs in zip(rb["reasoning"], rs["reasoning"]):
            for k in ("teacher", "thought_correctness_verify", "Reasoning_Verbosity",
                      "Cognitive_Difficulty"):
                assert cb[k] == cs[k]
            assert _is_truncated(cb) == _is_truncated(cs)
            if not _is_truncated(cb):  # same boxed answer
                assert (BOXED_END.search(cb["solution"]).group(1)
                        == BOXED_END.search(cs["solution"]).group(1))
            total_big += len(cb["full_response"])
            total_small += len(cs["full_response"])
    assert 0.005 < total_small / total_big < 0.03


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "demo.parquet"
    stats = demo.write_omnithought(path, 50, seed=9, text_scale=0.05, batch_rows=20)
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == 3
    table = pf.read()
    assert table.schema.equals(demo.arrow_schema())
    reasoning = table.schema.field("reasoning").type
    assert pa.types.is_list(reasoning) and pa.types.is_struct(reasoning.value_type)
    assert [f.name for f in reasoning.value_type] == COT_KEYS
    assert table.num_rows == stats["problems"] == 50
    expected = list(demo.iter_problems(50, seed=9, text_scale=0.05))
    assert table.to_pylist() == expected
    assert stats["cots"] == sum(len(r["reasoning"]) for r in expected)


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "demo.jsonl"
    stats = demo.write_omnithought(path, 20, seed=9, text_scale=0.05)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20
    assert [json.loads(x) for x in lines] == list(demo.iter_problems(20, seed=9, text_scale=0.05))
    assert stats["bytes"] == path.stat().st_size


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        demo.write_omnithought(tmp_path / "x.csv", 1, fmt="csv")
    with pytest.raises(ValueError):
        list(demo.iter_problems(1, text_scale=0))

"""The full-text index (core.search) on real small stores built by the real ingest: its hits
against a word-boundary scan of the same text, deletion, resuming a killed build, and the
substring fallback when the index cannot answer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import queries, search, store
from core.queries import CotFilter

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["wait", "let me check", "Hold on", "double-check", "But wait, did", "missed any constraint"]


def _ingest(path: Path, problems: int, seed: int, name: str) -> None:
    from core.demo import write_omnithought
    from core.ingest import ingest

    src = path.parent / f"{name}.parquet"
    write_omnithought(src, problems, seed=seed, text_scale=0.05)
    ingest(str(src), name=name, db=path, generated=True)


@pytest.fixture(scope="module")
def two_dataset_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search") / "two.duckdb"
    _ingest(path, 40, seed=1, name="first (generated)")
    _ingest(path, 30, seed=2, name="second (generated)")
    return path


@pytest.fixture
def db(two_dataset_template, tmp_path) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(two_dataset_template, target)
    return target


def _word_pattern(phrase: str) -> str:
    """The phrase as whole words separated by any non-alphanumerics (what the index matches,
    for ASCII text), as an RE2 pattern for DuckDB."""
    words = [re.escape(w) for w in re.split(r"[^0-9a-zA-Z]+", phrase.lower()) if w]
    return r"(^|[^[:alnum:]])" + r"[^[:alnum:]]+".join(words) + r"([^[:alnum:]]|$)"


def _expected_ids(db: Path, phrase: str) -> list[int]:
    pattern = _word_pattern(phrase)
    rows = store.read_rows(
        "SELECT c.cot_id FROM cots c JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = c.dataset_id "
        "WHERE d.status = 'ready' AND (regexp_matches(lower(c.full_text), ?) OR regexp_matches(lower(p.question), ?)) "
        "ORDER BY c.cot_id", [pattern, pattern], db=db,
    )
    return [r[0] for r in rows]


def _n_docs(db: Path) -> int:
    import tantivy

    index = tantivy.Index.open(str(search.index_dir(db)))
    index.reload()
    searcher = index.searcher()
    return searcher.search(tantivy.Query.exists_query("cot_id"), limit=1, count=True).count


def test_phrase_hits_equal_a_word_boundary_scan(db):
    result = search.build(db)
    total = store.read_rows("SELECT count(*) FROM cots", db=db)[0][0]
    assert result["indexed"] == [1, 2] and result["cots"] == total and result["text_bytes"] > 0
    assert search.coverage(db).complete
    for phrase in PHRASES:
        expected = _expected_ids(db, phrase)
        assert 0 < len(expected) < total, phrase  # the phrases discriminate in this corpus
        assert search.matching_ids(phrase, db) == expected, phrase
        f = CotFilter(text=phrase)
        assert queries.count(f, db=db)["cots"] == len(expected)
        assert queries.page(f, db=db, limit=10)["cot_id"].to_list() == expected[:10]
        assert queries.text_search_mode(phrase, db=db).startswith("index")


def test_words_not_substrings(db):
    """'wait' matches the word, not 'waiting'; the substring scan differs only there."""
    search.build(db)
    with_word = set(search.matching_ids("wait", db))
    substring = {r[0] for r in store.read_rows(
        "SELECT c.cot_id FROM cots c JOIN problems p USING (problem_id) WHERE " + queries.SUBSTRING_SQL,
        ["wait", "wait"], db=db)}
    assert with_word <= substring
    for cot_id in substring - with_word:
        text = store.read_rows("SELECT lower(full_text) FROM cots WHERE cot_id = ?", [cot_id], db=db)[0][0]
        assert not re.search(r"(?<![0-9a-z])wait(?![0-9a-z])", text)


def test_a_phrase_in_most_cots_is_carried_as_the_complement(db):
    search.build(db)
    hits = search.search("the", db)
    assert hits.complement
    expected = _expected_ids(db, "the")
    assert hits.n_cots > len(hits.cot_ids)
    assert queries.count(CotFilter(text="the"), db=db)["cots"] == len(expected)
    assert search.matching_ids("the", db) == expected


def test_text_search_combines_with_other_filters(db):
    search.build(db)
    f = CotFilter(text="let me check", datasets=("second (generated)",))
    expected = [i for i in _expected_ids(db, "let me check") if i >> store.ID_SHIFT == 2]
    assert expected
    assert queries.page(f, db=db, limit=1000)["cot_id"].to_list() == expected
    frame = queries.metric_frame(f, db=db)
    assert sorted(frame["cot_id"].to_list()) == expected


def test_without_an_index_the_substring_scan_answers(db):
    phrase = "Wait"
    assert not search.coverage(db).exists
    assert queries.text_search_mode(phrase, db=db).startswith("no search index")
    substring = store.read_rows(
        "SELECT count(*) FROM cots c JOIN problems p USING (problem_id) WHERE " + queries.SUBSTRING_SQL,
        [phrase, phrase], db=db)[0][0]
    assert queries.count(CotFilter(text=phrase), db=db)["cots"] == substring
    assert search.matching_ids(phrase, db) is None
    assert not search.index_dir(db).exists()  # a query never creates the index


def test_a_dataset_not_indexed_yet_falls_back_until_built(db, tmp_path):
    search.build(db)
    _ingest(db, 10, seed=3, name="third (generated)")
    cov = search.coverage(db)
    assert cov.missing == (3,) and not cov.complete
    assert "missing 1 dataset" in queries.text_search_mode("wait", db=db)
    substring = store.read_rows(
        "SELECT count(*) FROM cots c JOIN problems p USING (problem_id) WHERE " + queries.SUBSTRING_SQL,
        ["wait", "wait"], db=db)[0][0]
    assert queries.count(CotFilter(text="wait"), db=db)["cots"] == substring

    result = search.build(db)
    assert result["indexed"] == [3]  # only the new one
    assert search.coverage(db).complete
    assert search.matching_ids("wait", db) == _expected_ids(db, "wait")


def test_a_dropped_dataset_leaves_the_results_and_then_the_index(db):
    search.build(db)
    before = _n_docs(db)
    n_first = store.read_rows("SELECT count(*) FROM cots WHERE dataset_id = 1", db=db)[0][0]
    store.drop_dataset(1, db=db)
    # Before any rebuild its documents are still in the index but never in an answer.
    assert search.coverage(db).complete
    ids = search.matching_ids("wait", db)
    assert ids and all(i >> store.ID_SHIFT == 2 for i in ids)
    assert queries.count(CotFilter(text="the"), db=db)["cots"] == len(_expected_ids(db, "the"))
    result = search.build(db)
    assert result["removed"] == [1] and result["indexed"] == []
    assert _n_docs(db) == before - n_first


def test_a_killed_build_redoes_only_the_unfinished_dataset(db):
    class Killed(Exception):
        pass

    def die_after_second(dataset_id: int) -> None:
        if dataset_id == 2:  # committed to tantivy, not yet recorded in the manifest
            raise Killed

    with pytest.raises(Killed):
        search.build(db, after_dataset=die_after_second)
    cov = search.coverage(db)
    assert cov.covered == (1,) and cov.missing == (2,)
    assert queries.text_search_mode("wait", db=db) != "index: whole words, case-insensitive"

    result = search.build(db)
    assert result["indexed"] == [2]
    total = store.read_rows("SELECT count(*) FROM cots", db=db)[0][0]
    assert _n_docs(db) == total  # the half-recorded dataset's documents were replaced, not doubled
    assert search.matching_ids("hold on", db) == _expected_ids(db, "hold on")
    assert search.build(db)["indexed"] == []  # nothing left to do


def test_a_query_built_for_one_store_refuses_to_run_on_another(db, tmp_path):
    search.build(db)
    other = tmp_path / "other.duckdb"
    _ingest(other, 10, seed=9, name="other (generated)")
    sql, params = queries.matching_sql(CotFilter(text="wait"), db=db)
    assert "read_parquet" in sql
    with pytest.raises(Exception, match="does not belong to the store"):
        store.read_rows(f"SELECT count(*) FROM ({sql})", params, db=other)


def test_a_phrase_without_words_uses_the_substring_scan(db):
    search.build(db)
    assert search.words("?!") == []
    assert queries.text_search_mode("?!", db=db).startswith("substring")
    sql, _ = queries.matching_sql(CotFilter(text="?!"), db=db)
    assert "read_parquet" not in sql and "contains(lower(p.question)" in sql


@pytest.mark.spawns_processes
def test_index_command_builds_then_has_nothing_to_do(db):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "core", "--db", str(db), "index", "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["indexed"] == [1, 2] and result["cots"] > 0
    again = subprocess.run(cmd[:-1], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert "already covers every ready dataset" in again.stdout


@pytest.mark.spawns_processes
def test_ingest_command_indexes_the_new_dataset(tmp_path):
    from core.demo import write_omnithought

    db = tmp_path / "cli.duckdb"
    src = tmp_path / "in.parquet"
    write_omnithought(src, 8, seed=4, text_scale=0.05)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "core", "--db", str(db), "ingest", str(src), "--no-verify", "--no-tokens"],
                   capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert search.coverage(db).complete and search.coverage(db).covered == (1,)
    assert search.matching_ids("wait", db) == _expected_ids(db, "wait")


def test_a_phrase_of_a_question_finds_every_cot_of_its_problem(db):
    search.build(db)
    problem_id, question = store.read_rows(
        "SELECT problem_id, question FROM problems ORDER BY problem_id LIMIT 1", db=db)[0]
    phrase = " ".join(re.findall(r"[A-Za-z]+", question)[:4])
    expected = _expected_ids(db, phrase)
    own = [r[0] for r in store.read_rows("SELECT cot_id FROM cots WHERE problem_id = ? ORDER BY cot_id", [problem_id], db=db)]
    assert own and set(own) <= set(expected)
    assert search.matching_ids(phrase, db) == expected
    assert queries.count(CotFilter(text=phrase), db=db)["cots"] == len(expected)


def test_question_hits_and_complements_are_exact_on_a_handmade_store(tmp_path):
    """Words in most questions (the problems' complement is carried) and in some CoTs only."""
    from core.ingest import ingest
    from tests.helpers import omni_cot, omni_row, write_jsonl

    def cot(j: int, text: str) -> dict:
        return omni_cot(j, thought=text, solution="done", full_response=f"<think>\n{text}\n</think>\n\ndone")

    rows = []
    for q in range(6):
        question = f"Question {q}: " + ("the zephyr blows" if q < 5 else "calm day") + (" quokka" if q < 4 else "")
        row = omni_row(q)
        row["question"] = question
        row["reasoning"] = [cot(0, f"plain reasoning {q}"), cot(1, "a zephyr here" if q == 5 else f"more {q}")]
        rows.append(row)
    db = tmp_path / "hand.duckdb"
    ingest(str(write_jsonl(tmp_path / "hand.jsonl", rows)), name="hand", db=db)
    search.build(db)
    for phrase, n in (("zephyr", 11), ("quokka", 8), ("calm day", 2), ("zephyr here", 1), ("the zephyr", 10)):
        expected = _expected_ids(db, phrase)
        assert len(expected) == n, phrase
        assert search.matching_ids(phrase, db) == expected, phrase
        assert queries.count(CotFilter(text=phrase), db=db)["cots"] == n
    assert search.search("zephyr", db).complement

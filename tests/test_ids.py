"""Readable ids (core.ids) on stores built by the real ingest, checked against SQL written here."""

from __future__ import annotations

import pytest

from core import ids, store
from core.ingest import ingest
from helpers import omni_rows, write_jsonl


@pytest.fixture
def two_datasets(tmp_path):
    """Two OmniThought datasets whose names make the same short name, 3 and 4 problems of 2 CoTs,
    keyed '<file>:<line>' (no id field), so every key ends in ':<digits>' like a CoT's id."""
    db = tmp_path / "ids.duckdb"
    for name, folder, n in (("Omni Thought!", "a", 3), ("omni-thought", "b", 4)):
        (tmp_path / folder).mkdir()
        source = write_jsonl(tmp_path / folder / "rows.jsonl", omni_rows(n, 2))
        ingest(str(source), name=name, db=db)
    return db


def test_short_names_are_slugs_and_never_collide():
    assert ids.short_name("qwen25_math_eval") == "qwen25-math-eval"
    assert ids.short_name("demo (generated)") == "demo-generated"
    assert ids.short_name("Überprüfung 2024") == "uberprufung-2024"
    assert ids.short_name("!!!", 7) == "d7"
    assert len(ids.short_name("x" * 100)) == ids.SHORT_NAME_CHARS
    assert ids.short_names([(2, "omni-thought"), (1, "Omni Thought!")]) == {1: "omni-thought", 2: "omni-thought-2"}


def test_every_cot_has_a_readable_id_that_resolves_back(two_datasets):
    db = two_datasets
    rows = store.read_rows(
        "SELECT c.cot_id, c.problem_id, c.dataset_id, p.problem_key, "
        "(SELECT count(*) FROM cots o WHERE o.problem_id = c.problem_id AND o.cot_id < c.cot_id) "
        "FROM cots c JOIN problems p USING (problem_id) ORDER BY c.cot_id", db=db)
    assert len(rows) == 14
    readable = ids.readable_cot_ids([r[0] for r in rows], db=db)
    short = {1: "omni-thought", 2: "omni-thought-2"}
    for cot_id, problem_id, dataset_id, key, n in rows:
        assert readable[cot_id] == f"{short[dataset_id]}:{key}:{n}"
        assert ids.resolve(readable[cot_id], db=db) == ("cot", cot_id)
        assert ids.resolve(f"  {readable[cot_id]} ", db=db) == ("cot", cot_id)
        assert ids.resolve(str(cot_id), db=db) == ("cot", cot_id)  # the internal id still works
        assert ids.resolve(f"{short[dataset_id]}:{key}", db=db) == ("problem", problem_id)
        assert ids.resolve_problem(readable[cot_id], db=db) == problem_id
        assert ids.readable_problem_id(problem_id, db=db) == f"{short[dataset_id]}:{key}"
    assert ids.resolve(str(rows[0][1]), db=db) == ("problem", rows[0][1])
    for bad in ("", "nope", "omni-thought:no-such-key:0", "unknown:x:0", "99999999999", f"omni-thought:{rows[0][3]}:9"):
        assert ids.resolve(bad, db=db) is None, bad


def test_a_problem_key_with_a_colon_and_digits_is_read_as_the_problem(tmp_path):
    """A benchmark without an id field is keyed '<file>:<line>': 'short:file.jsonl:3' names that
    problem, as it has no 4th CoT... and no CoT at all."""
    db = tmp_path / "bench.duckdb"
    source = write_jsonl(tmp_path / "mini_test.jsonl", [{"problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(3)])
    ingest(str(source), fmt="benchmark", db=db)
    problem_id, key = store.read_rows("SELECT problem_id, problem_key FROM problems ORDER BY problem_id LIMIT 1", db=db)[0]
    assert ":" in key
    assert ids.resolve(f"mini-test:{key}", db=db) == ("problem", problem_id)

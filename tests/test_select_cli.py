"""`python -m core select` and `python -m core export` on the hand-built store of
tests/helpers.py (TINY, build_store), with a recipe written by hand as JSON: the ids and counts against the
hand-counted ThoughtX subset, the export's manifest against the app's own export of the same
recipe."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from core import cli, export, recipes
from tests.helpers import BOTH, TINY, build_store
from tests.helpers import cot_ids_by_position as cot_ids

HAND = {"format_version": 3, "name": "thoughtx cli",
        "sources": {"rv": list(BOTH.rv), "cd": list(BOTH.cd), "correct": list(BOTH.correct)},
        "mode": "thresholds", "params": {"rv_range": [3, 5], "cd_range": [4, 4], "require_correct": True}}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("select-cli"), TINY, tokens=False)


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    path = tmp_path / "thoughtx.json"
    path.write_text(json.dumps(HAND))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_select_prints_the_hand_counted_ids_and_counts(db, recipe_file, capsys):
    code, out, _ = run(capsys, "--db", db, "select", "--recipe", recipe_file, "--json")
    assert code == 0
    result = json.loads(out)
    ids = cot_ids(db)
    # by hand (as in test_thoughtx_thresholds_keep_the_hand_counted_cots): p0's first CoT, p2's first two
    kept = sorted(ids[k] for k in (("p0", 0), ("p2", 0), ("p2", 1)))
    assert result["kept_ids"] == kept
    assert sorted(result["dropped_ids"]) == sorted(set(ids.values()) - set(kept))
    assert (result["pool_cots"], result["kept_cots"], result["dropped_cots"]) == (13, 3, 10)
    assert sum(result["dropped_by_reason"].values()) == 10
    assert {m["group"]: m["kept"] for m in result["by_model"]} == {"DeepSeek-R1": 3, "DeepSeek-R1-0528": 0, "QwQ-32B": 0}
    # a saved recipe by its name gives the same; the text form says the same counts
    recipes.save(recipes.load(str(recipe_file)))
    code, out, _ = run(capsys, "--db", db, "select", "--recipe", "thoughtx cli")
    assert code == 0 and "kept 3 of 13 CoTs (2 of 4 problems); dropped 10." in out


def test_a_recipe_mistake_is_an_error_naming_the_field(db, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**HAND, "mode": "capacity", "params": {"capacity": "five"}}))
    code, out, err = run(capsys, "--db", db, "select", "--recipe", bad)
    assert code == 2 and out == ""
    assert err.strip() == 'error: bad.json: params.capacity: expected a number, got "five"'
    code, _, err = run(capsys, "--db", db, "select", "--recipe", "never saved")
    assert code == 2 and "no saved recipe named 'never saved'" in err
    code, _, err = run(capsys, "--db", db, "select", "--recipe", tmp_path / "missing.json")
    assert code == 2 and f"no recipe file {tmp_path / 'missing.json'}" in err


@pytest.mark.parametrize("fmt", ["trl", "parquet"])
def test_export_writes_the_apps_manifest(db, recipe_file, tmp_path, capsys, fmt):
    out = tmp_path / f"cli.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    code, printed, _ = run(capsys, "--db", db, "export", "--recipe", recipe_file, "--format", fmt, "--out", out)
    assert code == 0 and json.loads(printed)["rows"] == 3
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    app = export.export(recipes.load(str(recipe_file)), fmt, out_dir=tmp_path / "app", db=db)
    different = {"file", "path", "created_at"}
    assert {k: v for k, v in manifest.items() if k not in different} == \
        {k: v for k, v in app.manifest.items() if k not in different}
    assert manifest["sha256"] == export.sha256_of(out) and manifest["counts"]["rows"] == 3
    if fmt == "parquet":
        ids = cot_ids(db)
        assert sorted(pl.read_parquet(out)["cot_id"].to_list()) == sorted(ids[k] for k in (("p0", 0), ("p2", 0), ("p2", 1)))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 3 and all(r["messages"][1]["content"].startswith("<think>") for r in rows)
    # an existing file is not overwritten
    code, _, err = run(capsys, "--db", db, "export", "--recipe", recipe_file, "--format", fmt, "--out", out)
    assert code == 2 and "already exists" in err

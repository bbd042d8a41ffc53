"""Every token figure names its tokenizer, and counts of two tokenizers are never pooled
silently: charts, the summary table and the pages, against counts worked out by hand. Also:
Pass@k's k menu counts only samples with a known verdict."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from core import charts, metrics, store
from core.formats import ReadOptions
from core.ingest import ingest
from core.summary import summary
from core.tokens import count_tokens_stage
from tests.helpers import open_tab, write_whitespace_tokenizer

ROOT = Path(__file__).resolve().parents[1]

# model, problem, response, correct; whitespace pieces by hand (words) and with digits split
ROWS = [
    ("A", "p0", "x 12 y", True),        # words 3, digits 4
    ("A", "p0", "a b c d", False),      # 4, 4
    ("A", "p1", "7", None),             # 1, 1
    ("B", "p0", "answer 345", True),    # 2, 4
    ("B", "p1", "q r", True),           # 2, 2
    ("B", "p1", "1 2 3", None),         # 3, 3
]


def test_k_menu_counts_only_samples_with_a_known_verdict():
    frame = pl.DataFrame({
        "problem_id": [1, 1, 1, 2, 2],
        "dataset": ["d"] * 5, "model": ["m"] * 5, "benchmark": ["b"] * 5,
        "correct": [True, None, None, False, True],
    })
    # problem 1 has 3 samples but only 1 verdict; problem 2 has 2 verdicts: k goes up to 2
    assert charts.max_samples_per_problem(frame) == 2
    # and that k is usable: problem 2 counts, problem 1 (1 judged sample) is skipped
    mp = metrics.mean_and_pass_at_k(frame, k=2, group_by=charts.GROUP_COLUMNS)
    assert mp.select("problems", "problems_skipped", "pass_at_k").row(0) == (1, 1, 1.0)
    assert charts.max_samples_per_problem(frame.with_columns(pl.lit(None, dtype=pl.Boolean).alias("correct"))) == 0


def test_a_frame_names_its_tokenizer_and_splits_groups_when_it_mixes_two():
    one = pl.DataFrame({"n_tokens": [3, 4, None], "tokenizer": ["SmolLM2-135M-Instruct"] * 2 + [None]})
    assert charts.tokenizers_of(one) == {"SmolLM2-135M-Instruct": 2}
    assert charts.tokens_name(one) == "tokens (SmolLM2-135M-Instruct)"
    assert charts.group_columns(one) == charts.GROUP_COLUMNS
    two = pl.DataFrame({"n_tokens": [3, 4, 5], "tokenizer": ["a", "b", "b"]})
    assert charts.tokenizers_of(two) == {"b": 2, "a": 1}
    assert charts.tokens_name(two) == "tokens (2 tokenizers: b, a)"
    assert charts.group_columns(two) == (*charts.GROUP_COLUMNS, "tokenizer")
    acc = metrics.accuracy_at_budgets(pl.DataFrame({"dataset": ["d"], "model": ["m"], "benchmark": ["x"], "n_tokens": [5],
                                                    "correct": [True]}), budgets=[4, 8])
    fig = charts.budget_figure(acc, n_cots=1, tokens="tokens (SmolLM2-135M-Instruct)")
    assert fig.layout.xaxis.title.text == "budget in tokens (SmolLM2-135M-Instruct) (log2 scale)"


@pytest.fixture
def mixed_store(tmp_path: Path) -> tuple[Path, str, str]:
    """A store whose model A is counted by a whitespace tokenizer and model B by one that also
    splits digits (the per-model mapping)."""
    src = tmp_path / "cots.jsonl"
    src.write_text("".join(json.dumps({"id": p, "question": f"Question {p}?", "response": text, "model": model,
                                       **({} if ok is None else {"correct": ok})}) + "\n"
                           for model, p, text, ok in ROWS))
    db = tmp_path / "store.duckdb"
    ingest(str(src), name="mixed", db=db, opts=ReadOptions(mapping={
        "question": "question", "response": "response", "model": "model", "id": "id", "correct": "correct"}))
    words = str(write_whitespace_tokenizer(tmp_path / "words"))
    digits = str(write_whitespace_tokenizer(tmp_path / "digits", split_digits=True))
    mapping = tmp_path / "map.yaml"
    mapping.write_text(f"A: {words}\nB: {digits}\n")
    count_tokens_stage(db=db, tokenizer=words, per_model=True, tokenizer_map=str(mapping))
    return db, words, digits


def test_the_summary_names_the_tokenizer_and_does_not_average_across_two(mixed_store):
    db, words, digits = mixed_store
    rows = {r["model"]: r for r in summary(db=db).to_dicts()}
    assert (rows["A"]["tokenizer"], rows["A"]["mean_tokens"]) == (words, pytest.approx((3 + 4 + 1) / 3))
    assert (rows["B"]["tokenizer"], rows["B"]["mean_tokens"]) == (digits, pytest.approx((4 + 2 + 3) / 3))
    # one model's CoTs recounted in part with the other tokenizer: that group is mixed, not averaged
    with store.connect(db, read_only=False) as con:
        con.execute("UPDATE cots SET tokenizer = ? WHERE model = 'B' AND sample_idx = 0 AND problem_id = "
                    "(SELECT min(problem_id) FROM cots WHERE model = 'B')", [words])
    rows = {r["model"]: r for r in summary(db=db).to_dicts()}
    assert rows["B"]["tokenizer"] == "mixed, not pooled: " + ", ".join(sorted([words, digits]))
    assert rows["B"]["mean_tokens"] is None and rows["B"]["median_tokens"] is None and rows["B"]["counted"] == 3


def test_distributions_warns_and_draws_each_tokenizer_apart(mixed_store, app_store):
    db, words, digits = mixed_store
    app_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/distributions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("come from 2 tokenizers" in w.value for w in at.warning)
    # the length chart: a panel per tokenizer, its axis naming both
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    panels = {a["text"] for a in spec["layout"].get("annotations", [])}
    assert any(Path(words).name in p for p in panels) and any(Path(digits).name in p for p in panels)
    assert "2 tokenizers" in json.dumps(spec["layout"])
    # the sidebar's token range names the units too
    assert any(s.label.startswith("Tokens (2 tokenizers") for s in at.sidebar.slider)


def test_one_tokenizer_is_named_on_the_sidebar_and_the_budget_axis(tmp_path, app_store):
    src = tmp_path / "one.jsonl"
    src.write_text("".join(json.dumps({"id": p, "question": f"Q {p}?", "response": text, "model": model,
                                       "correct": bool(ok)}) + "\n" for model, p, text, ok in ROWS))
    db = tmp_path / "one.duckdb"
    ingest(str(src), name="one", db=db, opts=ReadOptions(mapping={
        "question": "question", "response": "response", "model": "model", "id": "id", "correct": "correct"}))
    words = str(write_whitespace_tokenizer(tmp_path / "words"))
    count_tokens_stage(db=db, tokenizer=words)
    app_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/distributions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [w for w in at.warning if "tokenizers" in w.value]
    unit = f"tokens ({Path(words).parent.name}/words)"
    assert any(s.label == unit[0].upper() + unit[1:] for s in at.sidebar.slider)
    budget = next(json.loads(c.proto.spec) for c in open_tab(at, "Accuracy and Pass@k").get("plotly_chart")
                  if "Accuracy across token budgets" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    assert budget["layout"]["xaxis"]["title"]["text"] == f"budget in {unit} (log2 scale)"


def test_the_tokenizers_from_the_filters_mask_are_those_sql_counts(mixed_store, app_store):
    """Select names the pool's tokenizers from the filter's mask over the base in memory
    (ui.frames.tokenizers): the same counts, in the same order, as queries.tokenizers."""
    from core import queries
    from core.queries import OWN_CORRECTNESS, CotFilter
    from ui import frames

    db, words, digits = mixed_store
    app_store(db)
    filters = [CotFilter(), CotFilter(models=("A",)), CotFilter(models=("B",), correct_source=OWN_CORRECTNESS),
               CotFilter(tokens_range=(0, 3)), CotFilter(text="Question")]
    seen = set()
    for f in filters:
        expected = queries.tokenizers(f, db=db)
        assert frames.tokenizers(f) == expected, f
        assert list(frames.tokenizers(f)) == list(expected), f  # largest first, then by name
        seen.add(len(expected))
    assert seen >= {1, 2}  # filters with one tokenizer and with both

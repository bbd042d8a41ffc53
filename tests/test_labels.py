"""Human labels (core/labels.py, core/label_store.py) on real stores built by the real ingest:
what is recorded and read back, which label wins, what the figure mechanism makes of them,
what survives a drop and re-ingest, JSONL export/import, queues, agreement with a judge, the
SQL console, and that a label never writes the store. Every expected value is computed here
from plain Python over the rows, not by the code under test."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from core import agreement, figures, label_store, labels, queries, recipes, selection, store
from core.demo import write_omnithought
from core.errors import UserError
from core.figures import Figure
from core.ingest import ingest
from core.queries import CotFilter


def cot_rows(db) -> list[dict]:
    with store.labels_off():
        return store.read_df(
            "SELECT c.cot_id, c.problem_id, c.full_text, c.n_chars, p.question FROM cots c "
            "JOIN problems p USING (problem_id) ORDER BY c.cot_id", db=db).to_dicts()


def md5_key(question: str, text: str) -> str:
    return hashlib.md5((question + "\x1f" + text).encode("utf-8")).hexdigest()


def file_state(db: Path) -> tuple:
    wal = db.with_name(db.name + ".wal")
    return (db.stat().st_mtime_ns, hashlib.sha256(db.read_bytes()).hexdigest(),
            wal.exists() and hashlib.sha256(wal.read_bytes()).hexdigest())


# ---------------------------------------------------------------------------- recording and reading


def test_a_label_names_its_cot_by_content_and_reads_back_with_who_and_when(demo_store):
    rows = cot_rows(demo_store)[:3]
    ids = labels.identities([r["cot_id"] for r in rows], db=demo_store)
    for r in rows:  # the key is md5(question, chr(31), response), the same in DuckDB and Python
        assert ids[r["cot_id"]]["cot_key"] == md5_key(r["question"], r["full_text"])
        assert ids[r["cot_id"]]["n_chars"] == len(r["full_text"])
    a, b = rows[0]["cot_id"], rows[1]["cot_id"]
    assert labels.record(a, {"rv": 7, "cd": 2, "flag": "exclude", labels.tag_field("Degenerate  Loop"): True,
                             "note": "repeats itself"}, annotator="alice", db=demo_store) == 5
    assert labels.record(b, {"rv": 3, "logic": 1, labels.tag_field("degenerate loop"): True},
                         annotator="bob@lab.org", db=demo_store) == 3
    got = labels.labels_of([a, b], db=demo_store)
    seen = {(r["cot_id"], r["annotator"], r["field"], r["value"], r["text"]) for r in got.iter_rows(named=True)}
    assert seen == {
        (a, "alice", "rv", 7.0, None), (a, "alice", "cd", 2.0, None), (a, "alice", "flag", 1.0, "exclude"),
        (a, "alice", "tag:degenerate loop", 1.0, "degenerate loop"), (a, "alice", "note", 1.0, "repeats itself"),
        (b, "bob@lab.org", "rv", 3.0, None), (b, "bob@lab.org", "logic", 1.0, None),
        (b, "bob@lab.org", "tag:degenerate loop", 1.0, "degenerate loop"),
    }
    assert got["labelled_at"].null_count() == 0
    assert labels.mine(got, a, "alice") == {"rv": 7, "cd": 2, "flag": "exclude", "note": "repeats itself",
                                            "tags": ["degenerate loop"], "steps": {}}
    # as score rows: one source per annotator (kind human), marks under 'annotations' too
    scores = store.read_rows(
        "SELECT ss.name, ss.kind, s.cot_id, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.kind = 'human' ORDER BY ALL", db=demo_store)
    assert set(scores) == {
        ("human: alice", "human", a, "rv", 7.0), ("human: alice", "human", a, "cd", 2.0),
        ("human: alice", "human", a, "flag:exclude", 1.0), ("human: alice", "human", a, "tag:degenerate loop", 1.0),
        ("human: alice", "human", a, "note", 1.0), ("human: bob@lab.org", "human", b, "rv", 3.0),
        ("human: bob@lab.org", "human", b, "logic", 1.0), ("human: bob@lab.org", "human", b, "tag:degenerate loop", 1.0),
        ("annotations", "human", a, "flag:exclude", 1.0), ("annotations", "human", a, "tag:degenerate loop", 1.0),
        ("annotations", "human", a, "note", 1.0), ("annotations", "human", b, "tag:degenerate loop", 1.0),
    }
    # the store's own tables are untouched, and reachable under their catalog
    with store.connect(demo_store, read_only=True) as con:
        catalog = con.execute("SELECT current_database()").fetchone()[0]
        assert con.execute(f'SELECT count(*) FROM "{catalog}".main.score_sources WHERE kind = \'human\'').fetchone()[0] == 0
    with store.labels_off():
        assert store.read_rows("SELECT count(*) FROM score_sources WHERE kind = 'human'", db=demo_store)[0][0] == 0
    assert labels.tags(db=demo_store) == ["degenerate loop"]


def test_the_latest_label_wins_a_cleared_field_is_no_label_and_every_event_stays(demo_store):
    cot = cot_rows(demo_store)[5]["cot_id"]
    for value in (3, 5, 4):
        labels.record(cot, {"rv": value}, annotator="alice", db=demo_store)
    assert labels.mine(labels.labels_of([cot], db=demo_store), cot, "alice")["rv"] == 4
    labels.record(cot, {"rv": None, "tag:x": True}, annotator="alice", db=demo_store)
    labels.record(cot, {"tag:x": False}, annotator="alice", db=demo_store)
    assert labels.labels_of([cot], db=demo_store).height == 0
    history = store.read_rows("SELECT field, value FROM label_events ORDER BY seq", db=demo_store)
    assert history == [("rv", "3"), ("rv", "5"), ("rv", "4"), ("rv", "null"), ("tag:x", "true"), ("tag:x", "false")]


@pytest.mark.parametrize("field, value, words", [
    ("rv", 10, "0 to 9"), ("rv", 2.5, "whole number"), ("logic", 2, "0 to 1"), ("correct", "yes", "whole number"),
    ("flag", "bad", "exclude, include, review"), ("tag:", True, "cannot be empty"), ("tag:Upper", True, "normalised"),
    ("tag:x", 1, "true (set) or false"), ("step:5-3", "self_checking", "end after the start"),
    ("step:0-3", "musing", "problem_setup"), ("wordcount", 3, "not a label field"), ("note", 7, "text"),
])
def test_a_value_off_its_scale_is_refused_with_what_is_allowed(field, value, words):
    with pytest.raises(labels.LabelError, match=re.escape(words)):
        labels.check_value(field, value)


def test_a_label_needs_an_annotator_and_an_existing_cot(demo_store):
    cot = cot_rows(demo_store)[0]["cot_id"]
    with pytest.raises(labels.LabelError, match="annotator"):
        labels.record(cot, {"rv": 1}, annotator="  ", db=demo_store)
    with pytest.raises(labels.LabelError, match="no CoT 12345"):
        labels.record(12345, {"rv": 1}, annotator="alice", db=demo_store)
    assert not label_store.path_for(store.db_path(demo_store)).exists() or labels.labels_of([cot], db=demo_store).height == 0


def test_labels_never_write_the_store(demo_store):
    before = file_state(demo_store)
    ids = [r["cot_id"] for r in cot_rows(demo_store)[:20]]
    for i, cot in enumerate(ids):
        labels.record(cot, {"rv": i % 10, "flag": "review"}, annotator=f"p{i % 3}", db=demo_store)
    assert queries.count(CotFilter(conditions=(labels.only_flag("review"),)), db=demo_store)["cots"] == 20
    assert file_state(demo_store) == before


# ---------------------------------------------------------------------------- labels as figures


def test_tags_and_flags_filter_select_and_travel_in_urls_recipes_and_manifests(demo_store, tmp_path):
    rows = cot_rows(demo_store)
    rng = random.Random(3)
    flagged = {r["cot_id"] for r in rng.sample(rows, 25)}
    tagged = {r["cot_id"] for r in rng.sample(rows, 40)}
    bob_flagged = {r["cot_id"] for r in rng.sample(rows, 10)}
    for cot in flagged:
        labels.record(cot, {"flag": "exclude"}, annotator="alice", db=demo_store)
    for cot in tagged:
        labels.record(cot, {"tag:long winded": True}, annotator="alice", db=demo_store)
    for cot in bob_flagged:
        labels.record(cot, {"flag": "exclude"}, annotator="bob", db=demo_store)
    everyone = flagged | bob_flagged
    total = len(rows)
    drop = labels.drop_flag("exclude")
    f = CotFilter(conditions=(drop,))
    assert queries.count(f, db=demo_store)["cots"] == total - len(everyone)
    only_alice = CotFilter(conditions=(labels.drop_flag("exclude", labels.source_name("alice")),))
    assert queries.count(only_alice, db=demo_store)["cots"] == total - len(flagged)
    tag_f = CotFilter(conditions=(labels.only_tag("Long  Winded"),))
    assert queries.count(tag_f, db=demo_store)["cots"] == len(tagged)
    both = CotFilter(conditions=(drop, labels.only_tag("long winded")))
    assert queries.count(both, db=demo_store)["cots"] == len(tagged - everyone)
    # the URL carries them
    assert CotFilter.from_params(both.to_params()) == both
    # the catalogue lists them as binary figures with their counts
    cat = figures.catalogue(db=demo_store)
    row = cat.filter((cat["source"] == labels.COMBINED) & (cat["metric"] == "flag:exclude")).to_dicts()[0]
    assert row["kind"] == "human" and row["count"] == len(everyone) and row["binary"]
    # a Select condition drops them under its own reason
    sel = selection.Selection(base=CotFilter(), rule=selection.Thresholds(), conditions=(drop,))
    decided = selection.decide(sel, db=demo_store).to_pylist()
    reasons = Counter(r["reason"] for r in decided if not r["kept"])
    assert reasons == {"flag:exclude · annotations has a value": len(everyone)}
    assert {r["cot_id"] for r in decided if r["kept"]} == {r["cot_id"] for r in rows} - everyone
    # a recipe keeps the condition and records the labels it read
    recipe = recipes.Recipe("no-excluded", sel)
    path = recipes.save(recipe, db=demo_store)
    saved = json.loads(path.read_text())
    assert recipes.load("no-excluded") == recipe
    assert saved["annotations"]["sources"] == [labels.COMBINED]
    assert saved["annotations"]["labels"] == len(tagged) + len(flagged) + len(bob_flagged)  # everyone's marks
    # and so does the export manifest
    from core import export

    result = export.export(recipe, "jsonl", out_dir=tmp_path / "out", db=demo_store)
    assert result.rows == total - len(everyone)
    assert result.manifest["annotations"]["sha256"] == saved["annotations"]["sha256"]
    assert {"name": labels.COMBINED, "kind": "human"}.items() <= result.manifest["score_sources"][0].items()
    # a new label changes the state a later run compares against
    labels.record(rows[0]["cot_id"], {"tag:new": True}, annotator="carol", db=demo_store)
    assert labels.state([labels.COMBINED], db=demo_store)["sha256"] != saved["annotations"]["sha256"]
    # a selection that does not name people's labels does not read them
    assert not any(labels.is_human_source(s) for s in
                   (*selection.default_score_sources(db=demo_store).rv, *selection.default_score_sources(db=demo_store).correct))


def test_a_persons_scores_are_a_source_like_a_judges_for_agreement(demo_store):
    """alice's RV against the dataset's RV: the same confusion matrix and kappa as counted here."""
    rv_source = queries.sources("rv", db=demo_store)[0]
    with store.labels_off():
        judged = dict(store.read_rows(
            "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) "
            "WHERE ss.name = ? AND s.metric = 'rv' AND s.value IS NOT NULL ORDER BY s.cot_id LIMIT 60", [rv_source],
            db=demo_store))
    rng = random.Random(11)
    mine = {}
    for cot, value in judged.items():  # agree half the time, else off by one or two
        mine[cot] = int(value) if rng.random() < 0.5 else min(9, max(0, int(value) + rng.choice((-2, -1, 1, 2))))
        labels.record(cot, {"rv": mine[cot]}, annotator="alice", db=demo_store)
    a, b = agreement.Side((rv_source,), "rv"), agreement.Side((labels.source_name("alice"),), "rv")
    frame = agreement.pairs(a, b, db=demo_store)
    assert frame.height == len(mine)
    shown = list(range(10))
    counts = [[0] * 10 for _ in shown]
    for cot, value in mine.items():
        counts[int(round(judged[cot]))][value] += 1
    assert agreement.confusion(frame, shown) == counts
    n = len(mine)
    observed = sum(counts[i][i] for i in shown) / n
    expected = sum(sum(counts[i]) * sum(counts[j][i] for j in shown) for i in shown) / n / n
    assert agreement.statistics(frame, shown)["kappa"] == pytest.approx((observed - expected) / (1 - expected))
    # the page's first comparison is the judge (or the dataset's label) against the person
    catalogue = agreement.metric_sources(db=demo_store)
    assert {"name": "human: alice", "kind": "human"} in catalogue["rv"]


def test_a_persons_step_roles_are_a_step_source_compared_with_the_rules(demo_store):
    from core import step_stats
    from core.step_stage import StepOptions, run_steps

    run_steps(demo_store, StepOptions(max_cots=3))
    rules = step_stats.step_sources(db=demo_store)["source"].to_list()[0]
    cot = cot_rows(demo_store)[0]["cot_id"]
    text, steps, _ = step_stats.cot_steps(cot, db=demo_store)
    ours = steps.filter(steps["source"] == rules).sort("step_idx").to_dicts()[:6]
    chosen = ["problem_setup", "active_computation", "self_checking", ours[3]["role"] or "plan_generation",
              "final_answer_emission", ours[5]["role"] or "fact_retrieval"]
    labels.record(cot, {labels.step_field(s["char_start"], s["char_end"]): r for s, r in zip(ours, chosen)},
                  annotator="alice", context={"segmentation": rules}, db=demo_store)
    _, steps, _ = step_stats.cot_steps(cot, db=demo_store)
    human = steps.filter(steps["source"] == "human: alice").sort("step_idx").to_dicts()
    assert [(h["char_start"], h["char_end"], h["role"]) for h in human] == \
        [(s["char_start"], s["char_end"], r) for s, r in zip(ours, chosen)]
    result = step_stats.role_agreement(rules, "human: alice", db=demo_store)
    with_role = [(s["role"], r) for s, r in zip(ours, chosen) if s["role"] is not None]
    assert result["steps"] == len(with_role) > 0
    assert result["accuracy"] == pytest.approx(sum(a == b for a, b in with_role) / len(with_role))


# ---------------------------------------------------------------------------- drop and re-ingest


def test_labels_follow_their_cot_through_a_drop_and_re_ingest_and_never_a_reused_id(tmp_path):
    db = tmp_path / "store.duckdb"
    first = tmp_path / "a.parquet"
    write_omnithought(first, 12, seed=1, text_scale=0.05)
    ds = ingest(str(first), name="a", db=db, generated=True).dataset_id
    rows = cot_rows(db)
    picked = rows[:5] + rows[-3:]
    for i, r in enumerate(picked):
        labels.record(r["cot_id"], {"rv": i % 10, "tag:keep": True}, annotator="alice", db=db)
    key_of = {r["cot_id"]: md5_key(r["question"], r["full_text"]) for r in picked}

    store.drop_dataset(ds, db=db)  # gone: the labels wait, unresolved
    summary = labels.summary(db=db)
    assert summary["cots"].sum() == 0 and summary["not_in_store"].sum() == 2 * len(picked)
    assert store.read_rows("SELECT count(*) FROM scores WHERE source_id >= 1000000000", db=db)[0][0] == 0

    # another file gets the same dataset id, so the old cot_ids now name other CoTs: no label may land on them
    other = tmp_path / "b.parquet"
    write_omnithought(other, 12, seed=2, text_scale=0.05)
    ds_b = ingest(str(other), name="b", db=db, generated=True).dataset_id
    assert ds_b == ds and {r["cot_id"] for r in cot_rows(db)} & set(key_of)
    assert labels.labels_of([r["cot_id"] for r in cot_rows(db)], db=db).height == 0

    # the same content again, under another name and ids: every label finds its CoT by content
    again = ingest(str(first), name="a again", db=db, generated=True).dataset_id
    now = {md5_key(r["question"], r["full_text"]): r["cot_id"] for r in cot_rows(db) if r["cot_id"] >> 32 == again}
    expected = {(now[key_of[r["cot_id"]]], i % 10) for i, r in enumerate(picked)}
    got = labels.labels_of(list(now.values()), db=db).filter(pl.col("field") == "rv")
    assert {(c, int(v)) for c, v in got.select("cot_id", "value").iter_rows()} == expected
    assert queries.count(CotFilter(conditions=(labels.only_tag("keep"),)), db=db)["cots"] == len(picked)


# ---------------------------------------------------------------------------- JSONL


def test_export_import_merges_two_labs_and_importing_twice_adds_nothing(demo_store_template, tmp_path):
    import shutil

    lab_a, lab_b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    shutil.copy(demo_store_template, lab_a)
    shutil.copy(demo_store_template, lab_b)
    ids = [r["cot_id"] for r in cot_rows(lab_a)[:30]]
    for i, cot in enumerate(ids[:20]):
        labels.record(cot, {"rv": i % 10}, annotator="alice", db=lab_a)
    for i, cot in enumerate(ids[10:]):
        labels.record(cot, {"rv": (i + 3) % 10, "flag": "include"}, annotator="bob", db=lab_b)
    labels.record(ids[0], {"rv": 9}, annotator="alice", db=lab_b)  # alice also labelled at lab b, later
    a_file, b_file = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert labels.export_jsonl(a_file, db=lab_a) == 20
    assert labels.export_jsonl(b_file, db=lab_b) == 41
    line = json.loads(a_file.read_text().splitlines()[0])
    assert set(line) == set(labels.LINE_FIELDS) and line["value"] == 0 and line["field"] == "rv"

    assert labels.import_jsonl(a_file, db=lab_b) == {"lines": 20, "added": 20, "already_present": 0}
    assert labels.import_jsonl(a_file, db=lab_b) == {"lines": 20, "added": 0, "already_present": 20}
    assert labels.import_jsonl(b_file, db=lab_a) == {"lines": 41, "added": 41, "already_present": 0}
    # both labs now hold the same labels, whatever the order they arrived in
    sources = ["human: alice", "human: bob"]
    assert labels.state(sources, db=lab_a) == labels.state(sources, db=lab_b)
    # the latest of alice's two labels of ids[0] wins at both labs
    for lab in (lab_a, lab_b):
        assert labels.mine(labels.labels_of([ids[0]], db=lab), ids[0], "alice")["rv"] == 9


def test_a_bad_import_line_is_named_and_adds_nothing(demo_store, tmp_path):
    cot = cot_rows(demo_store)[0]["cot_id"]
    labels.record(cot, {"rv": 4}, annotator="alice", db=demo_store)
    good = labels.export_lines(db=demo_store)[0]
    cases = {
        "not JSON": "{nope",
        "line 2: rv is a whole number from 0 to 9": json.dumps({**good, "event_id": "e" * 32, "value": 12}),
        "cot_key is 32": json.dumps({**good, "event_id": "f" * 32, "cot_key": "xyz"}),
        "unknown field": json.dumps({**good, "event_id": "a" * 32, "colour": "red"}),
        "already in this store's labels with other content": json.dumps({**good, "value": 5}),
    }
    before = labels.export_lines(db=demo_store)
    for words, bad in cases.items():
        path = tmp_path / "bad.jsonl"
        fresh = {**good, "event_id": "b" * 32, "at": "2030-01-01T00:00:00.000000Z"}
        path.write_text(json.dumps(fresh) + "\n" + bad + "\n")
        with pytest.raises(UserError, match=re.escape(words)):
            labels.import_jsonl(path, db=demo_store)
        assert labels.export_lines(db=demo_store) == before  # the good first line was not added either


# ---------------------------------------------------------------------------- queues


def test_queues_are_reproducible_samples_with_per_annotator_progress(demo_store):
    everything = CotFilter()
    all_ids = {r["cot_id"] for r in cot_rows(demo_store)}
    q1, _ = labels.sample(everything, labels.QueueOptions(name="a", n=30, seed=4), db=demo_store)
    again, _ = labels.sample(everything, labels.QueueOptions(name="b", n=30, seed=4), db=demo_store)
    other, _ = labels.sample(everything, labels.QueueOptions(name="c", n=30, seed=5), db=demo_store)
    assert q1["cot_id"].to_list() == again["cot_id"].to_list()
    assert q1["cot_id"].to_list() != other["cot_id"].to_list()
    # the order is the capacity sampler's uniform per (seed, cot_id), smallest first
    expected = sorted(all_ids, key=lambda c: selection.uniform(4, c))[:30]
    assert q1["cot_id"].to_list() == expected

    made = labels.create_queue(everything, labels.QueueOptions(name="rv pass", n=12, seed=1), created_by="alice",
                               db=demo_store)
    with pytest.raises(labels.LabelError, match="exists already"):
        labels.create_queue(everything, labels.QueueOptions(name="rv pass", n=3), db=demo_store)
    q = labels.queue(made["queue_id"], annotator="alice", db=demo_store)
    assert (q["done"], q["total"], q["in_store"]) == (0, 12, 12)
    items = q["items"]["cot_id"].to_list()
    for cot in items[:4]:
        labels.record(cot, {"rv": 5}, annotator="alice", db=demo_store)
    labels.record(items[0], {"rv": 2}, annotator="bob", db=demo_store)
    q = labels.queue(made["queue_id"], annotator="alice", db=demo_store)
    assert q["done"] == 4 and q["by_annotator"] == {"alice": 4, "bob": 1}
    assert labels.next_in_queue(q["items"])["cot_id"] == items[4]
    assert labels.next_in_queue(q["items"], after_cot=items[6])["cot_id"] == items[7]
    assert labels.queues(db=demo_store)["name"].to_list() == ["rv pass"]


def test_a_stratified_queue_draws_equal_numbers_per_level(demo_store):
    rv = queries.sources("rv", db=demo_store)[0]
    with store.labels_off():
        values = dict(store.read_rows(
            "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
            "AND s.metric = 'rv' AND s.value IS NOT NULL", [rv], db=demo_store))
    sizes = Counter(str(int(round(v))) for v in values.values())
    drawn, found = labels.sample(CotFilter(), labels.QueueOptions(name="s", n=40, sampling="stratified", seed=2,
                                                                  by=Figure("rv", rv)), db=demo_store)
    quotas = labels.equal_quotas({k: sizes[k] for k in sorted(sizes, key=int)}, 40)
    assert sum(quotas.values()) == 40 and max(quotas.values()) - min(q for q in quotas.values()) <= max(
        0, max(quotas.values()) - min(sizes.values()))
    got = Counter(str(int(round(values[c]))) for c in drawn["cot_id"].to_list())
    assert dict(got) == {k: v for k, v in quotas.items() if v}
    assert {k: v["drawn"] for k, v in found["strata"].items()} == quotas
    assert drawn["stratum"].to_list() == [str(int(round(values[c]))) for c in drawn["cot_id"].to_list()]


def test_equal_quotas_hand_examples():
    assert labels.equal_quotas({"a": 1, "b": 10, "c": 10}, 9) == {"a": 1, "b": 4, "c": 4}
    assert labels.equal_quotas({"a": 5, "b": 5}, 20) == {"a": 5, "b": 5}
    assert labels.equal_quotas({"a": 0, "b": 3, "c": 7}, 7) == {"a": 0, "b": 3, "c": 4}
    assert labels.equal_quotas({"a": 9, "b": 9, "c": 9}, 7) == {"a": 3, "b": 2, "c": 2}


def test_a_disagreement_queue_draws_only_where_two_figures_differ(demo_store):
    rv = queries.sources("rv", db=demo_store)[0]
    rows = cot_rows(demo_store)
    rng = random.Random(5)
    with store.labels_off():
        judged = dict(store.read_rows(
            "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
            "AND s.metric = 'rv'", [rv], db=demo_store))
    mine = {}
    for r in rng.sample(rows, 50):
        mine[r["cot_id"]] = rng.randrange(10)
        labels.record(r["cot_id"], {"rv": mine[r["cot_id"]]}, annotator="alice", db=demo_store)
    differ = {c for c, v in mine.items() if c in judged and abs(round(judged[c]) - v) >= 2}
    opts = labels.QueueOptions(name="d", n=1000, sampling="disagreement", a=Figure("rv", rv),
                               b=Figure("rv", "human: alice"), min_gap=2)
    drawn, found = labels.sample(CotFilter(), opts, db=demo_store)
    assert set(drawn["cot_id"].to_list()) == differ and found["disagreements"] == len(differ)
    assert found["both_scored"] == len([c for c in mine if c in judged])


def test_queue_options_refuse_what_cannot_be_drawn():
    with pytest.raises(labels.LabelError, match="name"):
        labels.QueueOptions(name=" ")
    with pytest.raises(labels.LabelError, match="stratified sampling needs"):
        labels.QueueOptions(name="x", sampling="stratified")
    with pytest.raises(labels.LabelError, match="two different figures"):
        labels.QueueOptions(name="x", sampling="disagreement", a=Figure("rv", "j"), b=Figure("rv", "j"))


# ---------------------------------------------------------------------------- the SQL console


@pytest.mark.spawns_processes
def test_the_sql_console_reads_the_labels(demo_store):
    from core import sqlconsole

    cots = [r["cot_id"] for r in cot_rows(demo_store)[:3]]
    labels.record(cots[0], {"rv": 6, "note": "ok"}, annotator="alice", db=demo_store)
    labels.record(cots[1], {"flag": "exclude"}, annotator="bob", db=demo_store)
    result = sqlconsole.run_query("SELECT cot_id, annotator, field, value, text FROM labels ORDER BY ALL", db=demo_store)
    assert result.frame.rows() == sorted([(cots[0], "alice", "note", 1.0, "ok"), (cots[0], "alice", "rv", 6.0, None),
                                          (cots[1], "bob", "flag", 1.0, "exclude")])
    result = sqlconsole.run_query(
        "SELECT ss.name, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.kind = 'human' ORDER BY ALL", db=demo_store)
    assert ("human: alice", "rv", 6.0) in result.frame.rows() and ("annotations", "flag:exclude", 1.0) in result.frame.rows()
    assert sqlconsole.run_query("SELECT count(*) FROM label_events", db=demo_store).frame.item() == 3


def test_a_reader_never_finds_the_labels_file_without_its_tables(tmp_path):
    """The first label creates the file while pages may already look for it: a reader that
    sees the file must find its tables (the file is made whole under another name, then linked
    into place). Writers in threads race to create it, readers poll it; every event arrives."""
    import threading

    failures: list[str] = []
    for attempt in range(15):
        path = tmp_path / f"store{attempt}.duckdb{label_store.SUFFIX}"
        done = threading.Event()

        def read(path=path, done=done) -> None:
            while not done.is_set():
                try:
                    label_store.snapshot(path)
                except Exception as exc:  # any failure of a reader fails the test
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return

        def write(i: int, path=path, attempt=attempt) -> None:
            label_store.append(path, [{"event_id": f"event{attempt:03d}{i:03d}", "at": label_store.now_iso(),
                                       "annotator": f"a{i}", "cot_key": "0" * 32, "field": "rv", "value": "1",
                                       "cot_id": None, "n_chars": 1, "context": "{}"}])

        readers = [threading.Thread(target=read) for _ in range(2)]
        writers = [threading.Thread(target=write, args=(i,)) for i in range(3)]
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert label_store.snapshot(path).events.height == 3
        assert not list(tmp_path.glob(".labels-new-*"))  # no half-made file left behind
    assert not failures, failures[:3]


@pytest.mark.spawns_processes
def test_the_labels_commands_export_import_and_summarise(demo_store_template, tmp_path):
    """`python -m core labels export|import|summary` as a lab runs them: lab a's export merges
    into lab b, the summary counts what plain Python counts in the file, a second import adds
    nothing, a bad file is one `error:` line and exit 2."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    lab_a, lab_b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    shutil.copy(demo_store_template, lab_a)
    shutil.copy(demo_store_template, lab_b)
    ids = [r["cot_id"] for r in cot_rows(lab_a)[:6]]
    for i, cot in enumerate(ids):
        labels.record(cot, {"rv": i, "tag:odd style": i % 2 == 1}, annotator="alice", db=lab_a)

    def cli(db, *args):
        return subprocess.run([sys.executable, "-m", "core", "--db", str(db), "labels", *args],
                              capture_output=True, text=True, cwd=root, timeout=300)

    out = tmp_path / "a.jsonl"
    done = cli(lab_a, "export", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12 and {x["annotator"] for x in lines} == {"alice"}
    assert cli(lab_a, "export").stdout.splitlines() == out.read_text().splitlines()  # stdout: the same lines

    first = cli(lab_b, "import", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout) == {"lines": 12, "added": 12, "already_present": 0}
    assert json.loads(cli(lab_b, "import", str(out)).stdout) == {"lines": 12, "added": 0, "already_present": 12}

    summary = json.loads(cli(lab_b, "summary", "--json").stdout)
    by_kind = {r["kind"]: r for r in summary if r["annotator"] == "alice"}
    tagged = sum(1 for x in lines if x["field"].startswith("tag:") and x["value"] is True)
    assert by_kind["metric"]["cots"] == 6 and by_kind["tag"]["cots"] == tagged == 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(out.read_text().splitlines()[0] + "\n{nope\n")
    refused = cli(lab_b, "import", str(bad))
    assert refused.returncode == 2 and refused.stderr.startswith("error: bad.jsonl, line 2: not JSON")

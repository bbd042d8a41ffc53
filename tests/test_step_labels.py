"""Step labels datasets carry: the real Thought Anchors files, and PRM800K / ProcessBench files
written here in their published layouts; matching to CoTs, bad input, and agreement."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from core import step_stats, store
from core import steps as steps_mod
from core.cli import main
from core.formats import ReadOptions
from core.ingest import ingest
from core.records import IngestError
from core.step_labels import StepLabelOptions, run_step_labels
from core.step_stage import StepOptions, run_steps
from tests.helpers import PB, REALDATA, snapshot, write_jsonl

TA = REALDATA / "thought_anchors"
SOLUTIONS = TA / "thought_anchors_math_base_solutions.jsonl"
CHUNKS = TA / "thought_anchors_math_chunks_labeled.jsonl"


def rows(sql, params=(), db=None):
    return store.read_rows(sql, list(params), db=db)


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def ta_store(tmp_path_factory):
    if not CHUNKS.exists():
        pytest.skip(f"real data not found at {TA}")
    db = tmp_path_factory.mktemp("ta") / "ta.duckdb"
    # the solutions file is read as a dataset without any --map (its layout is recognised)
    assert main(["--db", str(db), "ingest", str(SOLUTIONS), "--name", "ta", "--no-verify", "--no-tokens", "--no-index"]) == 0
    assert main(["--db", str(db), "ingest", str(CHUNKS), "--steps-for", "ta"]) == 0
    return db


def test_thought_anchors_steps_match_the_file(ta_store):
    db = ta_store
    chunks = defaultdict(list)
    for line in CHUNKS.open():
        c = json.loads(line)
        chunks[(c["problem_id"], c["bucket"])].append(c)
    assert rows("SELECT count(*) FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = 'thought anchors'",
                db=db) == [(sum(map(len, chunks.values())),)] == [(2929,)]
    cots = rows("SELECT c.cot_id, p.problem_key, c.extra, c.thinking FROM cots c JOIN problems p USING (problem_id)", db=db)
    assert len(cots) == 20
    for cot_id, key, extra, thinking in cots:
        bucket = json.loads(extra)["bucket"]  # the CoT each group went to is the one of its bucket
        expected = sorted(chunks[(key, bucket)], key=lambda c: c["chunk_idx"])
        got = rows("SELECT step_idx, char_start, char_end, role FROM steps s JOIN score_sources ss USING (source_id) "
                   "WHERE ss.name = 'thought anchors' AND cot_id = ? ORDER BY step_idx", [cot_id], db=db)
        assert len(got) == len(expected)
        assert "".join(thinking[a:b] for _, a, b, _ in got) == thinking
        for (_, a, b, role), chunk in zip(got, expected):
            assert squeeze(thinking[a:b]) == squeeze(chunk["chunk"])
            assert role == chunk["function_tags"][0]
        accuracy = rows("SELECT step_idx, value FROM step_scores st JOIN score_sources ss USING (source_id) "
                        "WHERE ss.name = 'thought anchors' AND cot_id = ? AND metric = 'accuracy' ORDER BY step_idx", [cot_id], db=db)
        assert [v for _, v in accuracy] == pytest.approx([c["accuracy"] for c in expected])
    # per-CoT figures under their own stage source: role shares add up to 1, step counts match
    figures = rows("SELECT s.cot_id, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
                   "WHERE ss.name = 'thought anchors (step figures)' AND ss.kind = 'stage'", db=db)
    by_cot = defaultdict(dict)
    for cot_id, metric, value in figures:
        by_cot[cot_id][metric] = value
    assert len(by_cot) == 20
    for figs in by_cot.values():
        assert sum(figs[f"share_{r}"] for r in steps_mod.ROLES) == pytest.approx(1.0)
    assert sorted(f["n_steps"] for f in by_cot.values()) == sorted(float(len(v)) for v in chunks.values())


def test_the_same_file_again_adds_nothing(ta_store, capsys):
    before = snapshot(ta_store)
    assert main(["--db", str(ta_store), "ingest", str(CHUNKS), "--steps-for", "ta"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(ta_store) == before


def _plain_kappa(pairs: list[tuple[str, str]]) -> float:
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    roles = {r for p in pairs for r in p}
    expected = sum((sum(a == r for a, _ in pairs) / n) * (sum(b == r for _, b in pairs) / n) for r in roles)
    return (observed - expected) / (1 - expected)


def test_rules_against_thought_anchors_agreement_is_what_plain_python_counts(ta_store, tmp_path):
    db = tmp_path / "copy.duckdb"
    db.write_bytes(ta_store.read_bytes())
    run_steps(db, StepOptions(from_source="thought anchors"))
    result = step_stats.role_agreement("step rules on thought anchors", "thought anchors", db=db)
    # independently: the rules on each chunk, placed on the thinking by a plain search
    rules = steps_mod.RoleRules.load()
    thinking = {json.loads(e)["bucket"] + k: t for k, e, t in rows(
        "SELECT p.problem_key, c.extra, c.thinking FROM cots c JOIN problems p USING (problem_id)", db=db)}
    groups = defaultdict(list)
    for line in CHUNKS.open():
        c = json.loads(line)
        groups[c["bucket"] + c["problem_id"]].append(c)
    pairs = []
    for key, chunks in groups.items():
        text = thinking[key]
        keep = [i for i, ch in enumerate(text) if not ch.isspace()]
        squeezed = "".join(text[i] for i in keep)
        starts, pos = [], 0
        for c in sorted(chunks, key=lambda c: c["chunk_idx"]):
            at = squeezed.index(squeeze(c["chunk"]), pos)
            starts.append(0 if not starts else keep[at])
            pos = at + len(squeeze(c["chunk"]))
        ends = starts[1:] + [len(text)]
        for c, a, b in zip(sorted(chunks, key=lambda c: c["chunk_idx"]), starts, ends):
            pairs.append((rules.role(text[a:b], a / len(text)), c["function_tags"][0]))
    assert result["steps"] == len(pairs) == 2929
    assert result["accuracy"] == pytest.approx(sum(a == b for a, b in pairs) / len(pairs))
    assert result["kappa"] == pytest.approx(_plain_kappa(pairs))
    for row in result["per_role"]:
        tp = sum(1 for a, b in pairs if a == b == row["role"])
        assert row["both"] == tp and row["b_steps"] == sum(1 for _, b in pairs if b == row["role"])
    # the sentence splitter's own steps, compared through character overlap, cover the same CoTs
    run_steps(db, StepOptions())
    overlap = step_stats.role_agreement("step rules (sentence)", "thought anchors", db=db)
    assert overlap["steps"] == 2929 and overlap["cots"] == 20


def test_a_steps_record_that_matches_no_cot_stops_with_its_line(ta_store, tmp_path):
    db = tmp_path / "copy.duckdb"
    db.write_bytes(ta_store.read_bytes())
    lines = CHUNKS.read_text().splitlines()
    bad = json.loads(lines[5])
    bad.update(problem_id="problem_99999", chunk_idx=0)
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(lines[:5] + [json.dumps(bad)]) + "\n")
    before = snapshot(db)
    with pytest.raises(IngestError, match=r"chunks\.jsonl, line 6: no CoT of the dataset matches \(problem 'problem_99999'"):
        run_step_labels(db, StepLabelOptions(path=str(path), dataset="ta", source_name="partial"))
    assert snapshot(db) == before
    # steps that are not the CoT's text in order
    shuffled = [json.loads(x) for x in lines[:3]]
    shuffled[0]["chunk"], shuffled[1]["chunk"] = shuffled[1]["chunk"], shuffled[0]["chunk"]
    path.write_text("\n".join(json.dumps(x) for x in shuffled) + "\n")
    with pytest.raises(IngestError, match="none holds these steps in order"):
        run_step_labels(db, StepLabelOptions(path=str(path), dataset="ta", source_name="partial"))
    assert snapshot(db) == before
    with pytest.raises(ValueError, match="No ready dataset named 'nope'"):
        run_step_labels(db, StepLabelOptions(path=str(CHUNKS), dataset="nope"))


# ------------------------------------------------------------------------------------ PRM800K


def prm_line(problem: str, steps: list[str], ratings: list[int | None], *, finish="found_error", phase2=True) -> dict:
    labelled = []
    for text, rating in zip(steps, ratings):
        if rating is None:
            break
        completions = [{"text": text, "rating": rating, "flagged": None}]
        chosen = 0
        if rating == -1:  # phase 2 stops at the first error; alternatives may be rated too
            completions.append({"text": "An alternative step.", "rating": 0, "flagged": False})
            chosen = None
        labelled.append({"completions": completions, "human_completion": None, "chosen_completion": chosen})
    question = {"problem": problem, "ground_truth_solution": "...", "ground_truth_answer": "7"}
    if phase2:
        question.update(pre_generated_steps=steps, pre_generated_answer="7", pre_generated_verifier_score=0.5)
    return {"labeler": "x", "timestamp": "2023-01-22T04:34:27", "generation": 9 if phase2 else None,
            "is_quality_control_question": False, "is_initial_screening_question": False, "question": question,
            "label": {"steps": labelled, "total_time": 1000, "finish_reason": finish}}


PRM_STEPS = ["I want to add 3 and 4.", "So I compute 3 + 4.", "That gives 8.", "# Answer\n\n8"]


def test_prm800k_file_becomes_a_dataset_with_step_ratings(tmp_path):
    path = write_jsonl(tmp_path / "prm_phase2.jsonl", [
        prm_line("What is $3 + 4$?", PRM_STEPS, [0, 1, -1, None]),
        prm_line("What is $3 + 4$?", PRM_STEPS, [0, 1, -1, None]),  # a second labeller, same solution
        prm_line("What is $2 + 5$?", ["Add them.", "It is 7.", "# Answer\n\n7"], [1, 1, 1], finish="solution"),
    ])
    db = tmp_path / "store.duckdb"
    assert main(["--db", str(db), "ingest", str(path), "--no-verify", "--no-tokens", "--no-index"]) == 0
    assert rows("SELECT name, format, n_problems, n_cots FROM datasets", db=db) == [("prm_phase2", "prm800k", 2, 3)]
    wrong = rows("SELECT cot_id, list(wrong ORDER BY step_idx) FROM steps GROUP BY cot_id ORDER BY cot_id", db=db)
    assert [w for _, w in wrong] == [[False, False, True, None], [False, False, True, None], [False, False, False]]
    ratings = rows("SELECT cot_id, list(value ORDER BY step_idx) FROM step_scores WHERE metric = 'rating' GROUP BY cot_id ORDER BY cot_id", db=db)
    assert [r for _, r in ratings] == [[0.0, 1.0, -1.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]]
    figs = {(c, m): v for c, m, v in rows(
        "SELECT s.cot_id, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'prm800k (step figures)'", db=db)}
    first, _, third = [c for c, _ in wrong]
    text = "\n\n".join(PRM_STEPS)
    assert figs[(first, "has_error")] == 1.0 and figs[(first, "first_error_step")] == 2.0
    assert figs[(first, "first_error_frac")] == pytest.approx(text.index("That gives 8.") / len(text))
    assert figs[(first, "first_error_before_answer")] == 1.0  # step 2 comes before the answer step (3)
    assert figs[(third, "has_error")] == 0.0 and (third, "first_error_step") not in figs
    assert (first, "share_active_computation") not in figs  # PRM800K gives no roles


def test_prm800k_phase1_trajectory_and_attaching_to_an_existing_dataset(tmp_path):
    line = prm_line("What is $1 + 1$?", ["One plus one.", "Is 3."], [1, -1], phase2=False)
    line["label"]["steps"][1]["chosen_completion"] = 0  # phase 1: the trajectory goes on through the chosen step
    line["label"]["steps"].insert(1, {"completions": [{"text": "Bad alt.", "rating": -1, "flagged": None}],
                                      "human_completion": "A human step.", "chosen_completion": None})
    path = write_jsonl(tmp_path / "prm_phase1.jsonl", [line])
    # the CoTs were ingested on their own beforehand (generic), the labels attach by question and text
    cots = write_jsonl(tmp_path / "cots.jsonl", [{"q": "What is $1 + 1$?", "r": "One plus one.\nA human step.\nIs 3."}])
    db = tmp_path / "store.duckdb"
    ingest(str(cots), fmt="generic", name="mine", db=db, opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    result = run_step_labels(db, StepLabelOptions(path=str(path), dataset="mine"))
    assert result["cots"] == 1 and result["steps"] == 3
    assert rows("SELECT list(wrong ORDER BY step_idx) FROM steps", db=db) == [([False, False, True],)]
    assert rows("SELECT list(value ORDER BY step_idx) FROM step_scores WHERE metric = 'rating'", db=db) == [([1.0, 1.0, -1.0],)]


def test_prm800k_bad_rating_names_the_line(tmp_path):
    good = prm_line("Q?", ["A.", "B."], [1, 1])
    bad = prm_line("Q2?", ["A.", "B."], [1, 1])
    bad["label"]["steps"][1]["completions"][0]["rating"] = 5
    path = write_jsonl(tmp_path / "prm.jsonl", [good, bad])
    db = tmp_path / "store.duckdb"
    store.init_store(db)
    before = snapshot(db)
    with pytest.raises(IngestError, match=r"prm\.jsonl, line 2, field 'label\.steps': a rating must be -1, 0 or \+1, got 5"):
        run_step_labels(db, StepLabelOptions(path=str(path)))
    assert snapshot(db) == before


# ------------------------------------------------------------------------------------ ProcessBench


def test_processbench_first_error_labels(tmp_path):
    path = write_jsonl(tmp_path / "processbench_gsm8k.jsonl", PB)
    db = tmp_path / "store.duckdb"
    result = run_step_labels(db, StepLabelOptions(path=str(path)))
    assert result["dataset_created"] and result["cots"] == 3 and result["steps"] == 9
    wrong = [w for (w,) in rows("SELECT list(wrong ORDER BY step_idx) FROM steps GROUP BY cot_id ORDER BY cot_id", db=db)]
    assert wrong == [[False, False, False], [True, None], [False, False, True, None]]
    figures = defaultdict(dict)
    for cot_id, metric, value in rows("SELECT s.cot_id, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
                                      "WHERE ss.name IN ('processbench', 'processbench (step figures)')", db=db):
        figures[cot_id][metric] = value
    first, second, third = sorted(figures)
    assert figures[first]["has_error"] == 0 and figures[first]["first_error_label"] == -1 and figures[first]["correct"] == 1
    assert figures[second]["first_error_step"] == 0 and figures[second]["first_error_frac"] == 0
    text = "\n\n".join(PB[2]["steps"])
    assert figures[third]["first_error_frac"] == pytest.approx(text.index("Then double") / len(text))
    assert figures[third]["first_error_before_answer"] == 1 and figures[second]["first_error_before_answer"] == 1
    # CoT-level correctness also sits under the dataset's own label source, as any generic ingest gives it
    assert rows("SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'processbench_gsm8k' "
                "AND metric = 'correct'", db=db) == [(3,)]
    # the summary the CLI prints
    summary = step_stats.source_summary("processbench", db=db)
    assert summary["first_error"]["cots_labelled"] == 3 and summary["first_error"]["cots_with_error"] == 2
    assert summary["first_error"]["before_final_answer"] == 2


def test_first_error_agreement_by_hand(tmp_path):
    path = write_jsonl(tmp_path / "pb.jsonl", PB)
    db = tmp_path / "store.duckdb"
    run_step_labels(db, StepLabelOptions(path=str(path)))
    # a second opinion on the same CoTs: item 0 wrong at step 1, item 1 agrees, item 2 one step later
    other = [dict(PB[0], label=1), dict(PB[1]), dict(PB[2], label=3)]
    run_step_labels(db, StepLabelOptions(path=str(write_jsonl(tmp_path / "pb2.jsonl", other)), dataset="pb",
                                         source_name="critic"))
    result = step_stats.first_error_agreement("critic", "processbench", db=db)
    # by hand: exact on item 1 only; within one step on items 1 and 2; item 0 only the critic errs
    assert result["cots"] == 3 and result["exact"] == pytest.approx(1 / 3) and result["within_1"] == pytest.approx(2 / 3)
    assert (result["only_a"], result["only_b"], result["both_none"]) == (1, 0, 0)


def test_processbench_bad_label_and_unknown_layout(tmp_path):
    path = write_jsonl(tmp_path / "pb.jsonl", [PB[0], dict(PB[1], label=7)])
    with pytest.raises(IngestError, match=r"line 2, field 'label': expected the index of the first wrong step \(0-1\) or -1, got 7"):
        run_step_labels(tmp_path / "s.duckdb", StepLabelOptions(path=str(path)))
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"x": 1}])
    with pytest.raises(IngestError, match="cannot tell the step-label layout"):
        run_step_labels(tmp_path / "s.duckdb", StepLabelOptions(path=str(odd), dataset="x"))
    # skip_bad: the good records are ingested, the bad one reported
    result = run_step_labels(tmp_path / "s2.duckdb", StepLabelOptions(path=str(path), skip_bad=True))
    assert result["cots"] == 1 and result["skipped_records"] == 1


def test_steps_cli_json_reports_sources_and_agreement(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pb.jsonl", PB)
    db = tmp_path / "store.duckdb"
    run_step_labels(db, StepLabelOptions(path=str(path)))
    run_steps(db, StepOptions(from_source="processbench"))
    assert main(["--db", str(db), "steps", "--json", "--source", "step rules on processbench", "--source", "processbench",
                 "--correct-source", "pb"]) == 0
    out = json.loads(capsys.readouterr().out)
    rules_summary, pb_summary = out["sources"]
    assert rules_summary["steps"] == pb_summary["steps"] == 9
    assert sum(r["steps"] for r in rules_summary["by_role"]) == 9
    # correctness comes from the dataset's label: 1 correct CoT (3 steps), 2 incorrect (6 steps)
    by_correctness = defaultdict(int)
    for r in rules_summary["by_role"]:
        by_correctness[r["correctness"]] += r["steps"]
    assert dict(by_correctness) == {"correct": 3, "incorrect": 6}
    assert out["agreement"]["roles"]["steps"] == 0  # ProcessBench gives no roles to compare
    assert out["agreement"]["first_error"]["cots"] == 0  # and the rules no verdicts
    assert main(["--db", str(db), "steps", "--source", "nope"]) == 2


def test_the_step_labels_job_runs_in_a_worker(tmp_path, monkeypatch):
    import time

    from core import jobs

    path = write_jsonl(tmp_path / "pb.jsonl", PB)
    db = tmp_path / "store.duckdb"
    store.init_store(db)
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    job_id = jobs.submit("step_labels", {"path": str(path)}, db=db)
    deadline = time.time() + 120
    while jobs.get(job_id)["state"] not in jobs.FINISHED and time.time() < deadline:
        time.sleep(0.5)
    job = jobs.get(job_id)
    assert job["state"] == "done", job["error"] or job["log_tail"]
    assert job["result"]["cots"] == 3 and job["result"]["dataset_created"]
    assert rows("SELECT count(*) FROM steps", db=db) == [(9,)]

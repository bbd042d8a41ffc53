"""Where the problem stages' defaults come from: measured on the real benchmark questions in
../shared/realdata (AIME 2024, AIME 2025, MATH500, GSM8K: 1,879 problems) and edits of them.

    python bench/calibrate_problems.py [--json]

Contamination (n-gram overlap = share of a benchmark problem's word n-grams found in a problem):

* false positives: problems of one benchmark flagged against another benchmark (the four are
  disjoint, so every flag is false), per rule;
* recall on edits of each benchmark problem against its original: an extra sentence, 10% of
  the words dropped, every digit changed (d -> d+1 mod 10).

Near-duplicates (Jaccard of the shingle sets of question keys): the distribution over all
1.76M pairs of distinct real problems (how similar different problems get), and the share of
edited copies that reach each threshold, per shingle size.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, format_table, log  # noqa: E402

REALDATA = ROOT.parent / "shared" / "realdata"
BENCHMARKS = {"aime24": "problem", "math500": "problem", "aime25": "prompt", "gsm8k": "question"}


def edits(question: str, rng: random.Random) -> dict[str, str]:
    return {
        "extra sentence": question + " Express your answer in simplest form.",
        "10% words dropped": " ".join(w for w in question.split(" ") if rng.random() > 0.1),
        "digits changed": re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), question),
    }


def main(argv=None) -> int:
    from core.contamination import ngrams
    from core.identity import key_words, question_key
    from core.neardup import jaccard, shingles

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(0)
    problems = []  # (benchmark, key, {edit: key})
    for bench, field in BENCHMARKS.items():
        for line in open(REALDATA / "benchmarks" / f"{bench}_test.jsonl"):
            q = json.loads(line)[field]
            problems.append((bench, question_key(q), {k: question_key(v) for k, v in edits(q, rng).items()}))
    out: dict = {"problems": len(problems)}

    # ---- contamination rules
    log("contamination: n-gram overlap between benchmarks")
    rows = []
    out["contamination"] = {}
    for n in (8, 13):
        grams = [ngrams(key_words(k), n) for _, k, _ in problems]
        best_cross = []  # per problem: best overlap against another benchmark's problems
        for i, (bench, _, _) in enumerate(problems):
            mine = grams[i]
            best = 0.0
            for j, (other, _, _) in enumerate(problems):
                if other != bench and grams[j]:
                    shared = len(mine & grams[j])
                    if shared:
                        best = max(best, shared / len(grams[j]), 1e-9)
            best_cross.append(best)
        edit_overlap = {kind: [len(ngrams(key_words(e[kind]), n) & grams[i]) / len(grams[i])
                               for i, (_, _, e) in enumerate(problems) if grams[i]] for kind in problems[0][2]}
        for threshold in (0.0, 0.1, 0.2, 0.3, 0.5):
            fp = sum(1 for b in best_cross if b > 0 and b >= threshold)
            recall = {k: sum(1 for v in vals if v > 0 and v >= threshold) / len(vals) for k, vals in edit_overlap.items()}
            label = "any shared n-gram" if threshold == 0 else f">= {threshold}"
            rows.append([n, label, fp, *(round(r, 3) for r in recall.values())])
            out["contamination"][f"n{n} {label}"] = {"cross_benchmark_flags": fp, "edit_recall": recall}
        out["contamination"][f"n{n} highest cross-benchmark overlap"] = max(best_cross)
    print(format_table(["n", "flag when overlap", "problems flagged vs another benchmark (false)",
                        *[f"recall: {k}" for k in problems[0][2]]], rows))
    print(f"highest overlap of a problem with another benchmark's problem: n=8 "
          f"{out['contamination']['n8 highest cross-benchmark overlap']:.3f}")

    # ---- near-duplicate threshold
    log("near-duplicates: Jaccard over all pairs of distinct problems")
    rows = []
    out["near_duplicates"] = {}
    for k in (1, 2, 3):
        sets = [shingles(key, k) for _, key, _ in problems]
        distinct = []
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                if a & b:
                    distinct.append(jaccard(a, b))
        pairs = len(sets) * (len(sets) - 1) // 2
        edited = {kind: [jaccard(sets[i], shingles(e[kind], k)) for i, (_, _, e) in enumerate(problems)]
                  for kind in problems[0][2]}
        for threshold in (0.5, 0.6, 0.7, 0.8):
            above = sum(1 for j in distinct if j >= threshold)
            recall = {kind: sum(1 for j in vals if j >= threshold) / len(vals) for kind, vals in edited.items()}
            rows.append([k, threshold, above, *(round(r, 3) for r in recall.values())])
            out["near_duplicates"][f"shingle {k} threshold {threshold}"] = {"distinct_pairs_above": above, "pairs": pairs,
                                                                            "edit_recall": recall}
        out["near_duplicates"][f"shingle {k} highest distinct pair"] = max(distinct)
    print(format_table(["words per shingle", "threshold", f"distinct real pairs at or above (of {pairs:,})",
                        *[f"edited copies at or above: {k}" for k in problems[0][2]]], rows))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

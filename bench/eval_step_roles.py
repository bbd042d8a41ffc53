"""How the role rules agree with Thought Anchors' labelled steps (the README "Step roles" table).

    python bench/eval_step_roles.py [--rules FILE] [--json]

Builds a throw-away store from ../shared/realdata/thought_anchors with the product's own
commands (the solutions file as a dataset, its chunks file with ``--steps-for``), runs the rule
set on Thought Anchors' own steps (``split-steps --from-source "thought anchors"``, so only the
classification is compared) and with the sentence splitter (compared through character
overlap), and prints agreement overall, on the five problems the rules were tuned on ("dev")
and on the other five ("held out"), per role.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "thought_anchors"
# the problems whose labelled steps were read while writing core/step_roles.yaml
DEV_PROBLEMS = ("problem_1591", "problem_2189", "problem_2236", "problem_2238", "problem_330")
TA_SOURCE = "thought anchors"


def evaluate(db: Path, rules: str | None = None) -> dict:
    from core import step_stats, store
    from core.cli import main as cli
    from core.queries import CotFilter
    from core.step_stage import StepOptions, run_steps

    solutions = REALDATA / "thought_anchors_math_base_solutions.jsonl"
    chunks = REALDATA / "thought_anchors_math_chunks_labeled.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):  # the ingest's own summary is not the report
        if cli(["--db", str(db), "ingest", str(solutions), "--name", "thought anchors", "--no-verify", "--no-tokens", "--no-index"]):
            raise SystemExit("ingesting the solutions file failed")
        if cli(["--db", str(db), "ingest", str(chunks), "--steps-for", "thought anchors", "--step-source", TA_SOURCE]):
            raise SystemExit("ingesting the chunks file failed")
    on_ta = run_steps(db, StepOptions(from_source=TA_SOURCE, rules=rules))["source"]
    own = run_steps(db, StepOptions(rules=rules))["source"]
    keys = dict(store.read_rows("SELECT problem_key, problem_id FROM problems", db=db))
    dev = tuple(keys[k] for k in DEV_PROBLEMS)
    held = tuple(v for k, v in keys.items() if k not in DEV_PROBLEMS)
    return {
        "rules": rules or "core/step_roles.yaml",
        "classification": {
            "all": step_stats.role_agreement(on_ta, TA_SOURCE, db=db),
            "dev": step_stats.role_agreement(on_ta, TA_SOURCE, CotFilter(problem_ids=dev), db=db),
            "held_out": step_stats.role_agreement(on_ta, TA_SOURCE, CotFilter(problem_ids=held), db=db),
        },
        "sentence_splitter": {
            "all": step_stats.role_agreement(own, TA_SOURCE, db=db),
            "held_out": step_stats.role_agreement(own, TA_SOURCE, CotFilter(problem_ids=held), db=db),
        },
    }


def _f(value, pct=False) -> str:
    if value is None:
        return "—"
    return f"{value:.1%}" if pct else f"{value:.3f}"


def report(result: dict) -> str:
    c, s = result["classification"], result["sentence_splitter"]
    lines = ["| rules on | steps | CoTs | accuracy | Cohen's kappa |", "|---|---|---|---|---|"]
    for label, r in (("Thought Anchors' steps, all 20 CoTs", c["all"]), ("… the 5 problems read while writing the rules", c["dev"]),
                     ("… the 5 held-out problems", c["held_out"]), ("our sentence steps (overlap), all", s["all"]),
                     ("our sentence steps (overlap), held out", s["held_out"])):
        lines.append(f"| {label} | {r['steps']:,} | {r['cots']} | {_f(r['accuracy'], True)} | {_f(r['kappa'])} |")
    lines += ["", ("| role | TA steps (held out / all) | rules steps (all) | precision (all) | recall (held out / all) "
                   "| F1 (held out / all) | kappa one-vs-rest (held out / all) |"), "|---|---|---|---|---|---|---|"]
    held = {r["role"]: r for r in c["held_out"]["per_role"]}
    for r in c["all"]["per_role"]:
        h = held[r["role"]]
        lines.append(f"| {r['role']} | {h['b_steps']:,} / {r['b_steps']:,} | {r['a_steps']:,} | {_f(r['precision'])} | "
                     f"{_f(h['recall'])} / {_f(r['recall'])} | {_f(h['f1'])} / {_f(r['f1'])} | {_f(h['kappa'])} / {_f(r['kappa'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Agreement of the step role rules with Thought Anchors' labels.")
    parser.add_argument("--rules", help="a role rules YAML (default core/step_roles.yaml)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not REALDATA.is_dir():
        print(f"error: the Thought Anchors files are not at {REALDATA}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="eval-step-roles-") as folder:
        result = evaluate(Path(folder) / "ta.duckdb", args.rules)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

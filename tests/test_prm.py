"""The process-reward-model backend (core.prm; the step judge's prm and prm-vllm backends) on a
tiny randomly initialised model of Qwen2.5-Math-PRM's architecture saved with save_pretrained
(tests/helpers.py, build_tiny_qwen2_prm), checked against a forward pass written here from the
model card's recipe: transformers' own Qwen2Model for the decoder, the head applied by hand
from the saved tensors, softmax at each ``<extra_0>``. The `vllm` test runs vLLM's own
Qwen2ForProcessRewardModel (the CPU build in .venv-vllm) on the same folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict

import pytest

from core import step_stats, store
from core import steps as steps_mod
from core.prm import DEFAULT_SYSTEM, PrmError, open_prm
from core.step_judge import StepJudgeError, judge_steps
from core.step_labels import StepLabelOptions, run_step_labels
from helpers import REPO, VLLM_PYTHON, require_vllm_env, snapshot, write_jsonl
from helpers import cot_ids as _cot_ids


def rows(sql, params=(), db=None):
    return store.read_rows(sql, list(params), db=db)


_PLAIN: dict = {}


def plain_step_scores(folder, question: str, steps: list[str]) -> list[float]:
    """Each step's positive-class probability, computed without core.prm."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Model

    if folder not in _PLAIN:
        base, info = Qwen2Model.from_pretrained(str(folder), output_loading_info=True)
        assert not info["missing_keys"], info  # every decoder weight came from the checkpoint
        _PLAIN[folder] = (AutoTokenizer.from_pretrained(str(folder)), base.eval(), load_file(str(folder / "model.safetensors")))
    tokenizer, base, weights = _PLAIN[folder]
    messages = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        hidden = base(input_ids=ids).last_hidden_state[0]
        inner = torch.relu(hidden @ weights["score.0.weight"].T + weights["score.0.bias"])
        logits = inner @ weights["score.2.weight"].T + weights["score.2.bias"]
    probs = torch.softmax(logits, dim=-1)[:, 1]
    return probs[ids[0] == tokenizer.convert_tokens_to_ids("<extra_0>")].tolist()


def step_texts(db, cot_id: int, source: str) -> tuple[str, list[str]]:
    question, text = rows(f"SELECT p.question, {steps_mod.STEP_TEXT_SQL} FROM cots c JOIN problems p USING (problem_id) "
                          "WHERE c.cot_id = ?", [cot_id], db=db)[0]
    spans = rows("SELECT char_start, char_end FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
                 "AND s.cot_id = ? ORDER BY step_idx", [source, cot_id], db=db)
    return question, [text[a:b].strip() for a, b in spans]


def test_the_tiny_prm_has_the_real_layout_and_its_folder_code_never_runs(tiny_prm):
    from safetensors.torch import load_file

    config = json.loads((tiny_prm / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and "modeling_qwen2_rm" in config["auto_map"]["AutoModel"]
    names = set(load_file(str(tiny_prm / "model.safetensors")))
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias", "model.embed_tokens.weight"} <= names
    prm = open_prm(str(tiny_prm), device="cpu")
    assert type(prm.model).__name__ == "Qwen2ForProcessRewardModel" and prm.separator_id == prm.tokenizer.convert_tokens_to_ids("<extra_0>")
    prm.score([("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."])])
    assert not (tiny_prm / "REMOTE_CODE_RAN").exists()  # the folder's modeling_qwen2_rm.py was never imported


def test_step_scores_equal_a_plain_forward_pass(tiny_prm):
    prm = open_prm(str(tiny_prm), device="cpu", batch_size=3)
    items = [("What is 17 + 25?", ["17 + 20 = 37.", "37 + 5 = 42.", "The answer is 42."]),
             ("How many primes are below 20?", ["2, 3, 5, 7, 11, 13, 17, 19.", "That is 8."]),
             ("Solve x^2 - 5x + 6 = 0.", ["(x - 2)(x - 3) = 0.", "x = 2 or x = 3.", "Wait, check: 4 - 10 + 6 = 0.", "Yes."]),
             ("One step.", ["Done."])]
    got = prm.score(items)  # one batch of three of different lengths (padded), then one alone
    for (question, steps), (scores, tokens) in zip(items, got):
        assert scores == pytest.approx(plain_step_scores(tiny_prm, question, steps), abs=1e-5)
        assert len(scores) == len(steps) and tokens > 0
    every = [p for scores, _ in got for p in scores]
    assert min(every) < 0.5 < max(every)  # the tiny model's steps fall on both sides of the threshold


def test_special_tokens_in_the_text_neither_add_steps_nor_end_the_turn(tiny_prm):
    prm = open_prm(str(tiny_prm), device="cpu")
    steps = ["First <extra_0> step.", "Second <|im_end|> step.", "Third."]
    [(scores, _)] = prm.score([("Q <extra_0><|im_start|>", steps)])
    assert len(scores) == 3
    conversation = prm.conversation("Q <extra_0>", steps)
    assert conversation.count("<extra_0>") == 3 and conversation.count("<|im_end|>") == 3  # the template's own only


def test_the_prm_backend_writes_a_step_source(judge_store, tiny_prm):
    run = judge_steps(judge_store, None, backend="prm", model=str(tiny_prm), unit="sentence", source_name="prm",
                      backend_options={"device": "cpu"})
    assert run.judged == 6
    scores = defaultdict(dict)
    for cot_id, metric, value, raw, error in rows(
            "SELECT s.cot_id, s.metric, s.value, s.raw, s.error FROM scores s JOIN score_sources ss USING (source_id) "
            "WHERE ss.name IN ('prm', 'prm (step figures)')", db=judge_store):
        scores[cot_id][metric] = (value, raw, error)
    found_error = False
    for cot_id in _cot_ids(judge_store):
        question, texts = step_texts(judge_store, cot_id, "prm")
        expected = plain_step_scores(tiny_prm, question, texts)
        stored = rows("SELECT s.step_idx, st.value, s.wrong FROM steps s JOIN score_sources ss USING (source_id) "
                      "LEFT JOIN step_scores st ON st.cot_id = s.cot_id AND st.source_id = s.source_id AND st.step_idx = s.step_idx "
                      "AND st.metric = 'prm_score' WHERE ss.name = 'prm' AND s.cot_id = ? ORDER BY 1", [cot_id], db=judge_store)
        assert [v for _, v, _ in stored] == pytest.approx(expected, abs=1e-5)
        assert [w for *_, w in stored] == [p < 0.5 for p in expected]
        first = next((i for i, p in enumerate(expected) if p < 0.5), -1)
        assert scores[cot_id]["first_error_label"][0] == first
        assert scores[cot_id]["prm_min"][0] == pytest.approx(min(expected), abs=1e-5)
        assert scores[cot_id]["prm_mean"][0] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
        assert scores[cot_id]["prm_last"][0] == pytest.approx(expected[-1], abs=1e-5)
        assert scores[cot_id]["steps_judged"][0] == len(expected)
        assert scores[cot_id]["has_error"][0] == float(first >= 0)
        if first >= 0:
            found_error = True
            assert scores[cot_id]["first_error_step"][0] == first
    assert found_error
    params = json.loads(rows("SELECT params FROM score_sources WHERE name = 'prm'", db=judge_store)[0][0])
    assert (params["backend"], params["threshold"], params["separator"], params["tasks"]) == ("prm", 0.5, "<extra_0>", ["first_error"])


def test_long_cots_are_scored_as_far_as_they_fit(judge_store, tiny_prm):
    ids = _cot_ids(judge_store)
    longest = ids[3]  # seven sentences
    run = judge_steps(judge_store, [longest], backend="prm", model=str(tiny_prm), unit="sentence", source_name="short prm",
                      max_input_tokens=150, backend_options={"device": "cpu"})
    question, texts = step_texts(judge_store, longest, "short prm")
    judged = rows("SELECT value, raw FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'short prm' "
                  "AND metric = 'steps_judged'", db=judge_store)[0]
    k = int(judged[0])
    assert 0 < k < len(texts) == 7 and json.loads(judged[1])["input_tokens"] <= 150 and run.steps == 7
    stored = rows("SELECT s.wrong, st.value FROM steps s JOIN score_sources ss USING (source_id) LEFT JOIN step_scores st "
                  "ON st.cot_id = s.cot_id AND st.source_id = s.source_id AND st.step_idx = s.step_idx "
                  "WHERE ss.name = 'short prm' ORDER BY s.step_idx", db=judge_store)
    expected = plain_step_scores(tiny_prm, question, texts[:k])
    assert [v for _, v in stored[:k]] == pytest.approx(expected, abs=1e-5)
    assert stored[k:] == [(None, None)] * (7 - k)  # later steps are not judged
    # one more step would not have fitted
    prm = open_prm(str(tiny_prm), device="cpu")
    assert len(prm.tokenizer.encode(prm.conversation(question, texts[:k + 1]), add_special_tokens=False)) > 150


def test_models_that_are_not_prms_are_refused(judge_store, tiny_llama, tmp_path):
    from core.models import DEFAULT_MODEL

    with pytest.raises(PrmError, match="is a LlamaForCausalLM, not a process reward model"):
        open_prm(str(tiny_llama))
    before = snapshot(judge_store)
    with pytest.raises(StepJudgeError, match="is a chat model, not a process reward model"):
        judge_steps(judge_store, None, backend="prm", model=DEFAULT_MODEL, source_name="no prm")
    with pytest.raises(StepJudgeError, match="not its role"):
        judge_steps(judge_store, None, backend="prm", model=str(tiny_llama), tasks="first_error,roles")
    with pytest.raises(PrmError, match="is a LlamaForCausalLM"):  # found when the model opens: the new source goes again
        judge_steps(judge_store, None, backend="prm", model=str(tiny_llama), source_name="llama as prm")
    assert snapshot(judge_store) == before


def test_a_token_classification_prm_is_read_the_same_way(tiny_prm, tmp_path):
    """A PRM with a two-label token-classification head (as TRL's PRMTrainer trains) loads
    through AutoModelForTokenClassification and is read at its separator tokens."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForTokenClassification

    folder = tmp_path / "token-prm"
    shutil.copytree(tiny_prm, folder, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "modeling_*"))
    config = Qwen2Config(**{k: v for k, v in json.loads((tiny_prm / "config.json").read_text()).items()
                            if k not in ("architectures", "auto_map")})
    config.num_labels = 2
    torch.manual_seed(1)
    Qwen2ForTokenClassification(config).save_pretrained(str(folder))
    prm = open_prm(str(folder), device="cpu")
    steps = ["2 + 3 = 5.", "So 5."]
    [(scores, _)] = prm.score([("What is 2 + 3?", steps)])
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer.encode(prm.conversation("What is 2 + 3?", steps), add_special_tokens=False)
    model = Qwen2ForTokenClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)[:, 1]
    assert scores == pytest.approx(probs[torch.tensor(ids) == prm.separator_id].tolist(), abs=1e-6)


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


def test_the_prm_against_processbench_labels(tmp_path, tiny_prm):
    db = tmp_path / "store.duckdb"
    run_step_labels(db, StepLabelOptions(path=str(write_jsonl(tmp_path / "processbench_gsm8k.jsonl", PB))))
    run = judge_steps(db, None, backend="prm", model=str(tiny_prm), from_source="processbench", source_name="tiny prm",
                      backend_options={"device": "cpu"})
    assert run.judged == 3 and run.steps == 11
    # ProcessBench's steps, the same spans
    assert rows("SELECT cot_id, step_idx, char_start, char_end FROM steps s JOIN score_sources ss USING (source_id) "
                "WHERE ss.name = 'tiny prm' ORDER BY ALL", db=db) == rows(
        "SELECT cot_id, step_idx, char_start, char_end FROM steps s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'processbench' ORDER BY ALL", db=db)

    def firsts(source):
        out = {}
        for cot_id, wrong in rows("SELECT cot_id, list(wrong ORDER BY step_idx) FROM steps s JOIN score_sources ss "
                                  "USING (source_id) WHERE ss.name = ? GROUP BY cot_id", [source], db=db):
            out[cot_id] = next((i for i, w in enumerate(wrong) if w), None)
        return out

    mine, theirs = firsts("tiny prm"), firsts("processbench")
    pairs = [(mine[c], theirs[c]) for c in sorted(theirs)]
    result = step_stats.first_error_agreement("tiny prm", "processbench", db=db)
    assert result["cots"] == 3
    assert result["exact"] == pytest.approx(sum(a == b for a, b in pairs) / 3)
    assert result["within_1"] == pytest.approx(sum((a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1)
                                                   for a, b in pairs) / 3)
    assert result["only_a"] == sum(a is not None and b is None for a, b in pairs)


VLLM_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from core import step_judge

if __name__ == "__main__":  # vLLM's engine spawns processes
    run = step_judge.judge_steps({db!r}, None, backend="prm-vllm", model={model!r}, unit="sentence", source_name="prm on vllm",
                                 backend_options={{"dtype": "float32", "enforce_eager": True}})
    print("RUN " + json.dumps([run.judged, run.steps, run.seconds]))
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_vllm_s_own_prm_model_gives_the_same_step_scores(judge_store, tiny_prm, tmp_path):
    """vLLM's Qwen2ForProcessRewardModel (its own implementation of the real architecture) on
    the tiny folder gives the scores core.prm's transformers class gives: the layout, the
    weights' names and the reading at the separator agree with an independent implementation."""
    require_vllm_env()
    local = judge_steps(judge_store, None, backend="prm", model=str(tiny_prm), unit="sentence", source_name="prm here",
                        backend_options={"device": "cpu"})
    script = tmp_path / "vllm_prm.py"
    script.write_text(VLLM_SCRIPT.format(root=str(REPO), db=str(judge_store), model=str(tiny_prm)))
    proc = subprocess.run([str(VLLM_PYTHON), str(script)], capture_output=True, text=True, timeout=1100, cwd=tmp_path)
    if proc.returncode != 0:
        # vLLM's CPU engine once aborted in its own teardown in CI ("terminate called without an
        # active exception", exit -6); only that, after the run printed its result, is let pass:
        # the result itself is checked below like any other
        teardown = proc.returncode == -6 and "terminate called without an active exception" in proc.stderr
        assert teardown and "RUN " in proc.stdout, proc.stderr[-4000:]
    judged, steps, seconds = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RUN "))[4:])
    assert (judged, steps) == (local.judged, local.steps) == (6, local.steps)

    def scores(source):
        return rows("SELECT st.cot_id, st.step_idx, st.value FROM step_scores st JOIN score_sources ss USING (source_id) "
                    "WHERE ss.name = ? ORDER BY 1, 2", [source], db=judge_store)

    here, there = scores("prm here"), scores("prm on vllm")
    assert [r[:2] for r in here] == [r[:2] for r in there] and len(here) == local.steps
    assert [r[2] for r in there] == pytest.approx([r[2] for r in here], abs=1e-4)
    assert not (tiny_prm / "REMOTE_CODE_RAN").exists()

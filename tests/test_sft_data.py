"""Training examples for SFT (core/sft_data.py) on a real tokenizer (the tiny Llama's byte-level
BPE, and a base model's without a chat template): the prompt/completion split against the chat
template rendered here, the default max length against numpy's quantile, over-long examples
dropped or shortened inside their thinking with the answer kept whole, the plain template."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core import sft_data
from core.errors import UserError
from core.finetune import read_chats
from helpers import build_tiny_llama


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path_factory.mktemp("tiny-base"), chat_template=None))


def chat(i: int, steps: int = 1, *, answer: str | None = None, thinking: bool = True) -> list[dict]:
    think = " ".join(f"Step {k}: {i} sevens make {7 * i}." for k in range(steps))
    body = f"<think>\n{think}\n</think>\n\n" if thinking else f"{think}\n\n"
    return [{"role": "user", "content": f"What is {i} times 7?"},
            {"role": "assistant", "content": body + (answer or f"The answer is \\boxed{{{7 * i}}}.")}]


def rendered(tokenizer, template, messages, generation_prompt):
    return tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation_prompt,
                                         tokenize=True, return_dict=True)["input_ids"]


def test_an_example_is_the_chat_template_rendered_with_the_loss_on_the_assistant_turn(tokenizer):
    template, which = sft_data.chat_template_for(tokenizer)
    assert which == "the model's own" and template == tokenizer.chat_template
    messages = [{"role": "system", "content": "Be brief."}, *chat(3)]
    example = sft_data.tokenize(tokenizer, template, messages, line=7)
    full = rendered(tokenizer, template, messages, False)
    prompt = rendered(tokenizer, template, messages[:2], True)
    assert example.input_ids == full and example.line == 7
    assert full[:len(prompt)] == prompt and example.prompt_len == len(prompt)  # this template keeps the prompt a prefix
    mask = example.completion_mask
    assert mask == [0] * len(prompt) + [1] * (len(full) - len(prompt))
    completion = tokenizer.decode([t for t, m in zip(full, mask) if m])
    assert completion.startswith("<think>") and completion.rstrip().endswith("\\boxed{21}.</s>")  # the end of turn too
    # the last assistant turn is the completion; an earlier one is part of the prompt
    two_turns = [*chat(1), {"role": "user", "content": "And 3 times 7?"}, chat(3)[1]]
    example = sft_data.tokenize(tokenizer, template, two_turns, line=1)
    assert example.prompt_len == len(rendered(tokenizer, template, two_turns[:3], True))
    with pytest.raises(UserError, match="line 4 of the training data has no assistant turn"):
        sft_data.tokenize(tokenizer, template, chat(1)[:1], line=4)


def test_the_default_max_length_is_the_95th_percentile_and_longer_examples_are_dropped_and_listed(tokenizer):
    template = tokenizer.chat_template
    chats = [chat(i, steps=1 + (i % 5) + (30 if i in (3, 17) else 0)) for i in range(20)]
    lengths = [len(rendered(tokenizer, template, c, False)) for c in chats]
    expected = math.ceil(float(np.quantile(lengths, 0.95)))  # linear interpolation, rounded up
    over = [i for i, n in enumerate(lengths) if n > expected]
    assert over == [17]  # the 95th percentile lands between the two long examples
    prepared = sft_data.prepare(tokenizer, template, chats, context=2048, lines=[10 + i for i in range(20)])
    assert prepared.max_length == expected
    report = prepared.report
    assert report["max_length_from"] == "the 95% quantile of the examples' token lengths"
    assert (report["examples"], report["over_max_length"], report["dropped"], report["trained_on"]) == (20, 1, 1, 19)
    assert report["tokens"] == {"min": min(lengths), "median": float(np.median(lengths)),
                                "p95": float(np.quantile(lengths, 0.95)), "max": max(lengths)}
    assert prepared.overlong == [{"line": 27, "tokens": lengths[17], "question": "What is 17 times 7?", "action": "dropped",
                                  "reason": f"longer than max_length {expected:,} (overlong=drop)"}]
    assert [e.line for e in prepared.examples] == [10 + i for i in range(20) if i != 17]
    assert all(e.length <= expected for e in prepared.examples)
    # a quantile of 1 keeps every example; the model's context caps it
    assert sft_data.prepare(tokenizer, template, chats, quantile=1.0, context=2048).max_length == max(lengths)
    capped = sft_data.prepare(tokenizer, template, chats, quantile=1.0, context=lengths[3] - 1)
    assert capped.max_length == lengths[3] - 1 and capped.report["dropped"] == 2
    assert capped.report["max_length_from"] == (f"the 100% quantile of the examples' token lengths ({max(lengths):,}) "
                                                f"capped by the model's context ({lengths[3] - 1:,})")
    # a given max length is used as it is, but not beyond the context
    assert sft_data.prepare(tokenizer, template, chats, max_length=60, context=2048).report["max_length_from"] == "given"
    with pytest.raises(UserError, match="max_length 4,096 is longer than the model's context \\(2,048 tokens\\)"):
        sft_data.prepare(tokenizer, template, chats, max_length=4096, context=2048)
    with pytest.raises(UserError, match="No example fits max_length 20 tokens"):
        sft_data.prepare(tokenizer, template, chats, max_length=20, context=2048)


def test_truncate_thinking_keeps_the_answer_whole_and_marks_what_it_left_out(tokenizer):
    template = tokenizer.chat_template
    long = chat(6, steps=40)
    example = sft_data.tokenize(tokenizer, template, long, line=1)
    limit = example.length // 3
    short = sft_data.shorten_thinking(tokenizer, template, example, limit)
    assert isinstance(short, sft_data.Example) and short.length <= limit
    text = short.messages[-1]["content"]
    original = long[1]["content"]
    head, rest = text.split("\n\n[... ", 1)
    omitted, tail = rest.split(" tokens of thinking left out to fit max_length ...]\n\n", 1)
    assert int(omitted) == short.shortened_by > 0
    # the start of the thinking, then its end, then </think> and the answer exactly as they were
    assert original.startswith(head) and head.startswith("<think>\nStep 0: 6 sevens make 42.")
    assert tail.endswith("\n</think>\n\nThe answer is \\boxed{42}.") and original.endswith(tail)
    thinking = original[len("<think>\n"):original.index("\n</think>")]
    kept = len(tokenizer(head[len("<think>\n"):], add_special_tokens=False)["input_ids"]) + len(
        tokenizer(tail[:tail.index("\n</think>")], add_special_tokens=False)["input_ids"])
    assert abs(kept + int(omitted) - len(tokenizer(thinking, add_special_tokens=False)["input_ids"])) <= 2
    assert short.messages[0] == long[0] and short.prompt_len == example.prompt_len  # the prompt is untouched
    # through prepare: counted and listed, the short examples untouched
    chats = [chat(i) for i in range(9)] + [long]
    prepared = sft_data.prepare(tokenizer, template, chats, max_length=limit, overlong="truncate_thinking")
    assert prepared.report["thinking_shortened"] == 1 and prepared.report["dropped"] == 0
    assert prepared.overlong[0]["action"] == "thinking shortened" and prepared.overlong[0]["line"] == 10
    assert prepared.overlong[0]["tokens_after"] == prepared.examples[-1].length <= limit
    assert [e.input_ids for e in prepared.examples[:9]] == [sft_data.tokenize(tokenizer, template, c, 1).input_ids for c in chats[:9]]


def test_what_cannot_be_shortened_inside_its_thinking_is_dropped_with_the_reason(tokenizer):
    template = tokenizer.chat_template
    no_thinking = chat(2, steps=40, thinking=False)
    unclosed = [chat(2)[0], {"role": "assistant", "content": "<think>\n" + "Step: 2 sevens. " * 60}]
    long_answer = chat(2, steps=1, answer="The answer is " + "fourteen, " * 80 + "\\boxed{14}.")
    short = chat(1)
    limit = sft_data.tokenize(tokenizer, template, long_answer, 1).length // 2
    prepared = sft_data.prepare(tokenizer, template, [short, no_thinking, unclosed, long_answer], max_length=limit,
                                overlong="truncate_thinking")
    reasons = {e["line"]: e["reason"] for e in prepared.overlong}
    assert prepared.report["dropped"] == 3 and [e.line for e in prepared.examples] == [1]
    assert reasons[2] == reasons[3] == "its answer has no closed thinking to shorten (no <think>...</think> or thought markers)"
    assert reasons[4].startswith(f"its prompt and answer without the thinking do not fit {limit:,} tokens")
    # Sky-T1's markers and a thinking whose opening tag was stripped (R1 templates) are found
    assert sft_data.thinking_span("<|begin_of_thought|>\nA\n<|end_of_thought|>\n<|begin_of_solution|>x") == (20, 23)
    assert sft_data.thinking_span("plan\n</think>\nanswer") == (0, 5)


def test_a_base_model_without_a_chat_template_gets_the_documented_plain_template(base_tokenizer, tokenizer):
    assert not base_tokenizer.chat_template
    template, which = sft_data.chat_template_for(base_tokenizer)
    assert template == sft_data.PLAIN_TEMPLATE and which.endswith("the model has no chat template")
    messages = chat(5)
    text = base_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert text == ("<s>### User\nWhat is 5 times 7?\n\n### Assistant\n" + messages[1]["content"] + "</s>\n\n")
    prompt = base_tokenizer.apply_chat_template(messages[:1], chat_template=template, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>### User\nWhat is 5 times 7?\n\n### Assistant\n" and text.startswith(prompt)
    example = sft_data.tokenize(base_tokenizer, template, messages, 1)
    assert base_tokenizer.decode(example.input_ids[example.prompt_len:]).endswith("\\boxed{35}.</s>\n\n")
    # asked for, it replaces a model's own template; a typo is refused
    assert sft_data.chat_template_for(tokenizer, "plain")[0] == sft_data.PLAIN_TEMPLATE
    with pytest.raises(UserError, match="chat_template must be one of auto, plain"):
        sft_data.chat_template_for(tokenizer, "chatml")


def test_the_model_context_comes_from_the_config(tiny_llama, tokenizer):
    assert sft_data.model_context(str(tiny_llama), tokenizer) == json.loads((tiny_llama / "config.json").read_text())[
        "max_position_embeddings"] == 2048


def test_training_data_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": chat(1)}) + "\n\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl line 3 has no 'messages' list"):
        read_chats(path)
    path.write_text(json.dumps({"messages": chat(1)}) + "\n{not json\n")
    with pytest.raises(UserError, match="bad.jsonl line 2 is not JSON"):
        read_chats(path)
    chats, lines = read_chats(path, limit=1)  # the first N only: a bad line after them is not read
    assert chats == [chat(1)] and lines == [1]

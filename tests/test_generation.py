"""core.generation on the tiny random Llama: what generate() returns (text, finish reason,
token counts, n samples in prompt-major order), the run clock's arithmetic, and the speed
measured on this machine that the Jobs forms' cost estimates use."""

from __future__ import annotations

import pytest

from core import generation
from core.generation import RunClock, StepStatus

PROMPTS = [[{"role": "user", "content": "What is 6 times 7?"}],
           [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April. How many in May?"}]]


def test_generate_returns_text_finish_reason_and_token_counts(tiny_llama):
    from transformers import AutoTokenizer

    answers = generation.generate(PROMPTS, model=str(tiny_llama), max_new_tokens=6, backend_options={"device": "cpu"})
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    assert [a.prompt_index for a in answers] == [0, 1] and all(a.sample_index == 0 for a in answers)
    for prompt, answer in zip(PROMPTS, answers):
        chat = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert answer.prompt_tokens == len(tokenizer(chat, add_special_tokens=False)["input_ids"])
        assert 1 <= answer.completion_tokens <= 6 and isinstance(answer.text, str)
        # "length": the budget ran out (no end-of-sequence token among the 6); "stop": it ended itself
        assert answer.finish_reason in ("stop", "length")
        assert answer.finish_reason == "stop" or answer.completion_tokens == 6
    # the process keeps the backend open: the same call again uses it, and gives the same greedy answers
    engine = generation.cached_backend("transformers", str(tiny_llama), adapter=None, batch_size=None, device="cpu")
    before = engine.generated_tokens
    again = generation.generate(PROMPTS, model=str(tiny_llama), max_new_tokens=6, backend_options={"device": "cpu"})
    assert [a.text for a in again] == [a.text for a in answers]
    assert engine.generated_tokens - before == sum(a.completion_tokens for a in again)


def test_n_samples_come_prompt_major(tiny_llama):
    engine = generation.open_backend("transformers", str(tiny_llama), device="cpu", batch_size=2)
    answers = engine.generate(PROMPTS, n=3, max_new_tokens=4, temperature=0.9, seed=1)
    assert [(a.prompt_index, a.sample_index) for a in answers] == [(i, j) for i in range(2) for j in range(3)]
    # a seed makes sampling repeatable
    assert [a.text for a in engine.generate(PROMPTS, n=3, max_new_tokens=4, temperature=0.9, seed=1)] == [a.text for a in answers]


def test_the_run_clock_adds_the_calls_still_to_come():
    clock = RunClock(calls=4)
    status = StepStatus(sequences=8, finished=3, tokens=120, elapsed_s=6.0, eta_s=2.0)
    clock.call, clock.durations = 1, [10.0]  # one call of 10 s done, the second under way
    assert clock.eta(status) == pytest.approx(2.0 + 10.0 * 2)  # this call's 2 s, then two more calls of 10 s
    assert clock.text(status) == "batch 2 of 4: 120 tokens generated (20/s), 3 of 8 answers complete"
    assert clock.eta(StepStatus(sequences=8, finished=0, tokens=0, elapsed_s=0.0, eta_s=None)) is None


def test_the_speed_measured_here_is_remembered_and_prices_a_batch(tiny_llama):
    speed = generation.measure_speed("transformers", str(tiny_llama), batch_size=2, prompt_chars=700, steps=6)
    assert speed["prompt_chars"] == 1000 == generation.prompt_bucket(700)  # measured at its bucket
    assert speed["prefill_s"] > 0 and speed["step_s"] >= 0
    assert generation.known_speed("transformers", str(tiny_llama), None, 2, 1, 900) == speed  # same bucket
    assert generation.known_speed("transformers", str(tiny_llama), None, 4, 1, 900) is None  # another batch size
    assert generation.batch_seconds(speed, 100) == pytest.approx(speed["prefill_s"] + 100 * speed["step_s"])

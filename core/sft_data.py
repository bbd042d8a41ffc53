"""Training examples for supervised fine-tuning, made faithful to long CoTs.

Every example is a chat (TRL's ``messages``); its **last assistant turn is the completion** and
everything before it the prompt. :func:`prepare` turns a list of chats into token ids the way
TRL does for a conversational prompt-completion dataset (the prompt rendered with the chat
template and ``add_generation_prompt=True``, prompt + completion rendered whole, the completion
starting where the two token lists diverge), so TRL's ``completion_only_loss`` puts the loss on
the assistant turn only. On top of that it decides how long an example may be and what happens
to the longer ones:

* **max length.** Given, or by default the ``quantile`` (0.95) of the examples' token lengths
  (linear interpolation, rounded up), capped by the model's context. The report says how it was
  chosen and how many examples exceed it.
* **an example is never cut so that it loses its answer.** TRL would keep the start of a long
  example, losing ``</think>`` and the answer, silently. Here an over-long example is either
  **dropped** (the default; counted, and listed with its line in the data file) or, with
  ``overlong="truncate_thinking"``, shortened **inside its thinking**: the start and the end of the
  thinking are kept with a visible marker between them,
  ``[... 1234 tokens of thinking left out to fit max_length ...]``, and the end of the thinking,
  ``</think>`` and the answer are kept whole. An example whose prompt and answer alone do not
  fit, or whose thinking is not closed, is dropped with that reason.

**A model without a chat template** (a base model) is trained with :data:`PLAIN_TEMPLATE`
(``chat_template="auto"`` uses the model's own template when it has one, ``"plain"`` always uses
this one). It renders a chat as::

    ### User
    What is 6 x 7?

    ### Assistant
    <think>...</think> The answer is 42.</s>

one ``### Role`` heading per message, a blank line between messages, the model's end-of-sequence
token after each assistant turn (so the model learns to stop), and ``### Assistant`` plus a line
break as the generation prompt. The fine-tune saves the template with the adapter (or the full
model), and evaluation reads it from there, so a base model is asked in the format it learnt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError
from core.text import THINK_CLOSE, THINK_OPEN, THOUGHT_CLOSE, THOUGHT_OPEN

PLAIN_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "### Assistant\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% else %}"
    "### {{ message['role'] | capitalize }}\n{{ message['content'] }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant\n{% endif %}"
)
CHAT_TEMPLATES = ("auto", "plain")
OVERLONG = ("drop", "truncate_thinking")
DEFAULT_QUANTILE = 0.95
LISTED_IN_CARD = 50  # over-long examples named in the model card; the file beside it lists all


def marker(omitted: int) -> str:
    """The visible note that replaces the middle of a shortened thinking."""
    return f"\n\n[... {omitted} tokens of thinking left out to fit max_length ...]\n\n"


@dataclass
class Example:
    """One chat, tokenized: ``line`` is its 1-based line in the data file."""

    line: int
    messages: list[dict[str, str]]
    input_ids: list[int]
    prompt_len: int  # tokens before the completion (the loss starts here)
    shortened_by: int = 0  # thinking tokens left out (truncate_thinking)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def completion_mask(self) -> list[int]:
        return [0] * self.prompt_len + [1] * (self.length - self.prompt_len)


@dataclass
class Prepared:
    """What :func:`prepare` made: the examples to train on and the report the model card keeps."""

    examples: list[Example]
    max_length: int
    report: dict[str, Any] = field(default_factory=dict)
    overlong: list[dict[str, Any]] = field(default_factory=list)  # every over-long example and what happened to it


def chat_template_for(tokenizer, choice: str = "auto") -> tuple[str, str]:
    """(template, which): the model's own chat template, or :data:`PLAIN_TEMPLATE` for a model
    without one (``auto``) or when asked (``plain``)."""
    if choice not in CHAT_TEMPLATES:
        raise UserError(f"chat_template must be one of {', '.join(CHAT_TEMPLATES)}, not '{choice}'.")
    own = getattr(tokenizer, "chat_template", None)
    if choice == "auto" and own:
        return own, "the model's own"
    return PLAIN_TEMPLATE, "ThoughtScope's plain template (core/sft_data.py)" + (
        "" if own else ": the model has no chat template")


def model_context(model_path: str, tokenizer=None) -> int | None:
    """The longest sequence the model was built for: its config's ``max_position_embeddings``
    (or ``n_positions``), else the tokenizer's ``model_max_length`` when that is a real number."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        config = None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(getattr(config, "get_text_config", lambda: config)(), name, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else None


def split_chat(messages: Sequence[dict[str, str]], line: int) -> tuple[list[dict], dict]:
    """(prompt messages, the last assistant message); UserError naming the line when the chat
    has no assistant turn after a prompt."""
    chat = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in messages]
    last = max((i for i, m in enumerate(chat) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise UserError(f"line {line} of the training data has no assistant turn after a prompt; each example needs "
                        "a user message and the assistant's answer (the TRL messages format).")
    return chat[:last], chat[last]


def _ids(tokenizer, template: str, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation_prompt,
                                        tokenize=True, return_dict=True)
    return list(out["input_ids"])


def tokenize(tokenizer, template: str, messages: Sequence[dict[str, str]], line: int) -> Example:
    """One chat as TRL tokenizes a conversational prompt-completion example."""
    prompt, answer = split_chat(messages, line)
    prompt_ids = _ids(tokenizer, template, prompt, generation_prompt=True)
    full = _ids(tokenizer, template, prompt + [answer], generation_prompt=False)
    common = 0
    for a, b in zip(prompt_ids, full):
        if a != b:
            break
        common += 1
    return Example(line=line, messages=prompt + [answer], input_ids=full, prompt_len=common)


def thinking_span(text: str) -> tuple[int, int] | None:
    """[start, end) of the thinking inside an answer (between ``<think>`` and ``</think>``, or
    Sky-T1's thought markers; from the start when only the closing marker is there), or None
    when the answer has no closed thinking."""
    for open_marker, close_marker in ((THINK_OPEN, THINK_CLOSE), (THOUGHT_OPEN, THOUGHT_CLOSE)):
        open_at = text.find(open_marker)
        if open_at >= 0:
            start = open_at + len(open_marker)
            close_at = text.find(close_marker, start)
            return (start, close_at) if close_at >= 0 else None  # opened and never closed: no answer to keep
        close_at = text.find(close_marker)
        if close_at >= 0:
            return 0, close_at
    return None


def shorten_thinking(tokenizer, template: str, example: Example, max_length: int) -> Example | str:
    """``example`` with the middle of its thinking replaced by :func:`marker` so that it fits
    ``max_length`` tokens, or the reason it cannot be (a sentence)."""
    prompt, answer = example.messages[:-1], example.messages[-1]
    text = answer["content"]
    span = thinking_span(text)
    if span is None:
        return "its answer has no closed thinking to shorten (no <think>...</think> or thought markers)"
    start, end = span
    thinking = text[start:end]
    enc = tokenizer(thinking, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    n = len(offsets)
    remove = example.length - max_length + len(tokenizer(marker(10**6), add_special_tokens=False)["input_ids"]) + 2
    for _ in range(8):  # re-tokenizing the joined text can merge a token or two across the cuts
        keep = n - remove
        if keep < 0:
            break
        head, tail = keep - keep // 2, keep // 2
        head_text = thinking[:offsets[head - 1][1]] if head else ""
        tail_text = thinking[offsets[n - tail][0]:] if tail else ""
        omitted = n - head - tail
        shortened = text[:start] + head_text.rstrip() + marker(omitted) + tail_text.lstrip() + text[end:]
        candidate = tokenize(tokenizer, template, prompt + [{"role": "assistant", "content": shortened}], example.line)
        if candidate.length <= max_length:
            candidate.shortened_by = omitted
            return candidate
        remove += candidate.length - max_length + 1
    return (f"its prompt and answer without the thinking do not fit {max_length:,} tokens "
            f"({example.length:,} tokens, {n:,} of them thinking)")


def choose_max_length(lengths: Sequence[int], *, given: int | None, quantile: float, context: int | None) -> tuple[int, str]:
    """(max length, how it was chosen)."""
    if given is not None:
        if context is not None and given > context:
            raise UserError(f"max_length {given:,} is longer than the model's context ({context:,} tokens); "
                            f"give at most {context:,}, or leave it empty to take the {quantile:.0%} quantile of the data.")
        return given, "given"
    import numpy as np

    value = int(math.ceil(float(np.quantile(np.asarray(lengths, dtype=float), quantile))))
    how = f"the {quantile:.0%} quantile of the examples' token lengths"
    if context is not None and value > context:
        return context, how + f" ({value:,}) capped by the model's context ({context:,})"
    return value, how


def prepare(tokenizer, template: str, chats: Sequence[Sequence[dict[str, str]]], *, max_length: int | None = None,
            quantile: float = DEFAULT_QUANTILE, context: int | None = None, overlong: str = "drop",
            lines: Sequence[int] | None = None) -> Prepared:
    """Tokenize ``chats``, choose the max length and deal with the longer examples (see the
    module docstring). ``lines`` are the chats' line numbers in the data file (default 1, 2, ...)."""
    import numpy as np

    if overlong not in OVERLONG:
        raise UserError(f"overlong must be one of {', '.join(OVERLONG)}, not '{overlong}'.")
    if not chats:
        raise UserError("The training data holds no example.")
    lines = list(lines) if lines is not None else list(range(1, len(chats) + 1))
    examples = [tokenize(tokenizer, template, chat, line) for chat, line in zip(chats, lines)]
    lengths = [e.length for e in examples]
    chosen, how = choose_max_length(lengths, given=max_length, quantile=quantile, context=context)
    kept: list[Example] = []
    listed: list[dict[str, Any]] = []
    for example in examples:
        if example.length <= chosen:
            kept.append(example)
            continue
        entry = {"line": example.line, "tokens": example.length,
                 "question": example.messages[-2]["content"][:120] if len(example.messages) > 1 else ""}
        result = shorten_thinking(tokenizer, template, example, chosen) if overlong == "truncate_thinking" else None
        if isinstance(result, Example):
            kept.append(result)
            listed.append({**entry, "action": "thinking shortened", "tokens_after": result.length,
                           "thinking_tokens_left_out": result.shortened_by})
        else:
            listed.append({**entry, "action": "dropped",
                           "reason": result or f"longer than max_length {chosen:,} (overlong=drop)"})
    if not kept:
        raise UserError(f"No example fits max_length {chosen:,} tokens (the shortest has {min(lengths):,}); "
                        "give a larger max_length, or overlong=truncate_thinking.")
    arr = np.asarray(lengths)
    report = {
        "examples": len(examples),
        "tokens": {"min": int(arr.min()), "median": float(np.median(arr)), "p95": float(np.quantile(arr, 0.95)),
                   "max": int(arr.max())},
        "max_length": chosen,
        "max_length_from": how,
        "model_context": context,
        "over_max_length": len(listed),
        "overlong": overlong,
        "dropped": sum(e["action"] == "dropped" for e in listed),
        "thinking_shortened": sum(e["action"] == "thinking shortened" for e in listed),
        "trained_on": len(kept),
    }
    return Prepared(examples=kept, max_length=chosen, report=report, overlong=listed)

"""Process reward models (PRMs): a correctness score for every step of a CoT in one forward
pass, the step judge's ``prm`` backend (core.step_judge).

How Qwen2.5-Math-PRM-7B / -72B (and Qwen2.5-Math-7B-PRM800K) are read, as their model cards
describe it: the conversation is a system message, the problem as the user's message and the
solution as the assistant's, each step followed by the special token ``<extra_0>``; the
model's head (Linear(hidden, hidden), ReLU, Linear(hidden, 2), on every token) gives two logits
per token, and a step's score is the softmax probability of class 1 (positive) at its
separator token: a number between 0 and 1. The step judge calls a step wrong when its score
is below a threshold (0.5 by default).

Loading without remote code: those checkpoints ship their architecture as code
(``modeling_qwen2_rm.py``, ``Qwen2ForProcessRewardModel``), which ``from_pretrained`` would run
with ``trust_remote_code``. ThoughtScope never runs code from a model folder: :func:`model_class`
defines the same modules (``model``, a ``Qwen2Model``; ``score``, the two-layer head), so the
checkpoint's weights load into it by name. A model with a two-label token-classification head
(``*ForTokenClassification``, e.g. one trained with TRL's PRMTrainer) loads through
``AutoModelForTokenClassification`` and is read the same way at its separator token. Anything
else is refused with the reason.

Two engines with the same layout and reading: transformers (``PrmScorer``, CPU or GPU) and
vLLM (``VllmPrmScorer``, a pooling engine with vLLM's own Qwen2ForProcessRewardModel, for many
CoTs on a GPU). On the tiny random model of tests/test_prm.py the two agree to 1e-6 per step.

What the text can do: a step or problem that contains the separator (or any other special
token of the tokenizer) as text would add steps or end turns; such a token is broken with a
zero-width space before tokenising, so the model sees exactly one separator per step.

    from core.prm import open_prm
    prm = open_prm("/models/Qwen2.5-Math-PRM-7B")          # transformers; open_prm(path, "prm-vllm") on vLLM
    [(scores, input_tokens)] = prm.score([("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."])])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError
from core.progress import CancelledFn, JobCancelled

DEFAULT_SEPARATOR = "<extra_0>"
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
ARCHITECTURE = "Qwen2ForProcessRewardModel"
POSITIVE = 1  # the label whose probability is the step's score
ZERO_WIDTH = "\u200b"


class PrmError(UserError):
    """A process reward model cannot be loaded or used as asked; the message says why."""


_CLASS = None


def model_class():
    """``Qwen2ForProcessRewardModel``: the module layout of Qwen2.5-Math-PRM's checkpoints (a
    Qwen2 decoder, then ``score`` = Linear(hidden, hidden) -> ReLU -> Linear(hidden, 2) on every
    token), defined here so their weights load without running the checkpoint's own code.
    Its ``forward`` returns a TokenClassifierOutput whose ``logits`` are (batch, tokens, 2)."""
    global _CLASS
    if _CLASS is None:
        from torch import nn
        from transformers import Qwen2Model, Qwen2PreTrainedModel
        from transformers.modeling_outputs import TokenClassifierOutput

        class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                self.num_labels = 2
                self.model = Qwen2Model(config)
                self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                           nn.Linear(config.hidden_size, self.num_labels))
                self.post_init()

            def get_input_embeddings(self):
                return self.model.embed_tokens

            def set_input_embeddings(self, value):
                self.model.embed_tokens = value

            def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
                return TokenClassifierOutput(logits=self.score(hidden))

        Qwen2ForProcessRewardModel.__module__ = __name__
        _CLASS = Qwen2ForProcessRewardModel
    return _CLASS


def _architecture(path: str) -> str:
    config = Path(path) / "config.json"
    if config.is_file():
        try:
            return (json.loads(config.read_text()).get("architectures") or [""])[0]
        except (OSError, json.JSONDecodeError) as exc:
            raise PrmError(f"{config} is not a readable model config: {exc}") from exc
    from transformers import AutoConfig

    try:  # a hub id: read its config (never its code)
        return (AutoConfig.from_pretrained(path, trust_remote_code=False).architectures or [""])[0]
    except (OSError, ValueError) as exc:
        raise PrmError(f"Could not read the config of process reward model '{path}': {exc}") from exc


class _PrmBase:
    """The model-independent half of a PRM scorer: the tokenizer, the layout, the fitting."""

    def _setup(self, model: str, separator: str, system: str, batch_size: int | None) -> str:
        """Check the model and load its tokenizer; returns the model's architecture."""
        from transformers import AutoTokenizer

        from core.models import DEFAULT_MODEL

        if model == DEFAULT_MODEL:
            raise PrmError(f"'{model}' is a chat model, not a process reward model: give --model a PRM folder or hub id "
                           "(e.g. Qwen/Qwen2.5-Math-PRM-7B).")
        architecture = _architecture(model)
        if architecture != ARCHITECTURE and not architecture.endswith("ForTokenClassification"):
            raise PrmError(f"'{model}' is a {architecture or 'model of unknown architecture'}, not a process reward model: "
                           f"the prm backend reads {ARCHITECTURE} (Qwen2.5-Math-PRM) or a two-label *ForTokenClassification head.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        except OSError as exc:
            raise PrmError(f"Could not load the tokenizer of process reward model '{model}': {exc}") from exc
        ids = self.tokenizer.encode(separator, add_special_tokens=False)
        if len(ids) != 1:
            raise PrmError(f"The step separator {separator!r} is {len(ids)} tokens for '{model}'s tokenizer; it must be one.")
        if not getattr(self.tokenizer, "chat_template", None):
            raise PrmError(f"'{model}' has no chat template to lay out the problem and the steps.")
        self.model_name, self.separator, self.separator_id, self.system = model, separator, ids[0], system
        self.batch_size = batch_size or 8
        special = set(self.tokenizer.all_special_tokens) | {t.content for t in self.tokenizer.added_tokens_decoder.values()}
        self._special = sorted((s for s in special if s), key=len, reverse=True)
        self.generated_tokens = 0  # the judge's counters: a PRM generates nothing
        self.input_tokens = 0
        return architecture

    def clean(self, text: str) -> str:
        """``text`` with every special token broken (a zero-width space after its first character)."""
        for token in self._special:
            if token in text:
                text = text.replace(token, token[0] + ZERO_WIDTH + token[1:])
        return text

    def conversation(self, question: str, steps: Sequence[str]) -> str:
        """The model card's layout: system, the problem, the steps each followed by the separator."""
        assistant = "".join(self.clean(s) + self.separator for s in steps)
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": self.clean(question)},
                    {"role": "assistant", "content": assistant}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, question: str, steps: Sequence[str], max_input_tokens: int | None) -> tuple[list[int], int]:
        """Token ids of the conversation with as many steps (from the first) as fit in
        ``max_input_tokens``, and how many steps that is (0: not even the problem with one step)."""
        k = len(steps)
        ids = self.tokenizer.encode(self.conversation(question, steps), add_special_tokens=False)
        while max_input_tokens and len(ids) > max_input_tokens and k > 0:
            seps = [p for p, t in enumerate(ids) if t == self.separator_id]
            tail = len(ids) - seps[-1] - 1 if seps else 0  # the template's closing tokens
            k = min(k - 1, sum(1 for p in seps if p + 1 + tail <= max_input_tokens))
            ids = self.tokenizer.encode(self.conversation(question, steps[:k]), add_special_tokens=False) if k else ids
        if max_input_tokens and len(ids) > max_input_tokens:
            return ids, 0
        return ids, k

    def score(self, items: Sequence[tuple[str, Sequence[str]]], *, max_input_tokens: int | None = None,
              cancelled: CancelledFn | None = None) -> list[tuple[list[float], int]]:
        """For each (problem, steps): the scores of the steps that fit (from the first) and the
        conversation's token count. Batches of up to ``batch_size`` conversations, longest
        first; ``cancelled()`` is looked at before each (JobCancelled)."""
        encoded = [self.encode(q, s, max_input_tokens) for q, s in items]
        out: list[tuple[list[float], int]] = [([], len(ids)) for ids, _ in encoded]
        todo = sorted((i for i, (_, k) in enumerate(encoded) if k), key=lambda i: -len(encoded[i][0]))
        for start in range(0, len(todo), self.batch_size):
            if cancelled is not None and cancelled():
                raise JobCancelled(f"stopped before batch {start // self.batch_size + 1} of the PRM's forward passes")
            chunk = todo[start:start + self.batch_size]
            for i, probs in zip(chunk, self._step_probabilities([encoded[i][0] for i in chunk])):
                ids, k = encoded[i]
                if len(probs) != k:  # never: clean() leaves one separator per step
                    raise RuntimeError(f"the PRM gave {len(probs)} step scores for {k} steps")
                out[i] = (probs, len(ids))
                self.input_tokens += len(ids)
        return out

    def _step_probabilities(self, batch: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError


class PrmScorer(_PrmBase):
    """A process reward model on transformers (CPU or GPU)."""

    name = "prm"

    def __init__(self, model: str, *, device: str | None = None, dtype=None, batch_size: int | None = None,
                 threads: int | None = None, separator: str = DEFAULT_SEPARATOR, system: str = DEFAULT_SYSTEM):
        import torch
        from transformers import AutoModelForTokenClassification

        from core.models import default_device

        if threads:
            torch.set_num_threads(threads)
        architecture = self._setup(model, separator, system, batch_size)
        cls = model_class() if architecture == ARCHITECTURE else AutoModelForTokenClassification
        self.device = device or default_device()
        if dtype is None:
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        try:
            self.model = cls.from_pretrained(model, dtype=dtype)
        except OSError as exc:
            raise PrmError(f"Could not load process reward model '{model}': {exc}") from exc
        labels = getattr(self.model, "num_labels", None) or self.model.config.num_labels
        if labels != 2:
            raise PrmError(f"'{model}' has {labels} labels per token; a PRM here has two (wrong, right).")
        self.model.to(self.device).eval()

    def _step_probabilities(self, batch: list[list[int]]) -> list[list[float]]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids in batch)
        # right padding: a causal model's real tokens never attend to the pads after them
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
        probs = torch.softmax(logits.float(), dim=-1)[..., POSITIVE].cpu()
        return [probs[row, (input_ids[row, :len(ids)] == self.separator_id).nonzero().flatten()].tolist()
                for row, ids in enumerate(batch)]


class VllmPrmScorer(_PrmBase):
    """A process reward model on vLLM (a GPU, or the CPU build): a pooling engine whose step
    pooler returns the two class probabilities at each separator token (vLLM's own
    Qwen2ForProcessRewardModel)."""

    name = "prm-vllm"

    def __init__(self, model: str, *, batch_size: int | None = None, gpu_memory_utilization: float | None = None,
                 separator: str = DEFAULT_SEPARATOR, system: str = DEFAULT_SYSTEM, **engine_options):
        try:
            import torch
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as exc:
            raise PrmError("The prm-vllm backend needs vLLM: on a GPU machine `pip install -r requirements-gpu.txt`; "
                           "on a CPU use the separate .venv-vllm described in requirements-vllm-cpu.txt.") from exc
        self._setup(model, separator, system, batch_size)
        if gpu_memory_utilization is None:  # on a CPU build: the share of RAM reserved; 0.92 refuses to start
            gpu_memory_utilization = 0.9 if torch.cuda.is_available() else 0.2
        engine_options.pop("threads", None)
        engine_options.pop("device", None)
        self.llm = LLM(model=model, runner="pooling", trust_remote_code=False, gpu_memory_utilization=gpu_memory_utilization,
                       pooler_config=PoolerConfig(step_tag_id=self.separator_id), **engine_options)
        self.batch_size = batch_size or 256

    def _step_probabilities(self, batch: list[list[int]]) -> list[list[float]]:
        outputs = self.llm.encode([{"prompt_token_ids": ids} for ids in batch], pooling_task="token_classify", use_tqdm=False)
        return [output.outputs.data[:, POSITIVE].float().tolist() for output in outputs]


BACKENDS = ("prm", "prm-vllm")


def open_prm(model: str, backend: str = "prm", **options) -> PrmScorer | VllmPrmScorer:
    """A process reward model on transformers (``prm``) or vLLM (``prm-vllm``)."""
    return (VllmPrmScorer if backend == "prm-vllm" else PrmScorer)(model, **options)


_open: dict[tuple, PrmScorer | VllmPrmScorer] = {}


def cached_prm(model: str, backend: str = "prm", **options) -> PrmScorer | VllmPrmScorer:
    """:func:`open_prm`, once per process for the same arguments (one model held at a time)."""
    key = (model, backend, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _open:
        _open.clear()
        _open[key] = open_prm(model, backend, **options)
    return _open[key]

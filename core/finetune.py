"""LoRA SFT of a base model on a selected subset (trl + peft), as a job or from the CLI.

    python -m core finetune --data data/exports/x.messages.jsonl --name my-run --max-steps 20

The training data is a TRL conversational file (`messages` per row, as core.export writes it).
The adapter, checkpoints, a live loss log and a model card (recipe, data hash, options, losses)
go under data/models/<name>/. A killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core import store


@dataclass
class FinetuneOptions:
    data: str  # TRL messages JSONL
    name: str
    base_model: str = "SmolLM2-135M-Instruct"
    examples: int | None = None  # first N rows of the file; None = all
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    max_length: int = 2048
    lora_rank: int = 8
    lora_alpha: int = 16
    batch_size: int = 1
    grad_accum: int = 1
    save_steps: int = 5
    seed: int = 0
    recipe: str | None = None  # the recipe the data came from, for the model card


def model_dir(name: str) -> Path:
    return store.data_dir() / "models" / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_losses(name: str) -> list[dict]:
    """The loss log a running or finished fine-tune writes (step, loss, lr, epoch)."""
    path = model_dir(name) / "losses.jsonl"
    if not path.exists():
        return []
    # a resumed run logs again the steps after its checkpoint: keep the latest entry per step
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return [by_step[k] for k in sorted(by_step)]


def finetune(
    opts: FinetuneOptions,
    *,
    progress: Callable[[str, int, int | None], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.models import resolve_model

    data_path = Path(opts.data)
    if not data_path.exists():
        raise FileNotFoundError(f"training data {data_path} does not exist; export a recipe in the TRL messages format first")
    out = model_dir(opts.name)
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_model(opts.base_model)
    torch.manual_seed(opts.seed)

    train = datasets.load_dataset("json", data_files=str(data_path), split="train")
    if "messages" not in train.column_names:
        raise ValueError(f"{data_path} has no 'messages' column; export with the TRL conversational format")
    if opts.examples:
        train = train.select(range(min(opts.examples, len(train))))
    log(f"fine-tuning {base} on {len(train)} examples from {data_path}")

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

    losses_path = out / "losses.jsonl"

    class LossLog(TrainerCallback):
        """Append each logged loss to losses.jsonl so the app can draw the curve live."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                with open(losses_path, "a") as fh:
                    fh.write(json.dumps({"step": state.global_step, "loss": logs["loss"],
                                         "learning_rate": logs.get("learning_rate"), "epoch": logs.get("epoch")}) + "\n")
            if progress:
                progress("train", state.global_step, state.max_steps)

    config = SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        learning_rate=opts.learning_rate,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        max_length=opts.max_length,
        logging_steps=1,
        save_steps=opts.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=opts.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=train, processing_class=tokenizer,
        peft_config=LoraConfig(r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        callbacks=[LossLog()],
    )
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resume = str(checkpoints[-1]) if checkpoints else None
    if resume:
        log(f"resuming from {resume}")
    else:
        losses_path.unlink(missing_ok=True)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    card = {
        "name": opts.name,
        "base_model": opts.base_model,
        "base_model_path": base,
        "adapter": str(adapter),
        "recipe": opts.recipe,
        "data": str(data_path),
        "data_sha256": _sha256(data_path),
        "examples": len(train),
        "options": asdict(opts),
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "losses": read_losses(opts.name),
        "seconds": time.perf_counter() - started,
        "resumed_from": resume,
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    log(f"adapter saved to {adapter}")
    return card

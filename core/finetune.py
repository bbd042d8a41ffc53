"""LoRA SFT of a base model on a selected subset (trl + peft), as a job or from the CLI.

    python -m core finetune --data data/exports/x.messages.jsonl --name my-run --max-steps 20
    python -m core finetune --recipe my-recipe --name my-run --epochs 1

The training data is a TRL conversational file (`messages` per row, as core.export writes it),
or a saved recipe, exported first (core.worker.finetune_job). The adapter, checkpoints, a live
loss log and a model card (recipe, data hash, options, losses) go under data/models/<name>/. A
killed run resumes from its last checkpoint; a cancelled one stops at the end of the current
optimizer step and saves a checkpoint first, so it resumes from where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import store
from core.errors import UserError
from core.export import sha256_of
from core.models import DEFAULT_MODEL
from core.options import option
from core.progress import CancelledFn, JobCancelled, LogFn, ProgressFn, report_activity


@dataclass
class FinetuneOptions:
    """A LoRA fine-tune (the CLI's ``finetune`` flags and the Jobs form are made from it)."""

    name: str = option("", help="model folder under data/models", label="Model name (folder under data/models)")
    data: str | None = option(None, help="TRL messages JSONL (core export format 'trl')")
    recipe: str | None = option(None, help="a saved recipe: without --data it is exported to TRL messages first; "
                                           "named in the model card either way")
    thinking: str = option("think_tags", help="how a recipe export writes the thinking")
    base_model: str = option(DEFAULT_MODEL, help="the model the adapter is trained on")
    examples: int | None = option(None, help="first N examples only")
    epochs: float = option(1.0, help="passes over the data")
    max_steps: int = option(-1, help="> 0 overrides --epochs")
    learning_rate: float = option(2e-4, aliases=("--lr",), help="the optimizer's learning rate")
    max_length: int = option(2048, help="tokens per example (longer are cut)")
    lora_rank: int = option(8, help="LoRA rank r")
    lora_alpha: int = option(16, help="LoRA alpha")
    batch_size: int = option(1, help="examples per device step")
    grad_accum: int = option(1, help="gradient accumulation steps")
    save_steps: int = option(5, help="checkpoint every N steps")
    seed: int = option(0, help="training seed")

    def __post_init__(self):
        if not self.name.strip():
            raise UserError("Give the model a name: its adapter goes to data/models/<name>.")
        model_dir(self.name)  # refuses a name that cannot be a folder
        if not self.data and not self.recipe:
            raise UserError("A fine-tune needs training data: a saved recipe (save one on the Select page), exported "
                            "first, or an exported TRL messages file (export one on the Export page).")
        for name in ("max_length", "lora_rank", "lora_alpha", "batch_size", "grad_accum", "save_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}.")
        if self.examples is not None and self.examples < 1:
            raise UserError(f"examples must be at least 1 (or empty for all), got {self.examples}.")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise UserError("epochs and the learning rate must be positive.")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FinetuneOptions:
        """Options from a job's params (JSON), ignoring keys that are not options and
        casting numbers given as strings."""
        from core.options import from_params

        return from_params(cls, params)


# Options that do not change what is trained: a resumed run may differ in these.
# (``thinking`` only shapes a recipe export, and the data's hash is compared on its own.)
_RESUME_FREE = ("save_steps", "thinking")


def model_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"'{name}' cannot name a model folder; use letters, digits, '-' or '_'.")
    return store.data_dir() / "models" / name


def read_losses(name: str) -> list[dict]:
    """The loss log a running or finished fine-tune writes (step, loss, learning_rate, epoch)."""
    path = model_dir(name) / "losses.jsonl"
    if not path.exists():
        return []
    # a resumed run logs again the steps after its checkpoint: keep the latest entry per step
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing
        by_step[entry["step"]] = entry
    return [by_step[k] for k in sorted(by_step)]


def read_card(name: str) -> dict | None:
    """The model card of a finished fine-tune, None while it runs or after it failed."""
    path = model_dir(name) / "model_card.json"
    return json.loads(path.read_text()) if path.exists() else None


def list_models() -> list[dict]:
    """Fine-tuned models under data/models, newest first: name, adapter (path or None while
    training), card (or None), steps logged so far."""
    root = store.data_dir() / "models"
    if not root.exists():
        return []
    out = []
    for folder in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if not folder.is_dir():
            continue
        adapter = folder / "adapter"
        out.append({
            "name": folder.name,
            "adapter": str(adapter) if (adapter / "adapter_config.json").exists() else None,
            "card": read_card(folder.name),
            "logged_steps": len(read_losses(folder.name)),
        })
    return out


def loss_figure(losses: list[dict], *, title: str | None = None):
    """A plotly line of training loss by step (every logged step)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(
        x=[e["step"] for e in losses], y=[e["loss"] for e in losses], mode="lines+markers", name="training loss",
        hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="training loss", height=300,
                      margin={"l": 40, "r": 10, "t": 40 if title else 10, "b": 40})
    return fig


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / "checkpoints").glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    # a checkpoint the kill interrupted has no trainer_state.json yet: not resumable
    return sorted((p for p in found if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[1]))


def _check_same_run(out: Path, opts: FinetuneOptions, data_sha: str) -> None:
    """A model folder belongs to one set of options and data; resuming with others would mix
    two trainings in one adapter."""
    run_file = out / "run.json"
    wanted = {"options": {k: v for k, v in asdict(opts).items() if k not in _RESUME_FREE}, "data_sha256": data_sha}
    trained = bool(_checkpoints(out)) or (out / "model_card.json").exists()
    if run_file.exists() and trained:
        previous = json.loads(run_file.read_text())
        if previous != wanted:
            before, now = previous.get("options", {}), wanted["options"]
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if previous.get("data_sha256") != data_sha:
                changed.append("training data")
            raise UserError(
                f"A model named '{opts.name}' already exists in {out} with other settings "
                f"({', '.join(changed)} differ); choose another name, or delete that folder to start over."
            )
    else:  # nothing trained yet (a first start, or one that failed before its first checkpoint)
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(wanted, indent=1))


def _export_manifest(data_path: Path) -> dict | None:
    manifest = data_path.with_name(data_path.name + ".manifest.json")
    try:
        return json.loads(manifest.read_text()) if manifest.exists() else None
    except json.JSONDecodeError:
        return None


def finetune(
    opts: FinetuneOptions,
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    log: LogFn = print,
) -> dict:
    """Train a LoRA adapter on ``opts.data``; returns the model card.

    ``progress("train", step, max_steps)`` follows the steps; when ``cancelled()`` turns True,
    or ``progress`` raises :class:`core.progress.JobCancelled`, training stops at the end of
    the current optimizer step (cancel is looked at after every micro-batch too), a checkpoint
    is saved and JobCancelled is raised (a resume goes on from it).
    """
    if not opts.data:
        raise UserError("A fine-tune needs an exported TRL messages file (opts.data); export the recipe first.")
    data_path = Path(opts.data)
    if not data_path.exists():
        raise UserError(f"training data {data_path} does not exist; export a recipe in the TRL messages format first")
    out = model_dir(opts.name)
    data_sha = sha256_of(data_path)
    _check_same_run(out, opts, data_sha)
    card = read_card(opts.name)
    if card is not None:  # finished before (a job whose worker died after writing it)
        log(f"model '{opts.name}' is already trained; its model card is {out / 'model_card.json'}")
        return card

    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.models import resolve_model

    base = resolve_model(opts.base_model)
    torch.manual_seed(opts.seed)

    train = datasets.load_dataset("json", data_files=str(data_path), split="train")
    if "messages" not in train.column_names:
        raise UserError(f"{data_path} has no 'messages' column; export with the TRL conversational format")
    if opts.examples:
        train = train.select(range(min(opts.examples, len(train))))
    if len(train) == 0:
        raise UserError(f"{data_path} holds no training example")
    log(f"fine-tuning {base} on {len(train)} examples from {data_path}")

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

    losses_path = out / "losses.jsonl"
    stop = {"requested": False}
    saved: dict[str, int | None] = {"step": None}

    class LossLogAndCancel(TrainerCallback):
        """Append each logged loss to losses.jsonl so the app can draw the curve live, report
        the step, and stop (after a checkpoint) once cancelling was asked for."""

        def on_step_end(self, args, state, control, **kwargs):
            try:
                if cancelled is not None and cancelled():
                    raise JobCancelled()
                if progress:
                    progress("train", state.global_step, state.max_steps)
                    # a kill goes back to the last checkpoint: say where that is
                    report_activity(progress, f"step {state.global_step:,} of {state.max_steps:,}; "
                                              f"last checkpoint at step {saved['step']:,}" if saved["step"] is not None
                                    else f"step {state.global_step:,} of {state.max_steps:,}; no checkpoint yet")
            except JobCancelled:
                stop["requested"] = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            saved["step"] = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                with open(losses_path, "a") as fh:
                    fh.write(json.dumps({"step": state.global_step, "loss": logs["loss"],
                                         "learning_rate": logs.get("learning_rate"), "epoch": logs.get("epoch")}) + "\n")

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
        callbacks=[LossLogAndCancel()],
    )
    checkpoints = _checkpoints(out)
    resume = str(checkpoints[-1]) if checkpoints else None
    if resume:
        saved["step"] = int(resume.rsplit("-", 1)[1])
        log(f"resuming from {resume}")
    else:
        losses_path.unlink(missing_ok=True)
    if progress:
        progress("train", int(resume.rsplit("-", 1)[1]) if resume else 0, trainer.args.max_steps if opts.max_steps > 0 else None)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    if stop["requested"]:
        log(f"cancelled at step {trainer.state.global_step}; checkpoint saved, resume goes on from there")
        raise JobCancelled()
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    manifest = _export_manifest(data_path)
    card = {
        "name": opts.name,
        "base_model": opts.base_model,
        "base_model_path": base,
        "adapter": str(adapter),
        "recipe": opts.recipe or ((manifest or {}).get("recipe") or {}).get("name"),
        "data": str(data_path),
        "data_sha256": data_sha,
        "export_manifest": manifest,
        "examples": len(train),
        "options": asdict(opts),
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "losses": read_losses(opts.name),
        "seconds": time.perf_counter() - started,
        "resumed_from": resume,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    tmp = out / "model_card.json.part"
    tmp.write_text(json.dumps(card, indent=1, default=str))
    tmp.replace(out / "model_card.json")
    log(f"adapter saved to {adapter}")
    return card

"""Supervised fine-tuning (SFT) of a model on a selected subset (trl; LoRA with peft, or a full
fine-tune), as a job or from the CLI.

    python -m core finetune --data data/exports/x.messages.jsonl --name my-run --max-steps 20
    python -m core finetune --recipe my-recipe --name my-run --epochs 1
    python -m core finetune --recipe twenty-long --name s2 --preset 20-long-cots --method full

The training data is a TRL conversational file (`messages` per row, as core.export writes it),
or a saved recipe, exported first (core.worker.finetune_job). The examples are prepared by
:mod:`core.sft_data`, faithful to long CoTs:

* the **max length** defaults to the 95th percentile of the examples' token lengths (capped by
  the model's context), and the run reports how many examples exceed it;
* an over-long example is **never cut so that it loses its answer**: it is dropped (default;
  counted, and listed in ``overlong.jsonl`` and the model card with its line in the data file)
  or, with ``--overlong truncate_thinking``, shortened inside its thinking with a visible marker;
* the **loss is on the assistant turn only** by default (TRL's ``completion_only_loss`` on
  prompt-completion examples; ``--loss-on all`` trains on every token);
* a **base model without a chat template** is trained with the documented plain template of
  :mod:`core.sft_data`, saved with the adapter so evaluation asks it the same way.

The **20-long-cots preset** (``--preset 20-long-cots``) is in the spirit of seed 002 (20 long
CoTs, lightly fine-tuned, beat a much larger instruct model): 20 examples, 5 epochs, every
example up to the model's context (max length = the longest example, capped by the context),
gradient accumulation 2, a cosine schedule with 10% warmup, learning rate 1e-4 with LoRA or
1e-5 for a full fine-tune (``--method full``). These values are ThoughtScope's choice: the
seed's own hyperparameters are not in our references. A field you set yourself wins over the
preset (the preset fills the fields left at their defaults).

The adapter (or the full model), checkpoints, a live loss log and a model card go under
data/models/<name>/. The model card holds every hyperparameter (the options after the preset,
the resolved max length, the optimizer, schedule, precision and LoRA settings, and the whole of
TRL's training arguments), the loss mask in words, the chat template, the length report and the
over-long examples. A killed run resumes from its last checkpoint; a cancelled one stops at the
end of the current optimizer step and saves a checkpoint first, so it resumes from where it
stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from core import sft_data, store
from core.errors import UserError
from core.export import sha256_of
from core.models import DEFAULT_MODEL
from core.options import option
from core.progress import CancelledFn, JobCancelled, LogFn, ProgressFn, report_activity

METHODS = ("lora", "full")
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 1e-5}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
LOSS_ON = ("assistant", "all")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_DROPOUT = 0.0
PRESETS: dict[str, dict[str, Any]] = {
    "20-long-cots": {
        "about": "in the spirit of seed 002: few long CoTs, several epochs, LoRA or a full fine-tune "
                 "(ThoughtScope's values; the seed's own hyperparameters are not published in our references)",
        "values": {"examples": 20, "epochs": 5.0, "max_length_quantile": 1.0, "grad_accum": 2, "lr_scheduler": "cosine",
                   "warmup_ratio": 0.1, "save_steps": 10},
        "learning_rate": {"lora": 1e-4, "full": 1e-5},
    },
}


@dataclass
class FinetuneOptions:
    """An SFT run (the CLI's ``finetune`` flags and the Jobs form are made from it)."""

    name: str = option("", help="model folder under data/models", label="Model name (folder under data/models)")
    data: str | None = option(None, help="TRL messages JSONL (core export format 'trl')")
    recipe: str | None = option(None, help="a saved recipe: without --data it is exported to TRL messages first; "
                                           "named in the model card either way")
    thinking: str = option("think_tags", help="how a recipe export writes the thinking")
    base_model: str = option(DEFAULT_MODEL, help="the model that is fine-tuned (an instruct model, or a base model: "
                                                 "one without a chat template gets the plain template)")
    preset: str | None = option(None, choices=tuple(PRESETS),
                                help="20-long-cots: 20 examples, 5 epochs, every example up to the context, cosine "
                                     "schedule (fills the fields left at their defaults)")
    method: str = option("lora", choices=METHODS, help="lora trains an adapter; full updates every weight")
    examples: int | None = option(None, help="first N examples only")
    epochs: float = option(1.0, help="passes over the data")
    max_steps: int = option(-1, help="> 0 overrides --epochs")
    learning_rate: float | None = option(None, aliases=("--lr",),
                                         help="the optimizer's learning rate (default 2e-4 for lora, 1e-5 for full)")
    lr_scheduler: str = option("linear", choices=SCHEDULERS, help="the learning-rate schedule")
    warmup_ratio: float = option(0.0, help="share of the steps spent warming the learning rate up (0 to <1)")
    max_length: int | None = option(None, label="Max length (tokens; empty: from the data)",
                                    help="tokens per example; default: the max-length quantile of the examples' "
                                         "lengths, capped by the model's context")
    max_length_quantile: float = option(sft_data.DEFAULT_QUANTILE,
                                        help="the quantile of the examples' token lengths that sets the default max length")
    overlong: str = option("drop", choices=sft_data.OVERLONG,
                           help="an example longer than max length: drop it (listed in the model card) or shorten its "
                                "thinking in the middle with a visible marker; never cut off its answer")
    loss_on: str = option("assistant", choices=LOSS_ON,
                          help="assistant: loss on the assistant turn only (TRL completion-only loss); all: every token")
    chat_template: str = option("auto", choices=sft_data.CHAT_TEMPLATES,
                                help="auto: the model's own, or the plain template when it has none; plain: always the plain one")
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
        for name, allowed in (("method", METHODS), ("lr_scheduler", SCHEDULERS), ("loss_on", LOSS_ON),
                              ("overlong", sft_data.OVERLONG), ("chat_template", sft_data.CHAT_TEMPLATES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}, not '{getattr(self, name)}'.")
        if self.preset:
            if self.preset not in PRESETS:
                raise UserError(f"There is no fine-tuning preset '{self.preset}'; the presets are {', '.join(PRESETS)}.")
            defaults = {f.name: f.default for f in fields(self)}
            for key, value in PRESETS[self.preset]["values"].items():
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)
            if self.learning_rate is None:
                self.learning_rate = PRESETS[self.preset]["learning_rate"][self.method]
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.method]
        for name in ("lora_rank", "lora_alpha", "batch_size", "grad_accum", "save_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}.")
        if self.max_length is not None and self.max_length < 16:
            raise UserError(f"max length must be at least 16 tokens (or empty: from the data), got {self.max_length}.")
        if not 0.0 < self.max_length_quantile <= 1.0:
            raise UserError(f"the max-length quantile must lie in (0, 1], got {self.max_length_quantile}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"the warmup ratio must lie in [0, 1), got {self.warmup_ratio}.")
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
    """Fine-tuned models under data/models, newest first: name, adapter (a LoRA run's folder,
    or None), model (a full fine-tune's folder, or None; both None while training), card (or
    None), steps logged so far."""
    root = store.data_dir() / "models"
    if not root.exists():
        return []
    out = []
    for folder in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if not folder.is_dir():
            continue
        adapter, full = folder / "adapter", folder / "model"
        out.append({
            "name": folder.name,
            "adapter": str(adapter) if (adapter / "adapter_config.json").exists() else None,
            "model": str(full) if (full / "config.json").exists() else None,
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


def read_chats(path: Path, limit: int | None = None) -> tuple[list[list[dict]], list[int]]:
    """The ``messages`` of each line of a TRL conversational JSONL file (the first ``limit``),
    with their 1-based line numbers; UserError naming the line for anything else."""
    chats, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if limit is not None and len(chats) >= limit:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {number} is not JSON ({exc.msg}); export the data again in the TRL format.") from exc
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise UserError(f"{path} line {number} has no 'messages' list; export with the TRL conversational format")
            chats.append(messages)
            lines.append(number)
    if not chats:
        raise UserError(f"{path} holds no training example")
    return chats, lines


def loss_description(loss_on: str) -> str:
    if loss_on == "assistant":
        return ("the assistant turn only: each example's last assistant message (its end-of-turn token included) is "
                "the completion and the prompt before it is masked (TRL completion_only_loss on prompt-completion "
                "examples)")
    return "every token of each example, the prompt included"


def hyperparameters(opts: FinetuneOptions, config, prepared: sft_data.Prepared, lora) -> dict[str, Any]:
    """What decides the training, resolved: the values the trainer ran with."""
    return {
        "method": opts.method,
        "preset": opts.preset,
        "epochs": opts.epochs,
        "max_steps": opts.max_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler": str(getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)),
        "warmup_ratio": opts.warmup_ratio,
        "optimizer": str(getattr(config.optim, "value", config.optim)),
        "weight_decay": config.weight_decay,
        "adam_betas": [config.adam_beta1, config.adam_beta2],
        "adam_epsilon": config.adam_epsilon,
        "max_grad_norm": config.max_grad_norm,
        "batch_size": config.per_device_train_batch_size,
        "grad_accum": config.gradient_accumulation_steps,
        "effective_batch": config.per_device_train_batch_size * config.gradient_accumulation_steps,
        "max_length": prepared.max_length,
        "max_length_from": prepared.report["max_length_from"],
        "overlong": opts.overlong,
        "loss_on": opts.loss_on,
        "weights_dtype": "float32",
        "mixed_precision": "bf16" if config.bf16 else "fp16" if config.fp16 else None,
        "gradient_checkpointing": config.gradient_checkpointing,
        "seed": config.seed,
        "lora": None if lora is None else {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                                           "target_modules": sorted(lora.target_modules)},
    }


def finetune(
    opts: FinetuneOptions,
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    log: LogFn = print,
) -> dict:
    """Fine-tune ``opts.base_model`` on ``opts.data``; returns the model card.

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

    chats, lines = read_chats(data_path, opts.examples)
    tokenizer = AutoTokenizer.from_pretrained(base)
    template, template_from = sft_data.chat_template_for(tokenizer, opts.chat_template)
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = sft_data.model_context(base, tokenizer)
    prepared = sft_data.prepare(tokenizer, template, chats, max_length=opts.max_length, quantile=opts.max_length_quantile,
                                context=context, overlong=opts.overlong, lines=lines)
    report = prepared.report
    log(f"fine-tuning {base} ({opts.method}) on {report['trained_on']} of {len(chats)} examples from {data_path}; "
        f"chat template: {template_from}")
    log(f"max length {prepared.max_length:,} tokens ({report['max_length_from']}); token lengths: min "
        f"{report['tokens']['min']:,}, median {report['tokens']['median']:,.0f}, p95 {report['tokens']['p95']:,.0f}, "
        f"max {report['tokens']['max']:,}; {report['over_max_length']} longer: {report['dropped']} dropped, "
        f"{report['thinking_shortened']} with their thinking shortened")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "overlong.jsonl", "w", encoding="utf-8") as fh:
        for entry in prepared.overlong:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    columns: dict[str, list] = {"input_ids": [e.input_ids for e in prepared.examples]}
    if opts.loss_on == "assistant":
        columns["completion_mask"] = [e.completion_mask for e in prepared.examples]
    train = datasets.Dataset.from_dict(columns)
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
        lr_scheduler_type=opts.lr_scheduler,
        warmup_steps=opts.warmup_ratio,  # a float below 1 is a share of the steps
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        max_length=prepared.max_length,  # every example fits: TRL's own truncation never cuts one
        completion_only_loss=opts.loss_on == "assistant",
        logging_steps=1,
        save_steps=opts.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=opts.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = None
    if opts.method == "lora":
        lora = LoraConfig(r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=LORA_DROPOUT, task_type="CAUSAL_LM",
                          target_modules=list(LORA_TARGETS))
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=lora,
                         callbacks=[LossLogAndCancel()])
    # what the loss is computed on, counted on the dataset the trainer made (its labels)
    labels = trainer.train_dataset["labels"]
    loss_tokens = sum(sum(1 for t in row if t != -100) for row in labels)
    total_tokens = sum(len(row) for row in labels)
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
    weights = out / ("adapter" if opts.method == "lora" else "model")
    trainer.model.save_pretrained(str(weights))
    tokenizer.save_pretrained(str(weights))  # with the chat template it was trained with
    manifest = _export_manifest(data_path)
    card = {
        "name": opts.name,
        "method": opts.method,
        "base_model": opts.base_model,
        "base_model_path": base,
        "adapter": str(weights) if opts.method == "lora" else None,
        "model": str(weights) if opts.method == "full" else None,
        "recipe": opts.recipe or ((manifest or {}).get("recipe") or {}).get("name"),
        "data": str(data_path),
        "data_sha256": data_sha,
        "export_manifest": manifest,
        "examples": report["trained_on"],
        "examples_in_data": report["examples"],
        "lengths": report,
        "overlong": prepared.overlong[:sft_data.LISTED_IN_CARD],
        "overlong_file": str(out / "overlong.jsonl"),
        "loss": {"on": opts.loss_on, "what": loss_description(opts.loss_on), "loss_tokens": loss_tokens,
                 "tokens": total_tokens},
        "chat_template": {"from": template_from, "template": template},
        "hyperparameters": hyperparameters(opts, config, prepared, lora),
        "preset": {"name": opts.preset, **{k: v for k, v in PRESETS[opts.preset].items() if k != "values"},
                   "values": PRESETS[opts.preset]["values"]} if opts.preset else None,
        "options": asdict(opts),
        "training_args": json.loads(json.dumps(config.to_dict(), default=str)),
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
    log(f"{'adapter' if opts.method == 'lora' else 'model'} saved to {weights}")
    return card

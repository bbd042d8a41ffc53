"""LoRA fine-tuning for real on CPU: a tiny randomly initialised Llama (saved with
save_pretrained, tokenizer trained here) through the same from_pretrained path as any model;
a worker job that is killed, resumed, cancelled and resumed again; the recipe route from the
command line; and a slow run on the real SmolLM2."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from core import finetune as ft
from core import jobs, recipes, store
from core.errors import UserError
from core.finetune import FinetuneOptions
from core.selection import Selection, TargetSize, default_score_sources

WAIT_S = 600  # the suite shares a small, busy machine

def write_messages(path: Path, n: int = 12) -> Path:
    """A TRL conversational file, as core.export writes it."""
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is {i} times 7?"},
                {"role": "assistant", "content": f"<think>\n{i} sevens make {7 * i}.\n</think>\n\nThe answer is \\boxed{{{7 * i}}}."},
            ]}) + "\n")
    return path


@pytest.fixture
def messages(tmp_path) -> Path:
    return write_messages(tmp_path / "train.messages.jsonl")


def test_lora_sft_writes_an_adapter_a_model_card_and_the_losses(tiny_llama, messages):
    opts = FinetuneOptions(data=str(messages), name="tiny-sft", base_model=str(tiny_llama), examples=6,
                           max_steps=3, save_steps=2, max_length=128, recipe="hand-made")
    seen = []
    card = ft.finetune(opts, progress=lambda stage, done, total: seen.append((stage, done, total)), log=lambda _: None)

    out = ft.model_dir("tiny-sft")
    assert out == store.data_dir() / "models" / "tiny-sft"
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk == json.loads(json.dumps(card, default=str))
    assert card["recipe"] == "hand-made"
    assert card["data_sha256"] == hashlib.sha256(messages.read_bytes()).hexdigest()
    assert card["options"]["lora_rank"] == 8 and card["options"]["max_length"] == 128
    assert card["examples"] == 6 and card["steps"] == 3 and card["resumed_from"] is None
    # every hyperparameter the trainer ran with, resolved, and the whole of TRL's arguments
    hp = card["hyperparameters"]
    assert (hp["method"], hp["learning_rate"], hp["lr_scheduler"], hp["max_length"], hp["loss_on"]) == (
        "lora", 2e-4, "linear", 128, "assistant")
    assert hp["lora"] == {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"]}
    assert hp["effective_batch"] == 1 and hp["optimizer"] == card["training_args"]["optim"]
    assert card["training_args"]["learning_rate"] == 2e-4 and card["training_args"]["max_length"] == 128
    assert card["lengths"]["max_length_from"] == "given" and card["lengths"]["over_max_length"] == 0
    assert card["loss"]["on"] == "assistant" and "assistant turn only" in card["loss"]["what"]
    assert card["chat_template"]["from"] == "the model's own"
    assert card["method"] == "lora" and card["model"] is None
    losses = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [e["step"] for e in losses] == [1, 2, 3]
    assert all(e["loss"] > 0 for e in losses)
    assert card["losses"] == ft.read_losses("tiny-sft") == losses
    assert ("train", 3, 3) in seen
    assert [m["name"] for m in ft.list_models()] == ["tiny-sft"]
    assert ft.list_models()[0]["adapter"] == str(out / "adapter")
    # the loss chart the Jobs page draws is built from every logged step
    figure = ft.loss_figure(losses)
    assert list(figure.data[0].x) == [1, 2, 3]

    # the adapter loads on top of its base through the app's loader and generates
    from core.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_llama), adapter=card["adapter"], device="cpu")
    ids = tokenizer("What is", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3

    # the same run again is already done; other settings under the same name are refused
    assert ft.finetune(opts, log=lambda _: None)["seconds"] == card["seconds"]
    with pytest.raises(ValueError, match="already exists .* other settings .*learning_rate"):
        ft.finetune(FinetuneOptions(**{**vars(opts), "learning_rate": 1e-3}), log=lambda _: None)
    with pytest.raises(UserError, match="export a recipe"):
        ft.finetune(FinetuneOptions(data=str(messages.with_name("missing.jsonl")), name="x"), log=lambda _: None)


def test_a_start_that_failed_before_training_does_not_hold_the_name(tiny_llama, messages, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError):
        ft.finetune(FinetuneOptions(data=str(messages), name="retry", base_model=str(missing), max_steps=1), log=lambda _: None)
    card = ft.finetune(FinetuneOptions(data=str(messages), name="retry", base_model=str(tiny_llama), max_steps=1,
                                       max_length=64), log=lambda _: None)
    assert card["steps"] == 1 and card["base_model"] == str(tiny_llama)


def _wait(job_id: int, condition, what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        job = jobs.get(job_id)
        if condition(job):
            return job
        if job["state"] in ("done", "failed", "cancelled", "interrupted"):
            raise AssertionError(f"job {job_id} ended {job['state']} while waiting for {what}: {job['error']}\n{job['log_tail']}")
        assert time.monotonic() < deadline, f"job {job_id} never reached {what}: {job}"
        time.sleep(0.05)


def _checkpoint_steps(name: str) -> list[int]:
    return [int(p.name.split("-")[1]) for p in ft._checkpoints(ft.model_dir(name))]


@pytest.mark.spawns_processes
@pytest.mark.timeout(900)  # 300 training steps in three workers: 520 s once at a load average of 12
def test_a_finetune_job_survives_a_kill_and_a_cancel(tiny_llama, messages, tmp_path, monkeypatch):
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(tmp_path / "store.duckdb"))
    store.init_store()
    name = "tiny-resume"
    # enough steps that the cancel (seen by the worker's heartbeat within a second) lands
    # before the end even on an idle machine, where a tiny-model step takes ~20 ms
    steps = 300
    params = {"data": str(messages), "name": name, "base_model": str(tiny_llama), "max_steps": steps,
              "save_steps": 2, "max_length": 128}
    job_id = jobs.submit("finetune", params)
    try:
        # 1. SIGKILL once a checkpoint is complete: the job reads 'interrupted'
        job = _wait(job_id, lambda j: _checkpoint_steps(name), "a first checkpoint")
        os.kill(job["pid"], signal.SIGKILL)
        killed_at = _checkpoint_steps(name)[-1]
        deadline = time.monotonic() + 60
        while jobs.get(job_id)["state"] != "interrupted":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not (ft.model_dir(name) / "model_card.json").exists()

        # 2. resume: a new worker goes on from the checkpoint; cancel it a step later
        jobs.resume(job_id)
        _wait(job_id, lambda j: j["state"] == "running" and j["stage"] == "train" and (j["done"] or 0) > killed_at,
              "a step after the checkpoint")
        jobs.cancel(job_id)
        job = _wait(job_id, lambda j: j["state"] == "cancelled", "the cancel")
        log = jobs.log_path(job_id).read_text()
        assert f"resuming from {ft.model_dir(name) / 'checkpoints' / f'checkpoint-{killed_at}'}" in log
        # cancelling saved a checkpoint at the step where it stopped
        cancelled_at = _checkpoint_steps(name)[-1]
        assert killed_at < cancelled_at < steps
        assert f"cancelled at step {cancelled_at}; checkpoint saved" in log

        # 3. resume again: it finishes from the cancel's checkpoint
        jobs.resume(job_id)
        job = _wait(job_id, lambda j: j["state"] == "done", "the end")
    finally:
        job = jobs.get(job_id)
        if job["state"] in ("queued", "running") and job["pid"] and jobs.worker_alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)
    card = job["result"]
    assert card["steps"] == steps
    assert card["resumed_from"] == str(ft.model_dir(name) / "checkpoints" / f"checkpoint-{cancelled_at}")
    assert [e["step"] for e in ft.read_losses(name)] == list(range(1, steps + 1))
    assert job["attempts"] == 3
    assert (ft.model_dir(name) / "adapter" / "adapter_model.safetensors").exists()


def test_finetune_from_a_recipe_on_the_command_line(tiny_llama, demo_store, capsys):
    sel = Selection(rule=TargetSize(n=4, within="shortest_correct"), sources=default_score_sources(db=demo_store))
    recipes.save(recipes.Recipe("four-shortest", sel))
    from core.cli import build_parser

    args = build_parser().parse_args(["--db", str(demo_store), "finetune", "--recipe", "four-shortest", "--name", "from-recipe",
                                    "--base-model", str(tiny_llama), "--max-steps", "2"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 2 and printed["adapter"].endswith("from-recipe/adapter")
    card = ft.read_card("from-recipe")
    assert card["recipe"] == "four-shortest" and card["examples_in_data"] == 4
    # the export it trained on sits beside the model, with its manifest (the recipe, counts)
    assert Path(card["data"]).parent == ft.model_dir("from-recipe") / "data"
    assert card["export_manifest"]["recipe"]["name"] == "four-shortest"
    assert card["export_manifest"]["counts"]["rows"] == 4
    rows = [json.loads(line) for line in Path(card["data"]).read_text().splitlines()]
    assert [[m["role"] for m in r["messages"]] for r in rows] == [["user", "assistant"]] * 4
    # no max length given: the 95th percentile of the four examples' token lengths, computed here
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]
    assert card["lengths"]["max_length"] == math.ceil(float(np.quantile(lengths, 0.95)))
    over = [i + 1 for i, n in enumerate(lengths) if n > card["lengths"]["max_length"]]
    assert card["lengths"]["over_max_length"] == len(over) and card["examples"] == 4 - len(over)
    assert [(e["line"], e["action"]) for e in card["overlong"]] == [(line, "dropped") for line in over]


def _loss_tokens_by_hand(tokenizer, path: Path, template: str | None = None) -> tuple[int, int]:
    """(tokens of the assistant turns, all tokens) of a messages file, from the chat template
    rendered here: the completion is what follows the rendered prompt."""
    assistant = total = 0
    for line in path.read_text().splitlines():
        messages = json.loads(line)["messages"]
        kwargs = {"chat_template": template} if template else {}
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True,
                                               **kwargs)["input_ids"]
        assert full[:len(prompt)] == prompt
        assistant += len(full) - len(prompt)
        total += len(full)
    return assistant, total


def test_the_loss_is_on_the_assistant_turn_unless_asked_otherwise(tiny_llama, messages):
    from transformers import AutoTokenizer

    assistant, total = _loss_tokens_by_hand(AutoTokenizer.from_pretrained(tiny_llama), messages)
    assert 0 < assistant < total
    card = ft.finetune(FinetuneOptions(data=str(messages), name="masked", base_model=str(tiny_llama), max_steps=1),
                       log=lambda _: None)
    # counted on the labels of the dataset TRL made: -100 everywhere but the assistant turns
    assert card["loss"] == {"on": "assistant", "what": ft.loss_description("assistant"), "loss_tokens": assistant,
                            "tokens": total}
    everything = ft.finetune(FinetuneOptions(data=str(messages), name="unmasked", base_model=str(tiny_llama), max_steps=1,
                                             loss_on="all"), log=lambda _: None)
    assert everything["loss"]["loss_tokens"] == everything["loss"]["tokens"] == total
    assert everything["hyperparameters"]["loss_on"] == "all"


def test_over_long_examples_are_dropped_or_shortened_in_a_real_run(tiny_llama, tmp_path):
    path = write_messages(tmp_path / "long.messages.jsonl", n=10)
    with open(path, "a") as fh:
        thinking = " ".join(f"Check {k}: 11 sevens make 77." for k in range(60))
        fh.write(json.dumps({"messages": [{"role": "user", "content": "What is 11 times 7?"}, {
            "role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\nThe answer is \\boxed{{77}}."}]}) + "\n")
    dropped = ft.finetune(FinetuneOptions(data=str(path), name="drop-long", base_model=str(tiny_llama), max_steps=1,
                                          max_length=100), log=lambda _: None)
    assert (dropped["examples"], dropped["examples_in_data"], dropped["lengths"]["dropped"]) == (10, 11, 1)
    assert [(e["line"], e["action"]) for e in dropped["overlong"]] == [(11, "dropped")]
    listed = [json.loads(line) for line in Path(dropped["overlong_file"]).read_text().splitlines()]
    assert listed == dropped["overlong"]
    shortened = ft.finetune(FinetuneOptions(data=str(path), name="cut-long", base_model=str(tiny_llama), max_steps=1,
                                            max_length=100, overlong="truncate_thinking"), log=lambda _: None)
    assert shortened["examples"] == 11 and shortened["lengths"]["thinking_shortened"] == 1
    entry = shortened["overlong"][0]
    assert entry["action"] == "thinking shortened" and entry["tokens_after"] <= 100 < entry["tokens"]


def test_a_base_model_is_trained_and_evaluated_with_the_plain_template(tmp_path, messages):
    from core import generation, sft_data
    from helpers import build_tiny_llama

    base = build_tiny_llama(tmp_path / "tiny-base", chat_template=None)
    card = ft.finetune(FinetuneOptions(data=str(messages), name="from-base", base_model=str(base), max_steps=1),
                       log=lambda _: None)
    assert card["chat_template"] == {"from": "ThoughtScope's plain template (core/sft_data.py): the model has no chat "
                                             "template", "template": sft_data.PLAIN_TEMPLATE}
    from transformers import AutoTokenizer

    assistant, _ = _loss_tokens_by_hand(AutoTokenizer.from_pretrained(base), messages, sft_data.PLAIN_TEMPLATE)
    assert card["loss"]["loss_tokens"] == assistant
    # the base model alone cannot be asked a chat; with the adapter it is asked in the plain template
    with pytest.raises(generation.GenerationError, match="has no chat template"):
        generation.open_backend("transformers", str(base), device="cpu")
    tuned = generation.open_backend("transformers", str(base), adapter=card["adapter"], device="cpu")
    assert tuned.tokenizer.chat_template == sft_data.PLAIN_TEMPLATE
    [answer] = tuned.generate([[{"role": "user", "content": "What is 2 times 7?"}]], max_new_tokens=3)
    assert answer.prompt_tokens == len(tuned.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 times 7?"}], add_generation_prompt=True, tokenize=True,
        return_dict=True)["input_ids"])


def test_the_20_long_cots_preset_with_a_full_fine_tune(tiny_llama, tmp_path):
    path = write_messages(tmp_path / "train.messages.jsonl", n=24)
    opts = FinetuneOptions(data=str(path), name="preset-full", base_model=str(tiny_llama), preset="20-long-cots",
                           method="full")
    preset = ft.PRESETS["20-long-cots"]["values"]
    assert {k: getattr(opts, k) for k in preset} == preset
    assert opts.learning_rate == 1e-5 and opts.method == "full"
    # a field given by hand wins over the preset; LoRA takes the preset's LoRA learning rate
    mine = FinetuneOptions(data=str(path), name="x", preset="20-long-cots", epochs=2.0, lr_scheduler="constant")
    assert (mine.epochs, mine.lr_scheduler, mine.examples, mine.learning_rate) == (2.0, "constant", 20, 1e-4)
    with pytest.raises(UserError, match="There is no fine-tuning preset 'big'"):
        FinetuneOptions(data=str(path), name="x", preset="big")

    # two epochs and no checkpoint on the way keep the test short; the rest is the preset's
    opts = dataclasses.replace(opts, epochs=2.0, save_steps=100)
    card = ft.finetune(opts, log=lambda _: None)
    # 20 examples, 2 accumulated per optimizer step, 2 epochs
    assert card["examples"] == 20 and card["steps"] == 2 * 20 // 2
    assert card["lengths"]["max_length_from"] == "the 100% quantile of the examples' token lengths"
    assert card["lengths"]["over_max_length"] == 0
    hp = card["hyperparameters"]
    assert (hp["method"], hp["preset"], hp["epochs"], hp["learning_rate"], hp["lr_scheduler"], hp["warmup_ratio"],
            hp["grad_accum"], hp["lora"]) == ("full", "20-long-cots", 2.0, 1e-5, "cosine", 0.1, 2, None)
    assert card["preset"]["name"] == "20-long-cots" and "seed 002" in card["preset"]["about"]
    assert card["training_args"]["warmup_steps"] == 0.1 and card["training_args"]["num_train_epochs"] == 2.0
    assert card["adapter"] is None and card["model"] == str(ft.model_dir("preset-full") / "model")
    # the full model loads like any checkpoint and generates
    from core.models import load_causal_lm

    model, tokenizer = load_causal_lm(card["model"], device="cpu")
    ids = tokenizer("What is", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 2
    listed = {m["name"]: m for m in ft.list_models()}
    assert listed["preset-full"]["model"] == card["model"] and listed["preset-full"]["adapter"] is None


@pytest.mark.slow
def test_lora_on_the_real_smollm2_for_two_steps(messages):
    from core.models import DEFAULT_MODEL

    card = ft.finetune(FinetuneOptions(data=str(messages), name="smol-2", base_model=DEFAULT_MODEL, max_steps=2,
                                       max_length=256, save_steps=10), log=lambda _: None)
    assert card["steps"] == 2 and card["base_model"] == DEFAULT_MODEL
    assert all(e["loss"] > 0 for e in card["losses"]) and len(card["losses"]) == 2
    config = json.loads((ft.model_dir("smol-2") / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # SmolLM2's own (ChatML) template; the loss on its assistant turns only, counted here with its tokenizer
    from transformers import AutoTokenizer

    from core.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    assistant, total = _loss_tokens_by_hand(tokenizer, messages)
    assert card["loss"]["loss_tokens"] == assistant and card["loss"]["tokens"] == total
    assert card["chat_template"] == {"from": "the model's own", "template": tokenizer.chat_template}
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        json.loads(messages.read_text().splitlines()[0])["messages"], tokenize=False)

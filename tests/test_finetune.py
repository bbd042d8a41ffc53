"""LoRA fine-tuning for real on CPU: a tiny randomly initialised Llama (saved with
save_pretrained, tokenizer trained here) through the same from_pretrained path as any model;
a worker job that is killed, resumed, cancelled and resumed again; the recipe route from the
command line; and a slow run on the real SmolLM2."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

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
                                    "--base-model", str(tiny_llama), "--max-steps", "2", "--max-length", "256"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 2 and printed["adapter"].endswith("from-recipe/adapter")
    card = ft.read_card("from-recipe")
    assert card["recipe"] == "four-shortest" and card["examples"] == 4
    # the export it trained on sits beside the model, with its manifest (the recipe, counts)
    assert Path(card["data"]).parent == ft.model_dir("from-recipe") / "data"
    assert card["export_manifest"]["recipe"]["name"] == "four-shortest"
    assert card["export_manifest"]["counts"]["rows"] == 4
    rows = [json.loads(line) for line in Path(card["data"]).read_text().splitlines()]
    assert [[m["role"] for m in r["messages"]] for r in rows] == [["user", "assistant"]] * 4


@pytest.mark.slow
def test_lora_on_the_real_smollm2_for_two_steps(messages):
    from core.models import DEFAULT_MODEL

    card = ft.finetune(FinetuneOptions(data=str(messages), name="smol-2", base_model=DEFAULT_MODEL, max_steps=2,
                                       max_length=256, save_steps=10), log=lambda _: None)
    assert card["steps"] == 2 and card["base_model"] == DEFAULT_MODEL
    assert all(e["loss"] > 0 for e in card["losses"]) and len(card["losses"]) == 2
    config = json.loads((ft.model_dir("smol-2") / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}

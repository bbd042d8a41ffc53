"""Options defined once (core.options, core.job_kinds): the CLI flags, a job's params and the
forms' defaults all come from one dataclass per job kind, and bad values are refused by core
with a sentence, the same way from every entry point."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from core import job_kinds, jobs
from core.cli import build_parser
from core.errors import UserError
from core.evaluate import EvalOptions
from core.finetune import FinetuneOptions
from core.generation import vllm_lora_rank
from core.judge import DEFAULT_MAX_NEW_TOKENS, JudgeError, JudgeOptions, ScoreTarget
from core.judge_ray import RayOptions
from core.options import add_arguments, defaults, from_namespace, from_params, option, to_params


@dataclasses.dataclass
class Example:
    name: str = option(help="required by the checks below")
    count: int = option(3, help="a number")
    ratio: float | None = option(None, help="a fraction")
    tags: tuple[str, ...] = option(("a",), help="a list")
    ids: tuple[int, ...] = option((), help="numbers")
    on: bool = option(False, help="a switch")
    keep: bool = option(True, help="a switch that starts on")
    mode: str = option("x", choices=("x", "y"), help="one of two")
    blob: dict | None = option(None, cli=False, help="params only")


def test_flags_come_from_the_fields_and_keep_the_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    args = parser.parse_args(["--name", "n", "--ratio", "0.5", "--tags", "p, q", "--ids", "3,4", "--on", "--no-keep"])
    assert from_namespace(Example, args) == Example(name="n", count=3, ratio=0.5, tags=("p", "q"), ids=(3, 4), on=True,
                                                    keep=False, mode="x")
    # a flag not given keeps the dataclass default, not an argparse one
    assert from_namespace(Example, parser.parse_args(["--name", "n"])) == Example(name="n")
    with pytest.raises(SystemExit):  # argparse refuses a choice outside the list
        parser.parse_args(["--name", "n", "--mode", "z"])
    assert "--blob" not in parser.format_help()


def test_params_are_cast_and_bad_values_refused_with_a_sentence():
    assert from_params(Example, {"name": "n", "count": "7", "ratio": "", "tags": ["u"], "on": "true", "other": 1}) == \
        Example(name="n", count=7, ratio=None, tags=("u",), on=True)
    with pytest.raises(UserError, match="'count' must be a whole number, not 'seven'"):
        from_params(Example, {"name": "n", "count": "seven"})
    with pytest.raises(UserError, match="name must be given"):
        from_params(Example, {})
    with pytest.raises(UserError, match="has no option other"):
        from_params(Example, {"name": "n", "other": 1}, strict=True)
    roundtrip = Example(name="n", tags=("p",), ids=(1, 2))
    assert from_params(Example, to_params(roundtrip)) == roundtrip
    assert defaults(Example)["count"] == 3 and "name" not in defaults(Example)


def test_the_score_command_and_a_score_job_build_the_same_options():
    """`python -m core score ...` and jobs.submit("score", params) go through one parser."""
    argv = ["score", "--dataset", "d1,d2", "--max-cots", "5", "--metrics", "rv,logic", "--max-new-tokens", "64",
            "--batch-size", "2", "--source-name", "s", "--fusion-alpha", "0.3"]
    args = build_parser().parse_args(argv)
    from_cli = tuple(from_namespace(cls, args) for cls in job_kinds.get("score").options)
    params = {"dataset": ["d1", "d2"], "max_cots": 5, "metrics": ["rv", "logic"], "max_new_tokens": 64, "batch_size": 2,
              "source_name": "s", "fusion_alpha": 0.3}
    assert job_kinds.get("score").parse(params) == from_cli
    target, judge, ray = from_cli
    assert target == ScoreTarget(dataset=("d1", "d2"), max_cots=5)
    assert judge.metrics == ("rv", "logic") and judge.fusion.alpha == 0.3 and judge.batch() == 2
    assert ray == RayOptions()


def test_options_refuse_what_a_run_would_refuse(monkeypatch):
    with pytest.raises(JudgeError, match="No judge template for verbosity"):
        JudgeOptions(metrics=("verbosity",))
    with pytest.raises(JudgeError, match="include 'rv'"):
        JudgeOptions(metrics=("cd",), fusion_alpha=0.5)
    with pytest.raises(JudgeError, match="needs the vllm backend"):
        JudgeOptions(guided=True)
    with pytest.raises(JudgeError, match="alpha must lie in 0-1"):
        JudgeOptions(fusion_alpha=2.0)
    monkeypatch.delenv("THOUGHTSCOPE_RAY_ADDRESS", raising=False)
    with pytest.raises(JudgeError, match="need a Ray cluster"):
        job_kinds.get("score").parse({"ray_replicas": 4})
    with pytest.raises(UserError, match="Give the model a name"):
        FinetuneOptions(data="x.jsonl")
    with pytest.raises(UserError, match="needs training data"):
        FinetuneOptions(name="m")
    with pytest.raises(UserError, match="Choose a benchmark dataset"):
        EvalOptions()
    with pytest.raises(UserError, match="has no option surprise"):
        job_kinds.get("verify").parse({"surprise": 1})


def test_a_refused_job_is_never_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(tmp_path / "store.duckdb"))
    with pytest.raises(UserError, match="max new tokens must be at least 1"):
        jobs.submit("score", {"max_new_tokens": 0})
    with pytest.raises(UserError, match="no job kind 'nope'"):
        jobs.submit("nope", {})
    assert jobs.list_jobs().height == 0


def test_defaults_are_written_once():
    """The values the CLI, the job and the form start from are the dataclass's."""
    judge = JudgeOptions()
    assert judge.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == defaults(JudgeOptions)["max_new_tokens"]
    help_text = build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    help_text = " ".join(help_text.split())  # argparse wraps its lines
    assert "--lr" in help_text and "(default 2e-4 for lora, 1e-5 for full)" in help_text
    assert "--max-length" in help_text and "--preset {20-long-cots}" in help_text


@pytest.mark.parametrize(("rank", "engine_rank"), [(4, 16), (16, 16), (24, 32), (64, 64), (300, 320)])
def test_vllm_gets_a_lora_rank_it_supports(tmp_path, rank, engine_rank):
    (tmp_path / "adapter_config.json").write_text(f'{{"r": {rank}}}')
    assert vllm_lora_rank(tmp_path) == engine_rank


def test_a_lora_rank_vllm_cannot_serve_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 1024}')
    with pytest.raises(UserError, match="rank 1024"):
        vllm_lora_rank(tmp_path)

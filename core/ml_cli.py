"""The model commands of the CLI: re-score with a judge, fine-tune, evaluate.

    python -m core score --dataset "demo (generated)" --max-cots 100 --metrics rv,cd --model SmolLM2-135M-Instruct
    python -m core score --dataset "demo (generated)" --backend vllm --ray-address auto --ray-replicas 8
    python -m core finetune --recipe my-recipe --name my-run --max-steps 20
    python -m core evaluate --benchmark gsm8k_test --problems 20 --k 1 [--adapter data/models/my-run/adapter]

Each runs in this process with a progress bar and takes the same options as the job of the same
kind on the Jobs page (core.worker), so a command line and a job give the same result. Run
again after a kill, each goes on from what was committed (judge scores under the same
--source-name, training checkpoints, generations).
"""

from __future__ import annotations

import json

from core.finetune import FinetuneOptions
from core.models import DEFAULT_MODEL


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def cmd_score(args) -> int:
    from core import judge
    from core.cli import _bar
    from core.queries import CotFilter
    from core.worker import score_targets

    params = {
        "cot_ids": [int(c) for c in _csv(args.cot_ids)], "recipe": args.recipe, "max_cots": args.max_cots,
        "filter": CotFilter(datasets=tuple(_csv(args.dataset)), models=tuple(_csv(args.models)),
                            benchmarks=tuple(_csv(args.benchmark))).as_dict(),
    }
    ids = score_targets(params, db=args.db)
    ray_options = {
        name: value for name, value in (
            ("replicas", args.ray_replicas), ("gpus_per_replica", args.ray_gpus_per_replica),
            ("cpus_per_replica", args.ray_cpus_per_replica), ("staging_dir", args.ray_staging_dir))
        if value is not None
    }
    try:
        address = judge.ray_address_from(args.ray_address)
    except judge.JudgeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if ray_options and address is None:
        raise SystemExit(f"--ray-* options need a Ray cluster: give --ray-address (or set ${judge.RAY_ADDRESS_ENV})")
    update, close = _bar("score")
    try:
        run = judge.score_cots(
            args.db, ids, metrics=_csv(args.metrics) or list(judge.DEFAULT_METRICS), backend=args.backend,
            model=args.model, adapter=args.adapter, template_dir=args.template_dir, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, max_chars=args.max_chars, guided=args.guided,
            length_fusion=judge.LengthFusion(alpha=args.fusion_alpha) if args.fusion_alpha is not None else None,
            source_name=args.source_name, progress=update, ray_address=args.ray_address, ray_options=ray_options,
        )
    except judge.JudgeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    finally:
        close()
    print(json.dumps({k: v for k, v in vars(run).items() if k != "params"}, default=str))
    return 0


def cmd_finetune(args) -> int:
    from core.cli import _bar
    from core.finetune import finetune
    from core.worker import recipe_export

    if not args.data and not args.recipe:
        raise SystemExit("give --data (a TRL messages JSONL) or --recipe (exported first)")
    data = args.data or recipe_export(args.name, args.recipe, args.thinking, db=args.db)
    opts = FinetuneOptions(
        data=data, name=args.name, base_model=args.base_model, examples=args.examples, epochs=args.epochs,
        max_steps=args.max_steps, learning_rate=args.lr, max_length=args.max_length, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, batch_size=args.batch_size, grad_accum=args.grad_accum,
        save_steps=args.save_steps, seed=args.seed, recipe=args.recipe,
    )
    update, close = _bar("finetune")
    try:
        card = finetune(opts, progress=update)
    finally:
        close()
    print(json.dumps({k: card[k] for k in ("name", "adapter", "steps", "train_loss", "resumed_from", "seconds")}, default=str))
    return 0


def cmd_evaluate(args) -> int:
    from core.cli import _bar
    from core.evaluate import EvalOptions, evaluate

    opts = EvalOptions(
        benchmark=args.benchmark, model=args.model, adapter=args.adapter, label=args.label, problems=args.problems,
        k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature, backend=args.backend,
        batch_size=args.batch_size, seed=args.seed, run_name=args.run_name,
    )
    update, close = _bar("evaluate")
    try:
        result = evaluate(opts, db=args.db, progress=update)
    finally:
        close()
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, default=str))
    return 0


def add_ml_cli(subparsers) -> None:
    """Register `score`, `finetune` and `evaluate` on the CLI's subparsers."""
    from core.judge import BACKENDS, DEFAULT_MAX_CHARS, DEFAULT_MAX_NEW_TOKENS, DEFAULT_METRICS, RAY_ADDRESS_ENV

    p = subparsers.add_parser("score", help="re-score CoTs with an LLM judge as a new score source (resumable)")
    which = p.add_argument_group("which CoTs (default: all)")
    which.add_argument("--dataset", help="dataset name(s), comma-separated")
    which.add_argument("--models", help="generating model(s)/teacher(s), comma-separated")
    which.add_argument("--benchmark", help="benchmark(s), comma-separated")
    which.add_argument("--recipe", help="a saved recipe's name: the CoTs it keeps")
    which.add_argument("--cot-ids", help="explicit CoT ids, comma-separated")
    which.add_argument("--max-cots", type=int, help="only the first N by id")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="judge templates to run (rv, cd, logic, or your own)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="judge model: a local folder, a hub id or the offline default")
    p.add_argument("--adapter", help="a LoRA adapter folder on top of the judge model")
    p.add_argument("--backend", choices=BACKENDS, default="transformers")
    p.add_argument("--template-dir", help="a folder of judge templates (*.yaml) that adds to or overrides the built-in ones")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="responses longer than this are clipped (head and tail)")
    p.add_argument("--guided", action="store_true", help="vllm only: constrain the answer to <score>N</score>")
    p.add_argument("--fusion-alpha", type=float, help="also write rv_fused = alpha*judge + (1-alpha)*9*length quantile")
    p.add_argument("--source-name", help="score source name; run again with the same name to resume")
    ray = p.add_argument_group("on a Ray cluster (core.judge.score_cots_ray)")
    ray.add_argument("--ray-address", help=f"auto (this machine's cluster), ray://HOST:10001, HOST:6379, local (a "
                     f"throw-away instance here) or none; default ${RAY_ADDRESS_ENV}, else no Ray")
    ray.add_argument("--ray-replicas", type=int, help="judge actors (one backend each; default 1)")
    ray.add_argument("--ray-gpus-per-replica", type=float, help="default 1 for vllm, 0 for transformers")
    ray.add_argument("--ray-cpus-per-replica", type=float, help="default 1")
    ray.add_argument("--ray-staging-dir", help="stage the pending CoTs as Parquet here (a folder all nodes see, or "
                     "s3://...) instead of Ray's object store")
    p.set_defaults(func=cmd_score)

    defaults = FinetuneOptions(data="", name="")
    p = subparsers.add_parser("finetune", help="LoRA SFT on an exported TRL messages file or a recipe (resumable)")
    p.add_argument("--name", required=True, help="model folder under data/models")
    p.add_argument("--data", help="TRL messages JSONL (core export format 'trl')")
    p.add_argument("--recipe", help="a saved recipe, exported to TRL messages first")
    p.add_argument("--thinking", default="think_tags", help="how the recipe export writes the thinking")
    p.add_argument("--base-model", default=defaults.base_model)
    p.add_argument("--examples", type=int, help="first N examples only")
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="> 0 overrides --epochs")
    p.add_argument("--lr", type=float, default=defaults.learning_rate)
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per example (longer are cut)")
    p.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    p.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    p.add_argument("--save-steps", type=int, default=defaults.save_steps)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser("evaluate", help="generate k answers per benchmark problem, ingest, verify (resumable)")
    p.add_argument("--benchmark", required=True, help="a benchmark dataset in the store, or a benchmark file to ingest")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--adapter", help="a LoRA adapter folder (data/models/<name>/adapter)")
    p.add_argument("--label", help="model name shown in the app (default model[+adapter's model name])")
    p.add_argument("--problems", type=int, default=20)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, help="default 0 for k=1, else 0.7")
    p.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-name", help="the new dataset's name")
    p.set_defaults(func=cmd_evaluate)

"""Jobs: long work (ingest, token counts, verification, judge re-scoring, fine-tuning,
evaluation) running in worker processes.

The state lives in data/jobs.sqlite, so this page shows the same jobs after a browser reload
or an app restart; a job whose worker died reads 'interrupted' and can be resumed. A fine-tune
draws its loss curve live; a finished evaluation shows its accuracy, a finished fine-tune its
model card.
"""

from __future__ import annotations

import streamlit as st

from core import (
    access, evaluate, export, finetune, generation, job_kinds, jobs, judge, queries, recipes, render, sft_data, step_judge,
    step_stats,
)
from core.errors import UserError
from core.options import defaults
from ui import common
from ui.job_forms import options_form

SHOWN_FINISHED = 5  # finished jobs shown as cards; the table below lists every job
STATE_ICONS = {
    "queued": ":material/schedule:", "running": ":material/play_circle:", "done": ":material/check_circle:",
    "failed": ":material/error:", "cancelled": ":material/cancel:", "interrupted": ":material/warning:",
}
FIRST_COTS = 100  # the form's "at most this many CoTs": a first run stays small unless asked
NO_ADAPTER = "(base model only)"
NO_PRESET = "(none)"
LONG_HELP = ("Jobs estimated to run over an hour, or with many answers and no measured speed, start only with this "
             "ticked: nobody starts a 9-hour job by accident.")


def _trl_exports() -> list[str]:
    listed = export.list_exports()
    return [] if listed.is_empty() else listed.filter(listed["format"] == "trl")["path"].to_list()


def _cost_buttons(prefix: str, start: str) -> tuple[bool, bool, bool, bool]:
    """(estimate, measure, start, confirmed): the buttons every generation form ends with."""
    long_ok = st.checkbox("Start even if it is long", key=f"{prefix}_long", help=LONG_HELP)
    c1, c2, c3 = st.columns(3)
    estimate = c1.form_submit_button("Estimate the cost")
    measure = c2.form_submit_button("Measure the speed here", help="Times one batch of this model on this machine "
                                    "(in a separate process, a minute or so); the estimate then says how long the job takes.")
    started = c3.form_submit_button(start, type="primary")
    return estimate, measure, started, long_ok


def _cost(kind: str, params: dict, estimate, *, measure: bool, key: str):
    """The job's cost (core.generation.RunCost), after timing one batch here when asked; kept
    in the session so the form shows it until the next press."""
    options = job_kinds.get(kind).parse(params)
    cost = estimate(*options)
    if measure:
        with st.spinner("Timing one batch of the model on this machine…"):
            generation.measure_speed_in_subprocess(**cost.measure)
        cost = estimate(*options)
    st.session_state[key] = cost.text()
    return cost


def _score_form() -> None:
    current = st.session_state.get("current_filter")
    saved = recipes.list_recipes()
    default = defaults(judge.JudgeOptions)
    with st.form("jobs_score_form"):
        st.markdown("**Re-score CoTs with an LLM judge** (a new score source; resumable)")
        choices = ["current filter", "a saved recipe"]
        which = st.radio("Which CoTs", choices, horizontal=True, key="jobs_score_which")
        if current is not None:
            st.caption(f"Current filter (set in the sidebar of the other pages): {queries.count(current)['cots']:,} CoTs match.")
        else:
            st.caption("No filter set yet (open Explore or Distributions to set one): the current filter means every CoT.")
        recipe = st.selectbox("Recipe", saved, key="jobs_score_recipe", index=None,
                              placeholder="no saved recipe" if not saved else "choose a recipe")
        c1, c2 = st.columns(2)
        max_cots = c1.number_input("At most this many CoTs (the first by id)", min_value=1, value=FIRST_COTS, step=10,
                                   key="jobs_score_max")
        metrics = c2.multiselect("Metrics", sorted(judge.load_templates()), default=list(default["metrics"]),
                                 key="jobs_score_metrics", help="RV and CD on 0-9, logic 1/0; templates live in core/judge_templates.")
        c1, c2 = st.columns(2)
        model = c1.text_input("Judge model", value=default["model"], key="jobs_score_model",
                              help="A local folder with a Hugging Face checkpoint, a hub id (network the first time), or the offline default.")
        backend = c2.selectbox("Backend", list(generation.BACKENDS), index=generation.BACKENDS.index(default["backend"]),
                               key="jobs_score_backend", help="transformers runs anywhere; vllm needs a GPU (or the separate CPU build).")
        c1, c2, c3, c4 = st.columns(4)
        alpha = c1.number_input("Length-fusion alpha (empty: none)", min_value=0.0, max_value=1.0, value=default["fusion_alpha"],
                                step=0.1, key="jobs_score_alpha",
                                help="Also writes rv_fused = alpha × judge RV + (1 − alpha) × 9 × length quantile: this "
                                     "project's reconstruction (the paper blends RV with a normalised length at "
                                     "alpha = 0.5 but does not publish the normalisation).")
        batch = c2.number_input("Batch size", min_value=1, value=default["batch_size"], key="jobs_score_batch",
                                placeholder=f"{generation.DEFAULT_BATCH['transformers']} (vllm: {generation.DEFAULT_BATCH['vllm']})")
        new_tokens = c3.number_input("Max new tokens", min_value=1, value=default["max_new_tokens"], key="jobs_score_tokens")
        clip = c4.number_input("Clip responses at (characters)", min_value=1, value=default["max_chars"], step=1000,
                               key="jobs_score_clip", placeholder="never clip",
                               help="A longer response is cut before judging: its first and last halves are kept, with a "
                                    "note of how many characters were left out. Empty: never clip (long CoTs may then "
                                    "not fit the judge's context).")
        st.caption(f"Clip: {judge.clip_description(clip)}. The estimate counts how many of the chosen CoTs it cuts; "
                   "the run reports it and the score source's parameters record it.")
        estimate, measure, start, long_ok = _cost_buttons("jobs_score", "Start re-scoring")
    if not (estimate or measure or start):
        return
    params = {"metrics": metrics, "model": model.strip() or None, "backend": backend, "max_cots": max_cots,
              "batch_size": batch, "max_new_tokens": new_tokens, "fusion_alpha": alpha, "max_chars": clip}
    if which == choices[1]:
        if not recipe:
            raise UserError("Choose a saved recipe (save one on the Select page), or score the current filter.")
        params["recipe"] = recipe
    else:
        # only the constraints: a short, readable record on the job card
        chosen = (current or queries.CotFilter()).as_dict()
        params["filter"] = {k: v for k, v in chosen.items() if v not in (None, (), [], "", "any")}
    params = {k: v for k, v in params.items() if v is not None or k == "max_chars"}
    cost = _cost("score", params, lambda target, options, ray: judge.estimate_cost(None, target, options),
                 measure=measure, key="jobs_score_cost")
    if start:
        generation.check_cost(cost, confirmed=long_ok)
        job_id = jobs.submit("score", params)
        st.session_state.jobs_started = f"Started job {job_id}: re-scoring with {params.get('model', default['model'])}."
        st.session_state.pop("jobs_score_cost", None)


def _step_judge_form() -> None:
    """The step judge (core.step_judge): a first-wrong-step verdict and a role per step from an
    LLM, or per-step scores from a process reward model, written as a step source."""
    current = st.session_state.get("current_filter")
    saved = recipes.list_recipes()
    default = defaults(step_judge.StepJudgeOptions)
    sources = step_stats.step_sources()["source"].to_list()
    with st.form("jobs_step_judge_form"):
        st.markdown("**Judge CoTs step by step** (first wrong step as in ProcessBench, a role per step; "
                    "a new step source; resumable)")
        choices = ["current filter", "a saved recipe"]
        which = st.radio("Which CoTs", choices, horizontal=True, key="jobs_sj_which")
        recipe = st.selectbox("Recipe", saved, key="jobs_sj_recipe", index=None,
                              placeholder="no saved recipe" if not saved else "choose a recipe")
        c1, c2 = st.columns(2)
        max_cots = c1.number_input("At most this many CoTs (the first by id)", min_value=1, value=20, step=10,
                                   key="jobs_sj_max")
        tasks = c2.multiselect("Tasks", list(step_judge.TASKS), default=list(step_judge.TASKS), key="jobs_sj_tasks",
                               help="first_error: the number of the first wrong step, or none (ProcessBench's protocol); "
                                    "roles: one of the eight roles per step. A process reward model does first_error only.")
        c1, c2 = st.columns(2)
        model = c1.text_input("Judge model", value=default["model"], key="jobs_sj_model",
                              help="A chat model, or with a prm backend a process reward model (e.g. Qwen/Qwen2.5-Math-PRM-7B).")
        backend = c2.selectbox("Backend", list(step_judge.JUDGE_BACKENDS), key="jobs_sj_backend",
                               help="transformers runs anywhere; vllm needs a GPU; prm / prm-vllm score steps with a PRM.")
        c1, c2 = st.columns(2)
        steps_of = c1.selectbox("Steps", [f"split by {u}" for u in ("paragraph", "sentence")] + sources, key="jobs_sj_steps",
                                help="Split each CoT here, or judge the steps of an existing step source (rules, "
                                     "a dataset's labels) so the two can be compared step for step on Agreement.")
        batch = c2.number_input("CoTs per batch (committed together)", min_value=1, value=None, key="jobs_sj_batch",
                                placeholder="default for the backend")
        new_tokens = st.number_input("Max new tokens", min_value=1, value=default["max_new_tokens"], key="jobs_sj_tokens")
        estimate, measure, start, long_ok = _cost_buttons("jobs_sj", "Start the step judge")
    if not (estimate or measure or start):
        return
    params = {"tasks": tasks, "model": model.strip() or None, "backend": backend, "max_cots": max_cots, "batch_size": batch,
              "max_new_tokens": new_tokens}
    if steps_of.startswith("split by "):
        params["unit"] = steps_of.removeprefix("split by ")
    else:
        params["from_source"] = steps_of
    if which == choices[1]:
        if not recipe:
            raise UserError("Choose a saved recipe (save one on the Select page), or judge the current filter.")
        params["recipe"] = recipe
    else:
        chosen = (current or queries.CotFilter()).as_dict()
        params["filter"] = {k: v for k, v in chosen.items() if v not in (None, (), [], "", "any")}
    params = {k: v for k, v in params.items() if v not in (None, [])}
    cost = _cost("judge-steps", params, lambda target, options, ray: step_judge.estimate_cost(None, target, options),
                 measure=measure, key="jobs_sj_cost")
    if start:
        generation.check_cost(cost, confirmed=long_ok)
        job_id = jobs.submit("judge-steps", params)
        st.session_state.jobs_started = f"Started job {job_id}: step judge with {params.get('model', default['model'])}."
        st.session_state.pop("jobs_sj_cost", None)


def _finetune_form() -> None:
    saved = recipes.list_recipes()
    trl_exports = _trl_exports()
    default = defaults(finetune.FinetuneOptions)
    ranks = sorted({4, 8, 16, 32, 64, default["lora_rank"]})
    with st.form("jobs_finetune_form"):
        st.markdown("**Fine-tune (LoRA SFT)** on a recipe or an exported TRL messages file (resumable)")
        choices = ["a saved recipe", "an export file"]
        which = st.radio("Training data", choices, horizontal=True, key="jobs_ft_which")
        c1, c2 = st.columns(2)
        recipe = c1.selectbox("Recipe (exported as TRL messages first)", saved, index=None, key="jobs_ft_recipe",
                              placeholder="no saved recipe" if not saved else "choose a recipe")
        data = c2.selectbox("Export file (TRL format)", trl_exports, index=None, key="jobs_ft_data",
                            placeholder="no TRL export yet" if not trl_exports else "choose a file")
        c1, c2 = st.columns(2)
        name = c1.text_input("Model name (folder under data/models)", key="jobs_ft_name")
        base = c2.text_input("Base model", value=default["base_model"], key="jobs_ft_base")
        c1, c2, c3, c4 = st.columns(4)
        examples = c1.number_input("Examples (empty: all)", min_value=1, value=default["examples"], key="jobs_ft_examples")
        epochs = c2.number_input("Epochs", min_value=0.1, value=default["epochs"], step=0.5, key="jobs_ft_epochs")
        max_steps = c3.number_input("Max steps (empty: by epochs)", min_value=1,
                                    value=default["max_steps"] if default["max_steps"] > 0 else None, key="jobs_ft_steps")
        save_steps = c4.number_input("Checkpoint every (steps)", min_value=1, value=default["save_steps"], key="jobs_ft_save")
        c1, c2, c3, c4 = st.columns(4)
        preset = c1.selectbox("Preset", [NO_PRESET, *finetune.PRESETS], key="jobs_ft_preset",
                              help=f"20-long-cots: {finetune.PRESETS['20-long-cots']['about']}. It sets "
                                   f"{', '.join(f'{k} {v}' for k, v in finetune.PRESETS['20-long-cots']['values'].items())} "
                                   "and the learning rate (1e-4 LoRA, 1e-5 full) for the fields left at their defaults.")
        method = c2.selectbox("Method", list(finetune.METHODS), index=finetune.METHODS.index(default["method"]),
                              key="jobs_ft_method", help="lora trains an adapter on top of the base model; full updates every weight.")
        lr = c3.number_input("Learning rate", min_value=1e-7, max_value=1.0, value=default["learning_rate"], format="%.1e",
                             key="jobs_ft_lr", placeholder="2e-4 LoRA, 1e-5 full")
        rank = c4.selectbox("LoRA rank", ranks, index=ranks.index(default["lora_rank"]), key="jobs_ft_rank")
        c1, c2, c3 = st.columns(3)
        max_length = c1.number_input("Max length (tokens)", min_value=16, value=default["max_length"], step=256,
                                     key="jobs_ft_maxlen", placeholder="from the data",
                                     help="Empty: the 95th percentile of the examples' token lengths, capped by the "
                                          "model's context. The run reports how many examples are longer.")
        overlong = c2.selectbox("Longer examples", list(sft_data.OVERLONG), key="jobs_ft_overlong",
                                index=sft_data.OVERLONG.index(default["overlong"]),
                                format_func={"drop": "drop them (listed in the model card)",
                                             "truncate_thinking": "shorten their thinking (marked)"}.get,
                                help="No example is ever cut so that it loses its answer.")
        loss_on = c3.selectbox("Loss on", list(finetune.LOSS_ON), index=finetune.LOSS_ON.index(default["loss_on"]),
                               key="jobs_ft_loss", format_func={"assistant": "the assistant turn only",
                                                                "all": "every token"}.get)
        st.caption("A base model without a chat template is trained with ThoughtScope's plain template (### User / "
                   "### Assistant), saved with the adapter so that evaluation asks it the same way.")
        start = st.form_submit_button("Start fine-tune")
    if not start:
        return
    params = {"name": name.strip(), "base_model": base.strip() or None, "examples": examples, "epochs": epochs,
              "max_steps": max_steps if max_steps else -1, "learning_rate": lr, "max_length": max_length,
              "lora_rank": rank, "lora_alpha": 2 * rank, "save_steps": save_steps, "method": method,
              "overlong": overlong, "loss_on": loss_on, "preset": None if preset == NO_PRESET else preset}
    params["recipe" if which == choices[0] else "data"] = recipe if which == choices[0] else data
    job_id = jobs.submit("finetune", {k: v for k, v in params.items() if v is not None})  # core checks them
    st.session_state.jobs_started = f"Started job {job_id}: fine-tune '{params['name']}'."


def _evaluate_form() -> None:
    sets = queries.datasets()
    benchmarks = sets.filter(sets["format"] == "benchmark")["name"].to_list()
    adapters = {m["name"]: m["adapter"] for m in finetune.list_models() if m["adapter"]}
    full_models = {f"{m['name']} (full fine-tune)": m["model"] for m in finetune.list_models() if m["model"]}
    default = defaults(evaluate.EvalOptions)
    with st.form("jobs_eval_form"):
        st.markdown("**Evaluate a model** on a benchmark: k answers per problem, ingested as a new dataset, "
                    "verified with math-verify (resumable)")
        if not benchmarks:
            st.caption("No benchmark in the store yet: ingest one on the Overview page with the format 'benchmark' "
                       "(e.g. gsm8k_test.jsonl, math500_test.jsonl).")
        c1, c2, c3 = st.columns(3)
        benchmark = c1.selectbox("Benchmark", benchmarks, index=None, key="jobs_eval_benchmark",
                                 placeholder="no benchmark dataset" if not benchmarks else "choose a benchmark")
        model = c2.text_input("Model", value=default["model"], key="jobs_eval_model")
        adapter = c3.selectbox("Fine-tuned model", [NO_ADAPTER, *adapters, *full_models], key="jobs_eval_adapter",
                               help="A fine-tune's adapter (data/models/<name>/adapter) on top of the model, or a full "
                                    "fine-tune (data/models/<name>/model) in its place.")
        c1, c2, c3, c4 = st.columns(4)
        problems = c1.number_input("Problems (the first N)", min_value=1, value=default["problems"], key="jobs_eval_problems")
        k = c2.number_input("k (samples per problem)", min_value=1, value=default["k"], key="jobs_eval_k",
                            help="k = 1 decodes greedily; k > 1 samples at temperature 0.7.")
        new_tokens = c3.number_input("Max new tokens", min_value=1, value=default["max_new_tokens"], step=64, key="jobs_eval_tokens",
                                     placeholder="the model's context",
                                     help=f"Empty: as long as the model's context allows, at most "
                                          f"{evaluate.LONG_COT_TOKENS:,} tokens, so long CoTs are not cut. The budget "
                                          "charts mark where answers hit it.")
        backend = c4.selectbox("Backend", list(generation.BACKENDS), index=generation.BACKENDS.index(default["backend"]),
                               key="jobs_eval_backend")
        estimate, measure, start, long_ok = _cost_buttons("jobs_eval", "Start evaluation")
    if not (estimate or measure or start):
        return
    params = {"benchmark": benchmark, "model": full_models.get(adapter) or model.strip() or None,
              "adapter": adapters.get(adapter), "problems": problems, "k": k, "max_new_tokens": new_tokens,
              "backend": backend}
    params = {k: v for k, v in params.items() if v is not None}
    cost = _cost("evaluate", params, lambda options: evaluate.estimate_cost(options), measure=measure, key="jobs_eval_cost")
    if start:
        generation.check_cost(cost, confirmed=long_ok)
        job_id = jobs.submit("evaluate", params)
        st.session_state.jobs_started = f"Started job {job_id}: evaluation of {params.get('model', default['model'])}" + (
            f" + {adapter}" if adapter != NO_ADAPTER else "") + f" on {benchmark}."
        st.session_state.pop("jobs_eval_cost", None)


def _start_forms() -> None:
    tabs = st.tabs(["Re-score with a judge", "Fine-tune", "Evaluate", "Tokens and verification", "Judge steps",
                    "Problems and steps"])
    for tab, form, cost_key in ((tabs[0], _score_form, "jobs_score_cost"), (tabs[1], _finetune_form, None),
                                (tabs[2], _evaluate_form, "jobs_eval_cost"), (tabs[3], _count_forms, None),
                                (tabs[4], _step_judge_form, "jobs_sj_cost"), (tabs[5], _stage_forms, None)):
        with tab, common.guard():  # a refused submission shows its reason and keeps the other forms
            form()
            if cost_key and st.session_state.get(cost_key):
                st.info(f"What this job will cost: {st.session_state[cost_key]}")


def _count_forms() -> None:
    left, right = st.columns(2)
    with left:
        options_form("tokens", fields=("tokenizer", "recount"), title="**Count tokens**", submit="Start token count")
    with right:
        options_form("verify", fields=(), title="**Verify answers**", submit="Start verification",
                     caption="Checks each CoT's final answer against its problem's reference answer with math-verify "
                             "(source 'math-verify'); CoTs already verified are skipped.")
    options_form("markers", fields=("markers",), title="**Reflection markers**", submit="Recount reflection markers",
                 caption="Recounts the CoTs counted with another marker set (an older store, or another file), each "
                         "occurrence once under its longest phrase, then publishes reflections per 1,000 tokens "
                         "(figure 'reflections_per_1k_tokens · reflection markers'). Resumable.")


# The problem and step stages: forms generated from their options (core.job_kinds), the fields
# a researcher sets; the rest keep their defaults (the command line takes every option).
STAGE_FORMS = (
    ("contamination", ("n", "min_overlap", "check_cots", "cot_min_overlap", "datasets"), "**Benchmark contamination**",
     "Check contamination", "Every problem of every non-benchmark dataset against every ingested benchmark (n-gram "
     "overlap and exact matches); only what is new since the last run is checked."),
    ("near_duplicates", ("threshold", "shingle", "num_perm"), "**Near-duplicate problems**", "Find near-duplicates",
     "MinHash/LSH clusters of problems within and across datasets; only new problems are sketched."),
    ("map", ("model", "device", "projection", "clusters", "max_problems", "project"), "**Map of the problems**",
     "Compute the map", "Embeds what is not embedded yet, then projects and clusters every problem (the Map page)."),
    ("keys", (), "**Question keys**", "Fill question keys",
     "Normalised question keys for problems ingested before keys existed (new ingests make their own)."),
    ("steps", ("unit", "datasets", "from_source", "source_name", "max_cots"), "**Steps inside CoTs**", "Split into steps",
     "Splits each CoT's thinking into steps with roles and micro-actions by the rule set; resumable."),
    ("step_labels", ("path", "dataset", "format", "source_name", "skip_bad", "dataset_name"), "**Step labels from a file**",
     "Ingest step labels", "A Thought Anchors, PRM800K or ProcessBench file on the server (under the ingest roots)."),
)


def _stage_forms() -> None:
    columns = st.columns(2)
    for i, (kind, fields, title, submit, caption) in enumerate(STAGE_FORMS):
        with columns[i % 2], common.guard():  # a refused value shows under its own form
            options_form(kind, fields=fields, title=title, submit=submit, caption=caption)


def _job_card(job: dict) -> None:
    state = job["state"]
    with st.container(border=True, key=f"jobs_card_{job['id']}"):  # the key also names it in the page (class st-key-...)
        head, buttons = st.columns([5, 1])
        head.markdown(f"{STATE_ICONS.get(state, '')} **Job {job['id']} · {job['kind']}** — {state}")
        params = {k: v for k, v in job["params"].items() if v not in (None, "", {}, [])}
        if params:
            head.text(", ".join(f"{k}={v}" for k, v in params.items()))
        fraction = jobs.fraction_done(job)
        text = jobs.progress_text(job)
        if fraction is not None:
            st.progress(fraction, text=text)
        else:
            st.caption(text)
        if state == "interrupted":
            st.warning("Its worker process stopped without finishing (killed, or the machine restarted). "
                       "Resume it: work already committed is kept.")
        if job["error"]:
            st.error(render.safe_markdown(job["error"]))  # it may quote the data (a bad row, a name)
        elif job["message"] and state in ("queued", "running"):
            st.caption(job["message"])
        if state in ("queued", "running", "interrupted"):
            if buttons.button("Cancel", key=f"jobs_cancel_{job['id']}", disabled=job["cancel_requested"] and state != "interrupted"):
                jobs.cancel(job["id"])
                st.rerun(scope="fragment")
        if state in jobs.RESUMABLE:
            if buttons.button("Resume", key=f"jobs_resume_{job['id']}"):
                jobs.resume(job["id"])
                st.rerun(scope="fragment")
        if job["cancel_requested"] and state in ("queued", "running"):
            st.caption("Cancelling: it stops within seconds (a generation at its next token, a training at the end "
                       "of its step); what it committed is kept.")
        _results(job)
        with st.expander("Log (last lines)"):
            st.code(job["log_tail"] or "(empty)", language=None)


def _results(job: dict) -> None:
    """What a model job made: the live loss curve and model card of a fine-tune, the accuracy
    of an evaluation, the new source of a re-scoring."""
    result = job["result"] or {}
    if job["kind"] == "finetune" and job["params"].get("name"):
        name = job["params"]["name"]
        losses = finetune.read_losses(name)
        if losses:
            st.plotly_chart(finetune.loss_figure(losses), key=f"jobs_loss_{job['id']}", width="stretch")
        if job["state"] == "done" and result:
            c1, c2, c3, c4 = st.columns(4)
            c1.metric("Steps", f"{result.get('steps', 0):,}")
            c2.metric("Training loss", f"{result['train_loss']:.4f}" if result.get("train_loss") is not None else "—")
            c3.metric("Examples", f"{result.get('examples', 0):,}")
            c4.metric("Minutes", f"{(result.get('seconds') or 0) / 60:.1f}")
            st.caption(f"{'Adapter' if result.get('adapter') else 'Model'}: {render.escape_inline(result.get('adapter') or result.get('model'))} · "
                       f"recipe: {render.escape_inline(result.get('recipe')) or '—'} · data sha256 {str(result.get('data_sha256'))[:12]}…"
                       + (f" · resumed from {render.escape_inline(str(result['resumed_from']))}" if result.get("resumed_from") else ""))
            lengths, loss = result.get("lengths") or {}, result.get("loss") or {}
            if lengths:
                st.caption(f"Max length {lengths['max_length']:,} tokens ({lengths['max_length_from']}); "
                           f"{lengths['over_max_length']:,} of {lengths['examples']:,} examples longer: "
                           f"{lengths['dropped']:,} dropped, {lengths['thinking_shortened']:,} with their thinking "
                           f"shortened (listed in the model card). Loss on {loss.get('what', '?')}.")
            with st.expander("Model card"):
                st.json({k: v for k, v in result.items() if k != "losses"}, expanded=False)
    elif job["kind"] == "evaluate" and job["state"] == "done" and result:
        c1, c2, c3, c4 = st.columns(4)
        accuracy = result.get("accuracy")
        c1.metric("Accuracy (math-verify)", f"{accuracy:.1f} %" if accuracy is not None else "—")
        c2.metric("Problems × k", f"{result.get('problems', 0):,} × {result.get('k', 1)}")
        c3.metric("Max new tokens", f"{result.get('max_new_tokens', 0):,}")
        c4.metric("Generation (s)", f"{result.get('generation_seconds') or 0:.0f}")
        st.caption(f"Model '{render.escape_inline(result.get('model'))}', now the dataset '{render.escape_inline(result.get('dataset'))}': compare it with other "
                   "models on the Distributions page (filter by dataset or model).")
    elif job["kind"] == "judge-steps" and job["state"] == "done" and result:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("CoTs judged", f"{result.get('judged', 0):,}", help="By this run; CoTs an earlier run committed are not judged again.")
        c2.metric("Steps", f"{result.get('steps', 0):,}")
        c3.metric("With a wrong step", f"{result.get('first_errors_found', 0):,}")
        c4.metric("Unreadable answers", f"{result.get('first_error_missing', 0) + result.get('roles_missing', 0):,}",
                  help="First-error answers that could not be read plus steps given no role; raw output kept with the reason.")
        st.caption(f"Step source '{result.get('source')}' (figures under '{result.get('figures_source')}'): read it in the "
                   "Reader's step view, compare it with another step source on Agreement, filter on its figures in the sidebar.")
    elif job["kind"] == "score" and job["state"] == "done" and result:
        c1, c2, c3, c4, c5 = st.columns(5)
        c1.metric("Scores written", f"{result.get('scored', 0):,}",
                  help="(CoT, metric) pairs judged by this run; pairs an earlier run of the job committed are not counted again.")
        c2.metric("With a value", f"{result.get('with_value', 0):,}")
        c3.metric("Without a usable value", f"{result.get('errors', 0):,}",
                  help="The judge's answer had no parseable score; its raw text is kept with the reason.")
        max_chars = (result.get("params") or {}).get("max_chars")
        c4.metric("CoTs clipped", f"{result.get('clipped_cots', 0):,} of {result.get('cots', 0):,}",
                  help=judge.clip_description(max_chars)[0].upper() + judge.clip_description(max_chars)[1:] + ".")
        c5.metric("Judging (s)", f"{result.get('seconds') or 0:.0f}")
        st.caption(f"Score source '{render.escape_inline(result.get('source'))}': {result.get('scored', 0):,} (CoT, metric) pairs judged now, "
                   f"{result.get('already_done', 0):,} before, {result.get('errors', 0):,} without a usable value"
                   + (f", {result['fused']:,} fused RV values" if result.get("fused") is not None else "")
                   + ". Compare it with other sources on the Agreement page.")


def _evaluation_table() -> None:
    """Every finished evaluation side by side: the comparison of base and tuned models."""
    table = jobs.list_jobs(limit=None)
    done = table.filter((table["kind"] == "evaluate") & (table["state"] == "done"))["id"].to_list()
    rows = []
    for job_id in done:
        result = jobs.get(job_id)["result"] or {}
        rows.append({"job": job_id, "model": result.get("model"), "benchmark": result.get("benchmark"),
                     "problems": result.get("problems"), "k": result.get("k"),
                     "max_new_tokens": result.get("max_new_tokens"), "accuracy %": result.get("accuracy"),
                     "dataset": result.get("dataset")})
    if rows:
        st.subheader(f"Evaluations ({len(rows)})")
        st.dataframe(rows, hide_index=True, key="jobs_evaluations")


@st.fragment(run_every="2s")
def _job_list() -> None:
    """Re-reads the job table every 2 s, so progress moves without a page rerun."""
    with common.guard():
        table = jobs.list_jobs(limit=None)
        if table.height == 0:
            st.info("No jobs yet. Start one above, or ingest a dataset on the Overview page.")
            return
        active = table.filter(table["state"].is_in(["queued", "running", "interrupted"]))["id"].to_list()
        recent = [i for i in table["id"].to_list() if i not in active][:SHOWN_FINISHED]
        st.subheader(f"Running and interrupted ({len(active)})" if active else "No job running")
        for job_id in active:
            _job_card(jobs.get(job_id))
        if recent:
            st.subheader("Recently finished")
            for job_id in recent:
                _job_card(jobs.get(job_id))
        _evaluation_table()
        st.subheader(f"All jobs ({table.height:,})")
        st.dataframe(
            table.drop("pid"), hide_index=True, key="jobs_table",
            column_config={
                "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                "throughput": st.column_config.NumberColumn("per second", format="%.1f"),
                "eta_s": st.column_config.NumberColumn("ETA (s)", format="%.0f"),
            },
        )


st.title("Jobs")
st.caption("Long work runs in its own worker process, outside the app: closing the browser or "
           "restarting the app does not stop it. Progress is kept in data/jobs.sqlite; each job's "
           "full log is in data/jobs/<id>.log.")
with common.guard():
    if refusal := access.job_refusal():  # read-only server, or not one of the job users
        st.info(refusal)
    with st.expander("Start a job", expanded=False):
        _start_forms()
    if "jobs_started" in st.session_state:
        st.success(st.session_state.pop("jobs_started"))
_job_list()

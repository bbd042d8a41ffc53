"""The step stage: every CoT's step text split into steps, each step's role and micro-actions by
the rule set, and its token count; then the per-CoT figures the filters read.

    python -m core split-steps [--unit sentence|paragraph] [--rules FILE] [--dataset NAME]
                               [--from-source SOURCE] [--source-name NAME]

What is stored, and why (README "Steps" has the measurements): one row per step in ``steps``
(offsets, tokens, role, micro-actions: no text, which is a slice of the CoT's) and the per-CoT
figures in ``scores`` under the step source. Dataset-level step statistics are sums over the
per-CoT figures or one scan of ``steps``, both of which DuckDB answers in seconds at 10M steps;
what changes with the rule set (roles) is cheap to recompute, so a new rule file is a new step
source beside the old, not an update.

Resumable: the CoTs of one batch (steps and figures) are committed in one transaction, and a
CoT counts as done once its ``n_steps`` figure is in; a killed run starts at the first CoT not
done. ``--from-source S`` labels another step source's steps (a dataset's, e.g. Thought
Anchors') with the rules instead of splitting the text again, so the two can be compared step
for step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from core import steps as steps_mod
from core import store
from core.errors import UserError
from core.options import option
from core.steps import ROLES, STEP_TEXT_SQL

ProgressFn = Callable[[str, int, int | None], None]

BATCH_COTS = 2000
BATCH_CHARS = 16_000_000  # a batch holds about this much text at most (memory stays bounded)
SOURCE_PREFIX = "step rules"

STEP_SCHEMA = pa.schema([
    ("cot_id", pa.int64()), ("step_idx", pa.int32()), ("char_start", pa.int32()), ("char_end", pa.int32()),
    ("n_tokens", pa.int32()), ("role", pa.string()), ("micro_actions", pa.list_(pa.string())), ("wrong", pa.bool_()),
])


@dataclass
class StepOptions:
    """What the step stage does (``python -m core split-steps``, job kind ``steps``).
    ``source_name`` defaults to 'step rules (<unit>)', or 'step rules on <source>' with
    ``from_source``; a rules file other than the bundled one adds its hash's first 8 characters."""

    unit: str = option("sentence", choices=steps_mod.UNITS, help="a step is a sentence or a paragraph")
    rules: str | None = option(None, help="role rules YAML (default core/step_roles.yaml)")
    tokenizer: str | None = option(None, help="tokenizer for step token counts (default: the offline SmolLM2 one)")
    datasets: tuple[str, ...] = option((), flag="--dataset", help="only these datasets (default: every ready dataset)")
    from_source: str | None = option(None, help="label this step source's steps instead of splitting the text")
    source_name: str | None = option(None, help="the step source to write (default 'step rules (<unit>)')")
    batch_cots: int = option(BATCH_COTS, help="CoTs per committed batch at most")
    max_cots: int | None = option(None, help="only the first N CoTs still to do (by id), for a quick look")

    def __post_init__(self):
        if self.unit not in steps_mod.UNITS:
            raise UserError(f"unknown step unit '{self.unit}': use one of {', '.join(steps_mod.UNITS)}")
        if self.batch_cots < 1 or (self.max_cots is not None and self.max_cots < 0):
            raise UserError("batch cots must be at least 1 and max cots not negative.")
        self.datasets = tuple(self.datasets)


@dataclass
class StepRunResult:
    source: str
    cots: int = 0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    remaining: int = 0
    cancelled: bool = False
    roles: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------- figures

FIGURE_METRICS = (
    "n_steps", "mean_step_tokens", "mean_step_chars", "n_self_checks",
    *(f"share_{role}" for role in ROLES),
    "has_error", "first_error_step", "first_error_frac", "first_error_before_answer",
)


def action_metric(name: str) -> str:
    return f"n_action_{name}"


def _figures_select(action_names: list[str]) -> str:
    """Per-CoT figures of one source's steps, one wide row per CoT of ``figure_cots`` (a table
    of cot_id), for UNPIVOT into scores. Shares are of tokens (characters where a CoT's steps
    have no token count). NULL figures are not written (a source without roles gets no
    shares, one without verdicts no error figures)."""
    weight = "coalesce(s.n_tokens, s.char_end - s.char_start)"
    shares = ",\n".join(
        f"CASE WHEN count(s.role) > 0 THEN coalesce(sum({weight}) FILTER (WHERE s.role = '{role}'), 0) "
        f"/ nullif(sum({weight}), 0) END::DOUBLE AS share_{role}"
        for role in ROLES
    )
    actions = "".join(
        f",\n count(*) FILTER (WHERE list_contains(s.micro_actions, '{name}'))::DOUBLE AS {action_metric(name)}"
        for name in action_names
    )
    return f"""
        SELECT f.cot_id,
            count(s.step_idx)::DOUBLE AS n_steps,
            avg(s.n_tokens)::DOUBLE AS mean_step_tokens,
            avg(s.char_end - s.char_start)::DOUBLE AS mean_step_chars,
            CASE WHEN count(s.role) > 0 THEN count(*) FILTER (WHERE s.role = 'self_checking') END::DOUBLE AS n_self_checks,
            {shares},
            CASE WHEN count(s.wrong) > 0 THEN bool_or(s.wrong)::DOUBLE END AS has_error,
            min(s.step_idx) FILTER (WHERE s.wrong)::DOUBLE AS first_error_step,
            (min(s.char_start) FILTER (WHERE s.wrong) / nullif(max(s.char_end), 0))::DOUBLE AS first_error_frac,
            CASE WHEN bool_or(s.wrong) THEN (min(s.step_idx) FILTER (WHERE s.wrong)
                 < coalesce(min(s.step_idx) FILTER (WHERE s.role = 'final_answer_emission'), max(s.step_idx)))::DOUBLE
            END AS first_error_before_answer{actions}
        FROM figure_cots f LEFT JOIN steps s ON s.cot_id = f.cot_id AND s.source_id = ?
        GROUP BY f.cot_id
    """


def write_figures(con, steps_source_id: int, figures_source_id: int, cot_ids: list[int],
                  action_names: list[str] = ()) -> int:
    """(Re)write the per-CoT figures of ``cot_ids`` from ``steps_source_id``'s steps as scores
    under ``figures_source_id``, inside the caller's transaction; returns the rows written.

    ``first_error_before_answer``: the first wrong step comes before the step that emits the
    final answer (the source's first final_answer_emission step, else its last step)."""
    if not cot_ids:
        return 0
    con.register("figure_cot_ids", pa.table({"cot_id": pa.array(cot_ids, pa.int64())}))
    con.execute("CREATE OR REPLACE TEMP TABLE figure_cots AS SELECT DISTINCT cot_id FROM figure_cot_ids")
    con.unregister("figure_cot_ids")
    names = [*FIGURE_METRICS, *(action_metric(a) for a in action_names)]
    metric_list = ", ".join(f"'{m}'" for m in names)
    con.execute(
        f"DELETE FROM scores WHERE source_id = ? AND metric IN ({metric_list}) "
        "AND cot_id IN (SELECT cot_id FROM figure_cots)", [figures_source_id],
    )
    select = _figures_select(list(action_names))
    params = [steps_source_id]
    before = con.execute("SELECT count(*) FROM scores WHERE source_id = ?", [figures_source_id]).fetchone()[0]
    con.execute(
        f"INSERT INTO scores (cot_id, source_id, metric, value) "
        f"SELECT cot_id, {int(figures_source_id)}, metric, value FROM "
        f"(UNPIVOT ({select}) ON {', '.join(names)} INTO NAME metric VALUE value)",
        params,
    )
    after = con.execute("SELECT count(*) FROM scores WHERE source_id = ?", [figures_source_id]).fetchone()[0]
    con.execute("DROP TABLE figure_cots")
    return after - before


def figures_source_name(step_source: str, kind: str) -> str:
    """Where a step source's per-CoT figures go: the source itself when it is a stage (the
    rule set), else '<name> (step figures)', a stage source of its own."""
    return step_source if kind == "stage" else f"{step_source} (step figures)"


def insert_steps(con, source_id: int, table: pa.Table) -> None:
    """Append step rows (STEP_SCHEMA) under ``source_id`` inside the caller's transaction."""
    con.register("step_batch", table)
    con.execute(
        "INSERT INTO steps (cot_id, source_id, step_idx, char_start, char_end, n_tokens, role, micro_actions, wrong) "
        "SELECT cot_id, ?, step_idx, char_start, char_end, n_tokens, role, micro_actions, wrong FROM step_batch",
        [source_id],
    )
    con.unregister("step_batch")


# ---------------------------------------------------------------------------------- the stage


def _source_params(opts: StepOptions, rules: steps_mod.RoleRules, tokenizer: str) -> dict:
    return {
        "stage": "step rules", "unit": None if opts.from_source else opts.unit, "from_source": opts.from_source,
        "rules_sha256": rules.sha256, "rules_file": rules.path if rules.path != str(steps_mod.DEFAULT_RULES_PATH) else None,
        "tokenizer": None if opts.from_source else tokenizer, "micro_actions": list(rules.micro_actions),
    }


def default_source_name(opts: StepOptions, rules: steps_mod.RoleRules) -> str:
    base = f"{SOURCE_PREFIX} on {opts.from_source}" if opts.from_source else f"{SOURCE_PREFIX} ({opts.unit})"
    if rules.path != str(steps_mod.DEFAULT_RULES_PATH.resolve()):
        base += f" [{rules.sha256[:8]}]"
    return base


def _claim_source(db, name: str, params: dict) -> int:
    """The stage's source id: created, or an existing one made with the same settings."""
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        row = con.execute("SELECT source_id, kind, params FROM score_sources WHERE name = ?", [name]).fetchone()
        if row is not None:
            con.execute("ROLLBACK")
            source_id, kind, stored = row
            if kind != "stage" or json.loads(stored or "{}") != params:
                raise ValueError(
                    f"The score source '{name}' exists with other settings ({stored}); give the new run another "
                    "source name (--source-name), or use the same unit, rules file and tokenizer to resume it."
                )
            return source_id
        source_id = store.ensure_source(con, name, "stage", model=None, params=json.dumps(params))
        con.execute("COMMIT")
    return source_id


def _scope_sql(opts: StepOptions, db) -> tuple[str, list]:
    """CoT ids in scope (ready datasets, the chosen ones), with the step source to copy from."""
    where, params = ["d.status = 'ready'"], []
    if opts.datasets:
        where.append(f"d.name IN ({', '.join('?' * len(opts.datasets))})")
        params.extend(opts.datasets)
    sql = f"SELECT c.cot_id FROM cots c JOIN datasets d ON d.dataset_id = c.dataset_id WHERE {' AND '.join(where)}"
    if opts.from_source:
        sql += (" AND c.cot_id IN (SELECT st.cot_id FROM steps st JOIN score_sources ss USING (source_id) "
                "WHERE ss.name = ?)")
        params.append(opts.from_source)
    return sql, params


def _todo(db, opts: StepOptions, source_id: int) -> list[int]:
    scope, params = _scope_sql(opts, db)
    rows = store.read_rows(
        f"SELECT cot_id FROM ({scope}) WHERE cot_id NOT IN "
        "(SELECT cot_id FROM scores WHERE source_id = ? AND metric = 'n_steps') ORDER BY cot_id",
        [*params, source_id], db=db,
    )
    return [r[0] for r in rows]


def _read_batch(db, ids: list[int], from_source_id: int | None) -> tuple[list[str], dict[int, list[tuple]]]:
    with store.connect(db, read_only=True) as con:
        con.register("batch_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        texts = dict(con.execute(
            f"SELECT c.cot_id, {STEP_TEXT_SQL} FROM cots c JOIN batch_ids b USING (cot_id)"
        ).fetchall())
        given: dict[int, list[tuple]] = {}
        if from_source_id is not None:
            for cot_id, a, b, n in con.execute(
                "SELECT s.cot_id, s.char_start, s.char_end, s.n_tokens FROM steps s JOIN batch_ids b USING (cot_id) "
                "WHERE s.source_id = ? ORDER BY s.cot_id, s.step_idx", [from_source_id],
            ).fetchall():
                given.setdefault(cot_id, []).append((a, b, n))
        con.unregister("batch_ids")
    return [texts.get(i) or "" for i in ids], given


def _batches(db, todo: list[int], batch_cots: int) -> list[list[int]]:
    """The todo ids cut into batches of at most ``batch_cots`` CoTs and about BATCH_CHARS."""
    if not todo:
        return []
    lengths = {}
    with store.connect(db, read_only=True) as con:
        con.register("todo_ids", pa.table({"cot_id": pa.array(todo, pa.int64())}))
        lengths = dict(con.execute(
            f"SELECT c.cot_id, length({STEP_TEXT_SQL}) FROM cots c JOIN todo_ids USING (cot_id)"
        ).fetchall())
        con.unregister("todo_ids")
    batches, current, chars = [], [], 0
    for cot_id in todo:
        n = lengths.get(cot_id) or 0
        if current and (len(current) >= batch_cots or chars + n > BATCH_CHARS):
            batches.append(current)
            current, chars = [], 0
        current.append(cot_id)
        chars += n
    if current:
        batches.append(current)
    return batches


def label_batch(texts: list[str], rules: steps_mod.RoleRules, unit: str, tokenizer,
                given: list[list[tuple]] | None = None) -> list[dict]:
    """Steps of each text: spans (split, or ``given`` as (start, end, n_tokens)), roles,
    micro-actions and token counts. Pure: the bench and the tests call it directly."""
    if given is None:
        spans_of = [steps_mod.split_spans(t, unit) for t in texts]
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False) if tokenizer is not None else [None] * len(texts)
        counts_of = [steps_mod.span_token_counts(e, s) if e is not None else [None] * len(s)
                     for e, s in zip(encodings, spans_of)]
    else:
        spans_of = [[(a, b) for a, b, _ in g] for g in given]
        counts_of = [[n for _, _, n in g] for g in given]
    out = []
    for text, spans, counts in zip(texts, spans_of, counts_of):
        roles, actions = rules.label(text, spans)
        out.append({"spans": spans, "roles": roles, "actions": actions, "tokens": counts})
    return out


def _step_table(ids: list[int], labelled: list[dict]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in STEP_SCHEMA.names}
    for cot_id, item in zip(ids, labelled):
        for k, ((a, b), role, acts, n) in enumerate(zip(item["spans"], item["roles"], item["actions"], item["tokens"])):
            cols["cot_id"].append(cot_id)
            cols["step_idx"].append(k)
            cols["char_start"].append(a)
            cols["char_end"].append(b)
            cols["n_tokens"].append(n)
            cols["role"].append(role)
            cols["micro_actions"].append(acts or None)
            cols["wrong"].append(None)
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in STEP_SCHEMA], schema=STEP_SCHEMA)


def run_steps(db=None, options: StepOptions | None = None, progress: ProgressFn | None = None,
              cancelled: Callable[[], bool] | None = None) -> dict:
    """Split, label and count the steps of every CoT in scope that the source has not done yet;
    returns a StepRunResult as a dict."""
    from core.tokens import DEFAULT_TOKENIZER, load_tokenizer

    opts = options or StepOptions()
    rules = steps_mod.RoleRules.load(opts.rules)
    tokenizer_name = opts.tokenizer or DEFAULT_TOKENIZER
    name = opts.source_name or default_source_name(opts, rules)
    started = time.perf_counter()
    store.init_store(db)
    from_source_id = None
    if opts.from_source:
        row = store.read_rows("SELECT source_id FROM score_sources WHERE name = ?", [opts.from_source], db=db)
        if not row:
            raise UserError(f"There is no step source '{opts.from_source}' in the store to take steps from.")
        from_source_id = row[0][0]
    known = {r[0] for r in store.read_rows("SELECT name FROM datasets WHERE status = 'ready'", db=db)}
    missing = [d for d in opts.datasets if d not in known]
    if missing:
        raise UserError(f"No ready dataset named {', '.join(repr(m) for m in missing)}; the datasets are {', '.join(sorted(known)) or 'none'}.")
    source_id = _claim_source(db, name, _source_params(opts, rules, tokenizer_name))
    todo = _todo(db, opts, source_id)
    result = StepRunResult(source=name)
    if opts.max_cots is not None:
        todo = todo[: int(opts.max_cots)]
    total = len(todo)
    if total == 0:
        result.seconds = time.perf_counter() - started
        return result.as_dict()
    tokenizer = None
    if from_source_id is None:
        tokenizer = load_tokenizer(tokenizer_name)
        tokenizer.no_truncation()
        tokenizer.no_padding()
    action_names = list(rules.micro_actions)
    if progress:
        progress("steps", 0, total)
    for ids in _batches(db, todo, max(1, int(opts.batch_cots))):
        if cancelled is not None and cancelled():
            result.cancelled = True
            break
        texts, given = _read_batch(db, ids, from_source_id)
        labelled = label_batch(texts, rules, opts.unit, tokenizer,
                               [given.get(i, []) for i in ids] if from_source_id is not None else None)
        table = _step_table(ids, labelled)
        with store.connect(db, read_only=False) as con:
            con.execute("BEGIN")
            insert_steps(con, source_id, table)
            write_figures(con, source_id, source_id, ids, action_names)
            con.execute("COMMIT")
        result.cots += len(ids)
        result.steps += table.num_rows
        result.tokens += sum(n or 0 for item in labelled for n in item["tokens"])
        for item in labelled:
            for role in item["roles"]:
                result.roles[role] = result.roles.get(role, 0) + 1
        if progress:
            progress("steps", result.cots, total)
    result.remaining = total - result.cots
    result.seconds = time.perf_counter() - started
    return result.as_dict()


def steps_job(opts: StepOptions, ctx) -> dict:
    """Job kind 'steps' (and ``python -m core split-steps``): run_steps, resumable."""
    from core.progress import JobCancelled

    ctx.log(f"splitting and labelling steps ({opts.from_source or opts.unit}) into "
            f"'{opts.source_name or 'the default step rules source'}'")
    result = run_steps(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled)
    if result["cancelled"]:
        raise JobCancelled()
    ctx.log(f"{result['cots']:,} CoTs, {result['steps']:,} steps into '{result['source']}'")
    return result

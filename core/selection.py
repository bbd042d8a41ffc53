"""Selection: which of the CoTs a base filter matches are kept for training.

A :class:`Selection` is

* a base :class:`~core.queries.CotFilter`: the *pool* (the sidebar's filter);
* ``conditions``: any number of :class:`core.figures.Condition` on any figure (a CoT column,
  any (source, metric) of ``scores`` or ``problem_scores``: a judge's ``logic``, a stage's
  pass rate or overthinking tail, ...). They are applied first, inside the pool: a CoT that
  fails one is dropped with that condition's own reason ("no logic · judge X", "logic · judge X
  below 1"), counted in the report's reasons like any other;
* one *rule* that decides kept vs dropped among the CoTs that pass the conditions;
* the score sources its RV, CD and correctness come from, and a seed.

The rules:

* :class:`Thresholds` -- RV range, CD range, token range, correctness required. EasyDistill's
  ThoughtX recipe is 3 <= RV <= 5, one CD level, and the judge's logical correctness = 1: a
  Thresholds rule plus the condition ``Condition(Figure("logic", judge_source), lo=1)``;
* :class:`CapacityMatched` -- after the OmniThought paper's selection, *in this project's
  reconstruction*: the paper says only that CoTs with CD at or below the student's capacity are
  equally likely, that the probability falls as CD exceeds it, and that a |CD - RV| mismatch is
  penalised; its formula is not readable in any source we have. Here per problem ``k`` CoTs
  are drawn with weight ``w = exp(-lambda * max(0, CD - C) - beta * |CD - RV|)`` (the
  exponential form and lambda are ours) without replacement, weights relative within the
  problem; or, with ``weights="absolute"``, each CoT is accepted with probability ``w`` on its
  own, so a problem whose CoTs all lie far above C can give none;
* :class:`RvCdMix` -- EasyDistill 2.0's RV/CD mixer (``CoTRVCDMixer``, the one published
  recipe whose code can be checked), reimplemented from its documented behaviour: CD binned at
  edges [0, 3, 6, 10], an RV target per bin (``matched``: rising with the bin), and in each bin
  the CoTs closest to the target, at most ``samples_per_bin`` of them, among the logically
  correct ones;
* :class:`PerProblem` -- shortest correct CoT, top-k by a score, or every correct CoT;
* :class:`TargetSize` -- about N CoTs, split across models (or datasets) in the pool's
  proportions, keeping within each group the shortest correct or the best by a score;
* :class:`PerCluster` -- across clusters of problems (near-duplicate clusters, map clusters):
  one problem per near-duplicate cluster, at most m problems or CoTs per cluster, or a target
  size spread over clusters in proportion or uniformly.

A rule's ``score`` (:class:`Score`) may be any figure: a CoT column, a (source, metric) of
``scores``, or of ``problem_scores`` (``Score("pass_rate", "difficulty", level="problem")``).

Everything runs in DuckDB SQL over the *pool* (ids and numbers of the matching CoTs, never
their text; no Python loop over rows): :func:`decide` gives one row per pool CoT with ``kept``
and, for a dropped one, the ``reason``; :func:`summarize` turns that into counts and shares per
model, dataset and CD level, drop reasons and slider histograms. Sampling is reproducible
across runs, machines, DuckDB versions *and stores*: each CoT's uniform number is plain integer
arithmetic on the seed and the CoT's *content identity* (:func:`draw_key`: an MD5 of its
dataset's content hash, its problem's own key, its model and its sample index), not on its
``cot_id``, which depends on the order datasets entered the store; so the same file and seed
select the same CoTs in any store (see :func:`uniform`). Recipes saved before this (format
versions 1 and 2) keep drawing on ``cot_id`` (``Selection.draw = "cot_id"``), so they keep
their CoTs.

    >>> from core.queries import CotFilter
    >>> from core.figures import Condition, Figure
    >>> sources = default_score_sources()
    >>> logic = Condition(Figure("logic", "judge qwen7b"), lo=1)
    >>> sel = Selection(CotFilter(), CapacityMatched.preset("7B"), sources, seed=0, conditions=(logic,))
    >>> report = evaluate(sel)          # counts per model, dataset, CD level; reasons; histograms
    >>> ids = kept_ids(sel)             # polars Series of cot_id, ascending

For an interactive page, read the pool once (``pool = load_pool(sel)``, a LoadedPool) and pass
it to ``decide``/``evaluate``/``kept_ids``/``dropped_page``: they then run in memory and never
touch the store. A Thresholds rule's report then comes from the pool's index without deciding
every CoT (milliseconds at 2M CoTs; bench/bench_select.py). The pool holds every figure the
conditions and the score use, read in the same one pass over ``scores`` as RV, CD and
correctness; moving a condition's bounds does not re-read it (see :func:`pool_key`).

Adding a rule
-------------
1. A frozen dataclass with ``mode: ClassVar[str]`` (its name in recipes) and its parameters,
   validated in ``__post_init__`` with a sentence a researcher can act on. If it ranks by a
   figure, give it a ``score: Score | None`` field: the pool then carries that figure as the
   ``score`` column, whatever its level or source.
2. Its SQL step, ``_add_<name>(chain, rule, sel, con)``: CTEs over the relation ``pool`` (one
   row per CoT that passed the conditions, POOL_COLUMNS plus the condition figures) ending in
   one named ``decision`` with every column of ``pool`` plus ``weight`` (DOUBLE or NULL),
   ``kept`` (BOOLEAN) and ``reason`` (why a dropped CoT was dropped; NULL when kept). Use
   ``chain.add(name, sql, params)``; ``_add_ranked`` does "keep the first k of each partition".
3. One entry in ``RULES`` and in ``_STEPS``; widgets on pages/select.py. A rule that draws at
   random also goes in ``DRAWING_RULES``: its pool then carries ``draw_id`` (the content key,
   or cot_id for old recipes) and ``_uniform_sql(sel.seed)`` gives each CoT its uniform.
4. Its params are type-checked from their annotations when a hand-written recipe is read
   (core/recipes.py): annotate each field with the type it takes, and list them in the
   recipes module docstring.

Conditions, reasons, reports, recipes (``rule_as_dict``) and the export manifest then work
for it with nothing else to write.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import duckdb
import polars as pl

from core import queries, store
from core.errors import UserError
from core.render import inert_figure
from core.figures import COT_COLUMNS, Condition, Figure, passes_sql, reason_sql
from core.label_store import is_human_source
from core.queries import CotFilter

# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ScoreSources:
    """Where the selection reads RV, CD and correctness: for each metric, score sources in
    priority order; a CoT takes its value from the first listed source that scored it (the
    OmniThought labels split RV/CD over one source per judge, so one metric may need several).
    An empty tuple means the metric is not used (its column is NULL)."""

    rv: tuple[str, ...] = ()
    cd: tuple[str, ...] = ()
    correct: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreSources:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"unknown score metric(s) {sorted(unknown)}; expected rv, cd, correct")
        return cls(**{k: tuple(str(v) for v in data.get(k) or ()) for k in ("rv", "cd", "correct")})


def default_score_sources(*, db=None) -> ScoreSources:
    """Every source that gave each metric, in the order they entered the store (dataset
    labels first, later judges and verifiers after; people's labels never: a selection reads
    them only when it names them). Correctness lists each dataset's own sources first (its labels, then math-verify: queries.own_correctness_sources), then any
    other source that gave it, so a CoT takes its dataset's own verdict, as the sidebar does."""
    own = queries.own_correctness_sources(db=db)
    correct = (*own, *(s for s in queries.sources("correct", db=db) if s not in own))
    # people's labels (core/labels.py) are read only when a selection names them
    machine = {m: tuple(s for s in names if not is_human_source(s))
               for m, names in (("rv", queries.sources("rv", db=db)), ("cd", queries.sources("cd", db=db)), ("correct", correct))}
    return ScoreSources(machine["rv"], machine["cd"], machine["correct"])


# Per-CoT numeric columns a rule may rank by without a score source.
COLUMN_SCORES = tuple(COT_COLUMNS)


@dataclass(frozen=True)
class Score:
    """What to rank by: any figure (core.figures): ``metric`` from score source ``source`` at
    ``level`` 'cot' (scores) or 'problem' (problem_scores: every CoT of a problem ranks by its
    problem's value), or, with ``source`` None, a per-CoT column (one of COLUMN_SCORES)."""

    metric: str
    source: str | None = None
    higher_is_better: bool = True
    level: str = "cot"

    def __post_init__(self):
        if self.source is None and self.metric not in COLUMN_SCORES:
            raise UserError(
                f"'{self.metric}' needs a score source; without one, rank by {', '.join(COLUMN_SCORES)}"
            )
        Figure(self.metric, self.source, self.level)  # raises FigureError for an unknown level

    @property
    def figure(self) -> Figure:
        return Figure(self.metric, self.source, self.level)

    def label(self) -> str:
        where = f" ({self.source}{', per problem' if self.level == 'problem' else ''})" if self.source else ""
        return f"{self.metric}{where}, {'highest' if self.higher_is_better else 'lowest'} first"


def _range(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _int_range(value) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Thresholds:
    """Keep CoTs inside every given range (bounds included) and, if asked, verified correct.
    A CoT without the score a range needs is dropped."""

    mode: ClassVar[str] = "thresholds"
    rv_range: tuple[float, float] | None = None
    cd_range: tuple[float, float] | None = None
    tokens_range: tuple[int, int] | None = None
    require_correct: bool = False

    def __post_init__(self):
        object.__setattr__(self, "rv_range", _range(self.rv_range))
        object.__setattr__(self, "cd_range", _range(self.cd_range))
        object.__setattr__(self, "tokens_range", _int_range(self.tokens_range))


# Student capacity presets. The paper reports the CD centre that trained each student best (5 for
# Qwen2.5-7B-Instruct, 7 for Qwen2.5-32B-Instruct; beta = 0.5); this project uses that centre as
# the capacity C, the CD above which the weight falls. That use is ours, not the paper's.
CAPACITY_PRESETS: dict[str, float] = {"7B": 5.0, "32B": 7.0}

# This project's reconstruction of the paper's capacity-matched weight (the paper's own formula
# is an image no source reproduces): the exponential form and lambda are ours.
CAPACITY_FORMULA = (
    r"w_i = \exp\!\Big(-\lambda\,\max\big(0,\ \mathrm{CD}_i - C\big)"
    r" \;-\; \beta\,\big|\mathrm{CD}_i - \mathrm{RV}_i\big|\Big),"
    r"\qquad \text{keep the } k \text{ CoTs of each problem with the largest } u_i^{1/w_i}"
)
CAPACITY_FORMULA_ABSOLUTE = (
    r"w_i = \exp\!\Big(-\lambda\,\max\big(0,\ \mathrm{CD}_i - C\big)"
    r" \;-\; \beta\,\big|\mathrm{CD}_i - \mathrm{RV}_i\big|\Big),"
    r"\qquad \text{accept CoT } i \text{ if } u_i < w_i \text{; keep at most } k \text{ accepted per problem}"
)
CAPACITY_WEIGHTS = ("relative", "absolute")


@dataclass(frozen=True)
class CapacityMatched:
    """Capacity-matched selection after the OmniThought paper, in this project's
    reconstruction (CAPACITY_FORMULA; the paper's formula is not public): every CoT with
    CD <= C weighs the same apart from the RV/CD mismatch penalty, and the weight falls by
    exp(-lambda) per CD level above C.

    ``weights`` says how ``w`` is read:

    * ``"relative"`` (default): weights are relative within a problem. Per problem, ``k`` CoTs
      are drawn without replacement with probability proportional to ``w`` (Efraimidis-Spirakis
      keys u^(1/w)), so a problem gives min(k, candidates) CoTs however far above C they all
      lie;
    * ``"absolute"``: ``w`` (at most 1) is each CoT's own acceptance probability: a CoT is
      accepted when its uniform u < w, and at most ``k`` accepted CoTs of a problem are kept
      (uniformly at random among them, by a second uniform). A problem whose CoTs all lie far
      above C can give none.

    u is uniform per (seed, the CoT's content identity: draw_key). CoTs without RV or CD (or,
    if required, not verified correct) are not candidates."""

    mode: ClassVar[str] = "capacity"
    capacity: float = 5.0
    lam: float = 1.0
    beta: float = 0.5
    k: int = 1
    require_correct: bool = False
    weights: str = "relative"

    def __post_init__(self):
        if self.k < 1:
            raise UserError("k (CoTs kept per problem) must be at least 1")
        if self.lam < 0 or self.beta < 0:
            raise UserError("lambda and beta must not be negative")
        if self.weights not in CAPACITY_WEIGHTS:
            raise UserError(f"weights are 'relative' (within a problem) or 'absolute' (per CoT), not {self.weights!r}")
        for name in ("capacity", "lam", "beta"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def preset(cls, student: str, **changes) -> CapacityMatched:
        """The capacity preset for a student size: C = the CD centre the paper found best for it
        ('7B' -> 5, '32B' -> 7), used here as the capacity; beta 0.5 as in the paper."""
        if student not in CAPACITY_PRESETS:
            raise UserError(f"no capacity preset for '{student}'; choose {', '.join(CAPACITY_PRESETS)}")
        return cls(capacity=CAPACITY_PRESETS[student], beta=0.5, **changes)


PER_PROBLEM_RULES = ("shortest_correct", "top_k", "all_correct")


@dataclass(frozen=True)
class PerProblem:
    """Per problem: the ``k`` shortest correct CoTs (tokens, then characters), the ``k`` best by
    ``score`` (optionally among correct ones only), or every correct CoT."""

    mode: ClassVar[str] = "per_problem"
    rule: str = "shortest_correct"
    k: int = 1
    score: Score | None = None
    require_correct: bool = False  # top_k only; the other rules need correctness by definition

    def __post_init__(self):
        if self.rule not in PER_PROBLEM_RULES:
            raise UserError(f"unknown per-problem rule '{self.rule}'; choose {', '.join(PER_PROBLEM_RULES)}")
        if self.rule == "top_k" and self.score is None:
            raise UserError("top-k per problem needs a score to rank by")
        if self.k < 1:
            raise UserError("k (CoTs kept per problem) must be at least 1")


TARGET_BALANCE = ("model", "dataset", "model_dataset")
TARGET_WITHIN = ("shortest_correct", "score")


@dataclass(frozen=True)
class TargetSize:
    """About ``n`` CoTs with the pool's mix: each group (model, dataset or both) gets a quota
    proportional to its share of the pool (largest remainders, capped by what the group can
    give, the rest passed on to the others), and keeps its best CoTs: the shortest correct
    ones or the best by ``score``. The score of the last CoT a group keeps is its threshold."""

    mode: ClassVar[str] = "target"
    n: int = 1000
    balance: str = "model"
    within: str = "shortest_correct"
    score: Score | None = None
    require_correct: bool = True  # within='score' only

    def __post_init__(self):
        if self.n < 0:
            raise UserError("the target size must not be negative")
        if self.balance not in TARGET_BALANCE:
            raise UserError(f"balance by one of {', '.join(TARGET_BALANCE)}")
        if self.within not in TARGET_WITHIN:
            raise UserError(f"keep within groups by one of {', '.join(TARGET_WITHIN)}")
        if self.within == "score" and self.score is None:
            raise UserError("keeping the best by score needs a score")


CLUSTER_UNITS = ("problems", "cots")
CLUSTER_SPREADS = ("cap", "proportional", "uniform")
CLUSTER_PICKS = ("most_cots", "score", "random")


@dataclass(frozen=True)
class PerCluster:
    """Across clusters of problems: any problem figure whose value names a group (the
    near-duplicate stage's ``cluster_id``, a map's ``cluster``). A problem without a value is a
    cluster of its own. ``unit`` 'problems' keeps whole problems (every CoT of a kept problem
    that passed the conditions), 'cots' single CoTs. ``spread``:

    * 'cap': at most ``m`` units per cluster ("one problem per near-duplicate cluster" is
      unit='problems', m=1);
    * 'proportional': about ``n`` units, each cluster's quota in proportion to its units in the
      pool (largest remainders, capped by what it has; proportional_quotas);
    * 'uniform': about ``n`` units spread evenly over the clusters (a small cluster gives all it
      has, the rest goes to the others).

    Which units a cluster keeps (``pick``): the problems with the most CoTs in the pool; the
    best by ``score`` (any figure: a per-problem pass rate, or a CoT score, a problem taking its
    best CoT's); or random with the selection's seed. Ties go to the smaller id."""

    mode: ClassVar[str] = "per_cluster"
    cluster_metric: str = "cluster_id"
    cluster_source: str = "near-duplicates"
    unit: str = "problems"
    spread: str = "cap"
    m: int = 1
    n: int = 1000
    pick: str = "most_cots"
    score: Score | None = None

    def __post_init__(self):
        if not self.cluster_metric or not self.cluster_source:
            raise UserError("name the cluster figure: a per-problem metric and its source (e.g. cluster_id, near-duplicates)")
        if self.unit not in CLUSTER_UNITS:
            raise UserError(f"count clusters in one of {', '.join(CLUSTER_UNITS)}, not '{self.unit}'")
        if self.spread not in CLUSTER_SPREADS:
            raise UserError(f"spread over clusters by one of {', '.join(CLUSTER_SPREADS)}, not '{self.spread}'")
        if self.pick not in CLUSTER_PICKS:
            raise UserError(f"pick within a cluster by one of {', '.join(CLUSTER_PICKS)}, not '{self.pick}'")
        if self.pick == "score" and self.score is None:
            raise UserError("picking the best of each cluster by a figure needs that figure (score)")
        if self.m < 1:
            raise UserError(f"keep at least 1 {self.unit[:-1]} per cluster (m), not {self.m}")
        if self.n < 0:
            raise UserError("the target size must not be negative")

    @property
    def cluster(self) -> Figure:
        return Figure(self.cluster_metric, self.cluster_source, level="problem")




MIX_DEFAULT_BINS = (0.0, 3.0, 6.0, 10.0)
MIX_NAMED_TARGETS = {"low": 2.0, "medium": 5.0, "high": 8.0}


@dataclass(frozen=True)
class RvCdMix:
    """EasyDistill 2.0's RV/CD mixer (``CoTRVCDMixer`` in easydistill/operators/cot/rvcd.py,
    read at release 2.0, commit aeb8ca3), reimplemented from its behaviour:

    * a candidate is a CoT with a CD in ``cd_bins``' range (edges, default [0, 3, 6, 10]: bins
      [0, 3), [3, 6), [6, 10]) that is logically correct: its ``score`` figure (EasyDistill: the
      judge's ``logical_correctness``, here e.g. ``Score("logic", judge source)``) is at least
      ``min_correctness``; without a ``score``, the selection's correctness sources must say
      correct;
    * each bin has an RV target: ``"matched"`` rises with the bin, 2 + bin x 8 / (bins - 1)
      rounded to 2 decimals (2, 6, 10 for three bins; 5 for one); ``"low"`` / ``"medium"`` /
      ``"high"`` are 2 / 5 / 8; a number is the target of every bin;
    * per bin the candidates are ranked by |RV - target| (no RV last) and the first
      ``samples_per_bin`` are kept, every candidate when it is None (EasyDistill's default).

    It mixes over the whole pool, not per problem. Two choices differ from EasyDistill's code,
    both for reproducibility: ties in |RV - target| are broken by the seeded per-CoT draw
    (EasyDistill keeps its input order, which here would be the order datasets were ingested),
    and a CD equal to the top edge falls in the last bin (EasyDistill's bisect puts it in a bin
    of its own past the last one)."""

    mode: ClassVar[str] = "rvcd_mix"
    cd_bins: tuple[float, ...] = MIX_DEFAULT_BINS
    rv_target: str | float = "matched"
    samples_per_bin: int | None = None
    score: Score | None = None
    min_correctness: float = 1.0

    def __post_init__(self):
        edges = tuple(float(e) for e in self.cd_bins)
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise UserError(f"cd_bins must be at least two increasing CD edges, e.g. [0, 3, 6, 10]; got {list(self.cd_bins)}")
        object.__setattr__(self, "cd_bins", edges)
        target = self.rv_target
        if isinstance(target, str) and target not in ("matched", *MIX_NAMED_TARGETS):
            try:
                target = float(target)
            except ValueError:
                raise UserError(f"rv_target is 'matched', 'low', 'medium', 'high' or a number, not {target!r}") from None
        if isinstance(target, bool) or not isinstance(target, (str, int, float)):
            raise UserError(f"rv_target is 'matched', 'low', 'medium', 'high' or a number, not {target!r}")
        object.__setattr__(self, "rv_target", target if isinstance(target, str) else float(target))
        if self.samples_per_bin is not None and int(self.samples_per_bin) < 1:
            raise UserError("samples_per_bin must be at least 1 (or left out: keep every candidate)")
        object.__setattr__(self, "min_correctness", float(self.min_correctness))

    @property
    def n_bins(self) -> int:
        return len(self.cd_bins) - 1

    def target(self, bin_index: int) -> float:
        """The RV target of CD bin ``bin_index`` (0-based), as EasyDistill computes it."""
        if isinstance(self.rv_target, float):
            return self.rv_target
        if self.rv_target in MIX_NAMED_TARGETS:
            return MIX_NAMED_TARGETS[self.rv_target]
        if self.n_bins <= 1:
            return 5.0
        return round(2.0 + bin_index * 8.0 / (self.n_bins - 1), 2)

    def bin_label(self, bin_index: int) -> str:
        lo, hi = self.cd_bins[bin_index], self.cd_bins[bin_index + 1]
        return f"[{lo:g}, {hi:g}{']' if bin_index == self.n_bins - 1 else ')'}"


Rule = Thresholds | CapacityMatched | PerProblem | TargetSize | PerCluster | RvCdMix
RULES: dict[str, type] = {r.mode: r for r in (Thresholds, CapacityMatched, PerProblem, TargetSize, PerCluster, RvCdMix)}
# The rules that draw at random, so their pool carries each CoT's draw key (draw_key).
DRAWING_RULES = (CapacityMatched, RvCdMix)
DRAWS = ("content", "cot_id")


def rule_as_dict(rule: Rule) -> dict[str, Any]:
    """The rule's parameters as plain JSON-able values (tuples become lists)."""
    out = asdict(rule)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def rule_from_dict(mode: str, params: dict[str, Any]) -> Rule:
    """Inverse of :func:`rule_as_dict`: the exact rule back."""
    if mode not in RULES:
        raise UserError(f"unknown selection mode '{mode}'; expected one of {', '.join(RULES)}")
    cls = RULES[mode]
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise UserError(f"the {mode} rule has no parameter(s) {sorted(unknown)}")
    kwargs = dict(params)
    if kwargs.get("score") is not None:
        kwargs["score"] = Score(**kwargs["score"])
    for name, value in kwargs.items():
        if isinstance(value, list):
            kwargs[name] = tuple(value)
    return cls(**kwargs)


@dataclass(frozen=True)
class Selection:
    """A pool (base filter), conditions applied inside it (each drop counted under its own
    reason), a rule deciding among the CoTs that pass them, the sources the pool's RV, CD and
    correctness come from, and a seed. ``draw`` says what a random draw is keyed on:
    ``"content"`` (each CoT's content identity, draw_key: the same data and seed select the same
    CoTs in any store) or ``"cot_id"`` (recipes saved before content keys, kept as they were)."""

    base: CotFilter = field(default_factory=CotFilter)
    rule: Rule = field(default_factory=Thresholds)
    sources: ScoreSources = field(default_factory=ScoreSources)
    seed: int = 0
    conditions: tuple[Condition, ...] = ()
    draw: str = "content"

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.draw not in DRAWS:
            raise UserError(f"draw is 'content' or 'cot_id', not {self.draw!r}")


# ---------------------------------------------------------------------------- the pool
#
# Every rule runs on the *pool*: one row per CoT the base filter matches, with ids and
# numbers only (no text). Functions below take an optional ``pool`` (a LoadedPool from
# load_pool): given one, they run in its in-memory DuckDB and never touch the store, which is
# what makes sliders interactive at 2M CoTs (the pool is read once per filter); without one,
# they build the pool as a temporary table inside one short read-only store connection.

POOL_COLUMNS = (
    "cot_id", "problem_id", "dataset_id", "dataset", "model", "n_tokens", "n_chars", "n_paragraphs",
    "n_reflections", "truncated", "rv", "cd", "correct", "score", "draw_id",
)


def _rule_score(rule: Rule) -> Score | None:
    return getattr(rule, "score", None)


def _draws(sel: Selection) -> str | None:
    """What the pool's ``draw_id`` holds: the content key, the cot_id, or nothing (a rule
    that draws nothing does not pay for the content key)."""
    return sel.draw if isinstance(sel.rule, DRAWING_RULES) else None


# The content identity of a CoT, as text: its dataset's content hash (the name, for a dataset
# without one), its problem's own key, its model and its sample index, joined by U+001F.
_IDENTITY_SQL = ("coalesce(dk.content_hash, 'dataset:' || dk.name) || chr(31) || pk.problem_key || chr(31) || "
                 "coalesce(b.model, '') || chr(31) || CAST(b.sample_idx AS VARCHAR)")


def draw_key(content_hash: str | None, problem_key: str, model: str | None, sample_idx: int, *,
             dataset_name: str | None = None) -> int:
    """A CoT's 64-bit draw key: the first 8 bytes of the MD5 of its content identity (as
    _IDENTITY_SQL writes it), big-endian. The same file ingested into any store gives its
    CoTs the same keys, whatever ids the store gave them.

    >>> draw_key("abc", "p0", "QwQ-32B", 0) == draw_key("abc", "p0", "QwQ-32B", 0)
    True
    """
    import hashlib

    text = "\x1f".join([content_hash if content_hash is not None else f"dataset:{dataset_name}", problem_key,
                        model or "", str(int(sample_idx))])
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:16], 16)


def condition_figures(sel: Selection) -> list[Figure]:
    """The figures the selection's conditions read that are not CoT columns, in order, each
    once, then the rule's own (a PerCluster's cluster figure): the pool carries each as column
    ``fig_<i>`` (figure_column)."""
    rule_figures = [sel.rule.cluster] if isinstance(sel.rule, PerCluster) else []
    return list(dict.fromkeys([*(c.figure for c in sel.conditions if not c.figure.is_column), *rule_figures]))


def figure_column(sel: Selection, figure: Figure) -> str:
    """The pool column holding ``figure``'s value."""
    return figure.metric if figure.is_column else f"fig_{condition_figures(sel).index(figure)}"


def pool_columns(sel: Selection) -> tuple[str, ...]:
    """POOL_COLUMNS plus one column per figure the conditions read."""
    return (*POOL_COLUMNS, *(f"fig_{i}" for i in range(len(condition_figures(sel)))))


def pool_key(sel: Selection) -> str:
    """What a selection's pool depends on (base filter, sources, the score's figure, the
    figures the conditions read, not their bounds), as text: two selections with equal keys
    share a pool, so moving a condition's bounds does not read the store again."""
    score = _rule_score(sel.rule)
    key = {
        "base": sel.base.to_params(), "sources": sel.sources.as_dict(),
        "score": [score.metric, score.source] if score is not None and score.source is not None else None,
    }
    if score is not None and score.source is not None and score.level != "cot":
        key["score"].append(score.level)
    if condition_figures(sel):
        key["figures"] = [f.as_dict() for f in condition_figures(sel)]
    if _draws(sel):
        key["draws"] = _draws(sel)
    return json.dumps(key, sort_keys=True)


def _problem_join(alias: str, figure: Figure, params: list) -> str:
    """LEFT JOIN giving ``{alias}.value``: a problem figure's value for each pool row's problem."""
    params.extend([figure.source, figure.metric])
    return (f" LEFT JOIN (SELECT v.problem_id, any_value(v.value) AS value FROM problem_scores v "
            f"JOIN score_sources vs ON vs.source_id = v.source_id AND vs.name = ? WHERE v.metric = ? "
            f"AND v.value IS NOT NULL GROUP BY v.problem_id) {alias} ON {alias}.problem_id = b.problem_id")


def pool_sql(sel: Selection, *, db=None) -> tuple[str, list]:
    """SQL for the pool (pool_columns(sel)) of a selection, with its parameters.

    The scores table is long (one row per CoT, source and metric), so RV, CD, correctness, the
    rule's score and the conditions' CoT figures are pivoted in one pass over it: every wanted
    (source, metric) pair gets a column alias and a priority, and each alias takes the value of
    its best-priority source (arg_min) among the pairs that scored the CoT. A problem figure
    (the score's or a condition's) is one join on its rows of problem_scores."""
    # the base's own score columns are not read (the pivot below gives RV, CD, correctness):
    # unless they decide rows, the base SQL leaves them out (one scan of scores, not two)
    base_sql, params = queries.matching_sql(queries.rows_only(sel.base), db=db)
    score = _rule_score(sel.rule)
    picks = [("rv", "rv", sel.sources.rv), ("cd", "cd", sel.sources.cd), ("correct", "correct", sel.sources.correct)]
    problem_figures: list[tuple[str, Figure]] = []
    if score is not None and score.source is not None:
        if score.level == "cot":
            picks.append(("score", score.metric, (score.source,)))
        else:
            problem_figures.append(("score", score.figure))
    figures = condition_figures(sel)
    for i, figure in enumerate(figures):
        if figure.level == "cot":
            picks.append((f"fig_{i}", figure.metric, (figure.source,)))
        else:
            problem_figures.append((f"fig_{i}", figure))
    wanted = [(alias, metric, name, priority) for alias, metric, names in picks for priority, name in enumerate(names)]
    select = [
        "b.cot_id, b.problem_id, b.dataset_id, b.dataset, b.model, b.n_tokens, b.n_chars, b.n_paragraphs, "
        "b.n_reflections, b.truncated"
    ]
    used = {alias for alias, *_ in wanted}
    from_problem = {alias for alias, _ in problem_figures}
    for alias in ("rv", "cd", "correct", "score", "draw_id", *(f"fig_{i}" for i in range(len(figures)))):
        if alias == "draw_id":
            draws = _draws(sel)
            select.append("b.cot_id::UBIGINT AS draw_id" if draws == "cot_id" else
                          f"('0x' || md5({_IDENTITY_SQL})[1:16])::UBIGINT AS draw_id" if draws == "content" else
                          "NULL::UBIGINT AS draw_id")
        elif alias in used:
            select.append("(p.correct = 1) AS correct" if alias == "correct" else f"p.{alias}")
        elif alias in from_problem:
            select.append(f"{alias}_p.value AS {alias}")
        else:
            select.append("NULL::BOOLEAN AS correct" if alias == "correct" else f"NULL::DOUBLE AS {alias}")
    sql = f"SELECT {', '.join(select)} FROM ({base_sql}) b"
    if _draws(sel) == "content":
        sql += (" JOIN problems pk ON pk.problem_id = b.problem_id JOIN datasets dk ON dk.dataset_id = b.dataset_id")
    if wanted:
        aliases, metrics, names, priorities = (list(column) for column in zip(*wanted))
        pivots = ", ".join(
            f"arg_min(s.value, w.priority) FILTER (WHERE w.alias = '{alias}') AS {alias}" for alias in sorted(used)
        )
        sql += (
            " LEFT JOIN (SELECT s.cot_id, " + pivots + " FROM scores s JOIN ("
            "SELECT w.*, ss.source_id FROM (SELECT unnest(?::VARCHAR[]) AS alias, unnest(?::VARCHAR[]) AS metric, "
            "unnest(?::VARCHAR[]) AS name, unnest(?::INTEGER[]) AS priority) w JOIN score_sources ss USING (name)"
            ") w ON w.source_id = s.source_id AND w.metric = s.metric WHERE s.value IS NOT NULL GROUP BY s.cot_id"
            ") p ON p.cot_id = b.cot_id"
        )
        params = [*params, aliases, metrics, names, priorities]
    for alias, figure in problem_figures:
        sql += _problem_join(f"{alias}_p", figure, params)
    return sql, params


def _conditions_reason(sel: Selection) -> tuple[str, list]:
    """SQL over the pool's columns: why a CoT fails the selection's conditions (every failed
    condition, '; '-joined), NULL when it passes them all."""
    if not sel.conditions:
        return "NULL::VARCHAR", []
    checks, params = [], []
    for cond in sel.conditions:
        check, check_params = reason_sql(cond, figure_column(sel, cond.figure))
        checks.append(check)
        params.extend(check_params)
    return f"nullif(concat_ws('; ', {', '.join(checks)}), '')", params


def _conditions_pass(sel: Selection) -> tuple[str, list]:
    """SQL over the pool's columns, true exactly for the CoTs that pass every condition."""
    terms, params = ["true"], []
    for cond in sel.conditions:
        term, term_params = passes_sql(cond, figure_column(sel, cond.figure))
        terms.append(f"({term})")
        params.extend(term_params)
    return " AND ".join(terms), params


# Token-length histograms of a report have about this many bins (see _nice_width).
TOKEN_BINS = 40


class LoadedPool:
    """A selection's pool held in memory for an interactive page: a native table ``pool_in``
    (pool_columns) in a private in-memory DuckDB, plus an index that answers a Thresholds
    rule's whole report without a pass over the rows (see _thresholds_report).

    The index: the pool's CoTs grouped by every value a threshold looks at except the token
    count (model, dataset, RV, CD, correctness: a few thousand groups at most on real labels),
    and inside each group the CoTs sorted by token count. A token range is then two binary
    searches per group, each group passes or fails the RV/CD/correctness checks as a whole, and
    the kept CoTs of a group are one contiguous run of the sorted rows. A selection's conditions
    are a mask over the sorted rows (from the figure columns they read, in the same order), and
    counts inside a run are differences of its cumulative sum: moving a condition's bounds costs
    one vectorised pass over one column, not a new index.

    A narrower filter's pool is cut from a whole-store pool (``cut_pool``): its sorted rows are
    the whole-store pool's under the filter's mask, still sorted, and its groups the non-empty
    ones renumbered; nothing is grouped or sorted again.

    Safe to share between threads (Streamlit sessions): every query runs on its own cursor."""

    # sort key of a row: group * _GROUP_STRIDE + token count + _TOKEN_OFFSET; unknown counts last
    _GROUP_BITS = 33
    _GROUP_STRIDE = 1 << _GROUP_BITS
    _TOKEN_OFFSET = 1 << 31

    def __init__(self, key: str, table, *, token_bins: int = TOKEN_BINS, _index=None, _rows_of=None):
        import threading

        self.key = key
        self.token_bins = token_bins
        # the index is built in polars from the Arrow rows; the rows go into the private DuckDB
        # (table pool_in) only when a query needs them (a decision, a condition's column): a
        # Thresholds report, the page's default, never does, and a new filter's pool at 2M CoTs
        # then skips the ~150 ms copy (bench/README.md, issue 17). A pool cut from a whole-store
        # pool holds no rows of its own until then: the whole-store rows and its mask over them
        # (_rows_of), read in place.
        self._arrow = table
        self._rows_of = _rows_of
        self._table_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sorted: dict[str, object] = {}
        self._masks: dict[str, tuple] = {}  # per set of conditions: see condition_mask
        self._ordered = None  # (problem, pool_in rowid) of each sorted row, read on the first condition
        keys = ["model", "dataset", "rv", "cd", "correct"]
        self._same_group = " AND ".join(f"g.{k} IS NOT DISTINCT FROM r.{k}" for k in keys)
        self._con = duckdb.connect()  # in memory: the store is not touched again
        if _index is None:
            _index = self._build_index(table, keys)
        elif table is None and _rows_of is None:
            raise ValueError("a pool needs its rows, or the rows it is cut from and its mask")
        raw_groups, self.row_keys, self.row_problem, self.row_order, self.problem_slots = _index
        self._con.register("groups_arrow", raw_groups.to_arrow())
        self._con.execute("CREATE TABLE pool_groups AS SELECT * FROM groups_arrow")
        self._con.unregister("groups_arrow")
        self._raw_groups = raw_groups
        self.groups = store.fetch_pl(
            self._con,
            "SELECT coalesce(CAST(model AS VARCHAR), '(no model)') AS model, CAST(dataset AS VARCHAR) AS dataset, "
            f"{SUMMARY_BY['cd']} AS cd_group, floor(rv / 1.0) * 1.0 AS rv_lo, floor(cd / 1.0) * 1.0 AS cd_lo, "
            "rv, cd, correct, n, n_known FROM pool_groups ORDER BY gid",
        )
        self._index_figures()

    def _build_index(self, table, keys: list[str]):
        """(groups, row_keys, row_problem, row_order, problem slots) of ``table``'s rows."""
        frame = pl.from_arrow(table)
        if isinstance(frame, pl.Series):  # pragma: no cover - one-column tables only
            frame = frame.to_frame()
        # one row per group, numbered (gid) in the order SQL's ORDER BY keys NULLS LAST gives
        groups = (frame.group_by(keys).agg(n=pl.len().cast(pl.Int64), n_known=pl.col("n_tokens").count().cast(pl.Int64))
                  .sort(keys, nulls_last=True).with_row_index("gid").with_columns(pl.col("gid").cast(pl.Int32)))
        stride, offset = self._GROUP_STRIDE, self._TOKEN_OFFSET
        rows = (frame.select(*keys, "n_tokens", "problem_id").with_row_index("row")
                .join(groups.select(*keys, "gid"), on=keys, how="left", nulls_equal=True)
                .select("row", key=pl.col("gid").cast(pl.Int64) * stride
                        + (pl.col("n_tokens").cast(pl.Int64) + offset).fill_null(stride - 1),
                        problem=(pl.col("problem_id").rank("dense") - 1).cast(pl.Int32))
                .sort("key"))
        row_keys = rows["key"].to_numpy()
        if len(row_keys) != frame.height or rows["key"].null_count():  # every row belongs to exactly one group
            raise RuntimeError(f"pool index: {len(row_keys) - rows['key'].null_count()} rows indexed of {frame.height}")
        n_problems = frame["problem_id"].n_unique() if frame.height else 0
        return groups, row_keys, rows["problem"].to_numpy(), rows["row"].to_numpy(), n_problems

    def _index_figures(self) -> None:
        """What the reports read beside the index: counts, the token bins, the group bounds."""
        import numpy as np

        stride, offset = self._GROUP_STRIDE, self._TOKEN_OFFSET
        n = self.groups["n"].to_numpy().astype(np.int64)
        self.n_cots = int(n.sum())
        self.n_problems = int(np.count_nonzero(np.bincount(self.row_problem, minlength=self.problem_slots)))
        # CoTs with a value, per column: what the page needs to hide controls for absent metrics
        self.known = {c: int(n[self.groups[c].is_not_null().to_numpy()].sum()) for c in ("rv", "cd", "correct")}
        self.known["n_tokens"] = int(self.groups["n_known"].sum() or 0)
        tokens = self.row_keys & (stride - 1)
        known_tokens = tokens[tokens != stride - 1] - offset
        top = int(known_tokens.max()) if known_tokens.size else None
        self.token_width = _nice_width(float(top or 0), self.token_bins)
        self.token_n_bins = int((top or 0) // self.token_width) + 1
        g = np.arange(self.groups.height, dtype=np.int64) * stride
        self.group_start = np.searchsorted(self.row_keys, g)
        self.group_end = np.searchsorted(self.row_keys, g + stride)
        # the pool's own token histogram does not change with the rule: computed once
        counts = np.bincount(np.floor(known_tokens / self.token_width).astype(np.int64))
        bins = np.flatnonzero(counts)
        self.token_pool = pl.DataFrame({"lo": bins * self.token_width, "pool": counts[bins].astype(np.int64)},
                                       schema={"lo": pl.Float64, "pool": pl.Int64})

    def cut(self, key: str, ids, matches) -> LoadedPool | None:
        """The pool of a narrower filter, from this (a whole-store pool) and ``matches``, the
        filter's mask over a base frame whose cot_id column is ``ids``; None when those are not
        this pool's rows in its order (the store changed between the reads). The index is this
        one's sorted rows under the mask with its non-empty groups renumbered, so no sort or
        grouping runs again (~250 ms at 2M CoTs); the rows stay this pool's, read through the
        mask, so nothing is copied (~90 ms and ~140 MB at 2M) until a query needs them in the
        cut's own DuckDB."""
        import numpy as np
        import pyarrow as pa

        with self._table_lock:
            whole_rows = self._arrow
        if whole_rows is None or self.row_order is None:  # queried (its rows went into its DuckDB), or a cut itself
            raise ValueError("only a whole-store pool that was never queried can be cut; load it again")
        if len(ids) != whole_rows.num_rows or not np.array_equal(ids.to_numpy(), whole_rows.column("cot_id").to_numpy()):
            return None
        stride = self._GROUP_STRIDE
        mask = np.asarray(matches.to_numpy(), dtype=bool)
        in_order = mask[self.row_order]
        row_keys = self.row_keys[in_order]
        gid = row_keys >> self._GROUP_BITS  # bit operations: the stride is a power of two
        n = np.bincount(gid, minlength=self._raw_groups.height)
        n_known = np.bincount(gid[(row_keys & (stride - 1)) != stride - 1], minlength=self._raw_groups.height)
        present = n > 0
        if not present.all():  # renumber the groups left, moving each row's key with its group
            shift = (np.arange(present.size, dtype=np.int64) - (np.cumsum(present) - 1)) << self._GROUP_BITS
            row_keys = row_keys - shift[gid]
        groups = (self._raw_groups.with_columns(n=pl.Series(n, dtype=pl.Int64), n_known=pl.Series(n_known, dtype=pl.Int64))
                  .filter(pl.Series(present)).with_columns(gid=pl.int_range(pl.len(), dtype=pl.Int32)))
        # the cut rows are in cot_id order: their row numbers are the ranks of the kept ones
        # no row order: only a whole-store pool is cut, and nothing else reads it
        index = (groups, row_keys, self.row_problem[in_order], None, self.problem_slots)
        return LoadedPool(key, None, token_bins=self.token_bins, _index=index, _rows_of=(whole_rows, pa.array(mask)))

    MASKS_KEPT = 8  # condition sets whose row mask is kept (a threshold move reuses its set's)

    def condition_mask(self, sel: Selection) -> tuple:
        """(passes, cumulative sum of passes with a leading 0, {reason: CoTs} of the rows that
        fail, each row's problem) of ``sel``'s conditions over the sorted rows
        (_condition_codes), kept per set of conditions so a threshold move under the same
        conditions reuses it."""
        import numpy as np

        key = json.dumps([c.as_dict() for c in sel.conditions])
        with self._lock:
            found = self._masks.get(key)
        if found is None:
            codes, text = _condition_codes(sel, self)
            passes = codes == 0
            failed, counts = np.unique(codes[~passes], return_counts=True)
            found = (passes, np.concatenate([[0], np.cumsum(passes, dtype=np.int64)]),
                     {text(code): int(count) for code, count in zip(failed.tolist(), counts.tolist())},
                     self._rows_in_order()[0])
            with self._lock:
                if len(self._masks) >= self.MASKS_KEPT:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[key] = found
        return found

    def _rows_in_order(self):
        """(problem, pool_in rowid) of each row in the index's order, ties broken by rowid so the
        two arrays stay aligned: read once, on the first condition (the rowids cost a fifth of
        the index's sort, which a pool without conditions does not pay)."""
        import numpy as np

        if self._ordered is None:
            with contextlib.closing(self.cursor()) as con:
                rows = con.execute(
                    f"WITH problems AS (SELECT problem_id, (row_number() OVER (ORDER BY problem_id) - 1)::INTEGER AS "
                    "problem FROM (SELECT DISTINCT problem_id FROM pool_in)) "
                    f"SELECT p.problem, r.rowid AS row_id FROM pool_in r JOIN pool_groups g ON {self._same_group} "
                    f"JOIN problems p ON p.problem_id = r.problem_id "
                    f"ORDER BY g.gid, r.n_tokens NULLS LAST, r.rowid"
                ).fetchnumpy()
            self._ordered = (np.asarray(rows["problem"], dtype=np.int32), np.asarray(rows["row_id"], dtype=np.int64))
        return self._ordered

    def sorted_column(self, name: str):
        """Column ``name`` of the pool as float64 (NaN for no value) in the index's row order
        (_rows_in_order); read once per column (the figures the conditions use), then kept."""
        import numpy as np

        with self._lock:
            found = self._sorted.get(name)
            if found is None:
                _, row_ids = self._rows_in_order()
                with contextlib.closing(self.cursor()) as con:
                    if name not in con.sql("SELECT * FROM pool_in LIMIT 0").columns:
                        raise ValueError(f"the pool has no column {name!r}; load it for this selection")
                    values = con.execute(f'SELECT "{name}"::DOUBLE AS v FROM pool_in ORDER BY rowid').fetchnumpy()["v"]
                values = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
                found = self._sorted[name] = values[row_ids]
            return found

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds now: its in-memory DuckDB tables, the index arrays and the
        frames kept beside them (what a cache bounded by memory, ui.frames, counts)."""
        import numpy as np

        with contextlib.closing(self._con.cursor()) as con:  # not cursor(): sizing must not copy the rows in
            tables = con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]
        with self._table_lock:
            tables += self._arrow.nbytes if self._arrow is not None else 0
            # a cut's rows are its whole-store pool's (counted there): only its mask is its own
            tables += self._rows_of[1].nbytes if self._rows_of is not None else 0
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)]
        arrays += [a for a in (self._ordered or ()) if isinstance(a, np.ndarray)]
        arrays += [a for mask in list(self._masks.values()) for a in mask if isinstance(a, np.ndarray)]
        return int(tables) + sum(a.nbytes for a in arrays) + self.groups.estimated_size() + self.token_pool.estimated_size()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the pool's database (close it after use), with the rows
        in table ``pool_in`` (copied in on the first call)."""
        with self._table_lock:
            if self._arrow is not None or self._rows_of is not None:
                with contextlib.closing(self._con.cursor()) as con:
                    self._register_rows(con, "pool_rows")
                    con.execute("CREATE TABLE pool_in AS SELECT * FROM pool_rows")
                self._arrow = self._rows_of = None
        return self._con.cursor()

    def _register_rows(self, con, name: str) -> None:
        """Relation ``name`` in ``con`` (a connection of its own: what it registers is its
        alone) reads the pool's rows where they are: its Arrow rows, or its whole-store pool's
        under its mask."""
        if self._arrow is not None:
            con.register(name, self._arrow)
        else:
            whole, mask = self._rows_of
            con.register(f"{name}_all", whole.append_column("in_cut_", mask))
            # a filter keeps the rows' order (DuckDB preserves insertion order by default)
            con.execute(f"CREATE TEMP VIEW {name} AS SELECT * EXCLUDE (in_cut_) FROM {name}_all WHERE in_cut_")

    @contextlib.contextmanager
    def scan(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own in which ``pool_in`` is the pool's rows, without copying
        them into the private database when they are not there yet: DuckDB reads the Arrow rows
        in place. For one query over the rows (a page of the dropped list), where the copy
        would cost several times the query (bench/README.md, issue 17)."""
        con = self._con.cursor()
        try:
            with self._table_lock:
                if self._arrow is not None or self._rows_of is not None:
                    # a view of this connection only; it shadows no table (pool_in is not copied yet)
                    self._register_rows(con, "pool_in")
            yield con
        finally:
            con.close()

    def to_arrow(self):
        with contextlib.closing(self.cursor()) as con:
            return con.sql("SELECT * FROM pool_in").to_arrow_table()

    def close(self) -> None:
        self._con.close()


def _condition_codes(sel: Selection, pool: LoadedPool):
    """Per sorted row of ``pool``: 0 when it passes every condition of ``sel``, else a code
    naming which conditions it fails and how (sum of state * 3**i, state 1: no value, 2: outside
    the range or, for a has-no-value condition, has one); and the reason text of each code, as
    _conditions_reason writes it."""
    import numpy as np

    codes = np.zeros(pool.n_cots, dtype=np.int64)
    for i, cond in enumerate(sel.conditions):
        values = pool.sorted_column(figure_column(sel, cond.figure))
        missing = np.isnan(values)
        if cond.missing:
            state = np.where(missing, 0, 2)
        else:
            with np.errstate(invalid="ignore"):
                inside = ~missing
                if cond.lo is not None:
                    inside &= values >= cond.lo
                if cond.hi is not None:
                    inside &= values <= cond.hi
            state = np.where(missing, 1, np.where(inside, 0, 2))
        codes += state * 3**i

    def text(code: int) -> str:
        parts = []
        for i, cond in enumerate(sel.conditions):
            state = (code // 3**i) % 3
            if state:
                parts.append(cond.reasons()[state - 1])
        return "; ".join(parts)

    return codes, text


def pool_rows(sel: Selection, *, db=None, ordered: bool = False):
    """The selection's pool as an Arrow table (pool_sql's columns) read from the store; in
    cot_id order when ``ordered``."""
    import pyarrow.compute as pc

    sql, params = pool_sql(sel, db=db)
    if ordered:
        sql = f"SELECT * FROM ({sql}) ORDER BY cot_id"
    with store.connect(db, read_only=True) as con:
        table = con.sql(sql, params=params).to_arrow_table()
    # the names dictionary-coded and one chunk per column: a pool of 2M rows is a third smaller,
    # the index is built on codes, and a query through a cut's mask reads integers
    for name in ("dataset", "model"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table.column(name)))
    return table.combine_chunks()


def whole_store_selection(sel: Selection) -> Selection:
    """``sel`` over every ready CoT (no base filter). Its pool, read once in cot_id order, holds
    the pool of every selection that differs from ``sel`` only in its base filter, one row per
    row of core.frame_filter's base frame: the app cuts a new filter's pool from it with the
    filter's mask (:func:`cut_pool`) instead of reading the store again."""
    return replace(sel, base=CotFilter())


def score_source_names(sel: Selection, *, db=None) -> tuple[str, ...]:
    """Every score source a selection's pool reads (RV, CD and correctness sources, the rule's
    score, the conditions' CoT figures), sorted: with ``frame_filter.data_version`` they say
    whether a store write changed the pool (problem-level figures are in the fingerprint's
    problem_scores part)."""
    names = {name for metric in (sel.sources.rv, sel.sources.cd, sel.sources.correct) for source in metric
             for name in queries._sources_of(source, db=db)}
    score = _rule_score(sel.rule)
    if score is not None and score.source is not None and score.level == "cot":
        names.add(score.source)
    names.update(f.source for f in condition_figures(sel) if f.level == "cot" and f.source)
    names.update(c.figure.source for c in sel.conditions if c.figure.level == "cot" and c.figure.source)
    return tuple(sorted(names))


def cut_pool(whole: LoadedPool, sel: Selection, ids, matches) -> LoadedPool | None:
    """``sel``'s pool cut from ``whole``, the loaded pool of ``whole_store_selection(sel)``
    (rows in cot_id order): ``matches`` is ``sel``'s base filter's mask over a base frame whose
    cot_id column is ``ids`` (core.frame_filter). Rows and index are cut, not rebuilt
    (LoadedPool.cut); None when the two do not line up (then load ``sel``'s pool itself)."""
    if whole.key != pool_key(whole_store_selection(sel)):
        raise ValueError("this whole-store pool was loaded for other score sources or conditions")
    return whole.cut(pool_key(sel), ids, matches)


def load_pool(sel: Selection, *, db=None, token_bins: int = TOKEN_BINS, rows=None) -> LoadedPool:
    """The selection's pool read once from the store (ids and numbers, no text), or given as
    ``rows`` (read as pool_rows does), held in memory (LoadedPool), tagged with its
    pool_key so a mismatched reuse is caught."""
    return LoadedPool(pool_key(sel), pool_rows(sel, db=db) if rows is None else rows, token_bins=token_bins)


@contextlib.contextmanager
def _pool_connection(sel: Selection, pool, db, *, scan: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection in which relation ``pool_in`` is the selection's pool; with ``scan``, for
    a single query, a loaded pool's rows are read where they are (LoadedPool.scan)."""
    if pool is not None:
        if pool.key != pool_key(sel):
            raise ValueError("this pool was loaded for another filter or other score sources; load it again")
        if scan:
            with pool.scan() as con:
                yield con
            return
        con = pool.cursor()
        try:
            yield con
        finally:
            con.close()
    else:
        sql, params = pool_sql(sel, db=db)
        with store.connect(db, read_only=True) as con:
            con.execute(f"CREATE TEMP TABLE pool_in AS {sql}", params).fetchall()
            yield con


# ---------------------------------------------------------------------------- rules in SQL

# u in (0, 1) from splitmix64's finaliser over the pool's draw_id (a CoT's content key, or its
# cot_id for old recipes) XOR a per-seed salt (the top 53 bits): plain integer arithmetic, so
# Python (uniform()) and any DuckDB version give the same number. A second, independent stream
# of the same seed (stream 1: the absolute capacity reading's choice among accepted CoTs) uses
# another salt; stream 0 is the salt draws always had.
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_STREAM = 0xD1B54A32D192ED03


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def _seed_salt(seed: int, stream: int = 0) -> int:
    salt = _mix64(((int(seed) + 1) * _GOLDEN) & _MASK)
    return salt if stream == 0 else _mix64(salt ^ ((stream * _STREAM) & _MASK))


def uniform(seed: int, key: int, stream: int = 0) -> float:
    """The uniform number in (0, 1) the sampler gives the CoT with draw key ``key`` (draw_key;
    its cot_id for a ``draw="cot_id"`` selection) under ``seed`` (as the SQL)."""
    return ((_mix64((int(key) & _MASK) ^ _seed_salt(seed, stream)) >> 11) + 0.5) / 2.0**53


def _uniform_sql(seed: int, stream: int = 0, *, column: str = "draw_id") -> str:
    """uniform() in SQL, over the pool's ``column`` (its draw key; a labelling queue's cot_id)."""
    m = f"{_MASK}::UHUGEINT"
    x = f"xor({column}::UHUGEINT, {_seed_salt(seed, stream)}::UHUGEINT)"
    x = f"((xor({x}, {x} >> 30) * {_MIX1}::UHUGEINT) & {m})"
    x = f"((xor({x}, {x} >> 27) * {_MIX2}::UHUGEINT) & {m})"
    return f"(((xor({x}, {x} >> 31) >> 11)::DOUBLE + 0.5) / 9007199254740992.0)"


def capacity_weight(cd: float, rv: float, *, capacity: float, lam: float = 1.0, beta: float = 0.5) -> float:
    """w = exp(-lambda * max(0, CD - C) - beta * |CD - RV|), the formula in CAPACITY_FORMULA."""
    return math.exp(-lam * max(0.0, cd - capacity) - beta * abs(cd - rv))


class _Chain:
    """A query over relation ``pool`` as a chain of CTEs; ``?`` parameters are bound in text
    order, which is the order the CTEs are added in."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.params: list = []

    def add(self, name: str, sql: str, params: list | tuple = ()) -> None:
        self.ctes.append(f"{name} AS ({sql})")
        self.params.extend(params)

    def sql(self, final: str) -> str:
        return f"WITH {', '.join(self.ctes)} {final}"


# One row per pool CoT whatever the rule (plus, with conditions, the figures they read: see
# decision_columns).
# ``passed_conditions``: false for a CoT the selection's conditions dropped (the rule never saw it).
DECISION_COLUMNS = (*POOL_COLUMNS, "weight", "kept", "reason", "passed_conditions")


def decision_columns(sel: Selection) -> tuple[str, ...]:
    return (*pool_columns(sel), "weight", "kept", "reason", "passed_conditions")


def _fmt(value: float) -> str:
    return f"{value:g}"


_NOT_CORRECT = "CASE WHEN correct IS NULL THEN 'correctness unknown' ELSE 'incorrect' END"


def _add_thresholds(chain: _Chain, rule: Thresholds, sel: Selection, con) -> None:
    checks, params = [], []
    for column, missing, outside, bounds in _threshold_checks(rule):
        checks.append(f"CASE WHEN {column} IS NULL THEN ? WHEN {column} NOT BETWEEN ? AND ? THEN ? END")
        params.extend([missing, bounds[0], bounds[1], outside])
    if rule.require_correct:
        checks.append(f"CASE WHEN correct IS NOT TRUE THEN {_NOT_CORRECT} END")
    # concat_ws skips NULLs: the reason lists every check a CoT fails, '' when it passes all
    reason = f"nullif(concat_ws('; ', {', '.join(checks)}), '')" if checks else "NULL::VARCHAR"
    chain.add("judged", f"SELECT *, NULL::DOUBLE AS weight, {reason} AS reason FROM pool", params)
    chain.add("decision", "SELECT *, reason IS NULL AS kept FROM judged")


def _add_ranked(
    chain: _Chain, source: str, *, eligible: str, order: str, partition: str, limit: str,
    not_eligible: str, not_ranked: str,
) -> None:
    """Keep the first ``limit`` eligible CoTs of each ``partition`` of ``source`` in ``order``
    (ties broken by cot_id)."""
    chain.add("candidates", f"SELECT *, coalesce({eligible}, false) AS eligible FROM {source}")
    chain.add(
        "ranked",
        f"SELECT *, row_number() OVER (PARTITION BY {partition}, eligible ORDER BY {order}, cot_id) AS rank "
        "FROM candidates",
    )
    chain.add(
        "decision",
        f"SELECT *, CASE WHEN kept THEN NULL WHEN NOT eligible THEN {not_eligible} ELSE {not_ranked} END AS reason "
        f"FROM (SELECT *, eligible AND rank <= {limit} AS kept FROM ranked)",
    )


def _add_capacity(chain: _Chain, rule: CapacityMatched, sel: Selection, con) -> None:
    chain.add(
        "weighed",
        f"SELECT *, ? * greatest(0.0, cd - ?) + ? * abs(cd - rv) AS penalty, {_uniform_sql(sel.seed)} AS u FROM pool",
        [rule.lam, rule.capacity, rule.beta],
    )
    candidate = "rv IS NOT NULL AND cd IS NOT NULL" + (" AND correct" if rule.require_correct else "")
    not_candidate = f"CASE WHEN rv IS NULL OR cd IS NULL THEN 'no RV/CD score' ELSE {_NOT_CORRECT} END"
    if rule.weights == "absolute":
        # accepted on its own when u < w (w <= 1: the penalty is never negative); the k kept of a
        # problem's accepted CoTs are those with the smallest second uniform (uniform among them)
        chain.add("pool_w", f"SELECT * EXCLUDE (penalty, u), exp(-penalty) AS weight, u < exp(-penalty) AS accepted, "
                            f"{_uniform_sql(sel.seed, stream=1)} AS draw_key FROM weighed")
        _add_ranked(
            chain, "pool_w", eligible=f"{candidate} AND accepted", order="draw_key", partition="problem_id",
            limit=str(int(rule.k)),
            not_eligible=f"CASE WHEN NOT ({candidate}) OR ({candidate}) IS NULL THEN {not_candidate} "
                         "ELSE 'not accepted (its draw u was not below its weight w)' END",
            not_ranked=f"'accepted, but {int(rule.k)} other accepted CoT(s) of its problem were kept'",
        )
        return
    # Efraimidis-Spirakis draws the k largest u^(1/w). Ranking by ln(-ln u) + penalty ascending
    # (penalty = -ln w) is the same order, and stays finite where w underflows to 0.
    chain.add("pool_w", "SELECT * EXCLUDE (penalty, u), exp(-penalty) AS weight, ln(-ln(u)) + penalty AS draw_key FROM weighed")
    _add_ranked(
        chain, "pool_w", eligible=candidate, order="draw_key", partition="problem_id", limit=str(int(rule.k)),
        not_eligible=not_candidate, not_ranked="'not drawn'",
    )


def mix_bin_sql(rule: RvCdMix) -> tuple[str, list]:
    """SQL over a pool's columns: the CD bin (0-based) of a CoT, NULL for no CD or a CD outside
    the edges; the top edge belongs to the last bin."""
    inner = " ".join(f"WHEN cd < ? THEN {b}" for b in range(rule.n_bins - 1))
    return (f"CASE WHEN cd < ? OR cd > ? THEN NULL {inner} ELSE {rule.n_bins - 1} END",
            [rule.cd_bins[0], rule.cd_bins[-1], *rule.cd_bins[1:-1]])


def mix_correct_sql(rule: RvCdMix) -> tuple[str, list]:
    """SQL over a pool's columns, true for a logically correct CoT (RvCdMix)."""
    if rule.score is None:
        return "coalesce(correct::INTEGER >= ?, false)", [rule.min_correctness]
    return "coalesce(score >= ?, false)", [rule.min_correctness]


def _add_rvcd_mix(chain: _Chain, rule: RvCdMix, sel: Selection, con) -> None:
    binned, bin_params = mix_bin_sql(rule)
    correct, correct_params = mix_correct_sql(rule)
    bins = list(range(rule.n_bins))
    beyond = [f"beyond the {rule.samples_per_bin} closest to RV {rule.target(b):g} in CD bin {rule.bin_label(b)}"
              for b in bins]
    chain.add("mix_targets", "SELECT unnest(?::INTEGER[]) AS mix_bin, unnest(?::DOUBLE[]) AS mix_target, "
                             "unnest(?::VARCHAR[]) AS mix_beyond", [bins, [rule.target(b) for b in bins], beyond])
    chain.add("mix_binned", f"SELECT *, {binned} AS mix_bin, {correct} AS mix_correct FROM pool",
              [*bin_params, *correct_params])
    # ranked by |RV - target| (no RV last, as EasyDistill's infinite distance), ties by the draw
    chain.add("ranked", "SELECT b.*, NULL::DOUBLE AS weight, t.mix_beyond, b.mix_bin IS NOT NULL AND b.mix_correct AS eligible, "
                        "row_number() OVER (PARTITION BY b.mix_bin, b.mix_bin IS NOT NULL AND b.mix_correct "
                        f"ORDER BY abs(b.rv - t.mix_target) ASC NULLS LAST, {_uniform_sql(sel.seed)}, b.cot_id) AS rank "
                        "FROM mix_binned b LEFT JOIN mix_targets t USING (mix_bin)")
    if rule.score is None:
        no_logic = _NOT_CORRECT
    else:
        label = rule.score.figure.label().replace("'", "''")
        no_logic = f"CASE WHEN score IS NULL THEN 'no {label}' ELSE '{label} below {_fmt(rule.min_correctness)}' END"
    limit = "true" if rule.samples_per_bin is None else f"rank <= {int(rule.samples_per_bin)}"
    outside = f"CD outside the bins {rule.cd_bins[0]:g}-{rule.cd_bins[-1]:g}"
    chain.add(
        "decision",
        f"SELECT *, CASE WHEN kept THEN NULL WHEN cd IS NULL THEN 'no CD score' WHEN mix_bin IS NULL THEN '{outside}' "
        f"WHEN NOT mix_correct THEN {no_logic} ELSE mix_beyond END AS reason "
        f"FROM (SELECT *, eligible AND {limit} AS kept FROM ranked)",
    )


_SHORTEST = "n_tokens ASC NULLS LAST, n_chars ASC"


def _score_order(score: Score) -> str:
    return f"score {'DESC' if score.higher_is_better else 'ASC'} NULLS LAST"


def _score_eligible(require_correct: bool) -> tuple[str, str]:
    eligible = "score IS NOT NULL" + (" AND correct" if require_correct else "")
    not_eligible = f"CASE WHEN score IS NULL THEN 'no score' ELSE {_NOT_CORRECT} END"
    return eligible, not_eligible


def _add_per_problem(chain: _Chain, rule: PerProblem, sel: Selection, con) -> None:
    chain.add("pool_w", "SELECT *, NULL::DOUBLE AS weight FROM pool")
    k = str(int(rule.k))
    if rule.rule == "top_k":
        eligible, not_eligible = _score_eligible(rule.require_correct)
        _add_ranked(chain, "pool_w", eligible=eligible, order=_score_order(rule.score), partition="problem_id",
                    limit=k, not_eligible=not_eligible, not_ranked=f"'not in the top {k} of its problem'")
    elif rule.rule == "shortest_correct":
        shorter = "'a shorter correct CoT was kept'" if rule.k == 1 else f"'not among the {k} shortest correct'"
        _add_ranked(chain, "pool_w", eligible="correct", order=_SHORTEST, partition="problem_id", limit=k,
                    not_eligible=_NOT_CORRECT, not_ranked=shorter)
    else:  # all_correct
        chain.add("decision", f"SELECT *, CASE WHEN correct IS NOT TRUE THEN {_NOT_CORRECT} END AS reason, "
                              "coalesce(correct, false) AS kept FROM pool_w")


_GROUP_EXPR = {
    "model": "coalesce(CAST(model AS VARCHAR), '(no model)')",
    "dataset": "CAST(dataset AS VARCHAR)",
    "model_dataset": "CAST(dataset AS VARCHAR) || ' / ' || coalesce(CAST(model AS VARCHAR), '(no model)')",
}


def _target_parts(rule: TargetSize) -> dict[str, str]:
    if rule.within == "shortest_correct":
        return {"eligible": "correct", "order": _SHORTEST, "not_eligible": _NOT_CORRECT}
    eligible, not_eligible = _score_eligible(rule.require_correct)
    return {"eligible": eligible, "order": _score_order(rule.score), "not_eligible": not_eligible}


def proportional_quotas(pool: dict[str, int], available: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` over groups in proportion to ``pool`` (largest remainders, ties by name),
    never giving a group more than it has ``available``; what a capped group cannot take goes
    to the others in proportion. The quotas sum to min(n, total available).

    >>> proportional_quotas({"a": 60, "b": 40}, {"a": 60, "b": 10}, 50)
    {'a': 40, 'b': 10}
    """
    quotas = {g: 0 for g in pool}
    left = min(int(n), sum(available.get(g, 0) for g in pool))
    while left > 0:
        open_groups = [g for g in sorted(pool) if quotas[g] < available.get(g, 0)]
        weight = sum(pool[g] for g in open_groups)
        shares = {g: left * pool[g] / weight if weight else left / len(open_groups) for g in open_groups}
        give = {g: math.floor(shares[g]) for g in open_groups}
        rest = left - sum(give.values())
        for g in sorted(open_groups, key=lambda g: (-(shares[g] - give[g]), g))[:rest]:
            give[g] += 1
        for g in open_groups:
            taken = min(give[g], available[g] - quotas[g])
            quotas[g] += taken
            left -= taken
    return quotas


def _target_counts(con, rule: TargetSize, relation: str, params: list | None = None) -> pl.DataFrame:
    """Per balance group of ``relation`` (SQL with the pool's columns, and its parameters):
    CoTs, how many the rule could keep (available), and the quota."""
    eligible = _target_parts(rule)["eligible"]
    counts = store.fetch_pl(
        con,
        f"SELECT {_GROUP_EXPR[rule.balance]} AS group, count(*) AS pool, "
        f"count(*) FILTER (WHERE coalesce({eligible}, false)) AS available FROM ({relation}) GROUP BY ALL ORDER BY 1",
        params,
    )
    quota = proportional_quotas(
        dict(zip(counts["group"], counts["pool"])), dict(zip(counts["group"], counts["available"])), rule.n
    )
    return counts.with_columns(quota=pl.Series([quota[g] for g in counts["group"]], dtype=pl.Int64))


def _add_target(chain: _Chain, rule: TargetSize, sel: Selection, con) -> None:
    # the quotas come from the pool's counts (the CTEs so far: the pool after the conditions)
    quotas = _target_counts(con, rule, chain.sql("SELECT * FROM pool"), chain.params)
    parts = _target_parts(rule)
    chain.add("quotas", "SELECT unnest(?::VARCHAR[]) AS grp, unnest(?::BIGINT[]) AS quota",
              [quotas["group"].to_list(), quotas["quota"].to_list()])
    chain.add("pool_g", f"SELECT *, {_GROUP_EXPR[rule.balance]} AS grp FROM pool")
    chain.add("pool_w", "SELECT pool_g.*, NULL::DOUBLE AS weight, q.quota FROM pool_g LEFT JOIN quotas q ON q.grp = pool_g.grp")
    _add_ranked(
        chain, "pool_w", eligible=parts["eligible"], order=parts["order"], partition="grp",
        limit="coalesce(quota, 0)", not_eligible=parts["not_eligible"],
        not_ranked=f"'beyond its {rule.balance.replace('_', ' and ')} quota'",
    )


_UNIT_WORDS = {"problems": ("problem", "problems"), "cots": ("CoT", "CoTs")}


def _cluster_order(rule: PerCluster, seed: int) -> str:
    """ORDER BY over the per-problem units (problem_id, n_cots, best, u): the best first."""
    if rule.pick == "most_cots":
        return "n_cots DESC, problem_id"
    if rule.pick == "random":
        return "u, problem_id"
    return f"best {'DESC' if rule.score.higher_is_better else 'ASC'} NULLS LAST, problem_id"


def cluster_quotas(rule: PerCluster, units: dict[str, int]) -> dict[str, int]:
    """Each cluster's quota of units for a 'proportional' or 'uniform' spread (``units``: the
    cluster's units in the pool), summing to min(n, total)."""
    weights = units if rule.spread == "proportional" else {c: 1 for c in units}
    return proportional_quotas(weights, units, rule.n)


def _add_per_cluster(chain: _Chain, rule: PerCluster, sel: Selection, con) -> None:
    column = figure_column(sel, rule.cluster)
    best = "max(score)" if rule.score is None or rule.score.higher_is_better else "min(score)"
    chain.add("pool_c", f"SELECT *, coalesce(CAST({column} AS VARCHAR), 'problem ' || problem_id) AS clu FROM pool")
    if rule.unit == "problems":
        chain.add("units", f"SELECT clu, problem_id, count(*) AS n_cots, {best} AS best, "
                           f"{_uniform_sql(sel.seed, column='problem_id')} AS u FROM pool_c GROUP BY clu, problem_id")
        order, key = _cluster_order(rule, sel.seed), "problem_id"
    else:
        chain.add("units", f"SELECT clu, cot_id, problem_id, count(*) OVER (PARTITION BY problem_id) AS n_cots, "
                           f"score AS best, {_uniform_sql(sel.seed, column='cot_id')} AS u FROM pool_c")
        order, key = _cluster_order(rule, sel.seed).replace("problem_id", "problem_id, cot_id"), "cot_id"
    chain.add("ranked_units", f"SELECT {key}, clu, row_number() OVER (PARTITION BY clu ORDER BY {order}) AS rank FROM units")
    if rule.spread == "cap":
        limit, beyond = str(int(rule.m)), f"'beyond {rule.m} {_UNIT_WORDS[rule.unit][rule.m > 1]} of its cluster'"
        chain.add("unit_kept", f"SELECT {key}, rank <= {limit} AS kept FROM ranked_units")
    else:
        counts = store.fetch_pl(con, chain.sql("SELECT clu, count(*) AS units FROM units GROUP BY clu"), chain.params)
        quotas = cluster_quotas(rule, dict(zip(counts["clu"], counts["units"])))
        chain.add("cluster_quotas", "SELECT unnest(?::VARCHAR[]) AS clu, unnest(?::BIGINT[]) AS quota",
                  [list(quotas), list(quotas.values())])
        chain.add("unit_kept", f"SELECT r.{key}, r.rank <= coalesce(q.quota, 0) AS kept FROM ranked_units r "
                               "LEFT JOIN cluster_quotas q USING (clu)")
        beyond = "'beyond its cluster''s quota'"
    chain.add("decision", f"SELECT pool_c.* EXCLUDE (clu), NULL::DOUBLE AS weight, k.kept, "
                          f"CASE WHEN NOT k.kept THEN {beyond} END AS reason FROM pool_c JOIN unit_kept k USING ({key})")


# Each rule's SQL step: adds CTEs over relation ``pool`` ending in ``decision`` (see the module
# docstring, "Adding a rule").
_STEPS = {Thresholds: _add_thresholds, CapacityMatched: _add_capacity, PerProblem: _add_per_problem,
          TargetSize: _add_target, PerCluster: _add_per_cluster, RvCdMix: _add_rvcd_mix}


def _decision_sql(con, sel: Selection, relation: str = "SELECT * FROM pool_in",
                  relation_params: list | tuple = ()) -> tuple[str, list]:
    """SQL over ``relation`` (default: the pool ``pool_in`` in ``con``) giving
    decision_columns(sel): one row per CoT with ``kept`` and, for a dropped one, the ``reason``.

    The conditions come first: a CoT failing one is dropped with the condition's reason and the
    rule never sees it; the rule's step decides among the rest (relation ``pool``)."""
    chain = _Chain()
    rule = sel.rule
    step = _STEPS.get(type(rule))
    if step is None:
        raise ValueError(f"unknown selection rule {rule!r}")
    score = _rule_score(rule)
    if score is not None and score.source is None:  # rank by a per-CoT column
        relation = f"SELECT * REPLACE ({score.metric}::DOUBLE AS score) FROM ({relation})"
    columns = ", ".join(decision_columns(sel)[:-1])
    if sel.conditions:
        reason, params = _conditions_reason(sel)
        # the reason (in the select list) binds its parameters before the relation (in FROM)
        chain.add("pool_all", f"SELECT *, {reason} AS cond_reason FROM ({relation})", [*params, *relation_params])
        chain.add("pool", "SELECT * EXCLUDE (cond_reason) FROM pool_all WHERE cond_reason IS NULL")
        step(chain, rule, sel, con)
        final = (f"SELECT {columns}, true AS passed_conditions FROM decision UNION ALL SELECT {columns}, "
                 "false AS passed_conditions FROM (SELECT *, NULL::DOUBLE AS weight, false AS kept, cond_reason AS reason "
                 "FROM pool_all WHERE cond_reason IS NOT NULL)")
    else:
        chain.add("pool", relation, relation_params)
        step(chain, rule, sel, con)
        final = f"SELECT {columns}, true AS passed_conditions FROM decision"
    return chain.sql(final), chain.params


# ---------------------------------------------------------------------------- results


def decide(sel: Selection, *, pool=None, db=None):
    """The decision on every pool CoT as an Arrow table (DECISION_COLUMNS: ids, numbers,
    ``kept`` and, for a dropped CoT, the ``reason``; no text). ``pool`` (from load_pool) makes
    it run in memory; without it the pool is read from the store."""
    import pyarrow.compute as pc

    with _pool_connection(sel, pool, db) as con:
        sql, params = _decision_sql(con, sel)
        table = con.sql(sql, params=params).to_arrow_table()
    for name in ("dataset", "model", "reason"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table.column(name)))
    return table


@contextlib.contextmanager
def _decision_connection(decision) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()  # in memory
    try:
        con.register("sel_decision", decision)
        yield con
    finally:
        con.close()


KEPT_NUMBER_COLUMNS = ("cot_id", "problem_id", "dataset", "model", "n_tokens", "rv", "cd", "correct", "score", "weight")


def kept_numbers(sel: Selection, *, pool=None, db=None, decision=None) -> pl.DataFrame:
    """Ids and numbers (no text) of every kept CoT, ascending by cot_id."""
    decision = decision if decision is not None else decide(sel, pool=pool, db=db)
    with _decision_connection(decision) as con:
        return store.fetch_pl(
            con,
            f"SELECT {', '.join(KEPT_NUMBER_COLUMNS)} FROM (SELECT * REPLACE (CAST(dataset AS VARCHAR) AS dataset, "
            "CAST(model AS VARCHAR) AS model) FROM sel_decision) WHERE kept ORDER BY cot_id",
        )


def kept_ids(sel: Selection, *, pool=None, db=None) -> pl.Series:
    """The cot_id of every kept CoT, ascending."""
    with _pool_connection(sel, pool, db) as con:
        sql, params = _decision_sql(con, sel)
        return store.fetch_pl(con, f"SELECT cot_id FROM ({sql}) WHERE kept ORDER BY cot_id", params)["cot_id"]


SUMMARY_BY = {
    "model": "coalesce(CAST(model AS VARCHAR), '(no model)')",
    "dataset": "CAST(dataset AS VARCHAR)",
    "cd": "coalesce(CAST(CAST(floor(cd) AS INTEGER) AS VARCHAR), 'no CD')",
}


@dataclass
class SelectionReport:
    """What a selection keeps, computed on every CoT of the pool.

    ``by_model``, ``by_dataset``, ``by_cd``: group, pool, kept, dropped, kept_share (kept / pool
    of the group), pool_share and kept_mix (the group's share of the pool and of the kept set).
    ``reasons``: reason, cots (dropped CoTs per reason). ``histograms``: for rv, cd and n_tokens,
    lo, hi, pool, kept per bin; ``missing`` counts the CoTs without that value.
    ``quotas`` (TargetSize only): group, pool, available, quota, kept, threshold (the token count
    or score of the last CoT the group keeps)."""

    pool_cots: int
    kept_cots: int
    pool_problems: int
    kept_problems: int
    by_model: pl.DataFrame
    by_dataset: pl.DataFrame
    by_cd: pl.DataFrame
    reasons: pl.DataFrame
    histograms: dict[str, pl.DataFrame]
    missing: dict[str, int]
    quotas: pl.DataFrame | None = None

    @property
    def dropped_cots(self) -> int:
        return self.pool_cots - self.kept_cots


def _nice_width(max_value: float, bins: int) -> float:
    """A round bin width (1, 2 or 5 times a power of ten, at least 1) giving at most about
    ``bins`` bins up to ``max_value``."""
    if max_value <= 0:
        return 1.0
    raw = max_value / bins
    power = 10.0 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if step * power >= raw:
            return max(1.0, step * power)
    return max(1.0, 10 * power)


def _group_frame(con, by: str) -> pl.DataFrame:
    return _finish_group_frame(store.fetch_pl(
        con,
        f"SELECT {SUMMARY_BY[by]} AS group, count(*) AS pool, count(*) FILTER (WHERE kept) AS kept "
        "FROM sel_decision GROUP BY ALL",
    ), by)


def _finish_group_frame(df: pl.DataFrame, by: str) -> pl.DataFrame:
    """group, pool, kept -> the columns of SelectionReport.by_* in their order."""
    pool_total, kept_total = df["pool"].sum(), df["kept"].sum()
    df = df.with_columns(
        dropped=pl.col("pool") - pl.col("kept"),
        kept_share=pl.col("kept") / pl.col("pool"),
        pool_share=pl.col("pool") / pool_total if pool_total else pl.lit(0.0),
        kept_mix=pl.col("kept") / kept_total if kept_total else pl.lit(0.0),
    )
    if by == "cd":  # levels in numeric order, 'no CD' last
        return df.sort(pl.col("group").cast(pl.Int64, strict=False), nulls_last=True)
    return df.sort("group")


def _histogram(con, column: str, token_bins: int) -> tuple[pl.DataFrame, int]:
    missing, top = con.execute(
        f"SELECT count(*) FILTER (WHERE {column} IS NULL), coalesce(max({column}), 0) FROM sel_decision"
    ).fetchall()[0]
    width = 1.0 if column in ("rv", "cd") else _nice_width(float(top), token_bins)
    n_bins = 10 if column in ("rv", "cd") else int(top // width) + 1
    counts = store.fetch_pl(
        con,
        f"SELECT floor({column} / ?) * ? AS lo, count(*) AS pool, count(*) FILTER (WHERE kept) AS kept "
        f"FROM sel_decision WHERE {column} IS NOT NULL GROUP BY ALL",
        [width, width],
    )
    return _histogram_frame(counts, width, n_bins), missing


def _histogram_frame(counts: pl.DataFrame, width: float, n_bins: int) -> pl.DataFrame:
    """lo, pool, kept per non-empty bin -> every bin from 0 (empty ones too), with hi."""
    return (
        pl.DataFrame({"lo": [i * width for i in range(n_bins)]})
        .join(counts, on="lo", how="full", coalesce=True)
        .with_columns(pl.col("pool", "kept").fill_null(0), hi=pl.col("lo") + width)
        .select("lo", "hi", "pool", "kept")
        .sort("lo")
    )


def summarize(decision, sel: Selection, *, token_bins: int = 40) -> SelectionReport:
    """Counts, per-group shares, drop reasons and histograms of a decision (from decide)."""
    with _decision_connection(decision) as con:
        totals = con.execute(
            "SELECT sum(n), sum(n_kept), count(*), count(*) FILTER (WHERE n_kept > 0) FROM "
            "(SELECT count(*) AS n, count(*) FILTER (WHERE kept) AS n_kept FROM sel_decision GROUP BY problem_id)"
        ).fetchall()[0]
        groups = {by: _group_frame(con, by) for by in SUMMARY_BY}
        reasons = store.fetch_pl(
            con,
            "SELECT CAST(reason AS VARCHAR) AS reason, count(*) AS cots FROM sel_decision WHERE NOT kept "
            "GROUP BY ALL ORDER BY cots DESC, reason",
        )
        histograms, missing = {}, {}
        for column in ("rv", "cd", "n_tokens"):
            histograms[column], missing[column] = _histogram(con, column, token_bins)
        quotas = None
        rule = sel.rule
        if isinstance(rule, TargetSize):
            threshold = "max(n_tokens)" if rule.within == "shortest_correct" else (
                "min(score)" if rule.score.higher_is_better else "max(score)")
            kept_by = store.fetch_pl(
                con,
                f"SELECT {_GROUP_EXPR[rule.balance]} AS group, count(*) FILTER (WHERE kept) AS kept, "
                f"({threshold} FILTER (WHERE kept))::DOUBLE AS threshold FROM sel_decision GROUP BY ALL",
            )
            quotas = _target_counts(con, rule, "SELECT * FROM sel_decision WHERE passed_conditions").join(
                kept_by, on="group", how="left").sort("group")
    return SelectionReport(
        pool_cots=int(totals[0] or 0), kept_cots=int(totals[1] or 0), pool_problems=totals[2], kept_problems=totals[3],
        by_model=groups["model"], by_dataset=groups["dataset"], by_cd=groups["cd"], reasons=reasons,
        histograms=histograms, missing=missing, quotas=quotas,
    )


def evaluate(sel: Selection, *, pool=None, db=None, token_bins: int = TOKEN_BINS) -> SelectionReport:
    """The report of a selection. With a LoadedPool and a Thresholds rule it comes from the
    pool's index (_thresholds_report: no pass over the rows); otherwise decide then summarize."""
    if pool is not None and isinstance(sel.rule, Thresholds) and token_bins == pool.token_bins and pool.n_cots:
        if pool.key != pool_key(sel):
            raise ValueError("this pool was loaded for another filter or other score sources; load it again")
        return _thresholds_report(sel, pool)
    return summarize(decide(sel, pool=pool, db=db), sel, token_bins=token_bins)


def _threshold_checks(rule: Thresholds) -> list[tuple[str, str, str, tuple]]:
    """(column, missing reason, outside reason, bounds) of each range the rule sets, in the
    order the reasons are listed."""
    checks = []
    for column, label, bounds in (("rv", "RV", rule.rv_range), ("cd", "CD", rule.cd_range), ("n_tokens", "tokens", rule.tokens_range)):
        if bounds is not None:
            missing = "no token count" if column == "n_tokens" else f"no {label} score"
            checks.append((column, missing, f"{label} outside {_fmt(bounds[0])}-{_fmt(bounds[1])}", bounds))
    return checks


def _kept_predicate(sel: Selection) -> tuple[str, list]:
    """SQL true exactly for the CoTs a Thresholds rule keeps after the selection's conditions
    (reason IS NULL in _decision_sql)."""
    rule = sel.rule
    passes, params = _conditions_pass(sel)
    terms = [passes]
    for column, _, _, bounds in _threshold_checks(rule):
        terms.append(f"coalesce({column} BETWEEN ? AND ?, false)")
        params.extend(bounds)
    if rule.require_correct:
        terms.append("correct IS TRUE")
    return " AND ".join(terms), params


def _thresholds_report(sel: Selection, pool: LoadedPool) -> SelectionReport:
    """A Thresholds rule's report from the pool's index; the same figures as summarize(decide()).

    Per group (model, dataset, RV, CD, correctness) the RV, CD and correctness checks pass or
    fail as a whole; the token range splits each group's sorted rows into unknown / outside /
    inside by binary search. The selection's conditions are a mask over the sorted rows: rows
    inside a run that pass them are a difference of the mask's cumulative sum, and the rows
    that fail them are counted by their condition reason alone (the rule never sees them).
    Counts per model, dataset, CD level, RV and reason are sums over groups; the kept token
    histogram counts each passing group's rows per bin by binary search too; problems with a
    kept CoT are marked from the kept runs of rows."""
    import numpy as np

    rule = sel.rule
    groups, keys, stride, offset = pool.groups, pool.row_keys, pool._GROUP_STRIDE, pool._TOKEN_OFFSET
    n = groups["n"].to_numpy().astype(np.int64)
    n_known = groups["n_known"].to_numpy().astype(np.int64)
    gid = np.arange(groups.height, dtype=np.int64) * stride
    group_start, group_end = pool.group_start.astype(np.int64), pool.group_end.astype(np.int64)
    # rows of [start, end) that pass the conditions (all of them without conditions)
    # (with conditions, each row's problem in the order the mask was read, ties by rowid)
    passes, cumulative, condition_reasons, row_problem = (
        pool.condition_mask(sel) if sel.conditions else (None, None, {}, pool.row_problem))

    def passing(start, end):
        start, end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
        end = np.maximum(end, start)
        return end - start if cumulative is None else cumulative[end] - cumulative[start]

    # state of each check per group: 0 passes, 1 value missing, 2 outside the range
    states: list[tuple[np.ndarray, str, str]] = []
    token_check = None
    for column, missing_reason, outside_reason, (lo, hi) in _threshold_checks(rule):
        if column == "n_tokens":
            token_check = (missing_reason, outside_reason, int(math.ceil(lo)), int(math.floor(hi)))
            continue
        value = groups[column].to_numpy(allow_copy=True).astype(np.float64)  # None -> NaN
        known = groups[column].is_not_null().to_numpy()
        with np.errstate(invalid="ignore"):
            inside = (value >= lo) & (value <= hi)
        states.append((np.where(~known, 1, np.where(inside, 0, 2)), missing_reason, outside_reason))
    correct_state = None
    if rule.require_correct:
        correct = groups["correct"]
        correct_state = np.where(correct.is_null().to_numpy(), 1, np.where(correct.fill_null(False).to_numpy(), 0, 2))
    group_passes = np.ones(groups.height, dtype=bool)
    for state, *_ in states:
        group_passes &= state == 0
    if correct_state is not None:
        group_passes &= correct_state == 0

    # rows of each group by token state (those passing the conditions); kept rows are the
    # passing rows of [run_start, run_end) of the sorted rows
    known_end = group_start + n_known  # unknown token counts sort last in their group
    if token_check is None:
        run_start, run_end = group_start, group_end
        token_rows = [(0, passing(group_start, group_end))]
        t_lo, t_hi = -offset, offset - 1
    else:
        _, _, t_lo, t_hi = token_check
        run_start = np.searchsorted(keys, gid + (t_lo + offset), side="left")
        run_end = np.searchsorted(keys, gid + (t_hi + offset), side="right")
        inside = passing(run_start, run_end)
        token_rows = [(0, inside), (1, passing(known_end, group_end)), (2, passing(group_start, known_end) - inside)]
    kept = np.where(group_passes, passing(run_start, run_end), 0)

    frame = groups.select("model", "dataset", "cd_group", "rv_lo", "cd_lo", "rv", "cd", pool="n").with_columns(
        kept=pl.Series(kept, dtype=pl.Int64))
    by = {
        name: _finish_group_frame(
            frame.group_by(column).agg(pl.col("pool").sum(), pl.col("kept").sum()).rename({column: "group"}), name)
        for name, column in (("model", "model"), ("dataset", "dataset"), ("cd", "cd_group"))
    }

    # drop reasons: every combination of failed checks, summed over groups; rows failing the
    # conditions under the conditions' reason
    reason_counts: dict[str, int] = {}
    for token_state, rows in token_rows:
        rows = np.broadcast_to(rows, n.shape)
        parts_per_group = []
        for state, missing_reason, outside_reason in states:
            parts_per_group.append(np.where(state == 1, missing_reason, np.where(state == 2, outside_reason, "")))
        if token_check is not None and token_state:
            parts_per_group.append(np.full(n.shape, token_check[0] if token_state == 1 else token_check[1], dtype=object))
        if correct_state is not None:
            parts_per_group.append(np.where(correct_state == 1, "correctness unknown", np.where(correct_state == 2, "incorrect", "")))
        for i in np.flatnonzero(rows > 0):
            reason = "; ".join(str(parts[i]) for parts in parts_per_group if parts[i])
            if reason:
                reason_counts[reason] = reason_counts.get(reason, 0) + int(rows[i])
    for reason, count in condition_reasons.items():
        reason_counts[reason] = reason_counts.get(reason, 0) + count
    reasons = pl.DataFrame(
        {"reason": list(reason_counts), "cots": list(reason_counts.values())}, schema={"reason": pl.String, "cots": pl.Int64}
    ).sort(["cots", "reason"], descending=[True, False])

    histograms, missing = {}, {}
    for column in ("rv", "cd"):
        known = frame.filter(pl.col(column).is_not_null())
        counts = known.group_by(lo=f"{column}_lo").agg(pl.col("pool").sum(), pl.col("kept").sum())
        histograms[column] = _histogram_frame(counts, 1.0, 10)
        missing[column] = int(frame["pool"].sum() - known["pool"].sum())
    # kept rows per token bin: per passing group and bin, the rows whose count is in the bin
    # and in the range (and that pass the conditions)
    width, n_bins = pool.token_width, pool.token_n_bins
    edges = np.arange(n_bins, dtype=np.int64) * int(width)
    bin_lo = np.maximum(edges, t_lo)
    bin_hi = np.minimum(edges + int(width) - 1, t_hi)
    passing_groups = gid[group_passes][:, None]
    first = np.searchsorted(keys, (passing_groups + bin_lo + offset).ravel(), side="left")
    last = np.searchsorted(keys, (passing_groups + bin_hi + offset).ravel(), side="right")
    per_bin = passing(first, last).reshape(passing_groups.shape[0], n_bins).sum(axis=0)
    token_counts = pool.token_pool.join(
        pl.DataFrame({"lo": edges.astype(np.float64), "kept": per_bin.astype(np.int64)}), on="lo", how="left"
    ).with_columns(pl.col("kept").fill_null(0))
    histograms["n_tokens"] = _histogram_frame(token_counts, width, n_bins)
    missing["n_tokens"] = int(n.sum() - n_known.sum())

    # problems with a kept CoT: mark the problems of every kept run of rows
    seen = np.zeros(pool.problem_slots, dtype=bool)  # a cut pool numbers problems as its whole-store pool did
    for start, end in zip(run_start[group_passes], run_end[group_passes]):
        if end > start:
            problems = row_problem[start:end]
            seen[problems if passes is None else problems[passes[start:end]]] = True
    return SelectionReport(
        pool_cots=pool.n_cots, kept_cots=int(kept.sum()), pool_problems=pool.n_problems, kept_problems=int(seen.sum()),
        by_model=by["model"], by_dataset=by["dataset"], by_cd=by["cd"], reasons=reasons,
        histograms=histograms, missing=missing,
    )


DROPPED_SORTABLE = ("cot_id", "problem_id", "dataset", "model", "n_tokens", "rv", "cd", "correct", "score", "weight", "reason")


def dropped_page(
    decision=None, *, sel: Selection | None = None, pool: LoadedPool | None = None, offset: int = 0, limit: int = 50,
    sort_by: str = "cot_id", descending: bool = False, db=None,
) -> pl.DataFrame:
    """One page of the dropped CoTs of a decision (from decide), or of ``sel`` on its loaded
    ``pool``: why each was dropped, its numbers and its question's opening words (read from
    the store for this page's problems only). For a Thresholds rule on a pool only the page's
    rows get a reason (unless sorted by reason): no decision on every CoT is built."""
    if sort_by not in DROPPED_SORTABLE:
        raise ValueError(f"cannot sort dropped CoTs by {sort_by!r}; choose one of {', '.join(DROPPED_SORTABLE)}")
    order = f"{sort_by} {'DESC' if descending else 'ASC'} NULLS LAST, cot_id"
    columns = (
        "cot_id, problem_id, CAST(dataset AS VARCHAR) AS dataset, CAST(model AS VARCHAR) AS model, "
        "n_tokens, rv, cd, correct, score, weight, CAST(reason AS VARCHAR) AS reason"
    )
    if sel is not None:  # the values of the figures the conditions read, under their labels
        for figure in condition_figures(sel):
            label = figure.label().replace('"', '""')
            columns += f', {figure_column(sel, figure)} AS "{label}"'
    if decision is not None:
        with _decision_connection(decision) as con:
            rows = store.fetch_pl(
                con, f"SELECT {columns} FROM sel_decision WHERE NOT kept ORDER BY {order} LIMIT ? OFFSET ?",
                [int(limit), int(offset)],
            )
    elif sel is None or pool is None:
        raise ValueError("dropped_page needs a decision, or a selection and its loaded pool")
    elif isinstance(sel.rule, Thresholds) and sort_by not in ("reason", "weight"):
        # the page's rows first, then the conditions and the rule on those rows only (a
        # threshold decides each CoT on its own, so the reasons are those of the whole decision)
        kept, kept_params = _kept_predicate(sel)
        page_rows = f"SELECT * FROM pool_in WHERE NOT ({kept}) ORDER BY {order} LIMIT ? OFFSET ?"
        with _pool_connection(sel, pool, db, scan=True) as con:
            sql, params = _decision_sql(con, sel, page_rows, [*kept_params, int(limit), int(offset)])
            rows = store.fetch_pl(con, f"SELECT {columns} FROM ({sql}) ORDER BY {order}", params)
    else:
        with _pool_connection(sel, pool, db) as con:
            sql, params = _decision_sql(con, sel)
            rows = store.fetch_pl(
                con, f"SELECT {columns} FROM ({sql}) WHERE NOT kept ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, int(limit), int(offset)],
            )
    questions = store.read_df(
        "SELECT problem_id, left(question, 120) AS question FROM problems WHERE problem_id IN (SELECT unnest(?::BIGINT[]))",
        [rows["problem_id"].unique().to_list()], db=db,
    )
    return rows.join(questions, on="problem_id", how="left", maintain_order="left")


def compare(a: Selection, b: Selection, *, db=None) -> pl.DataFrame:
    """Kept CoTs of two selections per model: in both, only in a, only in b; the last row,
    'all', sums them."""
    ka = kept_numbers(a, db=db).select("cot_id", "model", in_a=pl.lit(True))
    kb = kept_numbers(b, db=db).select("cot_id", "model", in_b=pl.lit(True))
    joined = ka.join(kb, on="cot_id", how="full", coalesce=True, suffix="_b").with_columns(
        model=pl.coalesce("model", "model_b").fill_null("(no model)"),
        in_a=pl.col("in_a").fill_null(False),
        in_b=pl.col("in_b").fill_null(False),
    )
    per_model = (
        joined.group_by("model")
        .agg(
            both=(pl.col("in_a") & pl.col("in_b")).sum().cast(pl.Int64),
            only_a=(pl.col("in_a") & ~pl.col("in_b")).sum().cast(pl.Int64),
            only_b=(~pl.col("in_a") & pl.col("in_b")).sum().cast(pl.Int64),
        )
        .sort("model")
    )
    total = per_model.select(pl.lit("all").alias("model"), pl.col("both", "only_a", "only_b").sum())
    return pl.concat([per_model, total])


# ---------------------------------------------------------------------------- figures


def histogram_figure(
    hist: pl.DataFrame, cut: tuple[float, float] | None, *, title: str, discrete: bool, mark: float | None = None,
):
    """Stacked bars of kept and dropped CoTs per bin, the kept range shaded and its edges
    marked: the background of a range slider. ``discrete``: integer levels (RV, CD), bars
    centred on them, so a cut (3, 5) shades 2.5-5.5. ``mark``: one more line (e.g. the
    capacity C on the CD axis)."""
    import plotly.graph_objects as go

    lo, hi = hist["lo"].to_list(), hist["hi"].to_list()
    centre = lo if discrete else [(a + b) / 2 for a, b in zip(lo, hi)]
    width = [0.9 if discrete else (b - a) for a, b in zip(lo, hi)]
    kept = hist["kept"].to_list()
    dropped = [p - k for p, k in zip(hist["pool"].to_list(), kept)]
    fig = go.Figure([
        go.Bar(x=centre, y=kept, width=width, name="kept", marker_color="#2e7d32"),
        go.Bar(x=centre, y=dropped, width=width, name="dropped", marker_color="#b0bec5"),
    ])
    if cut is not None:
        x0, x1 = (cut[0] - 0.5, cut[1] + 0.5) if discrete else cut
        fig.add_vrect(x0=x0, x1=x1, fillcolor="#2e7d32", opacity=0.08, line_width=0)
        for x in (x0, x1):
            fig.add_vline(x=x, line_color="#c62828", line_width=2)
    if mark is not None:
        fig.add_vline(x=mark, line_color="#c62828", line_width=2, line_dash="dash")
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)), barmode="stack", height=180,
        margin=dict(l=10, r=10, t=30, b=10), bargap=0,
        legend=dict(orientation="h", y=1.2, x=1, xanchor="right"),
    )
    if discrete:
        fig.update_xaxes(dtick=1, range=[-0.6, 9.6])
    return inert_figure(fig)  # labels come from the data

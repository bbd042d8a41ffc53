"""Seeded generator of a synthetic, OmniThought-shaped CoT dataset.

Used for the app's demo on first start and, at large N (with ``text_scale`` < 1), for
benchmarks. Everything streams: :func:`iter_problems` yields one problem at a time and
:func:`write_omnithought` writes JSONL line by line or Parquet row group by row group, so
memory stays bounded whatever ``n_problems`` is.

One row per problem, in the OmniThought layout::

    {"question": str,
     "reasoning": [                       # 2-11 CoTs
        {"thought": str, "solution": str, "full_response": str,
         "teacher": "DeepSeek-R1" | "QwQ-32B" | "DeepSeek-R1-0528",
         "thought_correctness_verify": bool,
         "Reasoning_Verbosity": {"level": 0-9, "judge": str},
         "Cognitive_Difficulty": {"level": 0-9, "judge": str}}, ...],
     "reference_answer": str,             # an integer, as text
     "source": "thoughtscope-demo (generated)"}

``full_response`` is ``"<think>\\n" + thought + "\\n</think>\\n\\n" + solution``, except for
truncated CoTs (about 3%), whose thought is cut off mid-text, whose think block is never
closed and whose solution is ``""``. ``judge`` names the judge model that gave the level.

The model behind it (all of it drawn from a ``numpy`` Generator, so one seed gives
byte-identical output; the first k problems are the same whatever ``n_problems`` is):

* per problem a latent difficulty ``d`` ~ Beta(1.6, 1.6);
* per CoT a teacher with its own length profile; thought length in tokens is lognormal,
  median ``base_teacher * exp(1.4 d)`` (about 3-5k overall), sigma 0.6, so the tail passes 32k;
* CD level = round(9 d + N(0, 0.7)) clipped to 0-9;
  RV level rises with log length and a little with CD;
* P(correct) = 0.95 - 0.6 d (+ a small teacher offset); truncated CoTs are never correct;
  correct solutions box the reference answer, wrong ones a different integer;
* text is sampled from a fixed vocabulary of math-ish sentences (~4 characters a token),
  with reflection sentences ("Wait,", "Hmm,", "Alternatively,", "Let me check", "But wait",
  "double-check") at a rate that grows with RV, and paragraphs split by blank lines.

``text_scale`` multiplies the text length only (0.01 -> 1% of the characters); every
structural draw (teachers, levels, correctness, answers, truncation) comes from a separate
random stream, so those are identical whatever ``text_scale`` is.
"""

from __future__ import annotations

import json
import math
import os
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

SOURCE_LABEL = "thoughtscope-demo (generated)"

TEACHERS = ("DeepSeek-R1", "QwQ-32B", "DeepSeek-R1-0528")
TEACHER_P = np.array([0.45, 0.35, 0.20])
# Median thought length (tokens) at d = 0; it grows by exp(LEN_DIFF_SLOPE * d).
TEACHER_BASE_TOKENS = np.array([1800.0, 2500.0, 2200.0])
TEACHER_SIGMA = np.array([0.60, 0.55, 0.65])
TEACHER_ACC_OFFSET = np.array([0.0, -0.03, 0.03])
LEN_DIFF_SLOPE = 1.4
MAX_TOKENS = 98_304  # hard cap on a generated thought
TRUNC_BUDGET = 32_768  # a truncated CoT ran into (close to) this budget

JUDGES = ("DeepSeek-R1", "QwQ-32B")
# One judge for the whole demo, as in a real annotation run (ThoughtX recommends QwQ-32B): RV and
# CD then sit under one score source, and a range filter on it covers every CoT.
DEMO_JUDGE = "QwQ-32B"

# CoTs per problem: 2..11, mode around 6-8.
N_COTS_VALUES = np.arange(2, 12)
N_COTS_P = np.array([0.04, 0.06, 0.09, 0.12, 0.15, 0.15, 0.13, 0.11, 0.09, 0.06])
N_COTS_P = N_COTS_P / N_COTS_P.sum()
MEAN_COTS_PER_PROBLEM = float((N_COTS_VALUES * N_COTS_P).sum())

TRUNC_BASE, TRUNC_SLOPE = 0.008, 0.044  # P(truncated) = base + slope * d  (mean ~3%)
CHARS_PER_TOKEN = 4.0
PARA_BREAK_P = 0.18  # chance a sentence ends its paragraph
SOLUTION_MEDIAN_TOKENS = 380.0

_VOCAB_SEED = 20250101  # the vocabulary is fixed: it never depends on the user's seed


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

def _math_sentences(rng: np.random.Generator, n: int) -> list[str]:
    def r(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    def one() -> str:
        k = int(rng.integers(0, 24))
        a, b, c = r(2, 19), r(2, 29), r(1, 60)
        if k == 0:
            return (f"Let me substitute $x = {a}$ into $x^2 + {b}x - {c}$, which gives "
                    f"${a}^2 + {b} \\cdot {a} - {c} = {a * a + b * a - c}$.")
        if k == 1:
            return f"So the discriminant is $\\Delta = {b}^2 - 4 \\cdot {a} \\cdot {c} = {b * b - 4 * a * c}$."
        if k == 2:
            m = r(3, 13)
            n_ = r(20, 999)
            return f"Since ${n_} \\equiv {n_ % m} \\pmod{{{m}}}$, the remainder on division by ${m}$ is ${n_ % m}$."
        if k == 3:
            n_ = r(5, 200)
            return (f"That means the sum of the first ${n_}$ positive integers is "
                    f"$\\frac{{{n_}({n_}+1)}}{{2}} = {n_ * (n_ + 1) // 2}$.")
        if k == 4:
            return f"Factoring, we get $(x - {a})(x + {b}) = 0$, so $x = {a}$ or $x = -{b}$."
        if k == 5:
            return f"The area of the triangle is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b} = {a * b / 2:g}$."
        if k == 6:
            return f"By the Pythagorean theorem, $a^2 + b^2 = {a}^2 + {b}^2 = {a * a + b * b}$."
        if k == 7:
            lo, hi, m = r(1, 50), r(100, 900), r(3, 17)
            return f"Now I need to count how many integers between ${lo}$ and ${hi}$ are divisible by ${m}$."
        if k == 8:
            return f"Then $n = \\frac{{{c * a + b} - {b}}}{{{a}}} = {c}$, which is a positive integer as required."
        if k == 9:
            return f"Let me denote the unknown by $n$ and set up the equation ${a}n + {b} = {a * c + b}$."
        if k == 10:
            p, q = r(1, 9), r(10, 64)
            g = math.gcd(p, q)
            return f"The probability is therefore $\\frac{{{p // g}}}{{{q // g}}}$ for this case."
        if k == 11:
            return f"Each of the ${a}$ cases contributes ${b}$ possibilities, giving ${a * b}$ in total."
        if k == 12:
            e = r(2, 20)
            return f"Taking logarithms, $\\log_2 {2 ** e} = {e}$, so the exponent is ${e}$."
        if k == 13:
            return f"Expanding $(x + {a})^2$ gives $x^2 + {2 * a}x + {a * a}$."
        if k == 14:
            return (f"So the derivative is $f'(x) = {2 * a}x + {b}$, and setting it to zero gives "
                    f"$x = -\\frac{{{b}}}{{{2 * a}}}$.")
        if k == 15:
            n_, kk = r(5, 20), r(2, 5)
            return f"Hence there are $\\binom{{{n_}}}{{{kk}}} = {math.comb(n_, kk)}$ ways to choose them."
        if k == 16:
            n_ = r(2, 30)
            return f"Plugging in $n = {n_}$, the expression $n^2 + {b}n$ becomes ${n_ * n_ + b * n_}$."
        if k == 17:
            return "By AM-GM, $\\frac{a+b}{2} \\ge \\sqrt{ab}$, with equality exactly when $a = b$."
        if k == 18:
            return "Using $\\sin^2\\theta + \\cos^2\\theta = 1$, the expression simplifies a lot."
        if k == 19:
            return f"The sequence satisfies $a_{{n+1}} = {a}a_n - {b}$, so I can compute a few terms by hand."
        if k == 20:
            return f"Multiplying both sides by ${a}$ gives ${a}y = {a * c}$, hence $y = {c}$."
        if k == 21:
            return f"The greatest common divisor is $\\gcd({a * c}, {b * c}) = {math.gcd(a * c, b * c)}$."
        plain = (
            "Let me think about the structure of the problem first.",
            "This suggests looking at small cases to find a pattern.",
            "So far so good, the constraints are all satisfied.",
            "Okay, now the next step is to handle the boundary cases.",
            "I should organize the cases carefully so that nothing is counted twice.",
            "That seems consistent with what the problem is asking.",
            "So the key observation is that the expression is symmetric in the variables.",
            "Now I can combine the two results.",
            "Let me write down what we know so far.",
            "This reduces the problem to a simpler counting question.",
            "So I need to be careful with the signs here.",
            "Then the remaining cases follow in the same way.",
        )
        return plain[int(rng.integers(0, len(plain)))]

    return [one() for _ in range(n)]


def _reflection_sentences(rng: np.random.Generator, n: int) -> list[str]:
    def r(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    def one() -> str:
        k = int(rng.integers(0, 12))
        a, b = r(2, 40), r(2, 40)
        n_ = r(2, 12)
        if k == 0:
            return "Wait, that doesn't look right."
        if k == 1:
            return f"Wait, I think I made an arithmetic mistake: ${a} \\cdot {b}$ should be ${a * b}$."
        if k == 2:
            return "Hmm, maybe there is a simpler approach."
        if k == 3:
            return "Hmm, let me reconsider the second case."
        if k == 4:
            return "Alternatively, we could count the complement instead."
        if k == 5:
            return "Alternatively, maybe a substitution would make this cleaner."
        if k == 6:
            return f"Let me check this with $n = {n_}$: the formula gives ${n_ * (n_ + 1) // 2}$, which matches."
        if k == 7:
            return ("Let me check whether I missed any constraint." if a % 2
                    else "Hold on, let me verify that the bound is actually attained.")
        if k == 8:
            return "But wait, did I miss the case $x = 0$?"
        if k == 9:
            return "But wait, the problem says the numbers have to be distinct."
        if k == 10:
            return f"Let me double-check the computation: ${a} + {b} = {a + b}$."
        return "I should double-check this step before moving on."

    return [one() for _ in range(n)]


_N_MATH, _N_REFL = 2048, 256
_vrng = np.random.default_rng(_VOCAB_SEED)
_MATH = _math_sentences(_vrng, _N_MATH)
_REFL = _reflection_sentences(_vrng, _N_REFL)
del _vrng
_SENTS = _MATH + _REFL
_V = len(_SENTS)
# Index i < _V: sentence + " "; index _V + i: sentence + paragraph break.
_VOCAB: list[str] = [s + " " for s in _SENTS] + [s + "\n\n" for s in _SENTS]
_MEAN_MATH_LEN = float(np.mean([len(s) + 1 for s in _MATH]))
_MEAN_REFL_LEN = float(np.mean([len(s) + 1 for s in _REFL]))

_SOLUTION_OPENERS = (
    "To solve the problem, we proceed step by step.",
    "We organise the argument as follows.",
    "Here is a concise solution.",
    "**Solution.**",
)


def reflection_rate(rv_level: int) -> float:
    """Share of sentences that are reflections ("Wait,", "Hmm,", ...) at a given RV level."""
    return 0.02 + 0.025 * float(rv_level)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

def _body(trng: np.random.Generator, n_chars: int, p_refl: float) -> str:
    """Roughly ``n_chars`` of text sampled from the vocabulary (whole sentences, >= 1)."""
    mean_len = (1 - p_refl) * _MEAN_MATH_LEN + p_refl * _MEAN_REFL_LEN + PARA_BREAK_P
    k = max(1, int(round(n_chars / mean_len)))
    u = trng.random((3, k))
    idx = np.where(u[0] < p_refl, _N_MATH + (u[1] * _N_REFL).astype(np.int64),
                   (u[1] * _N_MATH).astype(np.int64))
    idx += _V * (u[2] < PARA_BREAK_P)
    if k == 1:
        return _VOCAB[int(idx[0])].rstrip()
    return "".join(itemgetter(*idx.tolist())(_VOCAB)).rstrip()


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------

def _question(srng: np.random.Generator, d: float) -> str:
    x = srng.integers(2, 100, size=4).tolist()
    a, b, c, m = x
    n = int(srng.integers(100, 5000))
    k = int(srng.integers(0, 8))
    if k == 0:
        return (f"Let $f(x) = {a}x^2 + {b}x - {c}$. Find the number of integers $n$ with "
                f"$1 \\le n \\le {n}$ such that $f(n)$ is divisible by ${m}$.")
    if k == 1:
        return (f"A bag contains ${a}$ red and ${b}$ blue marbles. Marbles are drawn one at a time "
                f"without replacement until ${min(c, a)}$ red marbles have been drawn. The expected "
                f"number of draws is $\\frac{{p}}{{q}}$ in lowest terms. Find $p + q$.")
    if k == 2:
        return (f"Find the remainder when ${a}^{{{n}}} + {b}^{{{c}}}$ is divided by ${m + 900}$.")
    if k == 3:
        return (f"In triangle $ABC$, $AB = {a}$, $BC = {b + a // 2}$ and $CA = {a + b // 2}$. "
                f"The bisector of angle $A$ meets $BC$ at $D$. Find $\\lfloor 100 \\cdot BD \\rfloor$.")
    if k == 4:
        return (f"How many ordered pairs of positive integers $(x, y)$ satisfy "
                f"$\\frac{{1}}{{x}} + \\frac{{1}}{{y}} = \\frac{{1}}{{{a * m}}}$?")
    if k == 5:
        return (f"The sequence $a_n$ satisfies $a_1 = {a}$ and $a_{{n+1}} = a_n^2 - {b}a_n + {c}$. "
                f"Find the last three digits of $a_{{{n % 50 + 5}}}$.")
    if k == 6:
        return (f"Let $S$ be the set of all positive divisors of ${a * b * c * m}$. Find the number "
                f"of subsets of $S$ with exactly ${2 + m % 4}$ elements whose product is a perfect square.")
    return (f"A regular ${a + 3}$-gon is inscribed in a circle of radius ${b}$. Find the sum of "
            f"the squares of the lengths of all its diagonals, rounded down to an integer, modulo ${n}$.")


def _problem(srng: np.random.Generator, trng: np.random.Generator, text_scale: float) -> dict[str, Any]:
    # ---- structure: every draw here comes from srng, in a fixed order -----------------
    d = float(srng.beta(1.6, 1.6))
    question = _question(srng, d)
    ref = int(srng.integers(0, 1000)) if srng.random() < 0.7 else int(srng.integers(1000, 100_000))
    # Wrong CoTs cluster on a few plausible wrong answers.
    wrong_pool = ref + np.array([1, -1, 2, ref + 1, 10, -2]) * (1 + srng.integers(0, 3, size=6))
    wrong_pool = [int(w) if w != ref else ref + 7 for w in wrong_pool]
    n = int(srng.choice(N_COTS_VALUES, p=N_COTS_P))
    teacher = srng.choice(3, size=n, p=TEACHER_P)
    z = srng.standard_normal((3, n))  # length, CD noise, RV noise
    u = srng.random((5, n))  # truncated, correct, wrong answer, judges, cut point
    sol_z = srng.standard_normal(n)

    log_tok = np.log(TEACHER_BASE_TOKENS[teacher]) + LEN_DIFF_SLOPE * d + TEACHER_SIGMA[teacher] * z[0]
    tokens = np.minimum(np.exp(log_tok), MAX_TOKENS)
    truncated = u[0] < (TRUNC_BASE + TRUNC_SLOPE * d)
    # A truncated CoT ran into the generation budget.
    tokens = np.where(truncated, np.maximum(tokens, TRUNC_BUDGET * (0.9 + 0.1 * u[4])), tokens)
    cd = np.clip(np.rint(9 * d + 0.7 * z[1]), 0, 9).astype(int)
    rv = np.clip(np.rint(4.5 + 1.8 * (np.log(tokens) - math.log(4000.0)) / 0.8
                         + 0.25 * (cd - 4.5) + 0.8 * z[2]), 0, 9).astype(int)
    p_correct = np.clip(0.95 - 0.6 * d + TEACHER_ACC_OFFSET[teacher], 0.02, 0.99)
    correct = (u[1] < p_correct) & ~truncated
    wrong_idx = (u[2] * len(wrong_pool)).astype(int)
    # u[3] stays drawn so every other stream keeps its values across versions
    sol_tokens = SOLUTION_MEDIAN_TOKENS * np.exp(0.3 * d + 0.5 * sol_z)

    # ---- text: only trng, so text_scale cannot change any structural draw --------------
    reasoning = []
    opener = "Okay, let's see. The problem is: " + question
    for i in range(n):
        t = int(teacher[i])
        answer = ref if correct[i] else wrong_pool[wrong_idx[i]]
        lvl_rv, lvl_cd = int(rv[i]), int(cd[i])
        p_refl = reflection_rate(lvl_rv)
        n_chars = int(tokens[i] * CHARS_PER_TOKEN * text_scale)
        if truncated[i]:
            body = _body(trng, n_chars, p_refl)
            # Cut off mid-text, as a generation that hit its token budget.
            cut = max(1, int(len(body) * (0.97 + 0.03 * u[4][i])))
            thought = opener + "\n\n" + body[:cut]
            solution = ""
            full = "<think>\n" + thought
        else:
            closing = f"So the answer should be {answer}.\n\n**Final Answer**\n\\boxed{{{answer}}}"
            body = _body(trng, n_chars - len(opener) - len(closing), p_refl)
            thought = opener + "\n\n" + body + "\n\n" + closing
            s_chars = int(sol_tokens[i] * CHARS_PER_TOKEN * text_scale)
            s_body = _body(trng, s_chars, 0.0)
            solution = (_SOLUTION_OPENERS[i % len(_SOLUTION_OPENERS)] + "\n\n" + s_body
                        + f"\n\nThe final answer is $\\boxed{{{answer}}}$")
            full = "<think>\n" + thought + "\n</think>\n\n" + solution
        reasoning.append({
            "thought": thought,
            "solution": solution,
            "full_response": full,
            "teacher": TEACHERS[t],
            "thought_correctness_verify": bool(correct[i]),
            "Reasoning_Verbosity": {"level": lvl_rv, "judge": DEMO_JUDGE},
            "Cognitive_Difficulty": {"level": lvl_cd, "judge": DEMO_JUDGE},
        })
    return {
        "question": question,
        "reasoning": reasoning,
        "reference_answer": str(ref),
        "source": SOURCE_LABEL,
    }


def iter_problems(n_problems: int, *, seed: int = 0, text_scale: float = 1.0) -> Iterator[dict]:
    """Yield ``n_problems`` generated OmniThought rows, one at a time.

    Same ``seed`` -> same rows; the first k rows do not depend on ``n_problems``, and
    ``text_scale`` changes only how long the texts are."""
    if n_problems < 0:
        raise ValueError("n_problems must be >= 0")
    if not (text_scale > 0):
        raise ValueError("text_scale must be > 0")
    ss = np.random.SeedSequence([int(seed), 0x7453])
    s_struct, s_text = ss.spawn(2)
    srng = np.random.Generator(np.random.PCG64(s_struct))
    trng = np.random.Generator(np.random.PCG64(s_text))
    for _ in range(n_problems):
        yield _problem(srng, trng, float(text_scale))


def n_problems_for_cots(n_cots: int) -> int:
    """How many problems to ask for to get about ``n_cots`` CoTs (mean CoTs/problem ~ 6.9)."""
    if n_cots <= 0:
        return 0
    return max(1, int(round(n_cots / MEAN_COTS_PER_PROBLEM)))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def arrow_schema():
    """The Parquet/Arrow schema of a written file (``reasoning`` as list<struct>)."""
    import pyarrow as pa

    level = pa.struct([("level", pa.int64()), ("judge", pa.string())])
    cot = pa.struct([
        ("thought", pa.string()),
        ("solution", pa.string()),
        ("full_response", pa.string()),
        ("teacher", pa.string()),
        ("thought_correctness_verify", pa.bool_()),
        ("Reasoning_Verbosity", level),
        ("Cognitive_Difficulty", level),
    ])
    return pa.schema([
        ("question", pa.string()),
        ("reasoning", pa.list_(cot)),
        ("reference_answer", pa.string()),
        ("source", pa.string()),
    ])


# A row group is also closed early once its text passes this many characters, so one group
# stays around a few hundred MB even with full-length text and string offsets stay < 2 GiB.
_MAX_GROUP_CHARS = 128 * 1024 * 1024


def write_omnithought(
    path: str | os.PathLike,
    n_problems: int,
    *,
    seed: int = 0,
    text_scale: float = 1.0,
    fmt: str | None = None,
    batch_rows: int = 2000,
) -> dict[str, int]:
    """Write a generated dataset to ``path``, streamed.

    ``fmt`` is "jsonl" or "parquet"; by default it follows the suffix (.parquet/.pq ->
    parquet, anything else -> jsonl). JSONL is written line by line; Parquet with a
    ``pyarrow.parquet.ParquetWriter`` in row groups of ``batch_rows`` problems (closed
    early once a group holds ~128M characters of text). Returns
    ``{"problems": n, "cots": total CoTs, "bytes": file size}``."""
    path = Path(path)
    if fmt is None:
        fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"
    fmt = fmt.lower()
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be 'jsonl' or 'parquet', not {fmt!r}")
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = cots = 0
    rows = iter_problems(n_problems, seed=seed, text_scale=text_scale)
    if fmt == "jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as fh:
            for row in rows:
                fh.write(dumps(row))
                fh.write("\n")
                problems += 1
                cots += len(row["reasoning"])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = arrow_schema()
        batch: list[dict] = []
        chars = 0
        with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
            def flush() -> None:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema),
                                   row_group_size=len(batch))
                batch.clear()

            for row in rows:
                batch.append(row)
                problems += 1
                cots += len(row["reasoning"])
                chars += sum(len(c["thought"]) + len(c["solution"]) + len(c["full_response"])
                             for c in row["reasoning"])
                if len(batch) >= batch_rows or chars >= _MAX_GROUP_CHARS:
                    flush()
                    chars = 0
            if batch:
                flush()
    return {"problems": problems, "cots": cots, "bytes": path.stat().st_size}

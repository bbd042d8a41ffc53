"""Steps inside a CoT: splitting its text into steps, the role each step plays, micro-actions,
token counts per step, and placing steps a dataset gives (as text) on the CoT's text.

Which text: a CoT's thinking, or its whole response when it has no thinking markers
(``STEP_TEXT_SQL``). A step is a character span ``[start, end)`` of that text; the spans of one
segmentation are contiguous and cover the text, so the steps in order rebuild it exactly
(whitespace after a step belongs to that step). Nothing here touches the store.

    >>> from core import steps
    >>> text = "Okay, so we need x. Let me compute: 2 + 3 = 5.\\n\\nWait, is that right? Yes."
    >>> [text[a:b] for a, b in steps.split_spans(text)]
    ['Okay, so we need x. ', 'Let me compute: 2 + 3 = 5.\\n\\n', 'Wait, is that right? ', 'Yes.']
    >>> steps.RoleRules.load().role("Wait, is that right?", 0.5)
    'uncertainty_management'

Splitters (``unit``):

* ``sentence`` (default): a step ends after ``.``, ``!`` or ``?`` (with closing quotes,
  brackets or ``**``) followed by whitespace and a next character that is not a lowercase
  letter, and at every line break. Never inside math (``$...$``, ``$$...$$``, ``\\(...\\)``,
  ``\\[...\\]``) or a fenced code block; never after a known abbreviation (``Dr.``, ``e.g.``,
  ``i.e.``, ``vs.``, ...) or a list number at the start of a line (``2. ``).
* ``paragraph``: a step ends at a blank line (outside math and code).

A span holds at least one visible character (whitespace that would make a step of its own is
joined to the next step); a text with no visible character is one step.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROLES = (
    "problem_setup", "plan_generation", "fact_retrieval", "active_computation",
    "uncertainty_management", "result_consolidation", "self_checking", "final_answer_emission",
)
UNITS = ("sentence", "paragraph")
DEFAULT_RULES_PATH = Path(__file__).with_name("step_roles.yaml")
# The text a step segmentation splits: the thinking, else (no thinking markers) the response.
STEP_TEXT_SQL = "coalesce(c.thinking, c.full_text)"

Span = tuple[int, int]

# ---------------------------------------------------------------------------------- splitting

# Regions no boundary may fall in: display and inline math, fenced code.
_PROTECTED = re.compile(
    r"```.*?(?:```|\Z)"  # fenced code (to the end when unclosed)
    r"|\$\$.*?(?:\$\$|\Z)"  # display math
    r"|\\\[.*?(?:\\\]|\Z)"
    r"|\\\(.*?(?:\\\)|\Z)"
    r"|\$(?:\\.|[^$\n\\])+\$",  # inline math on one line
    re.DOTALL,
)
# A sentence end (punctuation, closers, whitespace) or a line break; the boundary is the
# match's end, so the whitespace stays with the step before it.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]*_]*[^\S\n]*\n\s*|[.!?]+[\"'”’)\]*_]*[^\S\n]+|\n\s*")
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
_ABBREVIATIONS = frozenset({
    "dr", "mr", "mrs", "ms", "prof", "st", "vs", "etc", "e.g", "i.e", "eq", "eqs", "fig", "no",
    "approx", "cf", "resp", "ex", "al", "jr", "sr", "inc", "ltd", "vol", "p", "pp", "ch", "sec",
})
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\Z")
_LIST_NUMBER = re.compile(r"(?:^|\n)[ \t]*(?:[-*>#]+[ \t]*)?(?:\*\*)?\(?\d{1,3}\Z")


def _protected_spans(text: str) -> tuple[list[int], list[int]]:
    starts, ends = [], []
    if "$" in text or "\\" in text or "```" in text:
        for m in _PROTECTED.finditer(text):
            starts.append(m.start())
            ends.append(m.end())
    return starts, ends


def _inside(pos: int, starts: list[int], ends: list[int]) -> bool:
    i = bisect.bisect_right(starts, pos) - 1
    return i >= 0 and pos < ends[i]


def _is_sentence_end(text: str, match: re.Match) -> bool:
    """Whether a punctuation match really ends a sentence (line breaks always do)."""
    start, end = match.start(), match.end()
    if text[start] == "\n":
        return True
    if "\n" in text[start:end]:
        return True  # punctuation at the end of a line: a line break splits anyway
    if end < len(text) and text[end].islower():
        return False  # "e.g. the", "9! ways", "approx. two": the sentence goes on
    word = _WORD_BEFORE.search(text, max(0, start - 12), start)
    if word and text[start] == "." and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
        return False
    # "2. Compute ..." at the start of a line is a list number, not a sentence end
    return not (text[start] == "." and _LIST_NUMBER.search(text, max(0, start - 24), start))


def split_spans(text: str, unit: str = "sentence") -> list[Span]:
    """The steps of ``text`` as contiguous ``(start, end)`` character spans covering it."""
    if unit not in UNITS:
        raise ValueError(f"unknown step unit '{unit}': use one of {', '.join(UNITS)}")
    n = len(text)
    if n == 0:
        return []
    starts, ends = _protected_spans(text)
    pattern = _SENTENCE_END if unit == "sentence" else _PARAGRAPH_END
    spans: list[Span] = []
    begin = 0
    for match in pattern.finditer(text):
        boundary = match.end()
        if boundary >= n:
            break
        if starts and _inside(match.start(), starts, ends):
            continue
        if unit == "sentence" and not _is_sentence_end(text, match):
            continue
        if text[begin:boundary].isspace():
            continue  # whitespace alone is not a step: it joins the next one
        spans.append((begin, boundary))
        begin = boundary
    if spans and text[begin:].isspace():
        spans[-1] = (spans[-1][0], n)  # trailing whitespace stays with the last step
    else:
        spans.append((begin, n))
    return spans


def split_text(text: str, unit: str = "sentence") -> list[str]:
    """The steps' texts; ``"".join(split_text(t)) == t``."""
    return [text[a:b] for a, b in split_spans(text, unit)]


# ---------------------------------------------------------------------------------- roles

_HEAD_JUNK = re.compile(r"^(?:[\s*#>_\-•]+|\(?\d{1,3}[.)]\s+|\(?[a-z][.)]\s+)+")
_MATH_CHARS = "0123456789=+-*/^\\{}()<>_|"
_DROP_MATH = str.maketrans("", "", _MATH_CHARS)
_DROP_SPACE = str.maketrans("", "", " \t\n\r\f\v")


def math_share(text: str) -> float:
    """Share of math characters among the non-space characters (0 for an empty text)."""
    visible = text.translate(_DROP_SPACE)  # two C-level passes instead of a Python loop
    if not visible:
        return 0.0
    return (len(visible) - len(visible.translate(_DROP_MATH))) / len(visible)


@dataclass(frozen=True)
class Rule:
    role: str
    start: re.Pattern | None = None
    any: re.Pattern | None = None
    before: float | None = None
    after: float | None = None
    math_at_least: float | None = None
    math_below: float | None = None

    def matches(self, lowered: str, heads: tuple[str, ...], position: float, math: float) -> bool:
        if self.before is not None and position >= self.before:
            return False
        if self.after is not None and position < self.after:
            return False
        if self.math_at_least is not None and math < self.math_at_least:
            return False
        if self.math_below is not None and math >= self.math_below:
            return False
        if self.start is None and self.any is None:
            return True
        if self.start is not None and any(self.start.match(head) for head in heads):
            return True
        return self.any is not None and self.any.search(lowered) is not None


_WORD_START = r"(?<!\w)"


def _phrase_regex(phrases: list[str]) -> re.Pattern | None:
    """Literal phrases as one whole-word, case-folded regex (a space matches any whitespace)."""
    parts = sorted({r"\s+".join(re.escape(w) for w in p.lower().split()) for p in phrases if p.strip()}, key=len, reverse=True)
    return re.compile(_WORD_START + "(?:" + "|".join(parts) + r")(?!\w)") if parts else None


@dataclass
class RoleRules:
    """A rule set read from YAML (see core/step_roles.yaml for the format and its rules)."""

    rules: list[Rule]
    fallback: str
    interjections: re.Pattern | None
    micro_actions: dict[str, re.Pattern | None]
    sha256: str
    path: str
    descriptions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> RoleRules:
        return _load_rules(str(Path(path or DEFAULT_RULES_PATH).resolve()))

    def role(self, step: str, position: float = 0.5) -> str:
        """The role of one step's text; ``position`` is where it starts, as a fraction (0-1)
        of the whole text's characters."""
        lowered = step.lower()
        head = _HEAD_JUNK.sub("", lowered, count=1)
        heads: tuple[str, ...] = (head,)
        if self.interjections is not None:
            bare = self.interjections.sub("", head, count=1)
            if bare != head:
                heads = (head, bare)
        math = math_share(step)
        for rule in self.rules:
            if rule.matches(lowered, heads, position, math):
                return rule.role
        return self.fallback

    def actions(self, step: str) -> list[str]:
        """The micro-actions (names) whose phrases occur in the step, in the file's order."""
        lowered = step.lower()
        if self._any_action is None or self._any_action.search(lowered) is None:
            return []  # most steps hold none: one scan instead of one per action
        return [name for name, pattern in self.micro_actions.items() if pattern is not None and pattern.search(lowered)]

    def __post_init__(self):
        # a superset of every action's phrases, without the word-boundary lookbehind that
        # would keep re from scanning fast
        bodies = ["(?:" + p.pattern.replace(_WORD_START, "", 1) + ")" for p in self.micro_actions.values() if p is not None]
        self._any_action = re.compile("|".join(bodies)) if bodies else None

    def label(self, text: str, spans: list[Span]) -> tuple[list[str], list[list[str]]]:
        """Roles and micro-actions of every span of ``text``."""
        n = max(len(text), 1)
        roles, actions = [], []
        for a, b in spans:
            step = text[a:b]
            roles.append(self.role(step, a / n))
            actions.append(self.actions(step))
        return roles, actions


@lru_cache(maxsize=8)
def _load_rules(path: str) -> RoleRules:
    raw = Path(path).read_bytes()
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        # a file's content, not a caller's argument: ValueError, as core.text.load_markers raises
        raise ValueError(f"{path}: expected a mapping with a 'rules' list (see {DEFAULT_RULES_PATH.name})")  # noqa: TRY004
    rules = []
    for i, item in enumerate(data["rules"], start=1):
        where = f"{path}: rule {i}"
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise ValueError(f"{where}: 'role' must be one of {', '.join(ROLES)}")
        unknown = set(item) - {"role", "start", "any", "before", "after", "math_at_least", "math_below"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        compiled: dict[str, Any] = {}
        for key in ("start", "any"):
            patterns = item.get(key) or []
            if isinstance(patterns, str):
                patterns = [patterns]
            try:
                compiled[key] = re.compile("(?:" + "|".join(f"(?:{p})" for p in patterns) + ")") if patterns else None
            except re.error as exc:
                raise ValueError(f"{where}: a '{key}' pattern is not a valid regular expression: {exc}") from None
        for key in ("before", "after", "math_at_least", "math_below"):
            value = item.get(key)
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{where}: '{key}' must be a number between 0 and 1")
            compiled[key] = None if value is None else float(value)
        rules.append(Rule(item["role"], **compiled))
    fallback = data.get("fallback", "active_computation")
    if fallback not in ROLES:
        raise ValueError(f"{path}: 'fallback' must be one of {', '.join(ROLES)}")
    words = data.get("interjections") or []
    try:
        interjections = re.compile(r"^(?:(?:" + "|".join(words) + r")[,.!:;]*\s+)+") if words else None
    except re.error as exc:
        raise ValueError(f"{path}: an 'interjections' entry is not a valid regular expression: {exc}") from None
    actions = data.get("micro_actions") or {}
    if not isinstance(actions, dict):
        raise ValueError(f"{path}: 'micro_actions' must map a name to a list of phrases")  # noqa: TRY004
    return RoleRules(
        rules=rules, fallback=fallback, interjections=interjections,
        micro_actions={str(name): _phrase_regex(list(phrases or [])) for name, phrases in actions.items()},
        sha256=hashlib.sha256(raw).hexdigest(), path=path,
        descriptions={str(k): str(v) for k, v in (data.get("roles") or {}).items()},
    )


# ---------------------------------------------------------------------------------- tokens


def span_token_counts(encoding, spans: list[Span]) -> list[int]:
    """Tokens per span, each token counted in the span its first character falls in, so the
    counts add up to the text's token count (``encoding`` from ``tokenizers`` with offsets)."""
    import numpy as np

    if not spans:
        return []
    offsets = encoding.offsets
    if not offsets:
        return [0] * len(spans)
    token_starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    span_starts = np.fromiter((a for a, _ in spans), dtype=np.int64, count=len(spans))
    which = np.searchsorted(span_starts, token_starts, side="right") - 1
    np.clip(which, 0, len(spans) - 1, out=which)
    return np.bincount(which, minlength=len(spans)).tolist()


# ---------------------------------------------------------------------------------- given steps


class AlignmentError(ValueError):
    """Given steps that are not the text's (in order, whitespace aside)."""


def align_steps(text: str, given: list[str]) -> tuple[list[Span], int]:
    """Place steps a dataset gives as text on ``text``: their spans there, contiguous and
    covering it (the whitespace between steps, and any text the steps skip, is joined to the
    step before it), and how many visible characters of ``text`` no given step holds.

    Whitespace is ignored when matching (datasets re-join lines inside a step). Raises
    AlignmentError, naming the step, when a step is not found in order."""
    keep = [i for i, ch in enumerate(text) if not ch.isspace()]
    squeezed = "".join(text[i] for i in keep)
    pos = 0
    starts: list[int] = []
    skipped = 0
    for k, step in enumerate(given):
        needle = "".join(step.split())
        if not needle:
            raise AlignmentError(f"step {k} is empty")
        found = squeezed.find(needle, pos)
        if found < 0:
            raise AlignmentError(f"step {k} ({step[:60]!r}) is not in the CoT's text after step {k - 1}")
        skipped += found - pos
        starts.append(keep[found])
        pos = found + len(needle)
    skipped += len(squeezed) - pos
    if not starts:
        return [], len(squeezed)
    starts[0] = 0  # leading text (whitespace or skipped) joins the first step
    ends = starts[1:] + [len(text)]
    return list(zip(starts, ends)), skipped

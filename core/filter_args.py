"""The app's filter on the command line: flags that build a :class:`core.queries.CotFilter`, so
a reporting command reads exactly the CoTs a page shows.

    python -m core contamination --no-run --json --model QwQ-32B
    python -m core steps --json --filter 'datasets=runs&correct_source=%40own&correct=correct'

``--filter`` takes the app's filter as the page's address shows it (the query after ``?``, or
the whole URL) or as JSON (a recipe's ``base``); the other flags then narrow it: ``--dataset``,
``--model``, ``--benchmark`` (repeatable or comma-separated), ``--correct-source`` (default:
each dataset's own when ``--correct`` is given), ``--correct``, ``--tokens LO,HI``, ``--text``
and ``--condition`` (a condition on any figure as JSON, repeatable; see core/figures.py).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.errors import UserError
from core.figures import Condition
from core.queries import OWN_CORRECTNESS, CotFilter

FLAGS = ("filter", "dataset", "model", "benchmark", "correct_source", "correct", "tokens", "text", "condition")


def add_filter_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """The filter's flags in their own group; ``skip`` leaves out flags the command uses for
    something else (named as in FLAGS)."""
    group = parser.add_argument_group("filter (the app's sidebar filter)")

    def add(name: str, *args, **kwargs) -> None:
        if name not in skip:  # a dest of its own, so a command's flag of the same name is not read as the filter's
            group.add_argument(*args, dest=f"filter_{name}", **kwargs)

    add("filter", "--filter", help="the app's filter: its URL (or the query after '?') or JSON as recipes store it")
    add("dataset", "--dataset", action="append", help="only these datasets (repeatable or comma-separated)")
    add("model", "--model", action="append", help="only these models / teachers (repeatable or comma-separated)")
    add("benchmark", "--benchmark", action="append", help="only problems of these benchmarks (evaluation runs)")
    add("correct_source", "--correct-source", help=f"the correctness source ({OWN_CORRECTNESS}: each dataset's own)")
    add("correct", "--correct", choices=("any", "correct", "incorrect", "unknown"), help="only CoTs with this verdict")
    add("tokens", "--tokens", metavar="LO,HI", help="only CoTs with this many tokens")
    add("text", "--text", help="only CoTs whose question or text has these words")
    add("condition", "--condition", action="append", metavar="JSON",
        help='a condition on a figure, e.g. {"level": "problem", "source": "contamination", '
             '"metric": "contaminated:aime24", "missing": true} (repeatable)')


def _names(values) -> tuple[str, ...]:
    return tuple(part.strip() for value in values or () for part in str(value).split(",") if part.strip())


def parse_filter(text: str) -> CotFilter:
    """A filter from ``--filter``: JSON (recipes' form) or the app's URL / query string."""
    text = text.strip()
    if text.startswith("{"):
        from core.recipes import filter_from_dict

        try:
            return filter_from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"--filter is not valid JSON: {exc}") from exc
    query = urlsplit(text).query if "?" in text else text
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=False).items()}
    known = {f for f in CotFilter.__dataclass_fields__}
    unknown = sorted(set(params) - known)
    if unknown and not set(params) & known:
        raise UserError(f"--filter has no filter field ({', '.join(unknown)}); give the app's URL, its query "
                        "(datasets=...&conditions=...) or JSON")
    return CotFilter.from_params(params)


def filter_from_args(args: argparse.Namespace, **overrides: Any) -> CotFilter:
    """The CotFilter the flags describe (``overrides``: fields the command sets itself)."""
    def get(name: str):
        return getattr(args, f"filter_{name}", None)  # a flag the command skipped is absent

    f = parse_filter(get("filter")) if get("filter") else CotFilter()
    changes: dict[str, Any] = {}
    for flag, field in (("dataset", "datasets"), ("model", "models"), ("benchmark", "benchmarks")):
        if get(flag):
            changes[field] = _names(get(flag))
    if get("correct_source"):
        changes["correct_source"] = get("correct_source")
    if get("correct") and get("correct") != "any":
        changes["correct"] = get("correct")
        if not (changes.get("correct_source") or f.correct_source):
            changes["correct_source"] = OWN_CORRECTNESS
    if get("tokens"):
        try:
            lo, hi = (int(float(v)) for v in str(get("tokens")).split(","))
        except ValueError as exc:
            raise UserError(f"--tokens takes LO,HI (two numbers), not {get('tokens')!r}") from exc
        changes["tokens_range"] = (lo, hi)
    if get("text"):
        changes["text"] = get("text").strip()
    if get("condition"):
        added = []
        for text in get("condition"):
            try:
                added.append(Condition.from_dict(json.loads(text)))
            except json.JSONDecodeError as exc:
                raise UserError(f"--condition is not valid JSON: {text!r} ({exc})") from exc
        changes["conditions"] = (*f.conditions, *added)
    changes.update({k: v for k, v in overrides.items() if v not in (None, ())})
    return f.with_(**changes) if changes else f

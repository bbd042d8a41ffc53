"""The app's filter on the command line (core.filter_args): the flags, the app's URL and a
recipe's JSON give the same CotFilter the sidebar would."""

from __future__ import annotations

import argparse
import json

import pytest

from core.errors import UserError
from core.figures import Condition, Figure
from core.filter_args import add_filter_arguments, filter_from_args, parse_filter
from core.queries import OWN_CORRECTNESS, CotFilter

DROP = Condition(Figure("contaminated:aime24", "contamination", level="problem"), missing=True)


def _parse(argv: list[str], **skip) -> CotFilter:
    parser = argparse.ArgumentParser()
    add_filter_arguments(parser, **skip)
    return filter_from_args(parser.parse_args(argv))


def test_flags_url_and_json_give_the_same_filter():
    f = CotFilter(datasets=("a", "b"), models=("m",), correct_source=OWN_CORRECTNESS, correct="correct",
                  tokens_range=(10, 500), conditions=(DROP,))
    from_flags = _parse(["--dataset", "a", "--dataset", "b", "--model", "m", "--correct", "correct",
                         "--tokens", "10,500", "--condition", json.dumps(DROP.as_dict())])
    query = "&".join(f"{k}={v}" for k, v in f.to_params().items())
    assert from_flags == f
    assert parse_filter(query) == parse_filter(f"http://host:8501/explore?{query}") == f
    assert parse_filter(json.dumps(f.as_dict())) == f
    # flags narrow what --filter gives
    assert _parse(["--filter", query, "--model", "other"]) == f.with_(models=("other",))
    assert _parse([]) == CotFilter()


def test_skipped_flags_are_left_to_the_command():
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmark")
    add_filter_arguments(parser, skip=("benchmark",))
    args = parser.parse_args(["--benchmark", "aime24", "--model", "m"])
    assert filter_from_args(args, datasets=("d",)) == CotFilter(datasets=("d",), models=("m",))


@pytest.mark.parametrize(("argv", "says"), [
    (["--tokens", "ten"], "--tokens takes LO,HI"),
    (["--condition", "{not json"], "--condition is not valid JSON"),
    (["--condition", json.dumps({"metric": "x", "level": "nope", "source": "s"})], "level is 'cot' or 'problem'"),
    (["--filter", "{\"surprise\": 1}"], "has no field .surprise."),
    (["--filter", "nothing=here"], "has no filter field"),
])
def test_mistakes_are_sentences(argv, says):
    with pytest.raises(UserError, match=says):
        _parse(argv)

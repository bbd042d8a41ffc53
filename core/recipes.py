"""Recipes: a named, saved selection that can be applied again and gives the same CoTs.

A recipe is a name, a base filter, score sources, conditions on figures, a selection rule
(mode and parameters), a seed and what its draws are keyed on, written as JSON under
``store.data_dir() / "recipes"`` (``<name>.json``). Loading gives back an equal recipe, and
equal recipes keep the identical CoTs as long as the store holds the same datasets and
figures; a recipe that draws at random (capacity-matched, the RV/CD mixer's ties) keys each
draw on the CoT's content (core.selection.draw_key), so it keeps the same CoTs in another
store that ingested the same files, in any order.

Recipes can be written by hand (a file anywhere: ``python -m core select --recipe my.json``).
Format version 3 (versions 1 and 2 still load; they draw on cot_id, as they did when saved)::

    {
      "format_version": 3,
      "name": "thoughtx-cd4",                 # required
      "description": "ThoughtX: logic = 1, RV 3-5, CD 4",
      "base": {                               # the pool (core.queries.CotFilter); every field optional
        "datasets": ["omnithought"], "models": [], "benchmarks": [],
        "rv_source": null, "rv_range": null, "cd_source": null, "cd_range": null,
        "correct_source": "@own",             # a source name, "@own" (each dataset's own) or null
        "correct": "any",                     # any | correct | incorrect | unknown
        "tokens_range": [0, 16384], "reflections_range": null, "truncated": null,
        "text": "", "problem_ids": [], "problem_set": "", "conditions": []
      },
      "sources": {"rv": ["omnithought (QwQ-32B)"], "cd": ["omnithought (QwQ-32B)"], "correct": ["omnithought"]},
      "conditions": [                         # applied inside the pool, each drop counted under its reason
        {"level": "cot", "source": "judge qwen7b", "metric": "logic", "lo": 1, "hi": null, "missing": false}
      ],
      "mode": "thresholds",                   # thresholds | capacity | per_problem | target | rvcd_mix | per_cluster
      "params": {"rv_range": [3, 5], "cd_range": [4, 4]},   # the rule's fields (below); omitted = default
      "seed": 0,
      "draw": "content",                      # content (default) | cot_id
      "annotations": {"sources": [], "labels": 0, "latest": null, "sha256": ""}   # only when it reads human labels
    }

The rules' params (core/selection.py has each one's meaning):

* ``thresholds``: ``rv_range``, ``cd_range`` ([lo, hi] or null), ``tokens_range`` ([lo, hi]
  integers or null), ``require_correct`` (bool);
* ``capacity``: ``capacity`` (C), ``lam``, ``beta`` (numbers), ``k`` (int), ``require_correct``
  (bool), ``weights`` ("relative" | "absolute");
* ``per_problem``: ``rule`` ("shortest_correct" | "top_k" | "all_correct"), ``k``, ``score``,
  ``require_correct``;
* ``target``: ``n`` (int), ``balance`` ("model" | "dataset" | "model_dataset"), ``within``
  ("shortest_correct" | "score"), ``score``, ``require_correct``;
* ``rvcd_mix``: ``cd_bins`` (increasing numbers, default [0, 3, 6, 10]), ``rv_target``
  ("matched" | "low" | "medium" | "high" | a number), ``samples_per_bin`` (int or null: all),
  ``score`` (the logical-correctness figure; null: the correctness sources), ``min_correctness``;

where a ``score`` is ``{"metric": ..., "source": name or null (a CoT column), "level": "cot" |
"problem", "higher_is_better": true}`` and a condition is ``{"level", "source", "metric", "lo",
"hi", "missing"}`` (core/figures.py). A field this version does not know, or a value of the
wrong type, is refused with a sentence naming it (``params.capacity: expected a number, got
"five"``): a silently ignored field would change which CoTs the recipe keeps.

    >>> from core import recipes, selection
    >>> r = recipes.Recipe("thoughtx-cd4", selection.Selection(rule=selection.Thresholds(rv_range=(3, 5))))
    >>> path = recipes.save(r)
    >>> recipes.load("thoughtx-cd4") == r
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from core import selection, store
from core.errors import UserError
from core.figures import Condition, FigureError
from core.queries import CotFilter

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version 1: no conditions anywhere; 1 and 2: draws keyed on cot_id
TOP_LEVEL_FIELDS = ("format_version", "name", "description", "base", "sources", "conditions", "mode", "params", "seed",
                    "draw", "annotations", "saved_at")


class RecipeError(UserError):
    """A recipe file that cannot be read, or a name that cannot be saved."""


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _describe_type(annotation) -> str:
    """What a field's annotation asks for, in words: 'a number or null', '[a number, a number]'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe_type(args[0]).removeprefix('a ')}s"
        return "[" + ", ".join(_describe_type(a) for a in args) + "]"
    if annotation is selection.Score:
        return 'a score {"metric": ..., "source": ..., "level": "cot" | "problem", "higher_is_better": ...}'
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _typed(value, annotation, where: str):
    """``value`` checked against a dataclass field's ``annotation`` (lists become tuples, a
    score dict a Score); RecipeError naming ``where`` when it does not fit."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and value is not None:
            return _typed(value, options[0], where)  # its own message names the element that is wrong
        for arg in options:
            try:
                return _typed(value, arg, where)
            except RecipeError:
                continue
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is selection.Score:
        if isinstance(value, dict):
            return _dataclass_from(selection.Score, value, where)
    elif annotation is typing.Any:
        return value
    raise RecipeError(f"{where}: expected {_describe_type(annotation)}, got {json.dumps(value, default=str)}")


def _dataclass_from(cls, data, where: str, *, skip: tuple[str, ...] = ()):
    """An instance of dataclass ``cls`` from a JSON object, every field type-checked
    (_typed); a field it does not have, a missing required field, or a value its own checks
    refuse is a RecipeError naming ``where``."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected an object {{...}}, got {json.dumps(data, default=str)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"{where} has no field {', '.join(repr(u) for u in unknown)}; its fields are "
                          f"{', '.join(n for n in known if n not in skip)}")
    kwargs = {name: _typed(value, hints[name], f"{where}.{name}") for name, value in data.items() if name not in skip}
    missing = [f.name for f in known.values() if f.name not in data and f.name not in skip
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise RecipeError(f"{where} lacks the field(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except UserError as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def filter_from_dict(data: dict[str, Any], *, where: str = "base") -> CotFilter:
    """The exact CotFilter back from ``CotFilter.as_dict()`` after a JSON round trip (lists
    become tuples again), every field type-checked. Unknown keys are refused: a filter field
    this version does not know would silently change which CoTs the recipe keeps."""
    base = _dataclass_from(CotFilter, data, where, skip=("conditions",))
    return dataclasses.replace(base, conditions=_conditions(data.get("conditions") or [], f"{where}.conditions"))


def _conditions(items, where: str) -> tuple[Condition, ...]:
    if not isinstance(items, (list, tuple)):
        raise RecipeError(f"{where}: expected a list of conditions, got {json.dumps(items, default=str)}")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(Condition.from_dict(item))
        except FigureError as exc:
            raise RecipeError(f"{where}[{i}] is a bad condition: {exc}") from exc
    return tuple(out)


@dataclass(frozen=True)
class Recipe:
    name: str
    selection: selection.Selection = field(default_factory=selection.Selection)
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "base": sel.base.as_dict(),
            "sources": sel.sources.as_dict(),
            "conditions": [c.as_dict() for c in sel.conditions],
            "mode": sel.rule.mode,
            "params": selection.rule_as_dict(sel.rule),
            "seed": sel.seed,
            "draw": sel.draw,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The recipe a JSON object describes (the module docstring's schema), every field
        checked; a RecipeError names the first field that does not fit and says why."""
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe is a JSON object {{...}}, not {type(data).__name__}")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise RecipeError(f"format_version: {version!r} is not supported (this version reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        unknown = sorted(set(data) - set(TOP_LEVEL_FIELDS))
        if unknown:
            raise RecipeError(f"the recipe has no field {', '.join(repr(u) for u in unknown)}; its fields are "
                              f"{', '.join(f for f in TOP_LEVEL_FIELDS if f != 'saved_at')}")
        for required in ("name", "mode"):
            if required not in data:
                raise RecipeError(f"the recipe lacks the field '{required}'")
        if not isinstance(data["name"], str) or not data["name"].strip():
            raise RecipeError(f"name: expected a non-empty string, got {json.dumps(data['name'])}")
        if version == 1 and data.get("conditions"):
            raise RecipeError("conditions: a version 1 recipe has no conditions; write it as format_version 3")
        mode = data["mode"]
        if mode not in selection.RULES:
            raise RecipeError(f"mode: {json.dumps(mode)} is not a selection rule; choose one of {', '.join(selection.RULES)}")
        params = data.get("params") or {}
        rule = _dataclass_from(selection.RULES[mode], params, "params")
        sources = data.get("sources") or {}
        if not isinstance(sources, dict):
            raise RecipeError(f"sources: expected an object {{\"rv\": [...], \"cd\": [...], \"correct\": [...]}}, "
                              f"got {json.dumps(sources, default=str)}")
        for metric, names in sources.items():
            if metric in ("rv", "cd", "correct") and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise RecipeError(f"sources.{metric}: expected a list of score source names, got {json.dumps(names)}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RecipeError(f"seed: expected a whole number, got {json.dumps(seed)}")
        draw = data.get("draw", "content" if version >= 3 else "cot_id")
        if draw not in selection.DRAWS:
            raise RecipeError(f"draw: expected \"content\" or \"cot_id\", got {json.dumps(draw)}")
        try:
            sel = selection.Selection(
                base=filter_from_dict(data.get("base") or {}),
                rule=rule,
                sources=selection.ScoreSources.from_dict(sources),
                seed=seed,
                conditions=_conditions(data.get("conditions") or [], "conditions"),
                draw=draw,
            )
        except RecipeError:
            raise
        except UserError as exc:
            raise RecipeError(str(exc)) from exc
        description = data.get("description", "")
        if not isinstance(description, str):
            raise RecipeError(f"description: expected a string, got {json.dumps(description)}")
        return cls(name=data["name"], selection=sel, description=description)


def recipes_dir() -> Path:
    path = store.data_dir() / "recipes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    """A file-name-safe form of a recipe name."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return text[:80] or "recipe"


def path_of(name: str) -> Path:
    return recipes_dir() / f"{slug(name)}.json"


def saved_as(recipe: Recipe) -> bool:
    """Whether a recipe of this name is saved with the same selection (its description aside)."""
    target = path_of(recipe.name)
    if not recipe.name.strip() or not target.exists():
        return False
    try:
        existing = Recipe.from_dict(_read(target))
    except RecipeError:
        return False
    ignore = ("description", "name")
    return ({k: v for k, v in existing.as_dict().items() if k not in ignore}
            == {k: v for k, v in recipe.as_dict().items() if k not in ignore} and existing.name == recipe.name)


def save(recipe: Recipe, *, overwrite: bool = False, db=None) -> Path:
    """Write the recipe as JSON (atomically); refuses to replace another recipe's file unless
    ``overwrite``. A recipe that reads human labels records their state in ``db``'s labels
    (``annotations``: count, latest, sha256; core.labels.state), so a later run can tell
    whether the labels it selects on have changed since."""
    if not recipe.name.strip():
        raise RecipeError("give the recipe a name")
    target = path_of(recipe.name)
    if target.exists() and not overwrite:
        existing = _read(target)
        raise RecipeError(
            f"a recipe named '{existing.get('name', target.stem)}' is already saved as {target.name}; "
            "choose another name or overwrite it"
        )
    data = recipe.as_dict()
    data["saved_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from core import labels

    annotations = labels.state(labels.human_sources_of(recipe.selection), db=db)
    if annotations:
        data["annotations"] = annotations
    fd, tmp = tempfile.mkstemp(prefix=".recipe-", suffix=".json", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; recipes are meant to be shared
    os.replace(tmp, target)
    return target


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"cannot read the recipe file {path.name}: {exc}") from exc


def load(name_or_path: str | os.PathLike) -> Recipe:
    """A saved recipe by its name, or from a JSON file path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        if path.suffix == ".json" and not path_of(str(name_or_path)).exists():
            raise RecipeError(f"no recipe file {path} (and no saved recipe of that name)")
        path = path_of(str(name_or_path))
        if not path.exists():
            raise RecipeError(f"no saved recipe named '{name_or_path}'")
    try:
        return Recipe.from_dict(_read(path))
    except RecipeError as exc:
        raise RecipeError(f"{path.name}: {exc}") from exc


def list_recipes() -> list[str]:
    """Names of the saved recipes, sorted; unreadable files are skipped."""
    names = []
    for path in sorted(recipes_dir().glob("*.json")):
        try:
            names.append(str(_read(path)["name"]))
        except (RecipeError, KeyError):
            continue
    return sorted(names)


def delete(name: str) -> None:
    path = path_of(name)
    if not path.exists():
        raise RecipeError(f"no saved recipe named '{name}'")
    path.unlink()


def apply(recipe: Recipe, *, db=None) -> pl.Series:
    """The cot_id of every CoT the recipe keeps, ascending."""
    return selection.kept_ids(recipe.selection, db=db)


def compare(recipe_a: Recipe, recipe_b: Recipe, *, db=None) -> pl.DataFrame:
    """Per model, the CoTs kept by both recipes, only by A, only by B; a last row 'all'."""
    return selection.compare(recipe_a.selection, recipe_b.selection, db=db)

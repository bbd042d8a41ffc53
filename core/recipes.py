"""Recipes: a named, saved selection that can be applied again and gives the same CoTs.

A recipe is a name, a base filter, score sources, conditions on figures, a selection rule
(mode and parameters) and a seed, written as JSON under ``store.data_dir() / "recipes"``.
Loading gives back an equal recipe, and equal recipes keep the identical CoTs (the capacity
sampler is seeded per CoT, see core.selection.uniform), as long as the store holds the same
datasets and figures.

The file (format version 2; version 1 files, which have no conditions, still load)::

    {"format_version": 2, "name": "...", "description": "...",
     "base": {CotFilter fields; "conditions": [condition, ...]},
     "sources": {"rv": [source, ...], "cd": [...], "correct": [...]},
     "conditions": [condition, ...],      # the selection's own, applied inside the pool
     "mode": "thresholds" | "capacity" | "per_problem" | "target",
     "params": {the rule's fields; "score": {"metric", "source", "level", "higher_is_better"}},
     "seed": 0}

where a condition is ``{"level": "cot" | "problem", "source": name or null (a CoT column),
"metric": ..., "lo": number or null, "hi": number or null, "missing": false}`` (see
core/figures.py). ``base.correct_source`` may be ``"@own"``: each dataset's own verdict.

    >>> from core import recipes, selection
    >>> r = recipes.Recipe("thoughtx-cd4", selection.Selection(rule=selection.Thresholds(rv_range=(3, 5))))
    >>> path = recipes.save(r)
    >>> recipes.load("thoughtx-cd4") == r
    True
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from core import selection, store
from core.errors import UserError
from core.figures import Condition, FigureError
from core.queries import CotFilter

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no conditions anywhere


class RecipeError(UserError):
    """A recipe file that cannot be read, or a name that cannot be saved."""


def filter_from_dict(data: dict[str, Any]) -> CotFilter:
    """The exact CotFilter back from ``CotFilter.as_dict()`` after a JSON round trip (lists
    become tuples again). Unknown keys are refused: a filter field this version does not
    know would silently change which CoTs the recipe keeps."""
    known = {f.name for f in fields(CotFilter)}
    unknown = set(data) - known
    if unknown:
        raise RecipeError(f"the recipe's filter has fields this version does not know: {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "conditions"}
    try:
        kwargs["conditions"] = tuple(Condition.from_dict(c) for c in data.get("conditions") or ())
    except FigureError as exc:
        raise RecipeError(f"the recipe's filter has a bad condition: {exc}") from exc
    return CotFilter(**kwargs)


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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise RecipeError(f"recipe format version {version!r} is not supported (this version reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        if version == 1 and data.get("conditions"):
            raise RecipeError("a version 1 recipe has no conditions; write it as format_version 2")
        try:
            conditions = tuple(Condition.from_dict(c) for c in data.get("conditions") or ())
        except FigureError as exc:
            raise RecipeError(f"the recipe has a bad condition: {exc}") from exc
        try:
            sel = selection.Selection(
                base=filter_from_dict(data.get("base") or {}),
                rule=selection.rule_from_dict(data["mode"], data.get("params") or {}),
                sources=selection.ScoreSources.from_dict(data.get("sources") or {}),
                seed=int(data.get("seed", 0)),
                conditions=conditions,
            )
            return cls(name=str(data["name"]), selection=sel, description=str(data.get("description", "")))
        except KeyError as exc:
            raise RecipeError(f"the recipe lacks the field {exc}") from exc
        except TypeError as exc:
            raise RecipeError(f"the recipe has a malformed field: {exc}") from exc


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


def save(recipe: Recipe, *, overwrite: bool = False) -> Path:
    """Write the recipe as JSON (atomically); refuses to replace another recipe's file unless
    ``overwrite``."""
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
        path = path_of(str(name_or_path))
        if not path.exists():
            raise RecipeError(f"no saved recipe named '{name_or_path}'")
    return Recipe.from_dict(_read(path))


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

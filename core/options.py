"""Options defined once: a dataclass per job kind gives the CLI flags, the job's params and
the Jobs form's defaults.

An options class is a plain dataclass whose fields carry their help text through
:func:`option` (trl's ``HfArgumentParser`` and vLLM's ``EngineArgs.add_cli_args`` work the
same way); its ``__post_init__`` checks the values and raises :class:`core.errors.UserError`
with a sentence, so the CLI, a job and a page refuse bad values the same way::

    @dataclass
    class TokensOptions:
        tokenizer: str = option(DEFAULT_TOKENIZER, help="HF id, local path, or the offline default")
        recount: bool = option(False, help="also recount CoTs counted by another tokenizer")

    add_arguments(parser, TokensOptions)            # --tokenizer NAME, --recount
    opts = from_namespace(TokensOptions, args)      # back from argparse
    opts = from_params(TokensOptions, job_params)   # from a job's JSON params (strings cast)
    to_params(opts)                                 # the JSON params a job stores

Field types understood: str, int, float, bool (a ``--flag``, or ``--no-flag`` when it
defaults to True), ``X | None``, and ``tuple[str, ...]`` / ``tuple[int, ...]`` (a
comma-separated flag, which may also be repeated: ``--dataset a --dataset b,c``). Fields of other types (a dict, say) are params only, not flags.
A class may set ``OPTION_PREFIX = "ray_"``: its fields are then ``ray_<name>`` in flags and
params (``--ray-replicas``), so several classes can share one flat namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, ClassVar

from core.errors import UserError

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, *, help: str = "", label: str | None = None, flag: str | None = None,
           aliases: tuple[str, ...] = (), choices: tuple | None = None, cli: bool = True,
           default_factory: Any = MISSING) -> Any:
    """A dataclass field with what the CLI and the Jobs form show for it.

    ``help`` is the flag's help (and the form's tooltip); ``label`` the form's label (default:
    the field name in words); ``flag`` replaces the generated ``--field-name``; ``aliases``
    are extra flags (``--lr``); ``choices`` the allowed values; ``cli=False`` keeps a field
    out of the command line (it stays a job param and a keyword)."""
    meta = {"help": help, "label": label, "flag": flag, "aliases": tuple(aliases), "choices": choices, "cli": cli}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------- types


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(tp) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _item_type(tp) -> Any | None:
    """int or str for ``tuple[int, ...]`` / ``list[str]``; None for other types."""
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _prefix(cls) -> str:
    return getattr(cls, "OPTION_PREFIX", "")


def param_names(cls) -> dict[str, str]:
    """{job param / flag dest name: field name} of an options class."""
    return {_prefix(cls) + f.name: f.name for f in dataclasses.fields(cls) if f.init}


def _cast(value: Any, tp: Any, where: str) -> Any:
    """``value`` (from JSON, a form or a flag) as the field's type; UserError when it cannot be."""
    inner, optional = _unwrap(tp)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise UserError(f"{where} needs a value.")
    item = _item_type(inner)
    try:
        if item is not None:
            parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
            return tuple(item(p) for p in parts if p != "")
        if inner is bool:
            if isinstance(value, str):
                if value.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if value.strip().lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where} must be {_type_words(tp)}, not {value!r}.") from exc
    return value


def _type_words(tp) -> str:
    inner, optional = _unwrap(tp)
    item = _item_type(inner)
    words = (f"a comma-separated list of {_type_words(item)}s" if item is not None else
             {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(inner, str(inner)))
    return words + (" (or empty)" if optional else "")


# --------------------------------------------------------------------------- params


def from_params(cls, params: dict[str, Any], *, strict: bool = False):
    """An instance of ``cls`` from a job's params: values cast to the field types, keys that
    are not this class's ignored (a kind's params are shared by several classes), missing
    ones left at their defaults. ``strict``: unknown keys are refused instead."""
    names = param_names(cls)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if strict:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise UserError(f"{cls.__name__} has no option {', '.join(unknown)}; the options are {', '.join(sorted(names))}.")
    kwargs = {}
    for key, name in names.items():
        if key not in params:
            continue
        value = params[key]
        if value is None and fields[name].default is not MISSING and fields[name].default is not None:
            continue  # an empty form field: the default
        kwargs[name] = _cast(value, hints[name], f"'{key}'")
    missing = [k for k, n in names.items() if n not in kwargs and fields[n].default is MISSING
               and fields[n].default_factory is MISSING]
    if missing:
        raise UserError(f"{' and '.join(missing)} must be given.")
    return cls(**kwargs)


def to_params(*objs) -> dict[str, Any]:
    """The JSON-able params of one or more options instances (tuples become lists)."""
    params: dict[str, Any] = {}
    for obj in objs:
        prefix = _prefix(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            params[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return params


def defaults(cls) -> dict[str, Any]:
    """{field name: default} of the fields that have one (what a form starts from)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def describe(cls) -> list[dict[str, Any]]:
    """One entry per field for a generated form: name (the param key), label, help, type
    words, base type (str/int/float/bool/tuple), optional, default, choices."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        inner, optional = _unwrap(hints[f.name])
        item = _item_type(inner)
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        out.append({
            "name": _prefix(cls) + f.name, "field": f.name,
            "label": f.metadata.get("label") or f.name.replace("_", " ").capitalize(),
            "help": f.metadata.get("help", ""), "type": tuple if item is not None else inner,
            "optional": optional, "required": f.default is MISSING and f.default_factory is MISSING,
            "default": default, "choices": f.metadata.get("choices"), "cli": f.metadata.get("cli", True),
        })
    return out


# --------------------------------------------------------------------------- argparse


def add_arguments(parser: argparse.ArgumentParser | Any, cls, *, title: str | None = None) -> None:
    """A flag per field of ``cls`` (in an argument group when ``title`` is given). Every flag
    defaults to None in the namespace, so :func:`from_namespace` keeps the dataclass's own
    default for what was not given."""
    target = parser.add_argument_group(title) if title else parser
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or not f.init:
            continue
        tp = hints[f.name]
        inner, optional = _unwrap(tp)
        item = _item_type(inner)
        if item is None and inner not in (str, int, float, bool):
            continue  # a structured field (a dict): params only
        dest = _prefix(cls) + f.name
        flag = meta.get("flag") or "--" + dest.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = meta.get("help", "")
        required = f.default is MISSING and f.default_factory is MISSING
        if inner is bool:
            if default is True:
                flag = meta.get("flag") or "--no-" + dest.replace("_", "-")
                target.add_argument(flag, *meta.get("aliases", ()), dest=dest, action="store_false", default=None, help=help_text)
            else:
                target.add_argument(flag, *meta.get("aliases", ()), dest=dest, action="store_true", default=None, help=help_text)
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if shown not in (None, "") and "default" not in help_text:
            help_text = f"{help_text} (default {shown})" if help_text else f"default {shown}"
        target.add_argument(
            flag, *meta.get("aliases", ()), dest=dest, default=None, required=required and not optional,
            type=str if item is not None else inner, choices=meta.get("choices") if item is None else None,
            metavar="A,B" if item is not None else None, action="append" if item is not None else "store",
            help=help_text,
        )


def from_namespace(cls, args: argparse.Namespace):
    """``cls`` from parsed flags: a flag not given keeps the field's default; a list flag given
    several times is the comma-joined whole."""
    given = {key: getattr(args, key) for key in param_names(cls) if getattr(args, key, None) is not None}
    given = {key: ",".join(value) if isinstance(value, list) else value for key, value in given.items()}
    return from_params(cls, given)


class Options:
    """Optional base class: ``Options.from_params(params)`` and ``.to_params()`` as methods."""

    OPTION_PREFIX: ClassVar[str] = ""

    @classmethod
    def from_params(cls, params: dict[str, Any]):
        return from_params(cls, params)

    def to_params(self) -> dict[str, Any]:
        return to_params(self)

"""Command-line flags derived from config dataclasses (``amsmooth.config.option``).

A field is a flag when its declaration, or the nearest one up the class hierarchy that has one, carries a "cli"
help text; the flag's name, type (from the annotation), choices (a ``Literal``, or metadata) and argparse action
(a bool field is a switch, a tuple field a repeatable option) come from the field, and the default its help shows
is the field's own default, so no default is written twice.
"""
from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from dataclasses import MISSING, Field, fields
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

# Metadata inherited from the declaration that makes the field a flag.
FLAG_KEYS = ("cli", "flag", "metavar", "choices", "const")


def declaration(cls: type, name: str) -> Mapping[str, Any]:
    """The field's metadata: its own declaration's (note, default text), the flag keys from the nearest
    declaration up the hierarchy that has a "cli" text (a redeclared field keeps its flag)."""
    own = dict(cls.__dataclass_fields__[name].metadata)
    for base in cls.__mro__:
        meta = getattr(base, "__dataclass_fields__", {}).get(name)
        if meta is not None and name in vars(base).get("__annotations__", {}) and "cli" in meta.metadata:
            return {**own, **{k: meta.metadata[k] for k in FLAG_KEYS if k in meta.metadata}}
    return own


def flag_fields(cls: type) -> tuple[Field, ...]:
    """The fields of ``cls`` that are flags, in field order."""
    return tuple(f for f in fields(cls) if "cli" in declaration(cls, f.name))


def flag_name(cls: type, name: str) -> str:
    """``--mask-threshold`` (or the name the field gives, ``--qf-objective``)."""
    return "--" + declaration(cls, name).get("flag", name.replace("_", "-"))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def value_type(cls: type, name: str) -> Any:
    """The field's annotation without ``None`` (``int | None`` → ``int``)."""
    hint = _hints(cls)[name]
    if get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 - built from a tuple
    return hint


def argparse_kwargs(cls: type, name: str, dest: str | None = None) -> dict[str, Any]:
    """``add_argument`` keywords of the field's flag (its help text aside); every flag defaults to None (= the
    config's value), so a flag the user did not give never overrides it. Metadata may give ``choices`` (else a
    ``Literal`` annotation does) and ``const`` (the value of the flag given without one)."""
    meta, hint, f = declaration(cls, name), value_type(cls, name), cls.__dataclass_fields__[name]
    out: dict[str, Any] = {"dest": dest or name}
    if hint is bool:
        return {**out, "action": "store_const", "const": not f.default}
    if get_origin(hint) is tuple:
        out["action"] = "append"
    elif get_origin(hint) is Literal:
        out["choices"] = list(get_args(hint))
    elif hint in (int, float):
        out["type"] = hint
    elif hint is not str:
        raise TypeError(f"{cls.__name__}.{name}: no flag for a field of type {hint}")
    if "choices" in meta:
        out["choices"] = list(meta["choices"])
    if "const" in meta:
        out.update(nargs="?", const=meta["const"])
    if "metavar" in meta:
        out["metavar"] = meta["metavar"]
    return out


def add_field_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, name: str,
                   dest: str | None = None, help: str | None = None) -> None:
    """The field's flag, its help "TEXT (default D)" (``help`` replaces all of it)."""
    text, default = declaration(cls, name)["cli"], default_text(cls, name)
    text = help or (f"{text} (default {default})" if default is not None else text)
    p.add_argument(flag_name(cls, name), help=text.replace("%", "%%"), **argparse_kwargs(cls, name, dest))


def flag_dest(cls: type, name: str) -> str:
    """The dest of the field's flag when it is named after the flag (``--rece-lamb`` → ``rece_lamb``)."""
    return flag_name(cls, name)[2:].replace("-", "_")


def default_text(cls: type, name: str) -> str | None:
    """The field's default as the help shows it ("3000 generations", "0.25", "on", "per concept: …"); None
    when there is nothing to show (an empty default without a text)."""
    meta, f = declaration(cls, name), cls.__dataclass_fields__[name]
    value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    if value is None or value == ():
        text = meta.get("default")
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    if text is not None and "note" in meta:
        text = f"{text} {meta['note']}"
    return text



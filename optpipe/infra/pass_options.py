"""Per-pass options: ``build(pass_options={"simplify": {"atol": 1e-3}})``.

Every pass has a frozen ``Config`` dataclass whose fields are its documented
options. The build flags cover the common ones; ``pass_options`` reaches every
field of every pass, by the pass's name in :data:`optpipe.infra.registry.PASSES`.
They are checked (pass name, field name, value type against the dataclass
field's annotation) before anything runs, and applied with
``dataclasses.replace`` when the pipelines are assembled, so they win over
the values the flags set. A field's choices and the flags that set it are
declared on the field (:func:`optpipe.infra.declared_options.option`). A
pass that this build does not run (``int8`` in an fp32 build) may be named:
its options are checked and then unused, which lets a config file set
defaults for every model.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import OptionDoc, option_doc
from optpipe.infra.registry import PASSES, pass_class


@functools.cache
def declared_options() -> dict[tuple[str, str], OptionDoc]:
    """(pass, field) -> the field's :class:`OptionDoc`, for every Config field declared with ``option()``."""
    found: dict[tuple[str, str], OptionDoc] = {}
    for name in PASSES:
        for field in dataclasses.fields(pass_class(name).Config):
            doc = option_doc(field)
            if doc is not None:
                found[(name, field.name)] = doc
    return found


def field_choices(name: str, field: str) -> tuple[str, ...]:
    """The values pass ``name``'s Config field takes, as declared on it (empty: any of its type)."""
    doc = declared_options().get((name, field))
    return doc.choices if doc is not None else ()


@functools.cache
def flag_fields() -> dict[str, tuple[tuple[str, str], ...]]:
    """Build flag (click parameter name) -> the (pass, field) pairs it sets, read from the declarations.

    A config file uses this to apply its precedence rule (command line > model table > top level)
    across the two spellings (``calib_method = ...`` and ``[passes.int8] method = ...``).
    """
    flags: dict[str, list[tuple[str, str]]] = {}
    for pair, doc in declared_options().items():
        for flag in doc.flags:
            flags.setdefault(flag, []).append(pair)
    return {flag: tuple(pairs) for flag, pairs in flags.items()}


def config_fields(name: str) -> dict[str, Any]:
    """Field name -> resolved type annotation of pass ``name``'s Config.

    Fields marked ``NOT_IN_KEY`` (in-memory samples, the previous build's directory) are set by the
    build itself, not options a user sets, so they are left out.
    """
    config = pass_class(name).Config
    hints = typing.get_type_hints(config)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config) if f.metadata.get("cache_key", True)}


def type_text(hint: Any) -> str:
    """A readable name for an annotation: ``int | None``, ``tuple[str, ...]``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _convert(hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint`` (list -> tuple, int -> float), or raise TypeError."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value)
            except TypeError:
                continue
        raise TypeError
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item) for item in value)
        if args and len(args) != len(value):
            raise TypeError
        return tuple(_convert(arg, item) for arg, item in zip(args, value, strict=False)) if args else tuple(value)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        if len(args) == 2:
            return {_convert(args[0], k): _convert(args[1], v) for k, v in value.items()}
        return dict(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError
        return [_convert(args[0], item) for item in value] if args else list(value)
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise TypeError
        return value
    return value


def check_pass_options(
    pass_options: Mapping[str, Any] | None, where: str = "pass_options"
) -> dict[str, dict[str, Any]]:
    """Validate and convert ``{pass: {field: value}}``; UserInputError naming the pass, the field and the choices.

    ``where`` prefixes every message (a config file passes ``"optpipe.toml: model[0].passes"``).
    """
    if not pass_options:
        return {}
    if not isinstance(pass_options, Mapping):
        raise UserInputError(f"{where}: expected a table {{pass name = {{field = value}}}}, got {pass_options!r}")
    checked: dict[str, dict[str, Any]] = {}
    for name, values in pass_options.items():
        if name not in PASSES:
            raise UserInputError(f"{where}.{name}: unknown pass; passes are: {', '.join(PASSES)}")
        if not isinstance(values, Mapping):
            raise UserInputError(f"{where}.{name}: expected a table of {name} options, got {values!r}")
        fields = config_fields(name)
        valid = ", ".join(f"{f} ({type_text(t)})" for f, t in fields.items()) or "(none: the pass has no options)"
        out: dict[str, Any] = {}
        for field, value in values.items():
            if field not in fields:
                raise UserInputError(f"{where}.{name}.{field}: unknown option of pass '{name}'; its options are: "
                                     f"{valid}")
            try:
                converted = _convert(fields[field], value)
            except TypeError:
                raise UserInputError(f"{where}.{name}.{field}: expected {type_text(fields[field])}, got {value!r}; "
                                     f"options of pass '{name}': {valid}") from None
            choices = field_choices(name, field)
            if choices and converted not in choices:
                raise UserInputError(f"{where}.{name}.{field}: expected one of {', '.join(choices)}, got {value!r}")
            out[field] = converted
        checked[name] = out
    return checked


def apply_pass_options(passes: Iterable[Any], pass_options: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the config of every pass named in (already checked) ``pass_options``."""
    for pass_ in passes:
        values = pass_options.get(pass_.name)
        if values:
            pass_.config = dataclasses.replace(pass_.config, **values)

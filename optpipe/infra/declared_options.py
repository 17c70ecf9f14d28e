"""A pass option's one declaration: its Config field, with help, choices and the build flags that set it.

Why on the field: a pass's frozen Config dataclass already holds an option's name, type and default
(as Olive's ``PassConfigParam`` does), so the rest of what a user sees of the option - its help, its
fixed choices, the ``optpipe build`` flags that set it - is declared beside them, in
``dataclasses.field(metadata=...)``. :mod:`optpipe.infra.pass_options` checks a config file's and
``build(pass_options=...)``'s values against it, ``optpipe passes NAME`` prints it, and the build
flags' precedence rule in a config file reads the flags from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: The metadata key that holds a field's :class:`OptionDoc`.
OPTION = "option"


@dataclass(frozen=True)
class OptionDoc:
    """What a Config field says about itself beyond its name, type and default."""

    help: str
    choices: tuple[str, ...] = ()  # the only values a text option takes (empty: any value of its type)
    flags: tuple[str, ...] = ()  # the ``optpipe build`` flags (click parameter names) that set this field


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[str] = (),
           flags: Sequence[str] = (), default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
           metadata: dict[str, Any] | None = None) -> Any:
    """A Config field declared as an option: ``level: str = option("extended", help=..., choices=LEVELS)``.

    ``metadata`` adds other keys (``NOT_IN_KEY``); the default is checked against ``choices`` here, so a
    declaration cannot contradict itself.
    """
    if choices and default is not dataclasses.MISSING and default not in choices:
        raise ValueError(f"option default {default!r} is not one of its choices {tuple(choices)}")
    doc = OptionDoc(help, tuple(choices), tuple(flags))
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={**(metadata or {}), OPTION: doc})


def option_doc(field: dataclasses.Field[Any]) -> OptionDoc | None:
    """The field's :class:`OptionDoc`, or None for a field declared without :func:`option`."""
    doc = field.metadata.get(OPTION)
    return doc if isinstance(doc, OptionDoc) else None

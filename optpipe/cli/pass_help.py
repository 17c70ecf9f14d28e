"""``optpipe passes --verbose`` / ``optpipe passes NAME``: each pass's options with types and defaults.

The options are the fields of the pass's frozen ``Config`` dataclass, the
same names a config file's ``[passes.<name>]`` table and
``build(pass_options=...)`` accept, so this listing is generated from the
code and cannot drift from it. A field's documentation is the help declared
with it (:func:`optpipe.infra.declared_options.option`), else its comment in
the source; the type is shown as written in the annotation.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option_doc
from optpipe.infra.registry import PASSES, pass_class


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def _field_comments(config: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of the Config's source: the comment per field."""
    try:
        source = inspect.getsource(config)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def describe_pass(name: str) -> str:
    """A pass's one-line summary and its options, one per line."""
    if name not in PASSES:
        raise UserInputError(f"unknown pass '{name}'; the passes are: {', '.join(PASSES)}")
    pass_cls = pass_class(name)
    lines = [f"{name}  {pass_cls.input_kind.value}->{pass_cls.output_kind.value}  {pass_cls.description}"]
    config = pass_cls.Config
    fields = dataclasses.fields(config) if dataclasses.is_dataclass(config) else ()
    if not fields:
        lines.append("    (no options)")
    comments = _field_comments(config)
    for field in fields:
        text = f"    {field.name}: {field.type} = {_default(field)}"
        doc = option_doc(field)
        help_text = doc.help if doc is not None else comments.get(field.name)
        if help_text:
            text += f"  # {help_text}"
        if doc is not None and doc.choices:
            text += f" (one of: {', '.join(doc.choices)})"
        lines.append(text)
    return "\n".join(lines)

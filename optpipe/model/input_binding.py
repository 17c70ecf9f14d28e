"""Bind example inputs to ``forward()`` parameters by name, not by position.

transformers' GPT-2 has ``forward(input_ids, past_key_values=None,
attention_mask=None, ...)``: with inputs named ``input_ids`` and
``attention_mask``, a positional call feeds the mask to the cache argument and
nothing complains. When every input name is a parameter of ``forward()`` and
the names are not simply its first parameters in order, the model is called
with keyword arguments; the parameters left out keep their defaults (``None``,
a flag...), which need not be tensors. :class:`KeywordInputs` gives that call a
positional face so the rest of the build (reference runs, benchmark, golden
data) is unchanged, and the export pass exports the wrapped model with
keyword inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from optpipe.core.errors import UserInputError

_BINDABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def keyword_names(module: Any, names: Sequence[str]) -> tuple[str, ...] | None:
    """The input names to pass as keywords, or None when a positional call binds them the same way.

    Raises UserInputError when binding by name would leave a required parameter without a value.
    """
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return None
    if not names or any(name not in params or params[name].kind not in _BINDABLE for name in names):
        return None  # names that are not parameters: the positional order is all we have
    positional = [name for name, p in params.items() if p.kind in _POSITIONAL]
    if list(names) == positional[: len(names)]:
        return None
    missing = [name for name, p in params.items()
               if p.kind in _BINDABLE and p.default is inspect.Parameter.empty and name not in names]  # fmt: skip
    if missing:
        raise UserInputError(
            f"forward() parameter(s) {', '.join(missing)} have no default and no input: "
            f"give an input for each (the inputs are {', '.join(names)})"
        )
    return tuple(names)


class KeywordInputs(torch.nn.Module):
    """Calls ``module(**{name: tensor})`` for positional tensors given in ``names`` order."""

    def __init__(self, module: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.input_names = tuple(names)

    def forward(self, *args: torch.Tensor) -> Any:
        return self.module(**self.keywords(args))

    def keywords(self, args: Sequence[Any]) -> dict[str, Any]:
        """The keyword arguments for one call."""
        return dict(zip(self.input_names, args, strict=True))


def bind_inputs(module: Any, names: Sequence[str]) -> Any:
    """``module`` itself, or a :class:`KeywordInputs` around it when its inputs must be bound by name."""
    if isinstance(module, KeywordInputs):
        return module
    keywords = keyword_names(module, names)
    return KeywordInputs(module, keywords) if keywords is not None else module

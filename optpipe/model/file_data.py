"""The model file's ``eval_data()``: a hint, never a trap.

Why: ``eval_data`` is a common name; a user's own function may return inputs
only, a tuple ``(input_ids, attention_mask)``, or something optpipe cannot use
at all. None of that may stop a build (it used to: ``not enough values to
unpack``, exit 2) or be dropped silently (a 2-input tuple was ignored). Usable
results become held-out rows (with labels when there are any); anything else
gets ONE warning that names the accepted forms, and the build goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optpipe.core.errors import first_line

ACCEPTED_FORMS = (
    "(inputs, labels) or inputs only, where inputs is a dict input name -> array, a tuple of arrays in "
    "forward() order, or one array for a one-input model, with the same number of rows (axis 0) in each, "
    "and labels one integer class index per row"
)


@dataclass(frozen=True)
class ModelFileEval:
    """Held-out rows from the model file: inputs by name, and labels when the file gave usable ones."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def _array(value: Any) -> np.ndarray | None:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return value if isinstance(value, np.ndarray) else None


def _inputs(value: Any, examples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """``value`` as inputs by name when it fits the examples' ranks and trailing dims, else None."""
    names = list(examples)
    if isinstance(value, Mapping):
        if set(map(str, value)) != set(names):
            return None
        arrays = {name: _array(value[name]) for name in names}
    elif isinstance(value, (tuple, list)) and len(value) == len(names):
        arrays = {name: _array(item) for name, item in zip(names, value, strict=True)}
    elif len(names) == 1:
        arrays = {names[0]: _array(value)}
    else:
        return None
    checked: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        example = examples[name]
        if array is None or array.ndim != example.ndim or array.ndim == 0 or array.shape[1:] != example.shape[1:]:
            return None
        if array.dtype.kind != example.dtype.kind:
            return None
        checked[name] = np.ascontiguousarray(array.astype(example.dtype, copy=False))
    if len({a.shape[0] for a in checked.values()}) != 1 or next(iter(checked.values())).shape[0] == 0:
        return None
    return checked


def _labels(value: Any, rows: int) -> np.ndarray | None:
    """One integer class index per row, or None."""
    array = _array(value)
    if array is None and isinstance(value, (list, tuple)):
        array = np.asarray(value)
    if array is None:
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1 or len(array) != rows or array.dtype.kind not in "iu":
        return None
    return array


def interpret_eval_data(value: Any, examples: Mapping[str, np.ndarray]) -> ModelFileEval | None:
    """What ``eval_data()`` returned, as held-out rows; None when optpipe cannot use it.

    Inputs only is tried first (a 2-input model's ``(input_ids, attention_mask)`` must not be read as
    ``(inputs, labels)``); then ``(inputs, labels)``. Labels that do not fit keep the rows, unlabelled.
    """
    inputs = _inputs(value, examples)
    if inputs is not None:
        return ModelFileEval(inputs)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        inputs = _inputs(value[0], examples)
        if inputs is not None:
            return ModelFileEval(inputs, _labels(value[1], next(iter(inputs.values())).shape[0]))
    return None


def read_eval_data(source: Any, examples: Mapping[str, np.ndarray]) -> tuple[ModelFileEval | None, str | None]:
    """Call the model file's ``eval_data()`` (when it has one): ``(held-out rows, None)`` or ``(None, warning)``."""
    function = getattr(source, "eval_data", None)
    if function is None:
        return None, None
    if not callable(function):
        return None, f"eval_data in the model file is not a function; ignored (accepted: {ACCEPTED_FORMS})"
    try:
        value = function()
    except (Exception, SystemExit) as error:  # user code, maybe not meant for optpipe at all (sys.exit() too)
        return None, (f"eval_data() in the model file failed ({type(error).__name__}: {first_line(error)}); "
                      f"ignored, the build goes on without held-out rows (accepted: {ACCEPTED_FORMS})")
    data = interpret_eval_data(value, examples)
    if data is not None:
        data, non_finite = _finite_rows(data)
        if non_finite:
            return data, non_finite
    if data is not None and data.labels is None and _has_second(value, examples):
        return data, ("eval_data() in the model file gave labels that are not one integer class index per row; "
                      "its rows are kept as unlabelled held-out rows (no task accuracy)")
    if data is None:
        shapes = ", ".join(str(tuple(a.shape)) for a in examples.values())
        return None, (f"eval_data() in the model file returned {_describe(value)}, which does not fit the model's "
                      f"inputs {', '.join(examples)} (example shapes {shapes}); ignored (accepted: "
                      f"{ACCEPTED_FORMS})")
    return data, None


def _finite_rows(data: ModelFileEval) -> tuple[ModelFileEval | None, str | None]:
    """``data`` without the rows that hold NaN/Inf, and the one warning saying so (None when all are finite).

    Why: eval_data() is a hint; a NaN row used to stop the build, and as held-out inputs it made the
    reference output NaN, which blamed the model ("the PyTorch model itself produces NaN/Inf").
    """
    rows = next(iter(data.inputs.values())).shape[0]
    keep = np.ones(rows, dtype=bool)
    for array in data.inputs.values():
        if array.dtype.kind in "fc":
            keep &= np.isfinite(array.reshape(rows, -1)).all(axis=1)
    dropped = int(rows - keep.sum())
    if not dropped:
        return data, None
    where = f"{dropped} of {rows} rows of eval_data() in the model file hold NaN or Inf"
    if not keep.any():
        return None, f"{where}: all of them; ignored, the build goes on without held-out rows"
    labels = data.labels[keep] if data.labels is not None else None
    return ModelFileEval({k: np.ascontiguousarray(v[keep]) for k, v in data.inputs.items()}, labels), (
        f"{where}; dropped those rows, the build uses the other {rows - dropped}")


def _has_second(value: Any, examples: Mapping[str, np.ndarray]) -> bool:
    """Whether ``value`` was ``(inputs, labels)`` rather than inputs only."""
    return (_inputs(value, examples) is None and isinstance(value, (tuple, list)) and len(value) == 2
            and value[1] is not None)


def _describe(value: Any) -> str:
    array = _array(value)
    if array is not None:
        return f"an array of shape {tuple(array.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(_short(v) for v in value[:4])})"
    if isinstance(value, Mapping):
        return f"a dict with keys {', '.join(map(str, list(value)[:6]))}"
    return f"a {type(value).__name__}"


def _short(value: Any) -> str:
    array = _array(value)
    return f"array{tuple(array.shape)}" if array is not None else type(value).__name__

"""From command-line strings to everything ``build()`` needs about the model.

Loads the model (and weights), decides the example inputs (``--input`` or the
model file's ``example_inputs()``), checks them with one forward pass, parses
``--dynamic``, and picks up the model file's optional ``OUTPUT_NAMES`` and
``eval_data()`` (held-out inputs that make the parity check meaningful; a result
optpipe cannot use is a warning, :mod:`optpipe.model.file_data`). All
failures are :class:`~optpipe.core.errors.UserInputError` with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from optpipe.core.errors import UserInputError
from optpipe.model.file_data import read_eval_data
from optpipe.model.input_parsing import DynamicArg, check_unique_names, make_inputs, parse_dynamic, parse_input
from optpipe.model.loading import check_inputs_against_model, find_example_inputs, load_model
from optpipe.runtime.runners import check_outputs_are_tensors


@dataclass
class PreparedModel:
    """A loaded model with its inputs, ready for :func:`optpipe.builder.run.build`."""

    module: Any
    example_inputs: tuple[Any, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] | None
    dynamic: list[DynamicArg] = field(default_factory=list)
    heldout_inputs: dict[str, np.ndarray] | None = None
    source_module: ModuleType | None = None
    # Default INT8 calibration data: "FILE.py:calibration_data" when the model file defines it.
    calibration: str | None = None
    # Labelled eval data (inputs by name, labels) from the model file's eval_data(), for accuracy.
    eval_set: tuple[dict[str, np.ndarray], np.ndarray] | None = None
    # Declared --input LOW..HIGH value ranges by input name: synthetic calibration draws integers from them.
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Model-file helpers optpipe could not use: one warning each (console and report.json); the build goes on.
    warnings: tuple[str, ...] = ()


def _calibration(source: ModuleType | None) -> str | None:
    """``FILE.py:calibration_data`` when the model file defines it (loaded lazily, only for INT8)."""
    file = getattr(source, "__file__", None)
    if file and callable(getattr(source, "calibration_data", None)):
        return f"{file}:calibration_data"
    return None


def prepare_model(
    spec: str,
    *,
    weights: Path | None = None,
    inputs: Sequence[str] = (),
    dynamics: Sequence[str] = (),
    output_names: str | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
) -> PreparedModel:
    """Load and check everything about the model before any build work starts."""
    import torch

    dynamic = [parse_dynamic(text) for text in dynamics]
    input_args = [parse_input(text) for text in inputs]
    loaded = load_model(spec, weights=weights, strict=strict, trust_pickle=trust_pickle)
    if input_args:
        tensors: tuple[Any, ...] = tuple(torch.from_numpy(a) for a in make_inputs(input_args))
        names = tuple(arg.name for arg in input_args)
    else:
        found = find_example_inputs(loaded)
        if found is None:
            raise UserInputError(
                f"no example inputs for {spec}: pass --input NAME:SHAPE[:DTYPE] for each forward() "
                "argument, or define example_inputs() in the model's file"
            )
        tensors, names = found.tensors, found.names
    check_outputs_are_tensors(check_inputs_against_model(loaded.module, tensors, names))
    source = loaded.source_module
    outputs: tuple[str, ...] | None = None
    if output_names:
        outputs = tuple(n.strip() for n in output_names.split(",") if n.strip())
        check_unique_names("--output-names", outputs)
    elif source is not None and getattr(source, "OUTPUT_NAMES", None):
        outputs = tuple(str(n) for n in source.OUTPUT_NAMES)
    examples = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True)}
    held_out, eval_warning = read_eval_data(source, examples)
    return PreparedModel(
        module=loaded.module,
        example_inputs=tuple(tensors),
        input_names=tuple(names),
        output_names=outputs,
        dynamic=dynamic,
        heldout_inputs=held_out.inputs if held_out else None,
        source_module=source,
        calibration=_calibration(source),
        eval_set=(held_out.inputs, held_out.labels) if held_out and held_out.labels is not None else None,
        input_ranges={a.name: (a.low, a.high) for a in input_args if a.low is not None and a.high is not None},
        warnings=(eval_warning,) if eval_warning else (),
    )

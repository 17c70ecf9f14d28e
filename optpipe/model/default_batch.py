"""The default dynamic batch: axis 0 of every input runs from 1 to 64 unless the user says otherwise.

Why a default: a shipped artifact that only accepts the example's batch (often 2)
surprises everyone who serves it at batch 1 or batches requests; Model Navigator
and Optimum export a dynamic batch by default for the same reason. Why a probe:
some models cannot vary the batch (a ``view(2, -1)``, an output that mixes rows
into a fixed size). The default must never fail a build, and the report must
never claim a dynamic batch the artifact lacks, so before the export PyTorch is
run at two other batch sizes; a model that fails there, or whose outputs do not
follow the batch, is exported static with one warning that says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from optpipe.core.errors import OptpipeError, first_line
from optpipe.core.tensor_spec import DynamicDim
from optpipe.runtime.runners import Runner

BATCH = "batch"
DEFAULT_MIN_BATCH = 1
DEFAULT_MAX_BATCH = 64


def default_batch_dim(examples: Mapping[str, np.ndarray]) -> tuple[DynamicDim | None, str | None]:
    """The default batch dimension for these example inputs, or ``(None, why not)``.

    Every input needs an axis 0 and all inputs the same size there (a shared batch); the
    example's batch is the optimisation point and lies within the range.
    """
    if not examples:
        return None, "the model has no inputs"
    scalars = [name for name, value in examples.items() if value.ndim == 0]
    if scalars:
        return None, f"input {', '.join(scalars)} is a scalar (no axis 0 to batch)"
    sizes = {name: int(value.shape[0]) for name, value in examples.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}: {size}" for name, size in sizes.items())
        return None, f"the inputs differ in axis 0 ({listed}), so axis 0 is not a shared batch"
    batch = next(iter(sizes.values()))
    return DynamicDim(BATCH, DEFAULT_MIN_BATCH, batch, max(DEFAULT_MAX_BATCH, batch)), None


def rows(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The example's rows repeated or cut to ``batch`` rows (valid values for ids and masks too)."""
    return {name: np.ascontiguousarray(value[np.arange(batch) % value.shape[0]]) for name, value in inputs.items()}


def batch_blocker(reference: Runner, examples: Mapping[str, np.ndarray], dim: DynamicDim,
                  example_outputs: Mapping[str, np.ndarray]) -> str | None:
    """Why the model cannot run at other batch sizes (PyTorch itself, before any export), or None.

    Tried at the minimum and at the example's batch + 1: the model must run, and every output
    whose axis 0 is the example's batch must have axis 0 equal to the new batch.
    """
    batch = dim.opt
    batched = [name for name, value in example_outputs.items() if value.ndim and value.shape[0] == batch]
    for size in dict.fromkeys((dim.min, batch + 1)):
        if size == batch or not dim.min <= size <= dim.max:
            continue
        try:
            outputs = reference.infer(rows(examples, size))
        except OptpipeError:
            raise
        except Exception as error:  # user code: any failure means "cannot vary the batch"
            return f"the PyTorch model fails at batch {size}: {first_line(error)}"
        for name in batched:
            got = outputs[name]
            if not got.ndim or got.shape[0] != size:
                return (f"output '{name}' has shape {tuple(got.shape)} at batch {size} (axis 0 does not follow "
                        f"the batch)")
    return None


def static_batch_warning(reason: str) -> str:
    """The one warning of a model exported with a static batch although the default is dynamic."""
    return (f"the batch stays static (only the example's batch is accepted): {reason}; declare "
            "--dynamic NAME=MIN:OPT:MAX@INPUT.AXIS for the axes that can vary, or pass --static-batch "
            "to silence this")


def covers_axis0(dynamic_axes: Sequence[tuple[str, int]] | None) -> bool:
    """Whether a declared dynamic dimension already applies to some input's axis 0 (``None`` = every input)."""
    return dynamic_axes is None or any(axis == 0 for _name, axis in dynamic_axes)

"""Is the PyTorch reference worth comparing against?

A parity gate only means something when the reference computes a function of
its input. torchvision's ``vit_b_16(weights=None)`` has a zero-initialised
head: every output is 0, any artifact that also returns 0 "passes" with
cosine 1.0 and top-1 1.0. These checks look at the golden data (the
reference's outputs on the build's cases) and say when an output is all zero,
constant, or the same for every row although the input rows differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optpipe.compare.golden import GoldenCase

_ADVICE = "parity against it proves nothing (untrained or zero-initialised weights? pass --weights)"


def reference_warnings(cases: Sequence[GoldenCase]) -> list[str]:
    """One warning per output of the reference that is all zero, constant or independent of the input."""
    warnings: list[str] = []
    names = list(cases[0].outputs) if cases else []
    for name in names:
        values = [np.asarray(case.outputs[name]) for case in cases if name in case.outputs]
        flat = np.concatenate([v.astype(np.float64).ravel() for v in values]) if values else np.zeros(0)
        if flat.size == 0:
            continue
        if not np.any(flat):
            warnings.append(f"output '{name}' of the PyTorch model is all zeros on every golden case: {_ADVICE}")
        elif np.ptp(flat) == 0:
            warnings.append(f"output '{name}' of the PyTorch model is the constant {flat[0]:g} on every golden "
                            f"case: {_ADVICE}")  # fmt: skip
        elif _input_independent(cases, name):
            warnings.append(f"output '{name}' of the PyTorch model is the same for every input row although the "
                            f"input rows differ: it does not depend on the input; {_ADVICE}")  # fmt: skip
    return warnings


def _input_independent(cases: Sequence[GoldenCase], name: str) -> bool:
    """True when, in every case with differing input rows, all output rows are equal (and some case has them)."""
    compared = False
    for case in cases:
        output = np.asarray(case.outputs[name], dtype=np.float64)
        batch = case.batch
        if batch < 2 or output.ndim == 0 or output.shape[0] != batch:
            continue
        inputs_differ = any(
            value.ndim and value.shape[0] == batch and not np.all(value == value[:1]) for value in case.inputs.values()
        )
        if not inputs_differ:
            continue
        compared = True
        scale = float(np.max(np.abs(output))) or 1.0
        if not np.allclose(output, output[:1], rtol=1e-6, atol=1e-7 * scale):
            return False
    return compared

"""Casting user data (calibration samples, eval sets) to a model input's dtype, by one rule.

Why one rule: calibration data and labelled eval data both arrive as arrays the user saved, and
both must reach the model in its own dtype; a silent float -> int cast (or an overflow to Inf)
would calibrate or score on different numbers than the user gave.
"""

from __future__ import annotations

import numpy as np

from optpipe.core.errors import UserInputError

_KIND_NAMES = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool", "c": "complex"}


def cast_to_model_dtype(arr: np.ndarray, target: np.dtype, where: str) -> np.ndarray:
    """``arr`` as the model input's dtype ``target``, refusing a cast that would change what the data means.

    Only a cast within a kind is made (float64 -> float32, int32 -> int64, uint8 -> int64 when the values
    fit); float data for an integer input, or the reverse, is a one-line UserInputError naming ``where``.
    """
    if arr.dtype == target:
        return arr
    src_kind = "i" if arr.dtype.kind == "u" else arr.dtype.kind
    dst_kind = "i" if target.kind == "u" else target.kind
    if src_kind != dst_kind:
        raise UserInputError(
            f"{where}: dtype {arr.dtype} but the model expects {target} "
            f"({_KIND_NAMES.get(arr.dtype.kind, arr.dtype.kind)} data for a "
            f"{_KIND_NAMES.get(target.kind, target.kind)} input is refused: convert it deliberately)"
        )
    if dst_kind == "i":
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise UserInputError(f"{where}: values do not fit the model's dtype {target}")
        return arr.astype(target)
    if dst_kind == "f":
        with np.errstate(over="ignore"):
            cast = arr.astype(target)
        if np.isfinite(arr).all() and not np.isfinite(cast).all():
            raise UserInputError(f"{where}: values overflow the model's dtype {target}")
        return cast
    return arr.astype(target)

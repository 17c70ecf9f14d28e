"""Reduced-precision library: calibration data, FP16 conversion, INT8 Q/DQ, the accuracy guard."""

from __future__ import annotations

from optpipe.core.errors import VariantSkipped

__all__ = ["VariantSkipped"]

"""Reduced-precision library: calibration data, FP16 conversion, INT8 Q/DQ, the accuracy guard."""

from __future__ import annotations

from typing import Any

from optpipe.errors import EXIT_OK, OptpipeError


class VariantSkipped(OptpipeError):
    """A precision pass found nothing to lower (e.g. no Conv/Gemm/MatMul for INT8).

    Raised instead of passing the FP32 model on under an ``int8`` label: the
    builder records the variant as ``skipped`` with ``reason`` and runs no
    engine, validation or benchmark for it. ``metrics`` keeps what the pass
    found so the report can show it.
    """

    exit_code = EXIT_OK

    def __init__(self, reason: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics or {})

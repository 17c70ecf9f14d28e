"""The build's memory budget: its peak RSS estimated from the model's weights before any work, and checked.

Why up front: a build that runs out of memory dies after minutes of export and calibration, killed by
the kernel with no report; the weights are known as soon as the model is loaded. The estimate is
issue 20's rule, measured on the scale models (benchmarks/scale.py): a build's peak resident set is at
most :data:`WEIGHT_COPIES` times the FP32 weights (PyTorch's copy, the ONNX graph a pass edits, and
the ONNX Runtime session that runs it) plus :data:`FIXED_BYTES` (the libraries, golden data and the
calibration's activations). With calibration chunked (one row per run, histograms a few tensors at a
time: :func:`optpipe.precision.static_quantize.compute_ranges`, which computes the same ranges), the
activations' share drops to :data:`CHUNKED_FIXED_BYTES`. The limit is ``--max-rss`` or, without it,
the memory this machine has available (:func:`optpipe.core.memory.available_memory_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optpipe.core.errors import UserInputError
from optpipe.core.memory import available_memory_bytes, mib

#: Copies of the FP32 weights a build may hold at its peak (PyTorch, an ONNX graph, an ONNX Runtime session).
WEIGHT_COPIES = 3
#: What a build holds besides the weights: torch and onnxruntime themselves, golden data, calibration's activations.
FIXED_BYTES = 1_500_000_000
#: The same with calibration chunked: activations of one row (histograms: of a few tensors) at a time.
CHUNKED_FIXED_BYTES = 1_100_000_000
#: Activations a histogram calibration (entropy, percentile) may hold at once when memory is tight.
CHUNKED_CALIB_BYTES = 64 << 20


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate a build was checked with, its limit, and how calibration must chunk to stay inside it.

    ``calib_bytes``: the most activation bytes a calibration run may hold (None: its default chunks).
    """

    weights: int
    estimate: int
    limit: int | None
    limit_source: str
    calib_bytes: int | None = None

    @property
    def calib_rows(self) -> int | None:
        """Rows per calibration run when chunked (one), else None (the default)."""
        return 1 if self.calib_bytes is not None else None


def weight_bytes(model: Any) -> int:
    """The model's weights as FP32 bytes: every parameter and buffer once (shared tensors counted once).

    Floating tensors count 4 bytes an element whatever their dtype (the ONNX graph is exported in FP32);
    others (integer buffers) their own size. A model that is not a ``torch.nn.Module`` (an exported
    program's module exposes its state the same way) counts 0.
    """
    state = getattr(model, "state_dict", None)
    if state is None:
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in state(keep_vars=False).values():
        if not hasattr(tensor, "numel"):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (id(tensor), 0)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    return total


def estimate_peak(weights: int, *, chunked: bool = False) -> int:
    """The build's peak RSS for ``weights`` bytes of FP32 weights (chunked: calibration one row at a time)."""
    return WEIGHT_COPIES * weights + (CHUNKED_FIXED_BYTES if chunked else FIXED_BYTES)


def plan_memory(model: Any, max_rss: int | None, *, calibrates: bool) -> MemoryPlan:
    """The memory plan of a build of ``model``: refused (UserInputError, exit 2) when it cannot fit its limit.

    ``max_rss``: ``--max-rss`` in bytes, or None for the memory available now. ``calibrates``: a variant
    calibrates (int8), so chunking calibration can bring the estimate down. A limit that fits only
    chunked gives a plan with ``calib_bytes`` set; one that cannot fit even so is refused before any work.
    """
    weights = weight_bytes(model)
    full = estimate_peak(weights)
    limit, source = (max_rss, "--max-rss") if max_rss is not None else (available_memory_bytes(), "available memory")
    if limit is None or full <= limit:
        return MemoryPlan(weights, full, limit, source)
    chunked = estimate_peak(weights, chunked=True)
    if calibrates and chunked <= limit:
        return MemoryPlan(weights, chunked, limit, source, calib_bytes=CHUNKED_CALIB_BYTES)
    least = chunked if calibrates else full
    raise UserInputError(
        f"this build needs about {_gb(least)} of memory ({WEIGHT_COPIES} x {_gb(weights)} of FP32 weights + "
        f"{_gb(least - WEIGHT_COPIES * weights)}) but {_limit_text(limit, source)}; nothing was built "
        "(give a larger --max-rss, or build on a machine with more memory)")


def _limit_text(limit: int, source: str) -> str:
    return f"--max-rss is {_gb(limit)}" if source == "--max-rss" else f"this machine has {_gb(limit)} available"


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB"


def plan_record(plan: MemoryPlan, peak: int | None, process_peak: int | None, paged_out: int = 0) -> Any:
    """``report.memory`` for ``plan``, the peaks measured while the build ran and the PyTorch weights' bytes
    mapped from disk after the export (:mod:`optpipe.model.paged_weights`)."""
    from optpipe.core.records import MemoryRecord

    return MemoryRecord(weights_mb=mib(plan.weights) or 0.0, estimate_mb=mib(plan.estimate) or 0.0,
                        limit_mb=mib(plan.limit), limit_source=plan.limit_source, peak_rss_mb=mib(peak),
                        process_peak_rss_mb=mib(process_peak), calib_rows=plan.calib_rows,
                        torch_weights_paged_out_mb=mib(paged_out) or 0.0)

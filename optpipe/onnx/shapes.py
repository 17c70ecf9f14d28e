"""The one reader of an ONNX graph's interface: its real inputs and its outputs, with shapes and dtypes.

Why one: inspection (``optpipe inspect``), the precision passes (input specs for
calibration data), the TensorRT lint (dynamic axes without a profile) and
``optpipe lint --dynamic`` all need the same facts, and four hand-written readers
disagreed on details (unnamed axes, missing shapes, initializers listed as inputs).
Each caller now maps this record to what it needs.

A dimension is kept as ONNX states it: ``int`` (``dim_value``), ``str``
(``dim_param``, possibly empty) or ``None`` (neither is set). A value with no
shape at all, or that is not a tensor, has ``shape=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GraphDim = int | str | None


@dataclass(frozen=True)
class GraphValue:
    """One graph input or output as declared in the ONNX file."""

    name: str
    shape: tuple[GraphDim, ...] | None
    dtype: str  # numpy-style (``float32``), ``undefined``, or the value kind for non-tensors


def dtype_name(elem_type: int) -> str:
    """numpy-style name for an ONNX element type (``float32``, ``int64``, ...)."""
    import onnx

    if elem_type == 0:
        return "undefined"
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def read_value(value: Any) -> GraphValue:
    """The :class:`GraphValue` of one ``onnx.ValueInfoProto``."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return GraphValue(value.name, None, kind or "unknown")
    tensor_type = value.type.tensor_type
    shape: tuple[GraphDim, ...] | None = None
    if tensor_type.HasField("shape"):
        shape = tuple(_dim(dim) for dim in tensor_type.shape.dim)
    return GraphValue(value.name, shape, dtype_name(tensor_type.elem_type))


def _dim(dim: Any) -> GraphDim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param"):
        return str(dim.dim_param)
    return None


def graph_inputs(graph: Any) -> list[GraphValue]:
    """The inputs a caller feeds: graph inputs that are not initializers (old exporters list weights too)."""
    initializers = {init.name for init in graph.initializer}
    return [read_value(v) for v in graph.input if v.name not in initializers]


def graph_outputs(graph: Any) -> list[GraphValue]:
    """The graph's outputs, in order."""
    return [read_value(v) for v in graph.output]

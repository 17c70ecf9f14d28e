"""Summarise an ONNX file: interface, opsets, op histogram, parameters and sizes.

Used by ``optpipe inspect`` and by reports, so a user can see at a glance what a
build produced - in particular the op domains, since ONNX Runtime's offline
optimisations add ``com.microsoft`` ops that make a file runtime-specific while
``onnx.checker`` still passes it.

The model is loaded with ``load_external_data=False``: the graph structure is all
we need, and large models keep most bytes in external data files whose sizes we
read from the file system instead.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from optpipe.core.errors import UserInputError, first_line
from optpipe.onnx.shapes import GraphValue, graph_inputs, graph_outputs

DEFAULT_DOMAIN = "ai.onnx"


def _value_info(value: GraphValue) -> dict[str, Any]:
    """Name, shape (``int`` / ``str`` dim_param / ``None`` unknown) and dtype of a graph input/output."""
    shape = None if value.shape is None else list(value.shape)
    return {"name": value.name, "shape": shape, "dtype": value.dtype}


def _initializer_bytes(tensor: Any) -> int:
    """Size of one initializer's data, without loading external data into memory."""
    import numpy as np
    import onnx

    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:
        itemsize = 0
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    if itemsize == 0:  # strings or unknown types: fall back to what is stored inline
        return len(tensor.raw_data) + sum(len(s) for s in tensor.string_data)
    return count * itemsize


def _external_locations(tensor: Any) -> str | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return str(entry.value)
    return None


def _walk_nodes(graph: Any) -> list[Any]:
    """All nodes, including those inside If/Loop/Scan subgraphs (they run too)."""
    import onnx

    nodes: list[Any] = []
    stack = [graph]
    while stack:
        current = stack.pop()
        for node in current.node:
            nodes.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    return nodes


def inspect_onnx(path: str | Path) -> dict[str, Any]:
    """Describe the ONNX model at ``path`` as a JSON-serialisable dict.

    Keys: ``path``, ``ir_version``, ``producer``, ``opsets`` (domain -> version),
    ``inputs``/``outputs`` (name, shape with dim_param strings, dtype), ``num_nodes``,
    ``op_histogram`` (op type -> count, most frequent first; non-default domains
    prefixed as ``domain::Op``), ``op_domains`` (domain -> node count),
    ``num_initializers``, ``parameter_bytes``, ``file_bytes``, ``external_data_bytes``
    and ``external_data_files``. A missing, corrupt or non-ONNX file raises
    :class:`UserInputError`.
    """
    import onnx

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} is not a valid ONNX model: the file does not exist")
    if not path.is_file():
        raise UserInputError(f"{path} is not a valid ONNX model: it is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise many types for bad bytes
        detail = first_line(exc, with_type=False)
        raise UserInputError(f"{path} is not a valid ONNX model: {detail}") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        # Protobuf parses many arbitrary byte strings as an empty message.
        raise UserInputError(f"{path} is not a valid ONNX model: it has no graph (empty or not ONNX)")

    graph = model.graph
    nodes = _walk_nodes(graph)
    histogram: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    for node in nodes:
        domain = node.domain or DEFAULT_DOMAIN
        domains[domain] += 1
        histogram[node.op_type if domain == DEFAULT_DOMAIN else f"{domain}::{node.op_type}"] += 1

    external_files: dict[str, int] = {}
    for tensor in graph.initializer:
        location = _external_locations(tensor)
        if location is not None and location not in external_files:
            data_path = path.parent / location
            external_files[location] = data_path.stat().st_size if data_path.is_file() else 0

    return {
        "path": str(path),
        "ir_version": int(model.ir_version),
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "opsets": {(o.domain or DEFAULT_DOMAIN): int(o.version) for o in model.opset_import},
        # Initializers listed as graph inputs (old exporters) are weights, not user inputs.
        "inputs": [_value_info(v) for v in graph_inputs(graph)],
        "outputs": [_value_info(v) for v in graph_outputs(graph)],
        "num_nodes": len(nodes),
        "op_histogram": dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        "op_domains": dict(sorted(domains.items(), key=lambda item: (-item[1], item[0]))),
        "num_initializers": len(graph.initializer),
        "parameter_bytes": sum(_initializer_bytes(t) for t in graph.initializer),
        "file_bytes": path.stat().st_size,
        "external_data_bytes": sum(external_files.values()),
        "external_data_files": sorted(external_files),
    }


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # unreachable; keeps mypy sure of a return


def _format_tensor(info: dict[str, Any]) -> str:
    shape = info["shape"]
    dims = "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    return f"  {info['name']}: {info['dtype']}{dims}"


def format_inspection(info: dict[str, Any]) -> str:
    """Render :func:`inspect_onnx` output as plain text for the terminal."""
    lines = [
        f"ONNX model: {info['path']}",
        f"  producer: {info['producer'] or '(unknown)'}; IR version {info['ir_version']}",
        "  opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()),
        f"  file size: {_human_bytes(info['file_bytes'])}"
        + (
            f" + external data {_human_bytes(info['external_data_bytes'])} "
            f"({', '.join(info['external_data_files'])})"
            if info["external_data_files"]
            else ""
        ),
        f"  parameters: {info['num_initializers']} initializers, {_human_bytes(info['parameter_bytes'])}",
        f"inputs ({len(info['inputs'])}):",
        *(_format_tensor(t) for t in info["inputs"]),
        f"outputs ({len(info['outputs'])}):",
        *(_format_tensor(t) for t in info["outputs"]),
        f"nodes: {info['num_nodes']} in domains "
        + ", ".join(f"{d} ({n})" for d, n in info["op_domains"].items()),
    ]
    width = max((len(op) for op in info["op_histogram"]), default=0)
    lines.extend(f"  {op.ljust(width)}  {count}" for op, count in info["op_histogram"].items())
    return "\n".join(lines)

"""What computes each output of an ONNX graph: evidence for what the output means.

An output's name is the author's word, but most models leave it at the
exporter's default (``output_0``): an ImageNet CNN's ``[N, 1000]`` scores are
then only recognisable by the op that computes them, a final Linear (Gemm, or
MatMul + bias Add). This module walks back from each graph output through ops
that do not change what the values mean (a bias Add of a constant, Reshape,
Flatten, Squeeze, Identity, Cast, Resize) to the op that does, and names it.
The walk is conservative: anything it does not recognise is reported as its
op type and decides nothing (:func:`optpipe.compare.output_kinds.infer_kind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Ops that keep what the values mean; walked through towards the producer.
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Resize", "Upsample"})
_NAMES = {"Gemm": "linear", "MatMul": "linear", "Softmax": "softmax", "LogSoftmax": "log_softmax",
          "Sigmoid": "sigmoid", "Conv": "conv", "ConvTranspose": "conv"}  # fmt: skip


@dataclass(frozen=True)
class Producer:
    """The op that gives an output its meaning: ``linear``, ``softmax``, ``log_softmax``, ``sigmoid``, ``conv``,
    or another op's type; ``axis``: Softmax/LogSoftmax's axis (normalised to >= 0 when the rank is known)."""

    op: str
    axis: int | None = None


def _constants(graph: Any) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(output for node in graph.node if node.op_type == "Constant" for output in node.output)
    return names


def _axis(node: Any) -> int | None:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return int(attribute.i)
    return -1 if node.op_type in ("Softmax", "LogSoftmax") else None


def _walk(name: str, made_by: dict[str, Any], constants: set[str]) -> Producer | None:
    """The meaningful producer of value ``name`` (at most 16 pass-through steps back)."""
    for _ in range(16):
        node = made_by.get(name)
        if node is None:
            return None
        if node.op_type in _PASS_THROUGH and node.input:
            name = node.input[0]
            continue
        if node.op_type in ("Add", "Sub") and len(node.input) == 2 and (set(node.input) & constants):
            name = next(i for i in node.input if i not in constants)  # a bias: X + b
            continue
        return Producer(_NAMES.get(node.op_type, node.op_type), _axis(node))
    return None


def output_producers(path: str | Path | None) -> dict[str, Producer]:
    """Each graph output's :class:`Producer`; empty when the file cannot be read (no evidence, no error)."""
    if path is None:
        return {}
    try:
        from optpipe.onnx.utils import load_onnx

        graph = load_onnx(Path(path), load_external_data=False).graph
    except Exception:  # evidence is optional: a graph that cannot be read leaves inference to names and values
        return {}
    made_by = {output: node for node in graph.node for output in node.output}
    constants = _constants(graph)
    producers = {}
    for output in graph.output:
        found = _walk(output.name, made_by, constants)
        if found is not None:
            producers[output.name] = found
    return producers

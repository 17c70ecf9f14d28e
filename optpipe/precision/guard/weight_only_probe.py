"""The output error each 4-bit MatMul is responsible for, from one session where each can be switched back.

Why: the guard's Q/DQ emulation ranks a node by the error it adds to its own output. On bert_wide (BERT 1536
wide x 20 layers) 4-bit Q and K MatMuls add as much local error as V's, yet cost almost nothing at the output
(the softmax absorbs it), while every V, attention-output and FFN MatMul costs ~0.001 of cosine: ranked by
local error the guard kept the wrong nodes, one per round, and never found the mix that passes.

Here the 4-bit model is rebuilt with each candidate MatMul behind an ``If`` on one switch (one bool of a graph
input vector): True runs its 4-bit ``MatMulNBits``, False its kept form (the 8-bit ``MatMulNBits`` the guard
would keep it as, or the FP32 MatMul). The kernels are the ones the built model runs, so a probe ("this node
alone back in its kept form") is one session run per row, not a rebuild. Rows are run at their real length
(padding cut off where an attention mask says where it starts), which makes a probe of bert_wide ~10x cheaper
than a gate run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from optpipe.precision import onnx_graph

SWITCHES = "__optpipe_four_bit"
#: The suffix ONNX Runtime's quantizer gives a MatMul it wrote as 4-bit / 8-bit ``MatMulNBits``.
FOUR, EIGHT = "_Q4", "_Q8"


@dataclass(frozen=True)
class Switchable:
    """A model whose candidates run 4-bit or kept, by switch; ``extra_bytes[name]``: what keeping ``name`` costs."""

    model: onnx.ModelProto
    names: tuple[str, ...]
    extra_bytes: Mapping[str, int]


def tensor_bytes(inits: Mapping[str, onnx.TensorProto], names: Sequence[str]) -> int:
    """Bytes of the named initializers (external data counted by shape: its raw bytes are not loaded here)."""
    total = 0
    for name in names:
        tensor = inits.get(name)
        if tensor is not None:
            size = int(np.prod(tensor.dims)) if tensor.dims else 1
            total += size * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def switchable(lowp: onnx.ModelProto, kept: onnx.ModelProto | None, fp32: onnx.ModelProto) -> Switchable:
    """``lowp`` (every candidate 4-bit) with each 4-bit MatMul switchable to its form in ``kept``.

    ``kept``: the model with every candidate 8-bit (``<name>_Q8`` nodes); None: the kept form is the FP32
    MatMul of ``fp32`` (its weight copied in). A 4-bit node without a kept form is left as it is. ``lowp`` is
    changed in place and returned inside the record (one copy of the 4-bit weights alive, not two).
    """
    inits = {i.name: i for i in lowp.graph.initializer}
    kept_nodes = {n.name: n for n in kept.graph.node} if kept is not None else {}
    kept_inits = {i.name: i for i in kept.graph.initializer} if kept is not None else {}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    names: list[str] = []
    extra: dict[str, int] = {}
    for node in lowp.graph.node:
        name = node.name.removesuffix(FOUR)
        if node.op_type != "MatMulNBits" or not node.name.endswith(FOUR):
            nodes.append(node)
            continue
        tag = f"__optpipe_switch/{len(names)}"
        other, other_inits = _kept_form(name, node, kept_nodes, kept_inits, fp32_nodes, fp32_inits, tag)
        if other is None:
            nodes.append(node)
            continue
        lowp.graph.initializer.extend(other_inits)
        extra[name] = tensor_bytes({i.name: i for i in other_inits}, [i.name for i in other_inits]) - tensor_bytes(
            inits, node.input[1:])
        nodes.extend(_if_switch(node, other, len(names), tag, lowp))
        names.append(name)
    lowp.graph.ClearField("node")
    lowp.graph.node.extend(nodes)
    lowp.graph.input.append(helper.make_tensor_value_info(SWITCHES, onnx.TensorProto.BOOL, [len(names)]))
    return Switchable(lowp, tuple(names), extra)


def _kept_form(
    name: str, node: onnx.NodeProto, kept_nodes: Mapping[str, onnx.NodeProto],
    kept_inits: Mapping[str, onnx.TensorProto], fp32_nodes: Mapping[str, onnx.NodeProto],
    fp32_inits: Mapping[str, onnx.TensorProto], tag: str,
) -> tuple[onnx.NodeProto | None, list[onnx.TensorProto]]:
    """The node ``name`` would be when kept (reading ``node``'s activation) and its renamed initializers."""
    if kept_nodes:
        source = kept_nodes.get(f"{name}{EIGHT}")
        if source is None:
            return None, []
        weights = [i for i in source.input[1:] if i in kept_inits]
    else:
        source = fp32_nodes.get(name)
        if source is None or source.op_type != "MatMul" or source.input[1] not in fp32_inits:
            return None, []  # a Gemm rewritten for the quantizer has no FP32 MatMul to switch back to
        weights = [source.input[1]]
    table = kept_inits if kept_nodes else fp32_inits
    renamed = {w: f"{tag}/{w}" for w in weights}
    copies = []
    for w in weights:
        copy = onnx.TensorProto()
        copy.CopyFrom(table[w])
        copy.name = renamed[w]
        copies.append(copy)
    other = onnx.NodeProto()
    other.CopyFrom(source)
    other.input[0] = node.input[0]
    for k in range(1, len(other.input)):
        other.input[k] = renamed.get(other.input[k], other.input[k])
    return other, copies


def _if_switch(node: onnx.NodeProto, other: onnx.NodeProto, index: int, tag: str,
               model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """``If(switch, node, other)`` writing ``node``'s output: only the branch switched on is computed."""
    out = node.output[0]
    at, switch = f"{tag}/at", f"{tag}/switch"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(index, np.int64), at))
    node.output[0], other.output[0] = f"{tag}/four_bit", f"{tag}/kept"
    del other.output[1:]

    def branch(inner: onnx.NodeProto, label: str) -> onnx.GraphProto:
        value = helper.make_tensor_value_info(inner.output[0], onnx.TensorProto.FLOAT, None)
        return helper.make_graph([inner], f"{tag}/{label}", [], [value])

    return [helper.make_node("Gather", [SWITCHES, at], [switch], name=switch),
            helper.make_node("If", [switch], [out], name=f"{tag}/if", then_branch=branch(node, "four_bit"),
                             else_branch=branch(other, "kept"))]  # fmt: skip


def real_length(row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``row`` (batch 1) with its padding cut off, when an integer 0/1 input of shape [1, S] marks it.

    Why: the golden rows of a text model are padded to the export length (128 tokens for a 15-token
    sentence); the probe only compares the model with itself, so it may run the real tokens alone. Every
    input of the mask's shape is cut along axis 1; a row without such a mask is returned unchanged.
    """
    for value in row.values():
        a = np.asarray(value)
        if a.ndim != 2 or a.shape[0] != 1 or not np.issubdtype(a.dtype, np.integer) or not np.isin(a, (0, 1)).all():
            continue
        used = np.flatnonzero(a[0])
        if used.size == 0 or used[-1] + 1 == a.shape[1] or used[0] != 0:
            continue
        length = int(used[-1]) + 1
        return {k: (np.asarray(v)[:, :length] if np.asarray(v).shape == a.shape else v) for k, v in row.items()}
    return dict(row)


class Probe:
    """One session over a :class:`Switchable`; ``distances(switches)``: each row's error against the kept model."""

    def __init__(self, model: Switchable, rows: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.names = model.names
        self.session = onnx_graph.session(model.model, optimize=True)
        wanted = {i.name for i in self.session.get_inputs()} - {SWITCHES}
        self.feeds = [self._fitting({k: v for k, v in row.items() if k in wanted}) for row in rows]
        self.reference = self._outputs(np.zeros(len(self.names), bool))

    def _fitting(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The row at its real length when the model takes it (a static-length model gets it padded)."""
        short = real_length(feed)
        if short is feed or all(short[k].shape == feed[k].shape for k in feed):
            return feed
        try:
            self.session.run(None, {**short, SWITCHES: np.zeros(len(self.names), bool)})
        except Exception:  # a static sequence axis: the padded row is what the model takes
            return feed
        return short

    def _outputs(self, switches: np.ndarray) -> list[np.ndarray]:
        out = []
        for feed in self.feeds:
            values = self.session.run(None, {**feed, SWITCHES: switches})
            floats = [np.asarray(v, np.float64).ravel() for v in values if np.issubdtype(np.asarray(v).dtype,
                                                                                        np.floating)]
            out.append(np.concatenate(floats) if floats else np.zeros(0))
        return out

    def distances(self, switches: np.ndarray) -> np.ndarray:
        """Each row's squared error relative to the kept model's output (inf: not finite).

        About ``2 * (1 - cosine)`` for an embedding, and it also sees a row of one value, where a cosine is 1.
        """
        result = []
        for ref, got in zip(self.reference, self._outputs(switches), strict=True):
            finite = np.isfinite(got).all()
            result.append(float(np.dot(ref - got, ref - got)) / max(float(np.dot(ref, ref)), 1e-24) if finite
                          else float("inf"))
        return np.asarray(result)

    def kept(self, names: Sequence[str]) -> np.ndarray:
        """The switches with ``names`` in their kept form and every other candidate 4-bit."""
        chosen = set(names)
        return np.asarray([n not in chosen for n in self.names], bool)


def error(distances: np.ndarray) -> float:
    """The mean over rows plus the worst row: a ``min_row_cosine`` bar is decided by one row."""
    return float(distances.mean() + distances.max()) if distances.size else 0.0


def output_gains(probe: Probe, late: Callable[[], bool] | None = None) -> dict[str, float]:
    """Each candidate's gain from keeping it: the output error it adds alone 4-bit, every other candidate kept.

    Why from the kept side: measured from the all-4-bit model (cosine 0.90 on bert_wide), one node restored
    among 119 still 4-bit moves the output by less than the others' noise: 54 of its 120 MatMuls showed no
    gain, and the plan kept too few. Near the kept model the errors are small and add up, as they will in
    the model the guard builds. ``late()`` True stops the probe there (the guard's time budget): the gains
    measured so far are returned.
    """
    everything = probe.kept(probe.names)
    gains: dict[str, float] = {}
    for k, name in enumerate(probe.names):
        if late is not None and late():
            break
        switches = everything.copy()
        switches[k] = True
        gains[name] = error(probe.distances(switches))
    return gains

"""Output sensitivity: how much the model's *output* improves when one node runs in FP32.

Why: the per-layer table of :mod:`optpipe.precision.guard.localize` ranks nodes by
the relative error they add to their own output tensor. Errors grow as they
travel through a network, so that ranking favours late layers and misses
the early ones whose small local error is amplified downstream. Measured on
EfficientNet-Lite0 (static INT8, CPU style): the table ranked the stem
convolution 20th, while restoring just its inputs to FP32 removed a fifth of
the output error, more than any other node; the guard kept ten late nodes and
the gate still failed.

This module measures the quantity the gate judges: for each candidate node,
the drop in the model outputs' relative error (against FP32, on a few
calibration samples) when that node's inputs bypass their Q/DQ pair and its
quantized weights are replaced by the FP32 weights - an emulation of keeping
that node in FP32 without re-running the quantizer. One switchable model copy
and one session answer every candidate (:func:`switchable`): a copy and a
session per candidate made ViT-B/16's guard round cost minutes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optpipe.precision import onnx_graph

SWITCHES = "__optpipe_quantized"  # the switchable model's bool input: one entry per candidate group


def _flat(values: Sequence[np.ndarray]) -> np.ndarray:
    """One sample's float outputs flattened into one vector."""
    floats = [np.asarray(v, np.float64).ravel() for v in values if np.issubdtype(np.asarray(v).dtype, np.floating)]
    return np.concatenate(floats) if floats else np.zeros(0)


def _float_outputs(model: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Every sample's float outputs, flattened into one vector per sample."""
    sess = onnx_graph.session(model)
    feed = {i.name for i in sess.get_inputs()}
    return [_flat(sess.run(None, {k: v for k, v in sample.items() if k in feed})) for sample in samples]


def _rel_error(ref: Sequence[np.ndarray], low: Sequence[np.ndarray]) -> float:
    diff = sum(float(np.dot(a - b, a - b)) for a, b in zip(ref, low, strict=True))
    norm = sum(float(np.dot(a, a)) for a in ref)
    if not np.isfinite(diff):
        return float("inf")
    return float(np.sqrt(diff) / max(np.sqrt(norm), 1e-12))


@dataclass(frozen=True)
class _Slot:
    """One quantized input of a candidate node: input ``index`` reads ``fp32`` when the node is kept in FP32.

    ``weight`` is the FP32 initializer to add under that name (a quantized weight), None for an activation
    (``fp32`` is then the float tensor its QuantizeLinear reads).
    """

    index: int
    fp32: str
    weight: onnx.TensorProto | None


def _slots(lowp: onnx.ModelProto, fp32: onnx.ModelProto, names: set[str]) -> dict[str, list[_Slot]]:
    """The quantized inputs of the nodes ``names`` and what each reads in FP32: Q/DQ bypassed, FP32 weight restored.

    A node without a quantized input is absent (nothing to emulate).
    """
    producer = {out: node for node in lowp.graph.node for out in node.output}
    inits = {i.name for i in lowp.graph.initializer}
    fp_nodes = {node.name: node for node in fp32.graph.node if node.name in names}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    slots: dict[str, list[_Slot]] = {}
    for node in lowp.graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation: read the float tensor
                slots.setdefault(node.name, []).append(_Slot(k, q.input[0], None))
            elif dq.input[0] in inits and node.name in fp_nodes and k < len(fp_nodes[node.name].input):
                weight = fp_nodes[node.name].input[k]  # a quantized weight: read the FP32 initializer
                if weight in fp_inits:  # the quantizer may reuse the FP32 name for a DQ output: a name of our own
                    slots.setdefault(node.name, []).append(_Slot(k, f"{weight}__optpipe_fp32", fp_inits[weight]))
    return slots


def switchable(
    lowp: onnx.ModelProto, fp32: onnx.ModelProto, candidates: Sequence[Sequence[str]]
) -> tuple[onnx.ModelProto, list[int | None]]:
    """A copy of ``lowp`` where each candidate group can be put back in FP32 by one switch, in one session.

    Every quantized input of a candidate's nodes goes through ``Where(quantized, DQ output, FP32 tensor)``;
    ``quantized`` is the group's entry of the bool input :data:`SWITCHES` (the AND of the entries of every
    group holding the node). All True computes ``lowp`` exactly; one entry False computes the old one-copy
    edit of that group. Returns the model and, per candidate, its switch (None: no quantized input).

    Why: a model copy and a session per candidate cost ViT-B/16's static INT8 guard 421 s for 32
    candidates a round; one session answers every candidate from the same weights.
    """
    groups = [set(group) for group in candidates]
    slots = _slots(lowp, fp32, set().union(*groups))
    switch_of: list[int | None] = []
    for group in groups:
        switch_of.append(sum(s is not None for s in switch_of) if group & slots.keys() else None)
    model = onnx.ModelProto()
    model.CopyFrom(lowp)
    added_weights: set[str] = set()
    head: list[onnx.NodeProto] = []
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name in slots:
            switches = [f"{SWITCHES}:switch{switch}" for group, switch in zip(groups, switch_of, strict=True)
                        if switch is not None and node.name in group]
            condition = _all_of(switches, f"{SWITCHES}/{node.name}", ordered)
            for slot in slots[node.name]:
                if slot.weight is not None and slot.fp32 not in added_weights:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(slot.weight)
                    copy.name = slot.fp32
                    model.graph.initializer.append(copy)
                    added_weights.add(slot.fp32)
                chosen = f"{SWITCHES}/{node.name}/{slot.index}"
                ordered.append(helper.make_node("Where", [condition, node.input[slot.index], slot.fp32], [chosen],
                                                name=chosen))
                node.input[slot.index] = chosen
        ordered.append(node)
    for switch in sorted({s for s in switch_of if s is not None}):
        out = f"{SWITCHES}:switch{switch}"
        model.graph.initializer.append(numpy_helper.from_array(np.array(switch, np.int64), f"{out}/at"))
        head.append(helper.make_node("Gather", [SWITCHES, f"{out}/at"], [out], name=out))
    del model.graph.node[:]
    model.graph.node.extend([*head, *ordered])
    count = len({s for s in switch_of if s is not None})
    model.graph.input.append(helper.make_tensor_value_info(SWITCHES, onnx.TensorProto.BOOL, [count]))
    return model, switch_of


def _all_of(switches: list[str], name: str, nodes: list[onnx.NodeProto]) -> str:
    """A bool that is True when every switch is (And nodes appended to ``nodes``); the switch itself if one."""
    result = switches[0]
    for k, other in enumerate(switches[1:]):
        out = f"{name}/and{k}"
        nodes.append(helper.make_node("And", [result, other], [out], name=out))
        result = out
    return result


def output_sensitivity(
    fp32: onnx.ModelProto,
    lowp: onnx.ModelProto,
    samples: Sequence[Mapping[str, np.ndarray]],
    candidates: Sequence[Sequence[str]],
    *,
    deadline: float | None = None,
) -> list[float | None]:
    """For each candidate group of node names, the output relative error removed by keeping it in FP32.

    Positive: keeping the group helps the output; None for a group with no
    quantized input (nothing to emulate: e.g. already kept, its error arrives
    from a producer), and for the groups not measured once ``deadline``
    (``time.monotonic()``) passed. Both models run unoptimised (Q/DQ emulated
    in float); every group is measured by one session (:func:`switchable`).
    """
    ref = _float_outputs(fp32, samples)
    model, switch_of = switchable(lowp, fp32, candidates)
    count = len({s for s in switch_of if s is not None})
    if not count:
        return [None] * len(candidates)
    sess = onnx_graph.session(model)
    del model
    feed_names = {i.name for i in sess.get_inputs()} - {SWITCHES}
    feeds = [{k: v for k, v in sample.items() if k in feed_names} for sample in samples]

    def error(switches: np.ndarray) -> float:
        return _rel_error(ref, [_flat(sess.run(None, {**feed, SWITCHES: switches})) for feed in feeds])

    base = error(np.ones(count, bool))
    gains: list[float | None] = []
    for switch in switch_of:
        if switch is None or (deadline is not None and time.monotonic() >= deadline):
            gains.append(None)
            continue
        switches = np.ones(count, bool)
        switches[switch] = False
        gains.append(base - error(switches))
    return gains

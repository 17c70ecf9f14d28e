"""The guard's per-layer sums, computed inside one ONNX Runtime graph that runs both models side by side.

Why: the per-layer analysis compares every intermediate tensor of the FP32 model with its counterpart in
the low-precision model. Exposing them all as graph outputs (the way it was done before, still the
fallback) makes ONNX Runtime keep every one of them until the run ends, in both models: ViT-B/16's static
INT8 analysis peaked 1.75 GB over its start (the sessions and one image's activations in both), the
largest step of a 2.5 GB build; computed here, 0.67 GB, in less time (8.4 s against 9.8 s for 8 rows).

Here the two graphs become one (the low-precision names prefixed, the inputs shared), and for every
tensor pair ``(a, b)`` the graph itself computes the four sums the ranking needs,
``sum((a-b)^2)``, ``sum(a^2)``, ``sum(b^2)`` and ``sum(a*b)``, and whether every value of ``b`` is finite
(:data:`SUMS`). Only those come out, so each activation is
freed once its last consumer has run. Precision: float32 products summed over each tensor's last axis
(short sums), the partial sums added up in float64: the float64 sums to within 1e-6 relative on ViT-B/16
(a whole tensor summed in float32 was off by 6e-5; ReduceSumSquare by 1e-5 on INT8 grid values; casting
every tensor to float64 first cost 4.7 of 10.7 s).

Order: ONNX Runtime (default execution order) schedules by a depth-first walk back from the graph's
leaves, the last leaf first. The sums are appended in *reverse* tensor order, so the first tensor's sums
are the last leaf: the walk computes each model only as far as the next pair needs, both models in step,
and their activations are freed as they go (appended in tensor order, the walk ran both models whole
before the first sum: 1.6 GB on ViT-B/16). The order changes memory only, never the numbers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision import onnx_graph

_LOG = logging.getLogger(__name__)

#: Prefix of the low-precision model's names in the merged graph (checked not to clash with the FP32 names).
LOW_PREFIX = "optpipe.low/"
#: Prefix of the names the sums add.
SUMS_PREFIX = "optpipe.sums/"
#: What the graph outputs for each pair ``(a, b)``, in this order. ``finite`` is ``sum(b - b)``: 0 when every
#: value of ``b`` is finite, NaN otherwise. Why not ``sum(b^2)``: a finite value above 1.8e19 (an attention
#: mask's float32 minimum) overflows its square, and BERT's mask Where then ranked first as if broken.
SUMS = ("sum((a-b)^2)", "sum(a^2)", "sum(b^2)", "sum(a*b)", "finite")


def merged_sums_model(fp32_path: Path, lowp_path: Path, pairs: Mapping[str, str],
                      types: tuple[Mapping[str, int], Mapping[str, int]], folder: Path) -> Path | None:
    """The merged model computing the sums of every ``pairs`` item (FP32 name -> low-precision name), saved in
    ``folder`` with its weights as external data; None when the two models cannot share one graph.

    ``types``: the element type of each tensor in the FP32 and in the low-precision model. Each model's
    weights go to the data file as soon as it is read; the session reads them from there, as the exposed
    tensors' sessions did (a session made from bytes peaked at 3x the weights).
    """
    fp32 = _externalized(onnx_graph.load_model(Path(fp32_path)), folder, "fp32.data")
    lowp = _externalized(onnx_graph.load_model(Path(lowp_path)), folder, "low.data")
    opsets = _merged_opsets(fp32, lowp)
    if opsets is None or not _mergeable(fp32, lowp):
        return None
    onnx.compose.add_prefix_graph(lowp.graph, LOW_PREFIX, rename_inputs=False, inplace=True)
    graph = fp32.graph
    del graph.output[:]
    graph.node.extend(lowp.graph.node)
    graph.initializer.extend(lowp.graph.initializer)
    graph.value_info.extend(lowp.graph.value_info)
    sums = _SumsBuilder(opsets.get("", 1))
    for index, (name, low) in reversed(list(enumerate(pairs.items()))):  # reversed: see the module docs
        sums.add(index, name, types[0][name], LOW_PREFIX + low, types[1][low])
    graph.node.extend(sums.nodes)
    graph.initializer.extend(sums.constants)
    graph.output.extend(sorted(sums.outputs, key=lambda o: int(o.name.split("/")[1])))
    del fp32.opset_import[:]
    fp32.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    have = {(f.domain, f.name) for f in fp32.functions}
    fp32.functions.extend(f for f in lowp.functions if (f.domain, f.name) not in have)
    fp32.ir_version = max(fp32.ir_version, lowp.ir_version)
    path = Path(folder) / "sums.onnx"
    onnx.save_model(fp32, str(path))
    return path


def _externalized(model: onnx.ModelProto, folder: Path, location: str) -> onnx.ModelProto:
    """``model`` with its tensors over 1 KB written to ``folder/location`` and dropped from memory."""
    from onnx.external_data_helper import convert_model_to_external_data, write_external_data_tensors

    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=1024)
    return write_external_data_tensors(model, str(folder))


def _merged_opsets(fp32: onnx.ModelProto, lowp: onnx.ModelProto) -> dict[str, int] | None:
    """One version per operator domain for both models; None when a domain has two (one graph cannot run both)."""
    opsets = {o.domain: o.version for o in fp32.opset_import}
    for o in lowp.opset_import:
        if opsets.setdefault(o.domain, o.version) != o.version:
            return None
    opsets.setdefault("", 1)  # the sums' operators are in the default domain
    return opsets


def _mergeable(fp32: onnx.ModelProto, lowp: onnx.ModelProto) -> bool:
    """False where one graph cannot hold both: same-named local functions that differ, clashing prefixes,
    or graph inputs that are also initializers (the prefix would separate them)."""
    functions = {(f.domain, f.name): f.SerializeToString() for f in fp32.functions}
    if any(functions.get((f.domain, f.name), f.SerializeToString()) != f.SerializeToString() for f in lowp.functions):
        return False
    names = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.initializer}
    if any(name.startswith((LOW_PREFIX, SUMS_PREFIX)) for name in names):
        return False
    inputs = {i.name for i in lowp.graph.input}
    return not inputs & {i.name for i in lowp.graph.initializer}


class _SumsBuilder:
    """The nodes computing :data:`SUMS` (float64) for tensor pairs."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.constants = [numpy_helper.from_array(np.array(v, np.int64), SUMS_PREFIX + n)
                          for n, v in (("zero", [0]), ("last", [-1]), ("one", [1]), ("rows", [len(SUMS), -1]))]

    def add(self, index: int, a: str, a_type: int, b: str, b_type: int) -> None:
        """Sums of the pair ``(a, b)`` as output ``optpipe.sums/<index>/out`` (:data:`SUMS`, in that order)."""
        p = f"{SUMS_PREFIX}{index}/"
        common = TensorProto.DOUBLE if TensorProto.DOUBLE in (a_type, b_type) else TensorProto.FLOAT
        # Unsqueeze: a scalar gets an axis to reduce; a tensor keeps its last axis as the short sums' axis.
        # Then the cast: a Cast (float16 to float) followed by Unsqueeze gave a Sub wrong values (ORT 1.32).
        self._node("Unsqueeze", a, p + "a", 0)
        self._node("Unsqueeze", b, p + "b", 0)
        ua, ub = self._as(p + "a", a_type, common), self._as(p + "b", b_type, common)
        self.nodes.append(helper.make_node("Sub", [ua, ub], [p + "d"]))
        for x, y, out, op in ((p + "d", p + "d", "d2", "Mul"), (ua, ua, "a2", "Mul"), (ub, ub, "b2", "Mul"),
                              (ua, ub, "ab", "Mul"), (ub, ub, "nf", "Sub")):
            self.nodes.append(helper.make_node(op, [x, y], [p + out + "_terms"]))
            self._node("ReduceSum", p + out + "_terms", p + out, -1, keepdims=1)
        self.nodes += [
            helper.make_node("Concat", [p + n for n in ("d2", "a2", "b2", "ab", "nf")], [p + "parts"], axis=0),
            helper.make_node("Cast", [p + "parts"], [p + "parts64"], to=TensorProto.DOUBLE),
            helper.make_node("Reshape", [p + "parts64", SUMS_PREFIX + "rows"], [p + "rows"]),
        ]
        self._node("ReduceSum", p + "rows", p + "out", 1, keepdims=0)
        self.outputs.append(helper.make_tensor_value_info(p + "out", TensorProto.DOUBLE, [len(SUMS)]))

    def _as(self, name: str, elem: int, common: int) -> str:
        """``name`` in the ``common`` type: itself, or a cast of it."""
        if elem == common:
            return name
        self.nodes.append(helper.make_node("Cast", [name], [name + "_cast"], to=common))
        return name + "_cast"

    def _node(self, op: str, source: str, out: str, axis: int, keepdims: int | None = None) -> None:
        """``op`` on ``axis``, as the attribute or as the input its opset wants (Unsqueeze, ReduceSum: from 13)."""
        attrs: dict[str, Any] = {} if keepdims is None else {"keepdims": keepdims}
        if self.opset >= 13:
            axes = SUMS_PREFIX + {0: "zero", -1: "last", 1: "one"}[axis]
            self.nodes.append(helper.make_node(op, [source, axes], [out], **attrs))
        else:
            self.nodes.append(helper.make_node(op, [source], [out], axes=[axis], **attrs))


class SumsSession:
    """An ONNX Runtime session on :func:`merged_sums_model`'s model: ``run`` yields each row's sums by FP32 name."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.session = onnx_graph.session(str(path))
        self.names = list(names)
        self.feed_names = {i.name for i in self.session.get_inputs()}

    def run(self, rows: Iterable[Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """``{FP32 tensor name: the values of SUMS}`` for each row."""
        for row in rows:
            values = self.session.run(None, {k: v for k, v in row.items() if k in self.feed_names})
            yield dict(zip(self.names, values, strict=True))


def paired_sums(fp32_path: Path, lowp_path: Path, pairs: Mapping[str, str],
                types: tuple[Mapping[str, int], Mapping[str, int]],
                rows: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]] | None:
    """Each row's sums of every pair, from one merged session; None when the models cannot be merged, or
    when ONNX Runtime refuses or fails to run the merged graph (logged): the caller then compares the
    tensors themselves, and a diagnostic never fails a build."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    refused = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidArgument, ort_errors.NotImplemented,
               ort_errors.RuntimeException, RuntimeError)  # ORT's error classes share no base but Exception
    with tempfile.TemporaryDirectory(prefix="optpipe-sums-") as tmp:
        path = merged_sums_model(fp32_path, lowp_path, pairs, types, Path(tmp))
        if path is None:
            return None
        try:
            session = SumsSession(path, list(pairs))
            return list(session.run(rows))
        except refused as exc:
            _LOG.warning("per-layer sums in one graph failed (%s); comparing the tensors one by one", exc)
            return None

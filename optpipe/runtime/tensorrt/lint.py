"""Static "will TensorRT accept this ONNX?" lint, runnable on a CPU with only ``onnx``.

Why: TensorRT is only present on the GPU machine that finishes a split build,
so a model that TensorRT's ONNX parser will reject (an unsupported op, a
``com.microsoft`` op written by ONNX Runtime's optimiser, uint8 or asymmetric
QDQ, a dynamic axis without a profile) would otherwise fail late and far from
the stage that caused it. The rules come from onnx-tensorrt's operator
documentation, kept as data in ``support_table.json`` (source URL, TensorRT
version and date recorded there), and from TensorRT's explicit-quantization
rules (symmetric int8, per-channel weights on the output-channel axis).

The lint is conservative: "error" means the parser or builder is documented to
refuse the construct; "warning" means it may work but changes numerics or
depends on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.onnx.shapes import graph_inputs
from optpipe.runtime.tensorrt.shape_profiles import ShapeProfilesArg, normalize_shape_profiles

Severity = Literal["error", "warning"]

SUPPORT_TABLE_PATH = Path(__file__).with_name("support_table.json")
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

_T = onnx.TensorProto
# Quantized types TensorRT 10 accepts in Q/DQ besides INT8, with the reason they are only warned about.
_EXOTIC_QUANT_TYPES: dict[int, str] = {
    _T.FLOAT8E4M3FN: "FP8 (E4M3) Q/DQ needs compute capability >= 8.9 and is used for GEMMs only",
    _T.INT4: "INT4 Q/DQ is weight-only (block quantization) in TensorRT",
    _T.FLOAT4E2M1: "FP4 Q/DQ needs compute capability >= 10.0 (Blackwell)",
}

#: What TensorRT 11 would need for ONNX Runtime's weight-only INT4 (``--precision int4-weight``): the plan's
#: refusal and this lint say it in the same words.
INT4_WEIGHT_NEEDS = (
    "TensorRT 11 would need weight-only INT4 as standard ONNX: each weight an INT4 initializer behind a "
    "blocked DequantizeLinear (block_size along K, zero point 0, FP16/FP32 scales) feeding a MatMul, "
    "in a strongly typed network; ONNX Runtime's MatMulNBits is a com.microsoft op TensorRT does not parse"
)
#: ONNX Runtime's weight-only ops (contrib domain), which :data:`INT4_WEIGHT_NEEDS` explains.
_ORT_WEIGHT_ONLY_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})

# Which input of which op is a weight, and the per-channel axis TensorRT wants there:
# the output-channel axis of the weight in ONNX layout.
#   Conv W: (C_out, C_in/g, k...)            -> axis 0
#   ConvTranspose W: (C_in, C_out/g, k...)   -> axis 1
#   MatMul B: (..., K, N)                    -> last axis (1 for 2-D)
#   Gemm B: (K, N), or (N, K) when transB=1  -> 1, or 0 when transB=1
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}


@dataclass(frozen=True)
class LintProblem:
    """One finding: ``code`` is a stable short id, ``node`` the node or tensor name (if any)."""

    code: str
    severity: Severity
    node: str | None
    message: str
    fix: str

    def format(self) -> str:
        """One line, e.g. ``error unsupported-op [node 'n0']: ... Fix: ...``."""
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity} {self.code}{where}: {self.message} Fix: {self.fix}"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "severity": self.severity,
            "node": self.node,
            "message": self.message,
            "fix": self.fix,
        }


def format_problems(problems: Iterable[LintProblem]) -> str:
    """All problems, one line each, errors first (stable order otherwise)."""
    ordered = sorted(problems, key=lambda p: p.severity != "error")
    return "\n".join(p.format() for p in ordered)


def has_errors(problems: Iterable[LintProblem]) -> bool:
    """Whether any problem is an error (TensorRT is expected to refuse the model)."""
    return any(p.severity == "error" for p in problems)


@functools.lru_cache(maxsize=1)
def load_support_table() -> dict[str, Any]:
    """The operator support table shipped with optpipe (see its ``source`` block)."""
    with SUPPORT_TABLE_PATH.open(encoding="utf-8") as f:
        table: dict[str, Any] = json.load(f)
    return table


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserInputError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError... all mean "unreadable"
        raise UserInputError(f"cannot read ONNX model {path}: {exc}") from exc


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


class _Graph:
    """Index of one (sub)graph: constant tensors, producers, consumers, value types and ranks."""

    def __init__(self, graph: onnx.GraphProto, outer: _Graph | None = None) -> None:
        self.graph = graph
        self.consts: dict[str, np.ndarray] = dict(outer.consts) if outer else {}
        self.const_types: dict[str, int] = dict(outer.const_types) if outer else {}
        self.types: dict[str, int] = dict(outer.types) if outer else {}
        self.ranks: dict[str, int] = dict(outer.ranks) if outer else {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for init in graph.initializer:
            self._add_const(init.name, init)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self._add_const(node.output[0], attr.t)
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types.setdefault(vi.name, tt.elem_type)
            if tt.HasField("shape"):
                self.ranks.setdefault(vi.name, len(tt.shape.dim))

    def _add_const(self, name: str, tensor: onnx.TensorProto) -> None:
        self.const_types[name] = tensor.data_type
        self.types[name] = tensor.data_type
        self.ranks[name] = len(tensor.dims)
        # External data not loaded or an exotic type: the dtype and rank are still known.
        with contextlib.suppress(Exception):
            self.consts[name] = numpy_helper.to_array(tensor)


def _iter_graphs(graph: onnx.GraphProto, outer: _Graph | None = None) -> Iterator[_Graph]:
    """This graph and every subgraph (If/Loop/Scan bodies), each with outer constants visible."""
    index = _Graph(graph, outer)
    yield index
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g, index)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_graphs(sub, index)


def lint_model(
    model: onnx.ModelProto | str | Path,
    *,
    shape_profiles: ShapeProfilesArg = None,
    table: dict[str, Any] | None = None,
) -> list[LintProblem]:
    """Check an ONNX model against TensorRT's documented ONNX support; returns all problems found.

    ``profiles`` are the optimization profiles the engine will be built with
    (``DynamicDim`` list or dict, see :mod:`optpipe.runtime.tensorrt.shape_profiles`); without
    one, every dynamic input dimension is reported. An unreadable file raises
    UserInputError; a readable model never raises, it yields problems.
    """
    proto = _load(model)
    table = table if table is not None else load_support_table()
    problems: list[LintProblem] = []
    problems += _check_opset(proto, table)
    local_functions = {(f.domain, f.name) for f in proto.functions}
    graphs = list(_iter_graphs(proto.graph))
    for g in graphs:
        problems += _check_ops(g.graph.node, table, local_functions)
        problems += _check_qdq(g)
        problems += _check_int64(g)
    for func in proto.functions:
        problems += _check_ops(func.node, table, local_functions)
    problems += _check_dynamic_inputs(proto.graph, shape_profiles)
    return problems


def _check_opset(proto: onnx.ModelProto, table: dict[str, Any]) -> list[LintProblem]:
    low, high = int(table["opset"]["min"]), int(table["opset"]["max"])
    trt = table["source"]["tensorrt_version"]
    versions = [o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS]
    if not versions:
        return [
            LintProblem(
                "opset-missing",
                "error",
                None,
                "the model declares no default-domain (ai.onnx) opset.",
                "re-export the model; every ONNX model must import the ai.onnx opset.",
            )
        ]
    version = max(versions)
    if version < low:
        return [
            LintProblem(
                "opset-too-old",
                "error",
                None,
                f"opset {version} is older than TensorRT {trt}'s supported range {low}-{high}.",
                f"convert it with onnx.version_converter.convert_version(model, {high}) "
                "or re-export with a newer opset.",
            )
        ]
    if version > high:
        return [
            LintProblem(
                "opset-too-new",
                "warning",
                None,
                f"opset {version} is newer than TensorRT {trt}'s documented range {low}-{high}; "
                "the parser may reject new op versions.",
                f"export with opset_version={high} (torch.onnx.export) or convert the model down.",
            )
        ]
    return []


def _check_ops(
    nodes: Iterable[onnx.NodeProto], table: dict[str, Any], local_functions: set[tuple[str, str]]
) -> list[LintProblem]:
    problems = []
    ops: dict[str, dict[str, Any]] = table["operators"]
    trt = table["source"]["tensorrt_version"]
    for node in nodes:
        label = _node_label(node)
        if (node.domain, node.op_type) in local_functions:
            continue  # the TensorRT parser inlines model-local functions
        if node.domain not in STANDARD_DOMAINS and node.op_type in _ORT_WEIGHT_ONLY_OPS:
            problems.append(
                LintProblem("ort-weight-only-int4", "error", label,
                            f"{node.op_type} is ONNX Runtime's weight-only INT4 op (domain '{node.domain}'); "
                            f"{INT4_WEIGHT_NEEDS}.",
                            "build --precision int4-weight for the cpu target only; for TensorRT use --precision "
                            "fp16 or int8 (explicit Q/DQ).")
            )  # fmt: skip
            continue
        if node.domain not in STANDARD_DOMAINS:
            problems.append(
                LintProblem(
                    "non-standard-domain",
                    "error",
                    label,
                    f"{node.op_type} is in domain '{node.domain}', not standard ONNX; TensorRT only parses "
                    "ai.onnx ops (plus registered plugins).",
                    "build the TensorRT input from the portable ONNX (before ONNX Runtime's EXTENDED/ALL "
                    "optimisations), or register a TensorRT plugin named "
                    f"'{node.op_type}'.",
                )
            )
            continue
        entry = ops.get(node.op_type)
        if entry is None:
            problems.append(
                LintProblem(
                    "unknown-op",
                    "warning",
                    label,
                    f"{node.op_type} is not listed in the TensorRT {trt} operator table.",
                    "check the TensorRT release notes, or replace the op with listed ones.",
                )
            )
        elif not entry["supported"]:
            note = f" ({entry['restrictions']})" if entry.get("restrictions") else ""
            problems.append(
                LintProblem(
                    "unsupported-op",
                    "error",
                    label,
                    f"{node.op_type} is not supported by TensorRT {trt}{note}.",
                    "rewrite the model to avoid this op (decompose it, or simplify it away with "
                    "constant folding), or provide a TensorRT plugin.",
                )
            )
    return problems


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _type_name(elem_type: int) -> str:
    return str(onnx.TensorProto.DataType.Name(elem_type))


def _quant_type(node: onnx.NodeProto, g: _Graph) -> int | None:
    """The integer/low-precision type on the quantized side of a Q or DQ node, if knowable."""
    if len(node.input) > 2 and node.input[2] and node.input[2] in g.types:
        return g.types[node.input[2]]
    if node.op_type == "QuantizeLinear":
        out_dtype = _attr(node, "output_dtype", 0)
        if out_dtype:
            return out_dtype
        if len(node.input) <= 2 or not node.input[2]:
            return onnx.TensorProto.UINT8  # ONNX default when there is no zero point
        return None
    source = node.input[0]
    if source in g.types:
        return g.types[source]
    producer = g.producer.get(source)
    if producer is not None and producer.op_type == "QuantizeLinear":
        return _quant_type(producer, g)
    return None


def _check_qdq(g: _Graph) -> list[LintProblem]:
    problems: list[LintProblem] = []
    for node in g.graph.node:
        if node.op_type not in QDQ_OPS or node.domain not in STANDARD_DOMAINS:
            continue
        label = _node_label(node)
        qtype = _quant_type(node, g)
        if qtype == onnx.TensorProto.INT32 and node.op_type == "DequantizeLinear":
            problems.append(
                LintProblem(
                    "qdq-int32-bias",
                    "error",
                    label,
                    "int32 DequantizeLinear (a quantized bias) is not supported: TensorRT only "
                    "dequantizes INT8/FP8/FP4/INT4 and quantizes bias itself.",
                    "keep the bias in float: quantize_static(..., extra_options={'QuantizeBias': False}).",
                )
            )
        elif qtype in _EXOTIC_QUANT_TYPES:
            problems.append(
                LintProblem(
                    "qdq-type",
                    "warning",
                    label,
                    f"{node.op_type} uses {_type_name(qtype)}: {_EXOTIC_QUANT_TYPES[qtype]}.",
                    "use INT8 Q/DQ unless the target GPU is known to support this type.",
                )
            )
        elif qtype is not None and qtype != onnx.TensorProto.INT8:
            problems.append(
                LintProblem(
                    "qdq-type",
                    "error",
                    label,
                    f"{node.op_type} uses {_type_name(qtype)}; TensorRT's explicit quantization needs "
                    "signed INT8 (or FP8/INT4/FP4 on supporting GPUs).",
                    "quantize with activation_type=weight_type=QuantType.QInt8 "
                    "(ONNX Runtime's CPU-style uint8 QDQ is not TensorRT-compatible).",
                )
            )
        problems += _check_zero_point(node, label, g)
        problems += _check_axis(node, label, g)
    return problems


def _check_zero_point(node: onnx.NodeProto, label: str, g: _Graph) -> list[LintProblem]:
    if len(node.input) <= 2 or not node.input[2]:
        return []
    zp_name = node.input[2]
    values = g.consts.get(zp_name)
    if values is None:
        if zp_name in g.const_types:
            return []  # constant whose values are not loaded (external data): cannot tell
        return [
            LintProblem(
                "qdq-zero-point",
                "warning",
                label,
                f"zero point '{zp_name}' is not a constant; TensorRT requires it to be zero.",
                "make the zero point a zero-valued initializer.",
            )
        ]
    if np.any(values.astype(np.float64) != 0):
        return [
            LintProblem(
                "qdq-zero-point",
                "error",
                label,
                f"zero point '{zp_name}' is non-zero; TensorRT only supports symmetric quantization.",
                "quantize symmetrically: "
                "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}.",
            )
        ]
    return []


def _expected_weight_axis(consumer: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    if _WEIGHT_INPUT.get(consumer.op_type) != input_index:
        return None
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    return rank - 1  # MatMul: output columns are the last axis of B


def _scale_size(node: onnx.NodeProto, g: _Graph) -> int | None:
    scale = g.consts.get(node.input[1]) if len(node.input) > 1 else None
    return None if scale is None else int(scale.size)


def _check_axis(node: onnx.NodeProto, label: str, g: _Graph) -> list[LintProblem]:
    size = _scale_size(node, g)
    if size is None or size <= 1:
        return []  # per-tensor (or unknown): no axis to check
    rank = g.ranks.get(node.input[0])
    if rank is None and node.op_type == "DequantizeLinear":
        producer = g.producer.get(node.input[0])
        if producer is not None and producer.op_type == "QuantizeLinear":
            rank = g.ranks.get(producer.input[0])
    if rank is None:
        return []
    axis = _attr(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    # Follow Q -> DQ so the axis of a Q feeding a weight DQ is checked against the same consumer.
    outputs = [node.output[0]] if node.output else []
    if node.op_type == "QuantizeLinear" and outputs:
        outputs += [
            c.output[0] for c, _ in g.consumers.get(outputs[0], []) if c.op_type == "DequantizeLinear"
        ]
    problems = []
    is_weight = (
        node.input[0] in g.consts
        or node.input[0] in g.const_types
        or (
            node.op_type == "DequantizeLinear"
            and (p := g.producer.get(node.input[0])) is not None
            and p.op_type == "QuantizeLinear"
            and (p.input[0] in g.consts or p.input[0] in g.const_types)
        )
    )
    for out in outputs:
        for consumer, index in g.consumers.get(out, []):
            expected = _expected_weight_axis(consumer, index, rank)
            if expected is None:
                continue
            if expected != axis:
                problems.append(
                    LintProblem(
                        "qdq-axis",
                        "error",
                        label,
                        f"per-channel axis {axis} on the {consumer.op_type} weight of "
                        f"'{_node_label(consumer)}'; TensorRT needs the output-channel axis {expected}.",
                        f"quantize this weight per channel along axis {expected} (or per tensor).",
                    )
                )
            return problems
    if not is_weight:
        problems.append(
            LintProblem(
                "qdq-per-channel-activation",
                "error",
                label,
                f"per-channel scale ({size} values) on a non-constant tensor; TensorRT quantizes "
                "activations per tensor only.",
                "use a scalar scale for activations; keep per-channel scales for weights.",
            )
        )
    return problems


def _check_int64(g: _Graph) -> list[LintProblem]:
    problems = []
    for name, values in g.consts.items():
        if g.const_types.get(name) != onnx.TensorProto.INT64 or values.size == 0:
            continue
        if name not in {i.name for i in g.graph.initializer} and name not in g.producer:
            continue  # inherited from an outer graph: reported there
        low, high = int(values.min()), int(values.max())
        if low >= INT32_MIN and high <= INT32_MAX:
            continue
        consumers = g.consumers.get(name, [])
        # Slice starts/ends of +-INT64_MAX mean "to the end": clamping them is harmless.
        if consumers and all(c.op_type == "Slice" and i in (1, 2) for c, i in consumers):
            continue
        producer = g.producer.get(name)
        label = _node_label(producer) if producer is not None else name
        problems.append(
            LintProblem(
                "int64-out-of-range",
                "warning",
                label,
                f"int64 constant '{name}' holds values in [{low}, {high}], outside int32; TensorRT "
                "computes many int64 tensors (shapes, indices) in int32 and clamps these.",
                "use values that fit in int32 (e.g. clamp sentinel values) or compute them in float.",
            )
        )
    return problems


def _check_dynamic_inputs(graph: onnx.GraphProto, shape_profiles: ShapeProfilesArg) -> list[LintProblem]:
    try:
        norm = normalize_shape_profiles(shape_profiles)
    except UserInputError as exc:
        return [LintProblem("profile-invalid", "error", None, str(exc), "fix the profile bounds.")]
    problems = []
    for vi in graph_inputs(graph):  # IR < 4 style initializers listed as inputs are not runtime inputs
        if vi.shape is None:
            problems.append(
                LintProblem(
                    "dynamic-rank",
                    "error",
                    vi.name,
                    f"input '{vi.name}' has no shape; TensorRT needs a known rank.",
                    "export with a fixed-rank example input.",
                )
            )
            continue
        for index, dim in enumerate(vi.shape):
            if isinstance(dim, int) and dim > 0:
                continue
            param = dim if isinstance(dim, str) and dim else None
            if norm.covers(vi.name, index, param):
                continue
            name = f"'{param}'" if param else "(unnamed)"
            problems.append(
                LintProblem(
                    "dynamic-dim-no-profile",
                    "error",
                    vi.name,
                    f"input '{vi.name}' axis {index} is dynamic {name} but no optimization profile "
                    "gives its min/opt/max.",
                    f"pass a profile, e.g. DynamicDim('{param or 'batch'}', min=1, opt=8, max=32).",
                )
            )
    return problems

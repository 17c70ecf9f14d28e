"""FP16 conversion of an ONNX graph, keeping overflow-prone nodes in FP32.

TensorRT 10+ is strongly typed, so FP16 is decided in the ONNX graph. The
conversion itself is ONNX Runtime's ``convert_float_to_float16``; what this
module adds is *evidence-based blocking*: it runs the FP32 model on the
calibration samples with every intermediate tensor exposed and keeps in FP32
every node that produces or consumes a value beyond the FP16 range
(|x| > 65504), because such a value would become Inf in FP16. A node that only
produces a large value but whose consumer runs in FP16 would still overflow at
the Cast in between, which is why consumers are kept too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE
from optpipe.precision import onnx_graph

FP16_MAX = 65504.0

#: ONNX Runtime's default FP16 block list (ops with no FP16 kernel or with
#: index/count outputs), copied so the default is visible in our signature.
DEFAULT_FP16_BLOCK_LIST: tuple[str, ...] = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler",
    "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap", "NonMaxSuppression",
    "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
)  # fmt: skip


@dataclass(frozen=True)
class Fp16Result:
    """What ``convert_fp16`` did.

    ``kept_fp32`` maps each node left in FP32 to the reason: ``"op type X is
    blocked"``, ``"requested"`` or an overflow observation. ``overflow`` maps
    each tensor seen beyond the FP16 range to its largest |value|.
    """

    path: Path
    kept_fp32: dict[str, str]
    converted_nodes: int
    total_nodes: int
    overflow: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def find_overflow(
    model: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]] | None, limit: float = FP16_MAX
) -> dict[str, float]:
    """Largest |value| of every float tensor above ``limit``: observed, initializer or Constant."""
    peaks: dict[str, float] = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            if arr.size:
                peaks[init.name] = float(np.abs(arr).max())
    if samples:
        names = [out for node in model.graph.node for out in node.output if out]
        names += [i.name for i in model.graph.input]
        for values in onnx_graph.run_exposed(model, names, samples):
            for name, arr in values.items():
                if arr.dtype.kind == "f" and arr.size:
                    peak = float(np.max(np.abs(arr)))
                    peaks[name] = max(peaks.get(name, 0.0), peak)
    else:
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                        arr = numpy_helper.to_array(attr.t)
                        if arr.size:
                            peaks[node.output[0]] = float(np.abs(arr).max())
    return {name: peak for name, peak in peaks.items() if not peak <= limit}  # NaN/Inf count too


def convert_fp16(
    src: Path,
    dst: Path,
    *,
    op_block_list: Sequence[str] = DEFAULT_FP16_BLOCK_LIST,
    node_block_list: Sequence[str] = (),
    keep_io_types: bool = True,
    calib_samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> Fp16Result:
    """Convert ``src`` to FP16 at ``dst``; nodes that would overflow stay FP32.

    Without ``calib_samples`` only initializers and Constants are range-checked:
    activations cannot be known without data, and a warning says so.
    ``keep_io_types`` keeps FP32 inputs/outputs so callers feed the same data. ``dst`` keeps its
    weights in an external data file above ``external_above`` bytes (:func:`optpipe.onnx.utils.save_onnx`).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    model = onnx_graph.load_model(src)
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    if any(not n.name for n in nodes):
        raise UserInputError(f"'{src}' has unnamed nodes; FP16 node blocking needs node names")
    unknown = [n for n in node_block_list if n not in names]
    if unknown:
        raise UserInputError(f"node_block_list names nodes not in '{src}': {unknown}")

    warnings: list[str] = []
    kept: dict[str, str] = {}
    blocked_ops = set(op_block_list)
    for node in nodes:
        if node.op_type in blocked_ops:
            kept[node.name] = f"op type {node.op_type} is blocked"
    for name in node_block_list:
        kept.setdefault(name, "requested")

    overflow = find_overflow(model, calib_samples)
    if not calib_samples:
        warnings.append("no calibration samples: activations were not range-checked for FP16 overflow")
    for node in nodes:
        for tensor in [*node.output, *node.input]:
            if tensor in overflow and node.name not in kept:
                role = "produces" if tensor in node.output else "consumes"
                kept[node.name] = (
                    f"{role} '{tensor}' with |x| up to {overflow[tensor]:.4g} > {FP16_MAX:g} (FP16 max)"
                )
                break

    large = onnx_graph.too_large_for_protobuf(model)  # ORT's in-memory shape inference fails over 2 GiB
    converted = convert_float_to_float16(
        onnx_graph.inferred_through_file(model) if large else model,
        disable_shape_infer=large,
        keep_io_types=keep_io_types,
        op_block_list=sorted(blocked_ops),
        node_block_list=sorted(kept),
    )
    _remove_fp16_round_trips(converted)
    onnx_graph.save_atomic(converted, dst, external_above)

    if calib_samples:
        warnings.extend(_check_outputs_finite(converted, calib_samples))
    return Fp16Result(
        path=dst,
        kept_fp32=kept,
        converted_nodes=len(nodes) - len(kept),
        total_nodes=len(nodes),
        overflow=overflow,
        warnings=warnings,
    )


def _remove_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Drop ``Cast(to fp16) -> Cast(to fp32)`` pairs between FP32 nodes; return how many.

    ONNX Runtime's converter casts every blocked node's output to FP16 and
    back for the next blocked node, so a value kept in FP32 *because* it
    overflows FP16 would still pass through FP16 and become Inf. Rewiring the
    FP32 consumers to the original FP32 tensor removes that round trip.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        source = first.input[0]
        if node.output[0] in graph_outputs:
            node.input[0] = source  # keep the output name; a float->float Cast is an identity
            continue
        rename[node.output[0]] = source
        dropped.add(id(node))
    if not rename:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    kept_nodes = [n for n in graph.node if id(n) not in dropped]
    used = {i for n in kept_nodes for i in n.input} | graph_outputs
    kept_nodes = [
        n for n in kept_nodes if not (cast_to(n) is not None and all(o not in used for o in n.output))
    ]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return len(rename)


def _check_outputs_finite(model: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """Warn when the FP16 model still yields Inf/NaN where FP32 inputs were finite."""
    sess = onnx_graph.session(model)
    names = [o.name for o in sess.get_outputs()]
    for index, sample in enumerate(samples):
        for name, value in zip(names, sess.run(None, dict(sample)), strict=True):
            arr = np.asarray(value)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return [f"FP16 model output '{name}' is not finite on sample {index}"]
    return []

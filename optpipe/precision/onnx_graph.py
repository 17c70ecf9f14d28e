"""ONNX graph helpers shared by the precision modules and the passes that lower precision.

The precision passes all need the same three things: the input specs of a
model file, a way to run a model with intermediate tensors exposed as graph
outputs, and atomic writes so a crash never leaves a valid-looking artifact.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import TensorSpec
from optpipe.onnx.shapes import graph_inputs
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, initializer_bytes, save_onnx

if TYPE_CHECKING:
    import onnxruntime as ort

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def load_model(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into a one-line user error."""
    if not Path(path).is_file():
        raise UserInputError(f"ONNX model '{path}' does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types for corrupt files
        raise UserInputError(f"cannot read ONNX model '{path}': {exc}") from exc


def input_specs(model: onnx.ModelProto | Path) -> list[TensorSpec]:
    """The real inputs of a model (graph inputs that are not initializers).

    An axis with no name gets one (``INPUT_dimI``), so every dynamic axis can be bound by name.
    """
    proto = load_model(model) if isinstance(model, Path) else model
    specs = []
    for value in graph_inputs(proto.graph):
        shape = tuple(
            dim if isinstance(dim, int) else (dim or f"{value.name}_dim{i}")
            for i, dim in enumerate(value.shape or ())
        )
        specs.append(TensorSpec(value.name, shape, value.dtype))
    return specs


def save_atomic(model: onnx.ModelProto, dst: Path, external_above: int = EXTERNAL_DATA_ABOVE) -> list[Path]:
    """Write ``model`` to ``dst`` (and its external data above ``external_above`` bytes) atomically.

    :func:`optpipe.onnx.utils.save_onnx` writes through temporary names and renames, so a crash
    never leaves a truncated ``dst`` that a later step would take for a finished artifact.
    Returns the files written, the model first.
    """
    return save_onnx(model, Path(dst), external_above=external_above)


def too_large_for_protobuf(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be serialised in one message (its weights alone near protobuf's 2 GiB).

    ``ModelProto.ByteSize()`` cannot say so: it serialises, and fails, on such a model.
    """
    return initializer_bytes(model) > EXTERNAL_DATA_ABOVE


@contextlib.contextmanager
def on_disk(model: onnx.ModelProto) -> Iterator[Path]:
    """``model`` saved (external data when large) in a temporary folder, for tools that need a path."""
    with tempfile.TemporaryDirectory(prefix="optpipe-model-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_onnx(model, path)
        yield path


def inferred_through_file(model: onnx.ModelProto, *, weights: bool = True) -> onnx.ModelProto:
    """``model`` with ONNX shape inference's value_info, inferred from a file (the form that works over 2 GiB).

    ``weights=False`` returns the inferred graph without its weights (enough to read types).
    """
    with on_disk(model) as path:
        inferred_path = path.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path))
        inferred = onnx.load(str(inferred_path), load_external_data=False)
        if weights:  # the inferred file refers to the temporary model.onnx.data: read it while it exists
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(inferred, str(path.parent))
        return inferred


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference), by name."""
    try:
        if too_large_for_protobuf(model):  # shape inference on a message > 2 GiB fails: the path form works
            inferred = inferred_through_file(model, weights=False)
        else:
            inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best-effort here; untyped tensors are simply skipped
        inferred = model
    types: dict[str, int] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def with_outputs(model: onnx.ModelProto, names: Iterable[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (typed from ``types``)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    for name in names:
        if name in existing:
            continue
        exposed.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
        existing.add(name)
    return exposed


def session(model: onnx.ModelProto, *, optimize: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on an in-memory model.

    Optimisation is off by default: these sessions inspect tensors, and graph
    fusion would change which tensors exist and how they are computed.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if too_large_for_protobuf(model):  # no bytes form over 2 GiB: ORT reads the file and its external data
        with on_disk(model) as path:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_exposed(
    model: onnx.ModelProto, names: Sequence[str], samples: Iterable[Mapping[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{tensor name: value}`` for ``names`` on each sample (one session for all)."""
    types = float_tensor_types(model)
    wanted = [n for n in names if n in types]
    sess = session(with_outputs(model, wanted, types))
    out_names = [o.name for o in sess.get_outputs()]
    feed_names = {i.name for i in sess.get_inputs()}
    for sample in samples:
        values = sess.run(None, {k: v for k, v in sample.items() if k in feed_names})
        yield {n: np.asarray(v) for n, v in zip(out_names, values, strict=True) if n in wanted}


def module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module path the dynamo exporter recorded for ``node`` ('' when absent).

    torch.onnx (dynamo) writes ``pkg.torch.onnx.name_scopes`` such as
    ``"['', 'encoder', 'layer', '0', 'conv2d_1']"``: the root, the module
    attribute names, and last the op's own name, which we drop.
    """
    props = {p.key: p.value for p in node.metadata_props}
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = None
        if isinstance(parts, list) and parts:
            return _join_scopes([str(p) for p in parts[1:-1] if p])
    namespace = props.get("namespace", "")
    if namespace:
        # ": __main__.Net/conv2: torch.nn.modules.conv.Conv2d/conv2d_1: aten.conv2d.default"
        names = [seg.split(":")[0] for seg in namespace.split("/")[1:-1]]
        return _join_scopes([n for n in names if n])
    return ""


def _join_scopes(scopes: list[str]) -> str:
    """Module path from scope names, which torch >= 2.9 records cumulatively.

    Newer exporters write ``['features', 'features.0', 'features.0.1']``
    (each scope the full path), older ones ``['encoder', 'layer', '0']``;
    joining the cumulative form would give ``features.features.0.features.0.1``.
    """
    if len(scopes) > 1 and all(b.startswith(a + ".") for a, b in itertools.pairwise(scopes)):
        return scopes[-1]
    return ".".join(scopes)


def single_rows(
    model: onnx.ModelProto, samples: Iterable[Mapping[str, np.ndarray]], limit: int
) -> list[dict[str, np.ndarray]]:
    """Up to ``limit`` samples of batch 1: batched samples split along axis 0 when every input's axis 0 is dynamic.

    Why: the guard's per-layer analysis exposes every intermediate tensor. A golden case of
    40 rows run as one batch held all of EfficientNet-Lite0's activations for 40 images in
    both models at once (6.9 GB peak RSS); row by row it holds one image's. A model whose
    batch axis is static gets its samples unchanged (split rows would not fit its inputs).
    """
    specs = input_specs(model)
    dynamic = bool(specs) and all(s.shape and isinstance(s.shape[0], str) for s in specs)
    rows: list[dict[str, np.ndarray]] = []
    for sample in samples:
        if len(rows) >= limit:
            break
        arrays = {k: np.asarray(v) for k, v in sample.items()}
        sizes = {a.shape[0] for a in arrays.values() if a.ndim}
        if not dynamic or len(sizes) != 1:
            rows.append(arrays)
            continue
        for i in range(min(sizes.pop(), limit - len(rows))):
            rows.append({k: a[i : i + 1] if a.ndim else a for k, a in arrays.items()})
    return rows

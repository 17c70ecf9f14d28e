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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import TensorSpec
from optpipe.onnx.graph_only import VALUES_UP_TO_ELEMENTS
from optpipe.onnx.shapes import graph_inputs
from optpipe.onnx.utils import (
    EXTERNAL_DATA_ABOVE,
    adopt_data_file,
    holds_external_references,
    initializer_bytes,
    save_onnx,
)

if TYPE_CHECKING:
    import onnxruntime as ort

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def _read(path: Path, read: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """``read()``, turning a missing or corrupt file at ``path`` into a one-line user error."""
    if not Path(path).is_file():
        raise UserInputError(f"ONNX model '{path}' does not exist")
    try:
        return read()
    except Exception as exc:  # protobuf raises several unrelated types for corrupt files
        raise UserInputError(f"cannot read ONNX model '{path}': {exc}") from exc


def load_model(path: Path, *, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file (without its external data files' bytes when ``external_data`` is False)."""
    return _read(path, lambda: onnx.load(str(path), load_external_data=external_data))


def load_skeleton(path: Path) -> onnx.ModelProto:
    """:func:`skeleton` of the ONNX file at ``path``, read without the large weights' bytes
    (:mod:`optpipe.onnx.graph_only`): the graph to look at, at the cost of the graph, not twice the weights."""
    from onnx.external_data_helper import load_external_data_for_tensor

    from optpipe.onnx.graph_only import load_graph_only

    def read() -> onnx.ModelProto:
        light = skeleton(load_graph_only(Path(path)))
        for tensor in light.graph.initializer:  # what the skeleton keeps of external data is read, as onnx.load does
            if tensor.data_location == TensorProto.EXTERNAL:
                load_external_data_for_tensor(tensor, str(Path(path).parent))
        return light

    return _read(path, read)


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


def inferred_through_file(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ONNX shape inference's value_info, inferred from a file (the form that works over 2 GiB).

    (Types alone need no file: :func:`float_tensor_types` infers them on the :func:`skeleton`.)
    """
    from onnx.external_data_helper import load_external_data_for_model

    with on_disk(model) as path:
        inferred_path = path.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path))
        inferred = onnx.load(str(inferred_path), load_external_data=False)
        # The inferred file refers to the temporary model.onnx.data: read it while it exists.
        load_external_data_for_model(inferred, str(path.parent))
        return inferred


def externalized_copy(src: Path, folder: Path) -> Path:
    """A copy of ``src`` in ``folder`` whose tensors over 1 KB are external data (``source.onnx.data``).

    Why: a third-party step that loads a model file several times over (ONNX Runtime's quantization
    pre-processing, its transformer optimizer) then holds the graph alone where it does not need the
    weights, and reads them from the file where it does: the same model, fewer copies in memory.
    A ``src`` whose weights already are in one data file (over 2 GB) is copied as its graph beside a copy of
    that file (:func:`~optpipe.onnx.utils.adopt_data_file`): its weights never pass through this process.
    """
    path = Path(folder) / "source.onnx"
    model = load_model(src, external_data=False)  # a missing or corrupt file: one line
    if holds_external_references(model) and adopt_data_file(model, Path(src).parent, path):
        save_onnx(model, path)
        return path
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(model, str(Path(src).parent))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="source.onnx.data", size_threshold=1024)
    return path


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference), by name.

    Inferred on :func:`skeleton` (the graph without its large weights): ``infer_shapes`` returns a
    whole new model, so on the model itself it held two more copies of the weights at once
    (BERT-base: 0.9 GB) to read a few bytes of types.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # inference is best-effort here; untyped tensors are simply skipped
        inferred = model
    types: dict[str, int] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


#: Initializers with more elements than this lose their data in :func:`skeleton` (shape tensors, scales and
#: axes that shape inference reads are far smaller).
SKELETON_MAX_ELEMENTS = VALUES_UP_TO_ELEMENTS  # load_skeleton's streamed read drops the same values


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its large float initializers (their names, types and shapes kept).

    Why: what the graph computes and each tensor's type depend on the initializers' shapes, not on
    the weights; a copy without them costs kilobytes instead of the model's size.
    """
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, name).extend(getattr(model.graph, name))
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES and _elements(tensor) > SKELETON_MAX_ELEMENTS:
            graph.initializer.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type,
                                                      dims=list(tensor.dims)))
        else:
            graph.initializer.append(tensor)
    return light


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count


@contextlib.contextmanager
def with_outputs(model: onnx.ModelProto, names: Iterable[str], types: Mapping[str, int]) -> Iterator[onnx.ModelProto]:
    """``model`` whose graph also outputs ``names`` (typed from ``types``) while the ``with`` block runs.

    The outputs are appended in place and removed afterwards: a copy of the model (the way this was
    done before) held one more copy of its weights while the session was made.
    """
    outputs = model.graph.output
    count = len(outputs)
    existing = {o.name for o in outputs}
    for name in names:
        if name not in existing:
            outputs.append(helper.make_tensor_value_info(name, types[name], None))
            existing.add(name)
    try:
        yield model
    finally:
        while len(outputs) > count:
            del outputs[-1]


def session(model: onnx.ModelProto | str, *, optimize: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on an in-memory model (or a model file).

    Optimisation is off by default: these sessions inspect tensors, and graph
    fusion would change which tensors exist and how they are computed.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, str):
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    if too_large_for_protobuf(model):  # no bytes form over 2 GiB: ORT reads the file and its external data
        with on_disk(model) as path:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class ExposedSession:
    """An ONNX Runtime session on ``model`` that also outputs the intermediate tensors ``names``.

    Made eagerly, so the caller may drop (or :func:`skeleton`) its model once this exists: the
    session holds its own copy of the weights, and the guard's per-layer analysis keeps only the
    graph for its ranking.
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], *, consume: bool = False) -> None:
        """``consume``: ``model`` is not used again by the caller, so its weights may move to a file.

        Then the session is made from a temporary file whose weights are external data: ONNX Runtime
        reads them from the file instead of from a serialised copy of the model (a session made from
        bytes peaked at 3x the weights on top of the model itself).
        """
        types = float_tensor_types(model)
        self.wanted = [n for n in names if n in types]
        with with_outputs(model, self.wanted, types) as exposed:
            if consume:
                with tempfile.TemporaryDirectory(prefix="optpipe-exposed-") as tmp:
                    path = str(Path(tmp) / "exposed.onnx")
                    onnx.save_model(exposed, path, save_as_external_data=True, all_tensors_to_one_file=True,
                                    location="exposed.onnx.data", size_threshold=1024)
                    self.session = session(path)
            else:
                self.session = session(exposed)
        self.out_names = [o.name for o in self.session.get_outputs()]
        self.feed_names = {i.name for i in self.session.get_inputs()}

    def run(self, samples: Iterable[Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``{tensor name: value}`` for the exposed names on each sample."""
        wanted = set(self.wanted)
        for sample in samples:
            values = self.session.run(None, {k: v for k, v in sample.items() if k in self.feed_names})
            yield {n: np.asarray(v) for n, v in zip(self.out_names, values, strict=True) if n in wanted}


def run_exposed(
    model: onnx.ModelProto, names: Sequence[str], samples: Iterable[Mapping[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{tensor name: value}`` for ``names`` on each sample (one session for all)."""
    yield from ExposedSession(model, names).run(samples)


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

"""Rewrite an attention mask built by index arithmetic into the form ONNX Runtime's Attention fusion matches.

Why: transformers 5 builds BERT's additive attention mask as
``Where(And(..., GatherND(Cast(attention_mask), <arange indices>)), 0, finfo.min)``; the dynamo exporter
writes that chain as it is, and ``onnxruntime.transformers``' ``FusionAttention`` only knows the classic
``Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(mask)))), filter)`` (and a few other exporters' chains). No
Attention fused on all-MiniLM-L6-v2, which left the fused variants short of the speed Olive/Optimum get.

The rewrite replaces each such ``Where`` by ``Where(Cast(pad, bool), low, pad)`` with
``pad = 1 - Cast(Expand(Unsqueeze(Unsqueeze(mask, 1), 2)))`` and ``low`` the Where's own fill value, the
chain transformers 4 exported (see :func:`_replacement`). It is exact for masks of 0 and 1 (what
tokenizers produce): a real token gives ``pad = 0`` and so ``0``, a padding token ``pad = 1`` and so ``low``,
as ``Where(m != 0, 0, low)`` does.

The rewrite is applied only where it is proven: the condition's value must depend on one rank-2 graph
input alone (other inputs only through ``Shape``), and the condition subgraph, run on its own with masks of
several lengths and paddings (right, left, holes, all padding), must equal ``mask[:, None, None, :] != 0``
broadcast to its shape. Any other mask is left as it is, with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Fill values at or below this are a mask's "minus infinity" (BERT uses -10000 or the dtype's minimum).
MASK_FILL_AT_MOST = -1e4
_MASK_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT)


@dataclass(frozen=True)
class MaskRewrite:
    """What :func:`rewrite_attention_masks` did: rewritten Where nodes, the mask input, why others were not."""

    rewritten: tuple[str, ...]
    mask_input: str | None
    skipped: tuple[str, ...]  # "<where node>: <reason>", one per candidate left alone


@dataclass(frozen=True)
class _Candidate:
    where: onnx.NodeProto
    fill: np.ndarray  # the Where's fill value (a scalar of the scores' dtype)


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs of ``model``, as arrays; initializers whose data is external are left out.

    Why: the fusion pass reads the graph with its weights left in their file (less memory); the masks'
    constants are small, so they stay inline (``onnx_graph.externalized_copy`` keeps tensors under 1 KB).
    """
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
              if i.data_location != onnx.TensorProto.EXTERNAL}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _scalar(values: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    value = values.get(name)
    return value if value is not None and value.size == 1 else None


def _candidates(model: onnx.ModelProto) -> Iterator[_Candidate]:
    """``Where(cond, 0, low)`` nodes added to attention scores right before a Softmax, once each."""
    producer = {o: n for n in model.graph.node for o in n.output}
    values = constant_values(model)
    seen: set[str] = set()
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        add = producer.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        for name in add.input:
            where = producer.get(name)
            if where is None or where.op_type != "Where" or where.output[0] in seen:
                continue
            zero, fill = _scalar(values, where.input[1]), _scalar(values, where.input[2])
            if zero is None or fill is None or float(zero.item()) != 0.0 or float(fill.item()) > MASK_FILL_AT_MOST:
                continue
            seen.add(where.output[0])
            yield _Candidate(where, fill)


def _value_inputs(model: onnx.ModelProto, tensor: str) -> tuple[set[str], list[onnx.NodeProto]]:
    """Graph inputs whose *values* ``tensor`` depends on (a Shape reads only the shape), and its ancestor nodes."""
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    found: set[str] = set()
    nodes: dict[str, onnx.NodeProto] = {}
    stack, visited = [tensor], set()
    while stack:
        name = stack.pop()
        if name in visited or not name:
            continue
        visited.add(name)
        node = producer.get(name)
        if node is None:
            found |= {name} & graph_inputs
            continue
        nodes[node.output[0]] = node
        if node.op_type == "Shape" or node.op_type == "Size":
            stack.extend(i for i in node.input if i not in graph_inputs)  # its input's shape only
            continue
        stack.extend(node.input)
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    return found, sorted(nodes.values(), key=lambda n: order[id(n)])


def _static_dims(mask: onnx.ValueInfoProto) -> tuple[int | None, int | None]:
    """The mask's (batch, length) where the graph fixes them (a ``--static-seq`` export), else None."""
    shape = mask.type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape]
    return dims[0], dims[1]


def _mask_patterns(rng: np.random.Generator, batch: int | None = None,
                   length: int | None = None) -> Iterator[np.ndarray]:  # fmt: skip
    """0/1 masks: right and left padding, holes, a row of padding only, no padding.

    Several lengths where the graph lets the length vary; the graph's own batch and length where it fixes
    them (a static 128-token graph rejects any other shape, so the proof runs at the one shape it serves).
    """
    for size in (length,) if length else (1, 2, 7, 13):
        rows = np.ones((4, size), np.int64)
        rows[1, max(1, size // 2) :] = 0  # right padding
        rows[2, : size // 2] = 0  # left padding
        rows[3] = rng.integers(0, 2, size)  # holes
        yield rows[np.arange(batch) % 4] if batch else rows
    yield np.zeros((batch or 2, length or 5), np.int64)


def _inline(inits: list[onnx.TensorProto], base_dir: Path | None) -> list[onnx.TensorProto] | None:
    """``inits`` with the data of external ones read from ``base_dir`` (copies); None when that folder is unknown.

    Why: the fusion pass reads the graph with its weights left in their file, and a mask constant over
    1 KB (a static 128-token export's index table) is external there. The condition's own small model is
    run from bytes, where ONNX Runtime would look for that file beside the working directory and fail.
    """
    from onnx.external_data_helper import load_external_data_for_tensor

    inline: list[onnx.TensorProto] = []
    for init in inits:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            if base_dir is None:
                return None
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            load_external_data_for_tensor(copy, str(base_dir))
            copy.data_location = onnx.TensorProto.DEFAULT
            del copy.external_data[:]
            init = copy
        inline.append(init)
    return inline


def _condition_matches(model: onnx.ModelProto, cond: str, mask: onnx.ValueInfoProto,
                       nodes: list[onnx.NodeProto], base_dir: Path | None) -> str:  # fmt: skip
    """"" when the subgraph computing ``cond`` equals ``mask[:, None, None, :] != 0`` on every test mask."""
    import onnxruntime as ort

    used = {i for n in nodes for i in n.input}
    inputs = [i for i in model.graph.input if i.name in used]
    inits = _inline([i for i in model.graph.initializer if i.name in used], base_dir)
    if inits is None:
        return "its constants are external data and their folder is unknown"
    out = helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, None)
    sub = helper.make_model(helper.make_graph(nodes, "mask_condition", inputs, [out], inits),
                            opset_imports=model.opset_import, ir_version=model.ir_version)  # fmt: skip
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own errors have no common base class
        return f"the condition does not load on its own: {type(error).__name__}"
    dtype = onnx.helper.tensor_dtype_to_np_dtype(mask.type.tensor_type.elem_type)
    for rows in _mask_patterns(np.random.default_rng(0), *_static_dims(mask)):
        feeds = {}
        for graph_input in inputs:  # the others are read through Shape only: any values of the mask's shape
            elem = onnx.helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
            feeds[graph_input.name] = rows.astype(dtype if graph_input.name == mask.name else elem)
        try:
            got = np.asarray(session.run(None, feeds)[0])
        except Exception as error:  # onnxruntime's own errors have no common base class
            return f"the condition does not run on its own: {type(error).__name__}"
        want = (rows != 0)[:, None, None, :]
        if got.ndim != 4 or got.shape[0] != rows.shape[0] or got.shape[-1] != rows.shape[1]:
            return f"condition shape {got.shape} for a mask of shape {rows.shape}"
        if not np.array_equal(got, np.broadcast_to(want, got.shape)):
            return "the condition is not mask != 0 (e.g. causal or sliding window)"
    return ""


def _check(model: onnx.ModelProto, candidate: _Candidate,
           base_dir: Path | None) -> tuple[onnx.ValueInfoProto | None, str]:  # fmt: skip
    """The mask input ``candidate``'s condition is proven to read, or None and why not."""
    cond = candidate.where.input[0]
    depends, nodes = _value_inputs(model, cond)
    if len(depends) != 1:
        return None, f"the condition reads {len(depends)} graph inputs' values, not one mask"
    mask = next(i for i in model.graph.input if i.name in depends)
    shape = mask.type.tensor_type.shape
    if len(shape.dim) != 2 or mask.type.tensor_type.elem_type not in _MASK_TYPES:
        return None, f"input '{mask.name}' is not a rank-2 mask"
    why = _condition_matches(model, cond, mask, nodes, base_dir)
    return (None, why) if why else (mask, "")


def _replacement(where: onnx.NodeProto, mask: str, fill: np.ndarray, model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """``Where(Cast(pad, bool), fill, pad)`` with ``pad = 1 - Cast(Expand(Unsqueeze(Unsqueeze(mask, 1), 2), [1]))``.

    This is the chain ``FusionAttention`` knows from transformers 4's SDPA export. The classic
    ``(1 - m) * fill`` form is not matched when the scores are scaled by a ``Mul`` (as transformers 5 does):
    the optimizer takes the Add's first Mul parent for the mask. It writes the Where's output name.
    """
    tag = where.name or where.output[0]
    dtype = helper.np_dtype_to_tensor_dtype(fill.dtype)
    one, low = f"{tag}/mask_one", f"{tag}/mask_fill"
    axis1, axis2, same = f"{tag}/axis1", f"{tag}/axis2", f"{tag}/same_shape"
    constants = ((one, np.array(1, fill.dtype)), (low, fill.reshape(())), (axis1, np.array([1], np.int64)),
                 (axis2, np.array([2], np.int64)), (same, np.array([1], np.int64)))  # fmt: skip
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants)
    u1, u2, expand, cast, pad, padded = (f"{tag}/{s}" for s in ("unsqueeze1", "unsqueeze2", "expand", "cast", "pad",
                                                               "padded"))  # fmt: skip
    return [
        helper.make_node("Unsqueeze", [mask, axis1], [u1], name=u1),
        helper.make_node("Unsqueeze", [u1, axis2], [u2], name=u2),
        helper.make_node("Expand", [u2, same], [expand], name=expand),
        helper.make_node("Cast", [expand], [cast], name=cast, to=dtype),
        helper.make_node("Sub", [one, cast], [pad], name=pad),
        helper.make_node("Cast", [pad], [padded], name=padded, to=onnx.TensorProto.BOOL),
        helper.make_node("Where", [padded, low, pad], [where.output[0]], name=f"{tag}/where"),
    ]


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every name the subgraphs of ``node`` (If/Loop/Scan bodies) read: outer-scope values they may use."""
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in [attribute.g, *attribute.graphs] if attribute.type in (5, 10) else []:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_reads(inner))
    return names


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes no output depends on any more (the old mask chain), and initializers nothing reads."""
    needed = {o.name for o in model.graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            needed.update(_subgraph_reads(node))
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    unused = [i for i in model.graph.initializer if i.name not in needed]
    for init in unused:
        model.graph.initializer.remove(init)


def rewrite_attention_masks(model: onnx.ModelProto, base_dir: Path | None = None) -> MaskRewrite:
    """Rewrite, in place, every proven index-built attention mask of ``model`` (see module docs).

    ``base_dir``: the folder of ``model``'s external data, when it was loaded without it.
    """
    rewritten: list[str] = []
    skipped: list[str] = []
    mask_input: str | None = None
    for candidate in list(_candidates(model)):
        mask, why = _check(model, candidate, base_dir)
        name = candidate.where.name or candidate.where.output[0]
        if mask is None:
            skipped.append(f"{name}: {why}")
            continue
        position = list(model.graph.node).index(candidate.where)
        new_nodes = _replacement(candidate.where, mask.name, candidate.fill, model)
        model.graph.node.remove(candidate.where)
        for offset, node in enumerate(new_nodes):
            model.graph.node.insert(position + offset, node)
        rewritten.append(name)
        mask_input = mask.name
    if rewritten:
        _drop_dead_nodes(model)
    return MaskRewrite(tuple(rewritten), mask_input, tuple(skipped))

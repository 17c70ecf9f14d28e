"""Small ONNX helpers shared by passes (loading with clear errors, domains)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from optpipe.core.errors import UserInputError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def load_onnx(path: Path, load_external_data: bool = True) -> Any:
    """Load an ONNX model or raise a one-line UserInputError."""
    import onnx

    if not path.is_file():
        raise UserInputError(f"{path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as error:
        raise UserInputError(f"{path} is not a valid ONNX model: {type(error).__name__}: {error}") from None


#: Weights above this many bytes go to an external data file next to the model (protobuf refuses a
#: message over 2 GiB; the margin leaves room for the graph itself).
EXTERNAL_DATA_ABOVE = 1_800_000_000


def initializer_bytes(model: Any) -> int:
    """Bytes of the model's initializers held in memory (external ones not loaded count as 0)."""
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()
    return total


def save_onnx(model: Any, path: Path, *, external_above: int = EXTERNAL_DATA_ABOVE) -> list[Path]:
    """Save ``model`` at ``path``; weights go to ``<name>.data`` beside it when they exceed ``external_above``.

    Why one function: every pass that writes a model must handle models over protobuf's 2 GiB limit
    the same way, and a reader (manifest, cache, verify) finds the data file through the model's own
    ``location`` entries. Returns the files written (the model first). When the weights go external,
    onnx moves them out of ``model`` in place: the object no longer holds them after the call.
    """
    import onnx

    data_name = f"{path.name}.data"
    data_path = path.parent / data_name
    external = initializer_bytes(model) > external_above
    if data_path.exists():
        data_path.unlink()  # save_model appends to an existing data file
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return [path, data_path]
    onnx.save_model(model, str(path))
    return [path]


def non_standard_ops(model: Any) -> Counter[str]:
    """``domain::op`` counts of nodes outside the standard ONNX domains."""
    return Counter(
        f"{node.domain}::{node.op_type}" for node in model.graph.node if node.domain not in STANDARD_DOMAINS
    )


def onnx_files(path: Path) -> list[Path]:
    """An ONNX file plus its external data files, if any."""
    files = [path]
    model = load_onnx(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                data_path = path.parent / entry.value
                if data_path not in files:
                    files.append(data_path)
    return files


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph of its nodes (If/Loop/Scan bodies), which may read outer values by name."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _rename_value(graph: Any, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` wherever it appears: producers, readers, declarations."""
    for g in _graphs(graph):
        for node in g.node:
            for field in (node.input, node.output):
                for i, name in enumerate(field):
                    if name == old:
                        field[i] = new
        for info in [*g.input, *g.output, *g.value_info, *g.initializer]:
            if info.name == old:
                info.name = new
        for sparse in g.sparse_initializer:
            if sparse.values.name == old:
                sparse.values.name = new


def rename_outputs(model: Any, names: Sequence[str]) -> None:
    """Give the graph outputs ``names`` (in order), renaming any other value that already has one of them.

    Why: torch 2.13's dynamo exporter applies ``output_names`` by renaming its graph output and breaks
    SSA form when an internal value already has that name (MiniLM: an output named ``embedding`` beside
    the ``embedding`` node's value: "Duplicate definition of name (embedding)"), so optpipe exports
    without output names and names the outputs here.
    """
    graph = model.graph
    current = [output.name for output in graph.output]
    if len(names) != len(current):
        raise ValueError(f"the graph has {len(current)} outputs, {len(names)} names were given")
    used = {name for g in _graphs(graph) for node in g.node for name in [*node.input, *node.output]}
    used |= {v.name for v in [*graph.input, *graph.initializer, *graph.value_info, *graph.output]}
    for index, new in enumerate(names):
        old = graph.output[index].name  # read again: moving a name aside may have renamed a later output
        if old == new:
            continue
        if new in used:  # an internal value holds the name: move it aside first
            spare = next(f"{new}__{i}" for i in range(len(used) + 1) if f"{new}__{i}" not in used)
            _rename_value(graph, new, spare)
            used.add(spare)
        _rename_value(graph, old, new)
        used.add(new)

"""Small ONNX helpers shared by passes (loading with clear errors, domains)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from optpipe.core.artifact import sha256_file, sha256_files
from optpipe.core.errors import UserInputError
from optpipe.onnx.graph_only import load_graph_only
from optpipe.onnx.streamed_write import write_model

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


def load_graph(path: Path) -> Any:
    """:func:`~optpipe.onnx.graph_only.load_graph_only` of ``path`` (the graph, not the large weights' bytes),
    or the one-line UserInputError :func:`load_onnx` raises for a missing or invalid file."""
    if not path.is_file():
        raise UserInputError(f"{path} does not exist")
    try:
        return load_graph_only(path)
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


def holds_external_references(model: Any) -> bool:
    """True when some initializer points at an external data file instead of holding its bytes."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def save_onnx(model: Any, path: Path, *, external_above: int = EXTERNAL_DATA_ABOVE) -> list[Path]:
    """Save ``model`` at ``path``; weights go to ``<name>.data`` beside it when they exceed ``external_above``.

    Why one function: every pass that writes a model must handle models over protobuf's 2 GiB limit
    the same way, and a reader (manifest, cache, verify) finds the data file through the model's own
    ``location`` entries. Returns the model's files (the model first). ``external_above=0`` always
    writes external data (how a test proves the path on a small model); tensors under 1 KiB stay
    inline, so a model with no larger tensor is one file.

    Both files are written in a temporary folder beside ``path`` and renamed into place, data file
    first: a crash never leaves a finished-looking model next to a truncated data file. A stale
    ``<name>.data`` from an earlier save is removed when the model is now one file. ``model`` still
    holds its weights after the call (onnx moves them out while writing; they are read back).
    A model loaded without its weights, all in ``<name>.data`` beside ``path``, is saved as a graph
    that keeps referring to that file (:func:`_save_graph_only`).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.parent / f"{path.name}.data"
    if holds_external_references(model):
        return _save_graph_only(model, path, data_path)
    external = initializer_bytes(model) > external_above
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        staged = Path(tmp) / path.name
        staged_data = Path(tmp) / data_path.name
        if external:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_path.name, size_threshold=1024)
            load_external_data_for_model(model, tmp)
        else:
            write_model(model, staged)  # onnx.save_model's bytes, without two encoded copies of the weights
        if staged_data.is_file():
            os.replace(staged_data, data_path)
        else:
            data_path.unlink(missing_ok=True)
        os.replace(staged, path)
    return [path, data_path] if data_path.is_file() else [path]


def _save_graph_only(model: Any, path: Path, data_path: Path) -> list[Path]:
    """Rewrite ``path`` for a model loaded without its weights, which stay in ``data_path`` as they are.

    Why: renaming a graph output of a 2 GB model should not read and write 2 GB. Only a model whose
    every external tensor lives in ``<name>.data`` beside ``path`` qualifies: any other location would
    be left behind by this save, or deleted under the model by a later one.
    """
    import onnx

    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}  # fmt: skip
    if locations != {data_path.name} or not data_path.is_file():
        raise ValueError(f"saving {path.name}: the model refers to external data in {sorted(locations)}, not in "
                         f"an existing {data_path.name}; load it with load_external_data=True first")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        staged = Path(tmp) / path.name
        onnx.save_model(model, str(staged))
        os.replace(staged, path)
    return [path, data_path]


def adopt_data_file(model: Any, source_dir: Path, path: Path) -> bool:
    """Point ``model``'s external tensors at ``<path>.data``, a copy of the one data file in ``source_dir`` they
    refer to, so :func:`save_onnx` writes the graph alone; False (nothing done) when they refer to no file or
    to several.

    Why: a graph tool's result over 2 GB (simplify's, the quantizers' inputs) kept the input's weights as they
    were, yet was saved by loading all of them and writing them again (the 2.4 GB model: 4.8 GB more held
    in the simplify pass). The operating system copies the file without its bytes passing through this
    process; bytes of tensors the tool dropped stay in it unread. Not a hard link: onnx refuses a data file
    with several links (a "potential hardlink attack"). ``<path>.data`` must be a name optpipe owns.
    """
    import shutil

    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}  # fmt: skip
    if len(locations) != 1:
        return False
    source = Path(source_dir) / next(iter(locations))
    target = path.parent / f"{path.name}.data"
    if source.resolve() != target.resolve():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.copy.tmp")
        shutil.copyfile(source, staged)
        os.replace(staged, target)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = target.name
    return True


def model_sha256(path: Path) -> str:
    """sha256 of what an ONNX file computes with: the file alone, or every file when its weights are external.

    Why: two models with external weights can share a byte-identical ``.onnx`` (the same graph) and
    differ only in their data file; a cache keyed on the ``.onnx`` alone would hand one the other's result.
    """
    files = onnx_files(path)
    return sha256_file(path) if len(files) == 1 else sha256_files(files)


def onnx_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus its external data files (what a pass writing its successor would hold)."""
    return sum(file.stat().st_size for file in onnx_files(path))


def non_standard_ops(model: Any) -> Counter[str]:
    """``domain::op`` counts of nodes outside the standard ONNX domains."""
    return Counter(
        f"{node.domain}::{node.op_type}" for node in model.graph.node if node.domain not in STANDARD_DOMAINS
    )


#: onnx_files' answers by file identity (path, inode, size, mtime): a model file optpipe wrote is renamed into
#: place whole, so a rewritten file has a new identity and is read again.
_FILES_SEEN: dict[tuple[str, int, int, int], tuple[Path, ...]] = {}
_FILES_SEEN_MAX = 256


def onnx_files(path: Path) -> list[Path]:
    """An ONNX file plus its external data files, if any.

    Remembered per file identity: finding the data files parsed the whole protobuf (weights inline below
    1.8 GB), 0.4 s for BERT-base, and a build asked 31 times about a handful of files (12 s); the first
    answer streams the graph without the weights' bytes (:mod:`optpipe.onnx.graph_only`).
    """
    try:
        stat = path.stat()
    except OSError:
        stat = None
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat is not None else None
    seen = _FILES_SEEN.get(key) if key is not None else None
    if seen is not None and all(file.exists() for file in seen):
        return list(seen)
    files = [path]
    model = load_graph(path)  # the graph and each tensor's external-data entries, not inline weights
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                data_path = path.parent / entry.value
                if data_path not in files:
                    files.append(data_path)
    if key is not None:
        if len(_FILES_SEEN) >= _FILES_SEEN_MAX:
            _FILES_SEEN.clear()
        _FILES_SEEN[key] = tuple(files)
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

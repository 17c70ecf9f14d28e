"""A model's large weights set aside while a third-party tool rewrites its graph, then put back.

Why: graph tools (onnxslim) copy every tensor they hold, several times over: its shape inference serialises
the whole model and parses it back, its graph IR and constant folding copy again. BERT-base (0.42 GB) peaked
at 3.9 GB in the simplify pass, the build's highest point. The tool does not need the weights' values, only
their names, types and shapes; with them set aside it works on kilobytes.

Each large float initializer becomes an external-data reference to a file that does not exist (the
:data:`ASIDE_LOCATION` name, the tensor's key as its offset), so a tool that does try to read one fails
loudly instead of reading the wrong bytes: a relative location resolves against the working directory,
where a file of the model's own data-file name may well lie. :func:`put_back` finds every tensor still
pointing there (the tool may rename or duplicate them) and restores it exactly as it was: its bytes, or its
own external-data entries, loaded or not.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where set-aside tensors point: a name no file has (one read fails, and says why).
ASIDE_LOCATION = "optpipe-weights-set-aside-not-a-file.data"
#: Float initializers over this many elements are set aside (smaller ones, shape constants above all, stay).
ASIDE_ABOVE_ELEMENTS = 1024


@dataclass
class WeightsAside:
    """What :func:`set_aside` took out of a model, by key (the offset its placeholder carries)."""

    base_dir: Path  # where the model's own external data lies
    inline: dict[int, bytes] = field(default_factory=dict)  # bytes that were in the model
    external: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # its own external-data entries
    had_location: dict[int, bool] = field(default_factory=dict)  # whether data_location was written


def _float_types() -> set[int]:
    import onnx

    return {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def set_aside(model: Any, base_dir: Path) -> WeightsAside:
    """Replace ``model``'s large float initializers' data by placeholders, in place; what was taken.

    ``base_dir``: the folder of the model's file (its external data, when it has some, is relative to it).
    Small external tensors are read in (a tool would resolve their location against its working directory).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor

    aside = WeightsAside(Path(base_dir))
    floats = _float_types()
    for key, tensor in enumerate(model.graph.initializer):
        if tensor.data_type not in floats or math.prod(tensor.dims) <= ASIDE_ABOVE_ELEMENTS:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:  # small: read now, a tool may read it
                load_external_data_for_tensor(tensor, str(aside.base_dir))
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            aside.external[key] = [(entry.key, entry.value) for entry in tensor.external_data]
        elif tensor.HasField("raw_data"):
            aside.inline[key] = tensor.raw_data
            tensor.ClearField("raw_data")
        else:  # typed fields (float_data...): rare for weights, left in place
            continue
        aside.had_location[key] = tensor.HasField("data_location")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=ASIDE_LOCATION)
        tensor.external_data.add(key="offset", value=str(key))
    return aside


def _placeholder_key(tensor: Any) -> int | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    entries = {entry.key: entry.value for entry in tensor.external_data}
    return int(entries["offset"]) if entries.get("location") == ASIDE_LOCATION else None


def _mark_inline_if_materialised(tensor: Any) -> bool:
    """Mark ``tensor`` inline when a tool wrote its values but kept the placeholder's EXTERNAL mark; whether it did.

    Why: onnxslim's exporter writes a constant whose values it read (through :func:`values_readable`: the real
    ones) as a new tensor of raw bytes and copies the imported tensor's ``data_location`` onto it, so it says
    EXTERNAL with no location, a tensor neither onnx nor ONNX Runtime can read (ViT-B/16's position
    embeddings, which onnxslim reads to see whether an Add's constant is all zeros). Its bytes are the real
    ones: it is inline data.
    """
    import onnx

    if (tensor.data_location != onnx.TensorProto.EXTERNAL or len(tensor.external_data)
            or not tensor.HasField("raw_data")):
        return False
    tensor.ClearField("data_location")
    return True


def _restore(tensor: Any, key: int, aside: WeightsAside) -> None:
    """``tensor`` (a placeholder for ``key``) as it was: its bytes, or its own external-data entries."""
    import onnx

    del tensor.external_data[:]
    if key in aside.external:
        for name, value in aside.external[key]:
            tensor.external_data.add(key=name, value=value)
        return
    tensor.raw_data = aside.inline[key]
    tensor.data_location = onnx.TensorProto.DEFAULT
    if not aside.had_location[key]:
        tensor.ClearField("data_location")


@contextlib.contextmanager
def values_readable(aside: WeightsAside) -> Iterator[None]:
    """While a tool runs, reading a placeholder's values (``onnx.numpy_helper.to_array``) gives the real ones.

    Why: onnxslim reads a few constants' values (is an Add's constant all zeros, a Mul's all ones; shape
    inference's constant inputs). A read it makes gets the weight from here (held bytes, or the model's
    own data file), so the tool decides exactly as it would with the weights loaded; only what it reads is
    copied, and only for as long as it keeps it.
    """
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    original = numpy_helper.to_array

    def to_array(tensor: Any, base_dir: str = "") -> Any:
        _mark_inline_if_materialised(tensor)
        key = _placeholder_key(tensor)
        if key is None:
            return original(tensor, base_dir)
        real = onnx.TensorProto()
        real.CopyFrom(tensor)
        _restore(real, key, aside)
        if key in aside.external:
            load_external_data_for_tensor(real, str(aside.base_dir))
        return original(real)

    numpy_helper.to_array = to_array
    try:
        yield
    finally:
        numpy_helper.to_array = original


def put_back(model: Any, aside: WeightsAside, *, load_external: bool = True) -> None:
    """Restore every placeholder in ``model`` (any tensor of it, renamed or copied by the tool), in place.

    A tensor that was external data gets its entries back; with ``load_external`` its bytes are read, and
    those of every other external tensor (the small ones never set aside): the model as ``onnx.load`` would
    have read it. Bytes held here are released as their last placeholder is filled.
    """
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model

    tensors = []
    for tensor in _get_all_tensors(model):
        if (key := _placeholder_key(tensor)) is not None:
            tensors.append((tensor, key))
        else:
            _mark_inline_if_materialised(tensor)
    remaining = Counter(key for _, key in tensors)
    for tensor, key in tensors:
        _restore(tensor, key, aside)
        remaining[key] -= 1
        if not remaining[key] and key in aside.inline:
            del aside.inline[key]  # its last copy is in the model now
    if load_external:
        load_external_data_for_model(model, str(aside.base_dir))

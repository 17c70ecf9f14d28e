"""Write an ONNX model with inline weights one tensor at a time: the bytes ``SerializeToString`` gives, without
holding them all.

Why: ``onnx.save_model`` serialises the whole model into one ``bytes`` first, and protobuf (upb) encodes into
a buffer of its own before copying it into that ``bytes``: for a moment the process holds the model and two
encoded copies of its weights. BERT-base (0.42 GB) gained 0.8 GB at each save, the top of the simplify and
INT8 passes' memory. Here each initializer is encoded and written on its own; everything else in the model
(graph nodes, names, metadata) is small and is encoded in two parts around them.

The file is byte-identical to ``onnx.save_model``'s (tests/onnx/test_streamed_write.py): protobuf writes a
message's fields in field-number order, so the model is the fields before ``graph`` (7), the graph's
length-prefixed bytes, then the fields after it; the graph is its fields before ``initializer`` (5), each
initializer as its own length-prefixed record, then the fields after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: protobuf's limit on one message; a model over it must keep its weights in external data.
PROTOBUF_LIMIT = (1 << 31) - 1
_GRAPH_FIELD, _INITIALIZER_FIELD = 7, 5
_LENGTH_DELIMITED = 2


def encode_varint(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(field_number: int) -> bytes:
    return encode_varint(field_number << 3 | _LENGTH_DELIMITED)


def _repeated(field: Any) -> bool:
    """Whether a field descriptor is repeated (``is_repeated`` in protobuf 6+, ``label`` before)."""
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _part(message: Any, keep: Any) -> bytes:
    """Encoded fields of ``message`` whose number ``keep`` accepts (a copy of those fields only)."""
    part = type(message)()
    for field, value in message.ListFields():
        if not keep(field.number):
            continue
        if _repeated(field):
            getattr(part, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(part, field.name).CopyFrom(value)
        else:
            setattr(part, field.name, value)
    return part.SerializeToString()


def write_model(model: Any, path: Path) -> None:
    """Write ``model`` (an ``onnx.ModelProto``, weights inline or not) to ``path``, a tensor at a time."""
    before = _part(model, lambda number: number < _GRAPH_FIELD)
    after = _part(model, lambda number: number > _GRAPH_FIELD)
    with open(path, "wb") as handle:
        handle.write(before)
        if model.HasField("graph"):
            graph = model.graph
            graph_head = _part(graph, lambda number: number < _INITIALIZER_FIELD)
            graph_tail = _part(graph, lambda number: number > _INITIALIZER_FIELD)
            sizes = [tensor.ByteSize() for tensor in graph.initializer]
            records = sum(len(_tag(_INITIALIZER_FIELD)) + len(encode_varint(size)) + size for size in sizes)
            graph_size = len(graph_head) + records + len(graph_tail)
            if graph_size + len(before) + len(after) > PROTOBUF_LIMIT:
                raise ValueError(f"the model is {graph_size / 1e9:.1f} GB, over protobuf's 2 GiB limit: "
                                 "its weights must be saved as external data")
            handle.write(_tag(_GRAPH_FIELD) + encode_varint(graph_size))
            handle.write(graph_head)
            for tensor, size in zip(graph.initializer, sizes, strict=True):
                handle.write(_tag(_INITIALIZER_FIELD) + encode_varint(size))
                handle.write(tensor.SerializeToString())
            handle.write(graph_tail)
        handle.write(after)

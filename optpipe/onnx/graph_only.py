"""Read an ONNX file's graph without the values of its large weights: the file is streamed, their bytes skipped.

Why: ``onnx.load`` reads the whole file into one ``bytes`` and parses it into a second copy, so looking
at a graph's nodes (which nodes feed a Softmax, which files hold its weights, the graph to rank layers
on) cost twice the weights for a moment, and glibc kept the freed pages: BERT-base's INT8 pass started
330 MB higher than it needed, ViT-B/16's peaked there. The protobuf wire format lets a reader skip a
length-delimited field without reading it; here every field is copied except the ``raw_data`` (and
typed data) of large float initializers, which are what :func:`optpipe.precision.onnx_graph.skeleton`
drops anyway. A tensor read so has its name, type, dims and external-data entries, and no values: the
model is for looking at, never for running or saving.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from optpipe.onnx.streamed_write import encode_varint

#: Float initializers with more elements than this lose their values (onnx_graph.SKELETON_MAX_ELEMENTS).
VALUES_UP_TO_ELEMENTS = 1024
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx.TensorProto)
_GRAPH, _INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
_DIMS, _DATA_TYPE = 1, 2  # TensorProto fields read to decide
_VALUE_FIELDS = frozenset({4, 5, 7, 9, 10, 11})  # float_data, int32_data, int64_data, raw_data, double, uint64
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(handle: IO[bytes]) -> int:
    shift = value = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def _fields(handle: IO[bytes], begin: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(number, wire type, start of the field, start of its body, its end)`` for each field in ``[begin, end)``;
    the next field is read from its own start, whatever the caller read meanwhile."""
    position = begin
    while position < end:
        handle.seek(position)
        tag = _varint(handle)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            body = handle.tell()
            _varint(handle)
            stop = handle.tell()
        elif wire == _LENGTH:
            length = _varint(handle)
            body = handle.tell()
            stop = body + length
        elif wire in (_FIXED64, _FIXED32):
            body = handle.tell()
            stop = body + (8 if wire == _FIXED64 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if stop > end:
            raise ValueError("a field runs past its message")
        yield number, wire, position, body, stop
        position = stop


def _read(handle: IO[bytes], start: int, stop: int) -> bytes:
    handle.seek(start)
    return handle.read(stop - start)


def _tensor(handle: IO[bytes], begin: int, end: int) -> bytes:
    """An initializer's bytes, without its values when it is a float tensor over the element limit."""
    kept: list[tuple[int, int, int]] = []  # (field number, start, stop) in file order
    dims: list[int] = []
    data_type = 0
    for number, wire, start, body, stop in _fields(handle, begin, end):
        kept.append((number, start, stop))
        if number == _DATA_TYPE and wire == _VARINT:
            handle.seek(body)
            data_type = _varint(handle)
        elif number == _DIMS:
            handle.seek(body)
            if wire == _VARINT:
                dims.append(_varint(handle))
            else:  # packed
                while handle.tell() < stop:
                    dims.append(_varint(handle))
    elements = 1
    for dim in dims:
        elements *= dim
    drop = data_type in _FLOAT_TYPES and elements > VALUES_UP_TO_ELEMENTS
    return b"".join(_read(handle, start, stop) for number, start, stop in kept
                    if not (drop and number in _VALUE_FIELDS))


def _rewritten(handle: IO[bytes], begin: int, end: int, number: int, rewrite: Any) -> bytes:
    """The message in ``[begin, end)`` with each length-delimited field ``number`` replaced by ``rewrite(handle,
    body start, body end)`` (re-framed), every other field copied as it is."""
    parts: list[bytes] = []
    for field, wire, start, body, stop in _fields(handle, begin, end):
        if field == number and wire == _LENGTH:
            inner = rewrite(handle, body, stop)
            parts.append(encode_varint(number << 3 | _LENGTH) + encode_varint(len(inner)) + inner)
        else:
            parts.append(_read(handle, start, stop))
    return b"".join(parts)


def _graph(handle: IO[bytes], begin: int, end: int) -> bytes:
    return _rewritten(handle, begin, end, _INITIALIZER, _tensor)


def load_graph_only(path: Path) -> Any:
    """``path``'s model (an ``onnx.ModelProto``) without the values of its large float initializers.

    Raises ``ValueError`` (or protobuf's ``DecodeError``) on a file that is not a model.
    """
    import onnx

    with open(path, "rb") as handle:
        encoded = _rewritten(handle, 0, os.fstat(handle.fileno()).st_size, _GRAPH, _graph)
    model = onnx.ModelProto()
    model.ParseFromString(encoded)
    return model

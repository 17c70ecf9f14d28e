"""Small ONNX helpers shared by passes (loading with clear errors, domains)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from optpipe.errors import UserInputError

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

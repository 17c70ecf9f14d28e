"""Names, shapes and dtypes of model inputs and outputs.

A dimension is either an ``int`` (static) or a ``str`` (a named dynamic axis,
e.g. ``"batch"``), mirroring how ONNX stores ``dim_value`` / ``dim_param``.
"""

from __future__ import annotations

from dataclasses import dataclass

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``shape`` uses ``str`` entries for dynamic axes."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name, e.g. "float32", "int64"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TensorSpec:
        shape = data["shape"]
        assert isinstance(shape, list)
        return cls(str(data["name"]), tuple(shape), str(data["dtype"]))


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic dimension with TensorRT-style min/opt/max bounds.

    ``axis_name`` is the symbolic name (``"batch"`` is axis 0 of every input).
    """

    axis_name: str
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.axis_name, "min": self.min, "opt": self.opt, "max": self.max}

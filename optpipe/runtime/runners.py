"""Runners: one interface over the runtimes optpipe validates and times.

Validation and benchmarking are runtime-agnostic; they only need
``infer(feed) -> outputs``. ONNX Runtime is imported lazily so that
``import optpipe`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np

_R = TypeVar("_R", bound="Runner")


class Runner(Protocol):
    """Runs one compiled artifact on named numpy inputs, and frees what it holds on ``close()``.

    Every caller releases a runner the same way: ``close()`` (idempotent), or ``with runner:``,
    so a caller never asks which kind of runner it holds. A runner holding nothing of its own
    (PyTorch eager: the model is the caller's) closes as a no-op. Concrete runners subclass this
    protocol to inherit the context-manager methods.
    """

    output_names: tuple[str, ...]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once and return the outputs by name."""
        ...

    def close(self) -> None:
        """Free what the runner holds beyond the Python object (GPU memory); safe to call twice."""
        ...

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def ort_session_options(threads: int | None, level: str = "all", log_level: int = 3) -> Any:
    """Session options tuned for latency on a CPU.

    Sequential execution and a fixed intra-op pool: on small machines the
    parallel executor only adds scheduling overhead for the models we build.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = log_level  # 3 = errors only: warnings go to the report, not the terminal
    return options


class OrtRunner(Runner):
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self, path: Path, threads: int | None = None, level: str = "all", log_level: int = 3) -> None:
        import onnxruntime as ort

        self.session: Any = ort.InferenceSession(
            str(path),
            sess_options=ort_session_options(threads, level, log_level),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, {name: feed[name] for name in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def close(self) -> None:
        """Drop the session, so ONNX Runtime frees it (and the model it holds) now, not when this runner goes."""
        self.session = None


class TorchRunner(Runner):
    """PyTorch eager, the reference and the latency baseline."""

    def __init__(self, model: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in self.input_names)
        with torch.inference_mode():
            result = self.model(*args)
        return dict(zip(self.output_names, flatten_outputs(result), strict=True))

    def close(self) -> None:
        """Nothing to free: the model belongs to the caller (the build keeps using it)."""


def flatten_outputs(result: Any) -> list[np.ndarray]:
    """Model outputs (a tensor, tuple/list or dict of tensors) as numpy arrays in order.

    Raises :class:`~optpipe.core.errors.UserInputError` when an output is not a tensor
    (an int, None, a string...): it cannot be exported to ONNX or compared.
    """
    return [item.detach().cpu().numpy() for item in _flat_tensors(result)]


def check_outputs_are_tensors(result: Any) -> None:
    """Raise a one-line UserInputError when any output of the model is not a tensor."""
    _flat_tensors(result)


def _flat_tensors(result: Any) -> list[Any]:
    import torch

    flat: list[Any] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif _is_dataclass_instance(value):  # a ModelOutput-like record: its fields that are set
            for item in _dataclass_items(value).values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, torch.Tensor):
            flat.append(value)
        else:
            from optpipe.core.errors import UserInputError

            name = type(value).__name__
            kind = "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
            raise UserInputError(
                f"output #{len(flat)} of the model is {kind}, not a tensor: forward() must return a tensor, "
                "or a tuple/list/dict of tensors (return only the tensors you want compiled)"
            )

    visit(result)
    return flat


def _is_dataclass_instance(value: Any) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _dataclass_items(value: Any) -> dict[str, Any]:
    """Fields of a dataclass output that are set (transformers' ModelOutput leaves unused ones None)."""
    import dataclasses

    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if getattr(value, f.name) is not None}


def default_output_names(result: Any) -> tuple[str, ...]:
    """Output names a model's own result gives: dict keys and dataclass field names, else ``output_<i>``.

    A segmentation model returning ``{"out": ...}`` gets an output named ``out``;
    nested containers join their keys and indices with dots (``hidden.0``).
    Outputs with no key on their path (a plain tensor or tuple) keep
    ``output_<i>``, numbered in flattening order, as before.
    """
    names: list[str] = []

    def visit(value: Any, path: tuple[str, ...], keyed: bool) -> None:
        if isinstance(value, dict):
            items: list[tuple[str, Any]] = [(str(k), v) for k, v in value.items()]
        elif _is_dataclass_instance(value):
            items = list(_dataclass_items(value).items())
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, (*path, str(index)), keyed)
            return
        else:
            names.append(".".join(path) if keyed else f"output_{len(names)}")
            return
        for key, item in items:
            visit(item, (*path, key), True)

    visit(result, (), False)
    if len(set(names)) != len(names):  # keys that collide once joined: numbered names stay unambiguous
        return tuple(f"output_{i}" for i in range(len(names)))
    return tuple(names)

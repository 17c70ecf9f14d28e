"""Runners: one interface over the runtimes optpipe validates and times.

Validation and benchmarking are runtime-agnostic; they only need
``infer(feed) -> outputs``. ONNX Runtime is imported lazily so that
``import optpipe`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """Runs one compiled artifact on named numpy inputs."""

    output_names: tuple[str, ...]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once and return the outputs by name."""
        ...


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


class OrtRunner:
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self, path: Path, threads: int | None = None, level: str = "all", log_level: int = 3) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            str(path),
            sess_options=ort_session_options(threads, level, log_level),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, {name: feed[name] for name in self.input_names})
        return dict(zip(self.output_names, values, strict=True))


class TorchRunner:
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


def flatten_outputs(result: Any) -> list[np.ndarray]:
    """Model outputs (a tensor, tuple/list or dict of tensors) as numpy arrays in order."""
    if isinstance(result, dict):
        items = list(result.values())
    elif isinstance(result, list | tuple):
        items = list(result)
    else:
        items = [result]
    flat: list[np.ndarray] = []
    for item in items:
        if isinstance(item, dict | list | tuple):
            flat.extend(flatten_outputs(item))
        else:
            flat.append(item.detach().cpu().numpy())
    return flat

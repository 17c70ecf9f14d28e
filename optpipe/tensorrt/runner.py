"""Run a TensorRT engine: Polygraphy's ``TrtRunner`` with optpipe's error types and timing.

Why a wrapper: the pipeline needs three things from an engine — outputs to
compare with ONNX Runtime, latency that is measured after the GPU finished (not
when the launch returned), and the GPU memory it takes. ``TrtRunner`` already
synchronises its CUDA stream at the end of every ``infer`` call, so wall-clock
time around it is CUDA-synchronised.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from optpipe.errors import UserInputError
from optpipe.tensorrt.engine import LoadedEngine, gpu_memory_info, load_engine


class TrtEngineRunner:
    """Context manager around ``polygraphy.backend.trt.TrtRunner`` for one engine.

    ``source`` is a plan path (checked with :func:`load_engine`) or a :class:`LoadedEngine`.
    """

    def __init__(self, source: str | Path | LoadedEngine) -> None:
        self.loaded = source if isinstance(source, LoadedEngine) else load_engine(source)
        self._runner: Any = None
        self.memory: dict[str, int] = {}

    def __enter__(self) -> TrtEngineRunner:
        from polygraphy.backend.trt import TrtRunner

        free_before, total = gpu_memory_info()
        self._runner = TrtRunner(self.loaded.engine)
        self._runner.activate()
        free_after, _ = gpu_memory_info()
        engine = self.loaded.engine
        # device_memory_size_v2 exists from TensorRT 10.1; device_memory_size before that.
        size = getattr(engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(engine, "device_memory_size", 0)
        self.memory = {
            "engine_device_memory_bytes": int(size),
            "context_activation_delta_bytes": int(free_before - free_after),
            "gpu_total_bytes": int(total),
            "gpu_free_bytes": int(free_after),
        }
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def _active(self) -> Any:
        if self._runner is None:
            raise RuntimeError("TrtEngineRunner must be used inside a 'with' block")
        return self._runner

    def input_names(self) -> list[str]:
        """Names of the engine's inputs, in engine order."""
        return list(self._active().get_input_metadata().keys())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns copies (Polygraphy reuses its output buffers between calls)."""
        runner = self._active()
        expected = set(runner.get_input_metadata().keys())
        if set(feed) != expected:
            raise UserInputError(f"engine inputs are {sorted(expected)}, got {sorted(feed)}")
        outputs = runner.infer(feed_dict=feed)
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def time_inference(self, feed: dict[str, np.ndarray], warmup: int = 10, iters: int = 100) -> list[float]:
        """Latency of ``iters`` runs in milliseconds, after ``warmup`` untimed runs.

        Each run includes the host-to-device copy of the inputs and ends with the
        stream synchronisation inside ``TrtRunner.infer``; outputs stay on the GPU
        (``copy_outputs_to_host=False``) so the device-to-host copy is not timed.
        """
        if warmup < 0 or iters < 1:
            raise UserInputError(f"need warmup >= 0 and iters >= 1, got {warmup} and {iters}")
        runner = self._active()
        self.infer(feed)  # validates the feed once
        for _ in range(warmup):
            runner.infer(feed_dict=feed, check_inputs=False, copy_outputs_to_host=False)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            runner.infer(feed_dict=feed, check_inputs=False, copy_outputs_to_host=False)
            times.append((time.perf_counter() - start) * 1000.0)
        return times

"""Runners are closed after validate/benchmark, and the PyTorch baseline says where it ran.

On the CPU these run with the real ONNX Runtime engine of the ``cpu`` target; what only a
GPU can tell (TensorRT freeing its context and engine, PyTorch on CUDA) is marked ``gpu``
and skips with the reason elsewhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from conftest import build_context, torch_artifact
from optpipe.passes.benchmark import BenchmarkConfig, BenchmarkPass, cuda_torch_call, torch_baseline_device
from optpipe.passes.engine_ort import OrtEnginePass
from optpipe.passes.export_onnx import ExportOnnx
from optpipe.passes.validate import ValidatePass

from optpipe.core.errors import EnvironmentUnavailable
from optpipe.core.tensor_spec import DynamicDim
from optpipe.runtime.runners import OrtRunner
from optpipe.runtime.target import CpuTarget

FAST = BenchmarkConfig(warmup=1, rounds=2, iters_per_round=2)


@pytest.fixture()
def engine(tmp_path: Path, toy: ModuleType) -> tuple[Any, Any]:
    ctx = build_context(
        tmp_path, toy.TinyNet().eval(), {"x": toy.example_inputs()[0].numpy()}, ("logits",),
        DynamicDim("batch", 1, 4, 8),
    )
    onnx = ExportOnnx()(torch_artifact(ctx), ctx).artifact
    return ctx, OrtEnginePass()(onnx, ctx).artifact


class ClosableOrtRunner(OrtRunner):
    """ONNX Runtime, plus the ``close()`` that GPU runners have; records being closed."""

    closed: ClassVar[list[ClosableOrtRunner]] = []

    def close(self) -> None:
        ClosableOrtRunner.closed.append(self)


class ClosingCpuTarget(CpuTarget):
    def runner(self, artifact: Any, threads: int | None) -> Any:
        return ClosableOrtRunner(artifact.path, threads=threads)


@pytest.mark.slow
def test_validate_and_benchmark_close_their_runner(engine: tuple[Any, Any]) -> None:
    ctx, artifact = engine
    ctx = dataclasses.replace(ctx, target=ClosingCpuTarget())
    ClosableOrtRunner.closed.clear()
    assert ValidatePass()(artifact, ctx).metrics["parity"]["passed"]
    assert len(ClosableOrtRunner.closed) == 1
    BenchmarkPass(FAST)(artifact, ctx)
    assert len(ClosableOrtRunner.closed) == 1  # the ORT runner has no time_inference: not a GPU runner


@pytest.mark.slow
def test_benchmark_says_the_torch_baseline_ran_on_the_cpu(engine: tuple[Any, Any]) -> None:
    ctx, artifact = engine
    metrics = BenchmarkPass(FAST)(artifact, ctx).metrics
    assert metrics["torch_latency"]["device"] == "cpu"
    assert "note" not in metrics["torch_latency"]  # cpu target: CPU against CPU, nothing to warn about


def test_torch_baseline_device_rule() -> None:
    import torch

    assert torch_baseline_device("cpu", torch) == "cpu"  # never the GPU for the CPU target
    expected = "cuda:" if torch.cuda.is_available() else "cpu"
    assert torch_baseline_device("tensorrt", torch).startswith(expected)


# --- only a GPU can tell ---------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_torch_baseline_runs_on_the_gpu(toy: ModuleType) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    model = toy.TinyNet().eval()
    call = cuda_torch_call(model, ["x"], {"x": toy.example_inputs()[0].numpy()}, "cuda:0")
    result = call()
    assert next(model.parameters()).is_cuda and result.is_cuda
    model.to("cpu")


@pytest.mark.slow
@pytest.mark.gpu
def test_trt_runner_close_frees_context_and_engine(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from test_trt_engine import PROFILE, SPECS, small_model

    from optpipe.runtime.tensorrt import engine as trt_engine

    try:
        trt_engine.check_trt_available()
    except EnvironmentUnavailable as exc:
        pytest.skip(f"no usable TensorRT/CUDA GPU: {exc}")
    import numpy as np

    plan = tmp_path / "small.plan"
    trt_engine.build_engine(small_model(tmp_path), plan, shape_profiles=PROFILE, input_specs=SPECS)
    runner = trt_engine.TrtEngineRunner(plan)
    runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert runner.memory["gpu_total_bytes"] > 0
    runner.close()
    assert runner.loaded.engine is None
    runner.close()  # idempotent
    with pytest.raises(RuntimeError, match="was closed"):
        runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})

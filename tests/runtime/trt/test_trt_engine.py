"""Tests for the TensorRT engine layer.

The pure parts (portability rules, plan integrity, sidecars, timing-cache validity,
profile resolution, errors without TensorRT) run on any CPU. Tests marked ``gpu``
build real engines; they skip, with the reason, where TensorRT or a CUDA GPU is absent.
Nothing here fakes TensorRT.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.artifact import sha256_file, write_bytes_atomic
from optpipe.core.errors import EXIT_ENVIRONMENT, EXIT_USAGE, EnvironmentUnavailable, UserInputError
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.runtime.tensorrt import engine as trt_engine
from optpipe.runtime.tensorrt.metadata import (
    check_compatibility,
    compatibility_warnings,
    read_sidecar,
    sidecar_path,
    timing_cache_problem,
    timing_cache_sidecar,
    verify_plan_file,
    write_json,
)
from optpipe.runtime.tensorrt.shape_profiles import resolve_input_shapes


def _tensorrt_importable() -> bool:
    try:
        return importlib.util.find_spec("tensorrt") is not None and __import__("tensorrt") is not None
    except Exception:
        return False


HAS_TRT = _tensorrt_importable()

MACHINE = {
    "tensorrt_version": "10.15.1",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "cuda_runtime_version": "12.9",
    "cuda_driver_version": "13.0",
}


def meta(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "tensorrt_version": "10.15.1",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "build_options": {"hardware_compatibility": "none", "version_compatible": False},
    }
    data.update(overrides)
    return data


# --------------------------------------------------------------------------- compatibility (pure)


def test_same_machine_is_compatible() -> None:
    assert check_compatibility(meta(), MACHINE) == []
    assert compatibility_warnings(meta(), MACHINE) == []


def test_other_tensorrt_version_is_refused() -> None:
    (reason,) = check_compatibility(meta(tensorrt_version="10.3.0"), MACHINE)
    assert "10.3.0" in reason and "not portable across TensorRT versions" in reason


def test_version_compatible_engine_runs_on_later_same_major() -> None:
    options = {"version_compatible": True, "hardware_compatibility": "none"}
    assert check_compatibility(meta(tensorrt_version="10.3.0", build_options=options), MACHINE) == []
    (reason,) = check_compatibility(meta(tensorrt_version="10.20.0", build_options=options), MACHINE)
    assert "same major version" in reason
    assert check_compatibility(meta(tensorrt_version="9.3.0", build_options=options), MACHINE)


def test_other_gpu_architecture_is_refused() -> None:
    (reason,) = check_compatibility(meta(compute_capability="8.6", gpu_name="NVIDIA A10"), MACHINE)
    assert "compute capability 8.6" in reason and "9.0" in reason and "GPU architectures" in reason


def test_ampere_plus_engine_runs_on_newer_gpu_but_not_turing() -> None:
    options = {"hardware_compatibility": "ampere_plus", "version_compatible": False}
    assert check_compatibility(meta(compute_capability="8.0", build_options=options), MACHINE) == []
    turing = {**MACHINE, "compute_capability": "7.5", "gpu_name": "Tesla T4"}
    (reason,) = check_compatibility(meta(compute_capability="8.0", build_options=options), turing)
    assert ">= 8.0" in reason and "Tesla T4" in reason


def test_same_capability_other_gpu_model_is_a_warning_only() -> None:
    other = meta(gpu_name="NVIDIA H100 PCIe")
    assert check_compatibility(other, MACHINE) == []
    (warning,) = compatibility_warnings(other, MACHINE)
    assert "H100 PCIe" in warning


def test_unknown_compute_capability_is_refused() -> None:
    assert check_compatibility(meta(compute_capability=None), MACHINE)


# --------------------------------------------------------------------------- plan integrity (pure)


def write_plan(tmp_path: Path, data: bytes = b"PLAN" * 64) -> Path:
    plan = tmp_path / "model.plan"
    write_bytes_atomic(plan, data)
    write_json(
        sidecar_path(plan),
        {**meta(), "plan_sha256": sha256_file(plan), "plan_size": len(data)},
    )
    return plan


def test_intact_plan_passes_integrity_check(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    assert sidecar_path(plan).name == "model.plan.json"
    verify_plan_file(plan, read_sidecar(plan))
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # atomic writes leave nothing


def test_truncated_plan_is_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    plan.write_bytes(plan.read_bytes()[:100])
    with pytest.raises(UserInputError, match="truncated") as info:
        verify_plan_file(plan, read_sidecar(plan))
    assert info.value.exit_code == EXIT_USAGE


def test_altered_plan_is_refused_by_sha(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    data = bytearray(plan.read_bytes())
    data[10] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="sha256"):
        verify_plan_file(plan, read_sidecar(plan))


def test_empty_plan_is_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    plan.write_bytes(b"")
    with pytest.raises(UserInputError, match="empty"):
        verify_plan_file(plan, read_sidecar(plan))


def test_missing_or_corrupt_sidecar_is_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(UserInputError, match="unreadable"):
        read_sidecar(plan)
    sidecar_path(plan).unlink()
    with pytest.raises(UserInputError, match="missing"):
        trt_engine.load_engine(plan)


def test_load_engine_checks_integrity_before_needing_tensorrt(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    plan.write_bytes(b"PL")
    with pytest.raises(UserInputError, match="truncated"):
        trt_engine.load_engine(plan)


# --------------------------------------------------------------------------- timing cache sidecar (pure)


def test_timing_cache_validity(tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    assert timing_cache_problem(cache, MACHINE) is None  # no cache yet: nothing to refuse
    cache.write_bytes(b"cache-bytes")
    assert "unknown" in str(timing_cache_problem(cache, MACHINE))
    info = {"tensorrt_version": "10.15.1", "compute_capability": "9.0", "sha256": sha256_file(cache)}
    write_json(timing_cache_sidecar(cache), info)
    assert timing_cache_problem(cache, MACHINE) is None
    write_json(timing_cache_sidecar(cache), {**info, "tensorrt_version": "10.0.1"})
    assert "TensorRT 10.0.1" in str(timing_cache_problem(cache, MACHINE))
    write_json(timing_cache_sidecar(cache), {**info, "compute_capability": "8.6"})
    assert "8.6" in str(timing_cache_problem(cache, MACHINE))
    write_json(timing_cache_sidecar(cache), info)
    cache.write_bytes(b"changed")
    assert "sha256" in str(timing_cache_problem(cache, MACHINE))


# --------------------------------------------------------------------------- profiles (pure)


def test_resolve_input_shapes() -> None:
    specs = [TensorSpec("x", ("batch", 3, "h", 8), "float32"), TensorSpec("m", (4,), "int64")]
    shapes = resolve_input_shapes(specs, [DynamicDim("batch", 1, 4, 16), DynamicDim("h", 8, 16, 32)])
    assert shapes["x"] == ((1, 3, 8, 8), (4, 3, 16, 8), (16, 3, 32, 8))
    assert shapes["m"] == ((4,), (4,), (4,))
    with pytest.raises(UserInputError, match="axis 2 is dynamic 'h'"):
        resolve_input_shapes(specs, [DynamicDim("batch", 1, 4, 16)])
    with pytest.raises(UserInputError, match="min <= opt <= max"):
        resolve_input_shapes(specs, [DynamicDim("batch", 4, 1, 16), DynamicDim("h", 8, 16, 32)])


# --------------------------------------------------------------------------- without TensorRT


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is importable here; this checks the error when it is not")
def test_missing_tensorrt_is_environment_error_exit_3(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailable, match="tensorrt") as info:
        trt_engine.check_trt_available()
    assert info.value.exit_code == EXIT_ENVIRONMENT == 3
    assert "pip install 'optpipe[tensorrt]'" in str(info.value)

    plan = write_plan(tmp_path)  # an intact plan: integrity passes, then TensorRT is needed
    with pytest.raises(EnvironmentUnavailable) as info:
        trt_engine.load_engine(plan)
    assert info.value.exit_code == 3

    onnx_path = small_model(tmp_path)
    with pytest.raises(EnvironmentUnavailable):
        trt_engine.build_engine(
            onnx_path, tmp_path / "m.plan", shape_profiles=[DynamicDim("batch", 1, 2, 4)], input_specs=SPECS
        )
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_rejects_missing_profile_before_tensorrt(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no optimization profile"):
        trt_engine.build_engine(small_model(tmp_path), tmp_path / "m.plan", shape_profiles=None, input_specs=SPECS)
    with pytest.raises(UserInputError, match="not found"):
        trt_engine.build_engine(tmp_path / "nope.onnx", tmp_path / "m.plan", shape_profiles=None, input_specs=SPECS)


# --------------------------------------------------------------------------- GPU: real TensorRT

SPECS = [TensorSpec("x", ("batch", 3, 8, 8), "float32")]


def small_model(tmp_path: Path) -> Path:
    """Conv + Relu with a dynamic batch: small, but exercises a real profile."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "small.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def trt_gpu() -> None:
    """Skip with the precise reason when TensorRT or a CUDA GPU is missing."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    try:
        trt_engine.check_trt_available()
    except EnvironmentUnavailable as exc:
        pytest.skip(f"no usable TensorRT/CUDA GPU: {exc}")


PROFILE = [DynamicDim("batch", 1, 2, 4)]


@pytest.mark.slow
@pytest.mark.gpu
def test_build_and_run_matches_onnxruntime(trt_gpu: None, tmp_path: Path) -> None:
    import onnxruntime as ort

    onnx_path = small_model(tmp_path)
    plan = tmp_path / "small.plan"
    metadata = trt_engine.build_engine(onnx_path, plan, shape_profiles=PROFILE, input_specs=SPECS)
    side = json.loads(sidecar_path(plan).read_text())
    assert side["plan_sha256"] == sha256_file(plan) == metadata.plan_sha256
    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["profiles"]["x"] == {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}
    assert side["compute_capability"] and side["tensorrt_version"] and side["cuda_runtime_version"]

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with trt_engine.TrtEngineRunner(plan) as runner:
        assert runner.output_names == ("y",)
        for batch in (1, 3):  # a batch other than the profile's opt
            x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
            got = runner.infer({"x": x})["y"]
            (want,) = session.run(["y"], {"x": x})
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        times = runner.time_inference({"x": x}, warmup=2, iters=5)
        assert len(times) == 5 and all(t > 0 for t in times)
        assert runner.memory["gpu_total_bytes"] > 0


@pytest.mark.slow
@pytest.mark.gpu
def test_timing_cache_round_trip_and_stale_cache(trt_gpu: None, tmp_path: Path) -> None:
    onnx_path = small_model(tmp_path)
    cache = tmp_path / "timing.cache"
    trt_engine.build_engine(
        onnx_path, tmp_path / "a.plan", shape_profiles=PROFILE, input_specs=SPECS, timing_cache=cache
    )
    assert cache.exists() and timing_cache_sidecar(cache).exists()
    machine = trt_engine.collect_device_info()
    assert timing_cache_problem(cache, machine) is None
    second = trt_engine.build_engine(
        onnx_path, tmp_path / "b.plan", shape_profiles=PROFILE, input_specs=SPECS, timing_cache=cache
    )
    assert second.warnings == ()  # the cache was reused

    write_json(
        timing_cache_sidecar(cache),
        {**json.loads(timing_cache_sidecar(cache).read_text()), "tensorrt_version": "0.0.1"},
    )
    third = trt_engine.build_engine(
        onnx_path, tmp_path / "c.plan", shape_profiles=PROFILE, input_specs=SPECS, timing_cache=cache
    )
    assert any("TensorRT 0.0.1" in w for w in third.warnings)
    assert (tmp_path / "timing.cache.stale").exists() and cache.exists()


@pytest.mark.gpu
def test_load_engine_refuses_engine_from_other_tensorrt(trt_gpu: None, tmp_path: Path) -> None:
    plan = tmp_path / "small.plan"
    trt_engine.build_engine(small_model(tmp_path), plan, shape_profiles=PROFILE, input_specs=SPECS)
    loaded = trt_engine.load_engine(plan)
    assert loaded.engine is not None
    side = json.loads(sidecar_path(plan).read_text())
    write_json(sidecar_path(plan), {**side, "tensorrt_version": "8.6.1"})
    with pytest.raises(EnvironmentUnavailable, match="not portable across TensorRT versions"):
        trt_engine.load_engine(plan)


@pytest.mark.gpu
def test_garbage_plan_with_matching_sidecar_fails_deserialization(trt_gpu: None, tmp_path: Path) -> None:
    plan = tmp_path / "garbage.plan"
    write_bytes_atomic(plan, b"\x00" * 4096)
    machine = trt_engine.collect_device_info()
    write_json(sidecar_path(plan), {**machine, "plan_sha256": sha256_file(plan), "plan_size": 4096})
    with pytest.raises(UserInputError, match="could not deserialize"):
        trt_engine.load_engine(plan)

"""Build and load TensorRT engines: a thin layer over Polygraphy's TensorRT loaders.

Why thin: TensorRT cannot be installed on the machines where optpipe is
developed, so everything here is written from Polygraphy's and TensorRT's
documentation and exercised only where TensorRT and a GPU exist (tests marked
``gpu``). The logic that can be checked on a CPU (profile resolution, sidecar
metadata, plan integrity, portability rules, timing-cache validity) lives in
:mod:`optpipe.runtime.tensorrt.shape_profiles` and :mod:`optpipe.runtime.tensorrt.metadata` as pure
functions. ``tensorrt`` and ``polygraphy.backend.trt`` are imported inside the
functions, so ``import optpipe`` works without them.

Precision is decided in the ONNX graph (FP16 graph, INT8 QDQ), so the network is
always parsed strongly typed; there are no FP16/INT8 builder flags (TensorRT 11
removed them).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.core.artifact import sha256_file, write_bytes_atomic
from optpipe.core.errors import EnvironmentUnavailable, MissingDependency, UserInputError
from optpipe.core.tensor_spec import TensorSpec
from optpipe.onnx.utils import model_sha256
from optpipe.runtime.runners import Runner
from optpipe.runtime.tensorrt.metadata import (
    HARDWARE_LEVELS,
    SIDECAR_SCHEMA,
    check_compatibility,
    compatibility_warnings,
    read_sidecar,
    sidecar_path,
    timing_cache_problem,
    timing_cache_sidecar,
    verify_plan_file,
    write_json,
)
from optpipe.runtime.tensorrt.shape_profiles import Shape, ShapeProfilesArg, resolve_input_shapes

log = logging.getLogger(__name__)

PURPOSE = "Building a TensorRT engine"

# CUDA runtime API constants (cuda_runtime_api.h / driver_types.h).
_CUDA_SUCCESS = 0
_ATTR_CC_MAJOR = 75  # cudaDevAttrComputeCapabilityMajor
_ATTR_CC_MINOR = 76  # cudaDevAttrComputeCapabilityMinor


def _import_tensorrt(purpose: str = PURPOSE) -> Any:
    """``import tensorrt`` or a MissingDependency that says how to get it (exit code 3)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependency("tensorrt", "tensorrt", purpose) from exc
    except Exception as exc:  # the pip placeholder wheels fail with OSError/RuntimeError on import
        raise EnvironmentUnavailable(
            f"{purpose} needs TensorRT, but 'import tensorrt' failed: {exc}. Install a working TensorRT "
            "(the [tensorrt] extra of optpipe, or pip install tensorrt, on a machine with an NVIDIA driver)."
        ) from exc
    return trt


def _cudart() -> Any:
    """The CUDA runtime library, through Polygraphy's CUDA wrapper (which finds libcudart)."""
    try:
        from polygraphy import cuda

        return cuda.wrapper().handle
    except Exception as exc:  # PolygraphyException / OSError: no libcudart on this machine
        raise EnvironmentUnavailable(
            f"{PURPOSE} needs an NVIDIA GPU with the CUDA runtime, but libcudart could not be loaded: {exc}"
        ) from exc


def _cuda_int(func: Any, *args: Any) -> int:
    value = ctypes.c_int(0)
    status = func(ctypes.byref(value), *args)
    if status != _CUDA_SUCCESS:
        raise EnvironmentUnavailable(
            f"CUDA call {getattr(func, '__name__', func)} failed with error {status}"
        )
    return int(value.value)


def check_trt_available() -> None:
    """Raise EnvironmentUnavailable (exit 3) saying what is missing: TensorRT, or a CUDA GPU."""
    _import_tensorrt()
    cudart = _cudart()
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != _CUDA_SUCCESS or count.value < 1:
        raise EnvironmentUnavailable(
            f"{PURPOSE} needs an NVIDIA GPU, but CUDA reports none "
            f"(cudaGetDeviceCount status {status}, {count.value} devices)"
        )


def _version_str(encoded: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def collect_device_info() -> dict[str, Any]:
    """Facts about this machine that decide engine portability (TensorRT version, GPU, CUDA).

    Uses the CUDA runtime through Polygraphy's ctypes wrapper, so cuda-python is not needed.
    """
    trt = _import_tensorrt()
    cudart = _cudart()
    device = _cuda_int(cudart.cudaGetDevice)
    major = _cuda_int(cudart.cudaDeviceGetAttribute, _ATTR_CC_MAJOR, device)
    minor = _cuda_int(cudart.cudaDeviceGetAttribute, _ATTR_CC_MINOR, device)
    # cudaDeviceProp starts with `char name[256]` in every CUDA version; the rest of the struct
    # grows between versions, so read only the name from an oversized buffer.
    props = ctypes.create_string_buffer(8192)
    get_props = getattr(cudart, "cudaGetDeviceProperties_v2", None) or cudart.cudaGetDeviceProperties
    name = "unknown"
    if get_props(props, device) == _CUDA_SUCCESS:
        name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": name,
        "compute_capability": f"{major}.{minor}",
        "cuda_runtime_version": _version_str(_cuda_int(cudart.cudaRuntimeGetVersion)),
        "cuda_driver_version": _version_str(_cuda_int(cudart.cudaDriverGetVersion)),
        "device_index": device,
    }


def gpu_memory_info() -> tuple[int, int]:
    """(free, total) bytes on the current GPU, from cudaMemGetInfo."""
    cudart = _cudart()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    status = cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    if status != _CUDA_SUCCESS:
        raise EnvironmentUnavailable(f"cudaMemGetInfo failed with error {status}")
    return int(free.value), int(total.value)


@dataclass(frozen=True)
class EngineMetadata:
    """What the ``model.plan.json`` sidecar records; ``to_dict`` is the JSON written."""

    plan_path: str
    plan_sha256: str
    plan_size: int
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    cuda_runtime_version: str
    cuda_driver_version: str
    shape_profiles: dict[str, dict[str, list[int]]]  # written as "profiles": the sidecar's schema is kept
    build_options: dict[str, Any]
    built_at: str
    timing_cache: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SIDECAR_SCHEMA,
            "plan_file": Path(self.plan_path).name,
            "plan_sha256": self.plan_sha256,
            "plan_size": self.plan_size,
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "cuda_runtime_version": self.cuda_runtime_version,
            "cuda_driver_version": self.cuda_driver_version,
            "profiles": self.shape_profiles,
            "build_options": self.build_options,
            "built_at": self.built_at,
            "timing_cache": self.timing_cache,
            "warnings": list(self.warnings),
        }


# The keyword arguments optpipe passes to Polygraphy, built in one place each, so the real calls
# and tests/runtime/trt/test_trt_api_contract.py (which checks every key against Polygraphy's signatures,
# without TensorRT) cannot drift apart. Every key is always present; None means "Polygraphy's
# default" for all of them (checked against polygraphy/backend/trt/{loader,config,profile,runner}.py).


def shape_profile_add_kwargs(low: Sequence[int], opt: Sequence[int], high: Sequence[int]) -> dict[str, Any]:
    """Keyword arguments of ``Profile.add(name, ...)`` for one input's min/opt/max shapes."""
    return {"min": tuple(low), "opt": tuple(opt), "max": tuple(high)}


def network_kwargs(parser_flags: list[Any] | None) -> dict[str, Any]:
    """Keyword arguments of ``NetworkFromOnnxPath(path, ...)``: always strongly typed.

    TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (Polygraphy sets it for
    ``strongly_typed=True``); TensorRT 11 is always strongly typed and ignores the flag.
    """
    return {"flags": parser_flags, "strongly_typed": True}


def config_kwargs(
    *,
    profiles: list[Any],
    builder_optimization_level: int,
    memory_pool_limits: dict[Any, int] | None,
    load_timing_cache: str | None,
    hardware_compatibility_level: Any,
    version_compatible: bool,
) -> dict[str, Any]:
    """Keyword arguments of ``CreateConfig(...)``.

    No precision arguments (``fp16``, ``int8``, ``calibrator``...): TensorRT 11 removed those
    builder flags and the INT8 calibrator; precision comes from the strongly typed ONNX.
    """
    return {
        "profiles": profiles,
        "builder_optimization_level": builder_optimization_level,
        "memory_pool_limits": memory_pool_limits,
        "load_timing_cache": load_timing_cache,
        "hardware_compatibility_level": hardware_compatibility_level,
        "version_compatible": True if version_compatible else None,
    }


def engine_bytes_kwargs(config: Any, timing_cache: Path | None) -> dict[str, Any]:
    """Keyword arguments of ``EngineBytesFromNetwork(network, ...)``."""
    return {"config": config, "save_timing_cache": str(timing_cache) if timing_cache else None}


# ``TrtRunner.infer`` keyword arguments for timed runs: BaseRunner.infer takes ``check_inputs`` and
# forwards the rest to TrtRunner.infer_impl (``copy_outputs_to_host``).
TIMED_INFER_KWARGS: dict[str, Any] = {"check_inputs": False, "copy_outputs_to_host": False}

# TensorRT names optpipe uses directly (not through Polygraphy), as dotted paths from the
# ``tensorrt`` module or from an ``ICudaEngine`` ("engine."). tests/runtime/trt/test_trt_api_contract.py
# resolves each one against the installed TensorRT (gpu-marked: TensorRT is needed for that).
TRT_NAMES_USED: tuple[str, ...] = (
    "OnnxParserFlag.NATIVE_INSTANCENORM",
    "MemoryPoolType.WORKSPACE",
    "HardwareCompatibilityLevel.AMPERE_PLUS",
    "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY",
    "TensorIOMode.INPUT",
    "TensorIOMode.OUTPUT",
    "engine.num_io_tensors",
    "engine.get_tensor_name",
    "engine.get_tensor_mode",
)
# Read with a fallback (see TrtEngineRunner.activate): TensorRT 10.1+ has the first, TensorRT 11
# removed the second (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/
# tensorrt-10x-to-11x-python-api-reference.html).
DEVICE_MEMORY_ATTRS: tuple[str, ...] = ("device_memory_size_v2", "device_memory_size")


def _hardware_level(trt: Any, level: str | None) -> Any:
    if level is None or level.lower() == "none":
        return None
    if level.lower() not in HARDWARE_LEVELS:
        raise UserInputError(f"hardware_compatibility must be one of {HARDWARE_LEVELS}, got '{level}'")
    try:
        return getattr(trt.HardwareCompatibilityLevel, level.upper())
    except AttributeError as exc:
        raise EnvironmentUnavailable(
            f"TensorRT {trt.__version__} has no hardware compatibility level '{level}'"
        ) from exc


def _prepare_timing_cache(timing_cache: Path | None, machine: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Decide whether to load the cache; an incompatible one is moved aside (kept, not deleted)."""
    if timing_cache is None:
        return None, []
    problem = timing_cache_problem(timing_cache, machine)
    if problem is None:
        return (str(timing_cache) if timing_cache.exists() else None), []
    stale = timing_cache.with_name(timing_cache.name + ".stale")
    os.replace(timing_cache, stale)
    message = f"{problem}; ignoring it (moved to {stale.name}) and building a fresh one"
    log.warning(message)
    return None, [message]


@dataclass(frozen=True)
class _BuildSettings:
    """The :func:`build_engine` options that reach TensorRT's builder config and the sidecar."""

    builder_optimization_level: int
    workspace_bytes: int | None
    hardware_compatibility: str | None
    version_compatible: bool

    def recorded(self) -> dict[str, Any]:
        """The sidecar's ``build_options``: what a reader needs to rebuild the same plan."""
        return {
            "builder_optimization_level": self.builder_optimization_level,
            "workspace_bytes": self.workspace_bytes,
            "hardware_compatibility": (self.hardware_compatibility or "none").lower(),
            "version_compatible": bool(self.version_compatible),
            "strongly_typed": True,
        }


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    shape_profiles: ShapeProfilesArg,
    input_specs: Sequence[TensorSpec],
    builder_optimization_level: int = 3,
    workspace_bytes: int | None = None,
    timing_cache: Path | None = None,
    hardware_compatibility: str | None = None,
    version_compatible: bool = False,
) -> EngineMetadata:
    """Parse ``onnx_path`` strongly typed, build a plan, write it and its sidecar atomically.

    ``shape_profiles`` give min/opt/max for the dynamic axes of ``input_specs`` (one optimization
    profile). ``timing_cache`` is loaded when it was written by this TensorRT version on this
    GPU, otherwise set aside with a warning; the cache is (re)written after the build.
    Raises UserInputError for a model TensorRT rejects, EnvironmentUnavailable without TensorRT/GPU.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    settings = _BuildSettings(builder_optimization_level, workspace_bytes, hardware_compatibility, version_compatible)
    if not onnx_path.is_file():
        raise UserInputError(f"ONNX model not found: {onnx_path}")
    if not 0 <= builder_optimization_level <= 5:
        raise UserInputError(f"builder_optimization_level must be 0..5, got {builder_optimization_level}")
    shapes = resolve_input_shapes(input_specs, shape_profiles)  # fail on the CPU side before touching the GPU
    check_trt_available()
    machine = collect_device_info()
    hw_level = _hardware_level(_import_tensorrt(), hardware_compatibility)
    load_cache, warnings = _prepare_timing_cache(timing_cache, machine)
    data = _serialized_plan(onnx_path, shapes, settings, hw_level, load_cache=load_cache, timing_cache=timing_cache)

    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(plan_path, data)
    if timing_cache is not None and timing_cache.exists():
        _write_timing_cache_sidecar(timing_cache, machine)
    metadata = EngineMetadata(
        plan_path=str(plan_path),
        plan_sha256=hashlib.sha256(data).hexdigest(),
        plan_size=len(data),
        onnx_sha256=model_sha256(Path(onnx_path)),  # its .data file too, when the weights are external
        tensorrt_version=machine["tensorrt_version"],
        gpu_name=machine["gpu_name"],
        compute_capability=machine["compute_capability"],
        cuda_runtime_version=machine["cuda_runtime_version"],
        cuda_driver_version=machine["cuda_driver_version"],
        shape_profiles={n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in shapes.items()},
        build_options=settings.recorded(),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        timing_cache=str(timing_cache) if timing_cache else None,
        warnings=tuple(warnings),
    )
    write_json(sidecar_path(plan_path), metadata.to_dict())
    return metadata


def _serialized_plan(
    onnx_path: Path,
    shapes: Mapping[str, tuple[Shape, Shape, Shape]],
    settings: _BuildSettings,
    hw_level: Any,
    *,
    load_cache: str | None,
    timing_cache: Path | None,
) -> bytes:
    """Build the plan with Polygraphy: one shape profile, the ONNX parsed strongly typed.

    ``load_cache`` is the timing cache to start from (None: a fresh one); ``timing_cache`` where it is written.
    """
    trt = _import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    shape_profile = Profile()
    for name, triple in shapes.items():
        shape_profile.add(name, **shape_profile_add_kwargs(*triple))
    parser_flags = None
    if hw_level is not None or settings.version_compatible:
        # Polygraphy's CreateConfig asks for this: the InstanceNorm plugin is not portable.
        parser_flags = [trt.OnnxParserFlag.NATIVE_INSTANCENORM]
    network = NetworkFromOnnxPath(str(onnx_path), **network_kwargs(parser_flags))
    workspace = settings.workspace_bytes
    config = CreateConfig(
        **config_kwargs(
            profiles=[shape_profile],
            builder_optimization_level=settings.builder_optimization_level,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace)} if workspace else None,
            load_timing_cache=load_cache,
            hardware_compatibility_level=hw_level,
            version_compatible=settings.version_compatible,
        )
    )
    build = EngineBytesFromNetwork(network, **engine_bytes_kwargs(config, timing_cache))
    try:
        serialized = build()
    except PolygraphyException as exc:
        raise UserInputError(f"TensorRT could not build an engine from {onnx_path}: {exc}") from exc
    return bytes(serialized)


def _write_timing_cache_sidecar(timing_cache: Path, machine: Mapping[str, Any]) -> None:
    """Record who wrote the timing cache, so a later build on another GPU or TensorRT sets it aside."""
    write_json(
        timing_cache_sidecar(timing_cache),
        {
            "tensorrt_version": machine["tensorrt_version"],
            "compute_capability": machine["compute_capability"],
            "gpu_name": machine["gpu_name"],
            "sha256": sha256_file(timing_cache),
        },
    )


@dataclass
class LoadedEngine:
    """A deserialized engine (``trt.ICudaEngine``) with the sidecar it was checked against."""

    engine: Any
    metadata: dict[str, Any]
    plan_path: Path
    warnings: list[str]


def check_plan(plan_path: str | Path) -> dict[str, Any]:
    """CPU-side checks of a plan: sidecar present and readable, file intact. Returns the metadata."""
    metadata = read_sidecar(plan_path)
    verify_plan_file(plan_path, metadata)
    return metadata


def load_engine(plan_path: str | Path) -> LoadedEngine:
    """Verify a plan against its sidecar and this machine, then deserialize it.

    Order matters: integrity is checked before TensorRT is imported (UserInputError),
    then portability (EnvironmentUnavailable with the reasons: the file is fine, this
    machine cannot run it), then deserialization (UserInputError if TensorRT refuses).
    """
    plan_path = Path(plan_path)
    metadata = check_plan(plan_path)
    check_trt_available()
    machine = collect_device_info()
    reasons = check_compatibility(metadata, machine)
    if reasons:
        raise EnvironmentUnavailable(f"cannot run engine {plan_path} on this machine: " + "; ".join(reasons))
    warnings = compatibility_warnings(metadata, machine)
    for message in warnings:
        log.warning(message)
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    try:
        engine = EngineFromBytes(plan_path.read_bytes())()
    except PolygraphyException as exc:
        raise UserInputError(
            f"TensorRT could not deserialize {plan_path}: {exc}; rebuild the engine"
        ) from exc
    return LoadedEngine(engine=engine, metadata=metadata, plan_path=plan_path, warnings=warnings)


class TrtEngineRunner(Runner):
    """Runs one engine through ``polygraphy.backend.trt.TrtRunner``; outputs, timing, GPU memory.

    Why a wrapper: the pipeline needs outputs to compare with ONNX Runtime, latency
    measured after the GPU finished (``TrtRunner.infer`` synchronises its CUDA stream
    before returning), and the GPU memory the engine takes. Matches optpipe's
    ``Runner`` protocol (``output_names``, ``infer``, ``close``); the context is created on first
    use, or explicitly with ``with TrtEngineRunner(plan) as r:``; ``close()`` frees it.
    ``source`` is a plan path (checked with :func:`load_engine`) or a :class:`LoadedEngine`.
    """

    def __init__(self, source: str | Path | LoadedEngine) -> None:
        # An engine this runner deserialized itself is released by close(); a LoadedEngine
        # passed in belongs to the caller.
        self._owns_engine = not isinstance(source, LoadedEngine)
        self.loaded = source if isinstance(source, LoadedEngine) else load_engine(source)
        self._runner: Any = None
        self._closed = False
        self.memory: dict[str, int] = {}
        trt = _import_tensorrt()
        engine = self.loaded.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names: tuple[str, ...] = tuple(
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.output_names: tuple[str, ...] = tuple(
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )

    def __enter__(self) -> TrtEngineRunner:
        self.activate()
        return self

    def activate(self) -> None:
        """Create the execution context (done on first use when not used as a context manager)."""
        if self._runner is not None:
            return
        if self._closed:
            raise RuntimeError(f"the TensorRT runner for {self.loaded.plan_path} was closed; create a new one")
        from polygraphy.backend.trt import TrtRunner

        free_before, total = gpu_memory_info()
        self._runner = TrtRunner(self.loaded.engine)
        self._runner.activate()
        free_after, _ = gpu_memory_info()
        engine = self.loaded.engine
        # device_memory_size_v2 exists from TensorRT 10.1; device_memory_size before that (removed in 11).
        size = next(
            (v for v in (getattr(engine, a, None) for a in DEVICE_MEMORY_ATTRS) if v is not None), 0
        )
        self.memory = {
            "engine_device_memory_bytes": int(size),
            "context_activation_delta_bytes": int(free_before - free_after),
            "gpu_total_bytes": int(total),
            "gpu_free_bytes": int(free_after),
        }

    def close(self) -> None:
        """Free the execution context and its GPU buffers, and the engine when this runner loaded it.

        Idempotent. Without it the context (activation memory) and the engine's weights stay on
        the GPU until the garbage collector happens to drop the runner.
        """
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.deactivate()
        if self._owns_engine and not self._closed:
            self.loaded.engine = None  # the last reference: TensorRT frees the engine's GPU memory
        self._closed = True

    def _active(self) -> Any:
        self.activate()
        return self._runner

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
            runner.infer(feed_dict=feed, **TIMED_INFER_KWARGS)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            runner.infer(feed_dict=feed, **TIMED_INFER_KWARGS)
            times.append((time.perf_counter() - start) * 1000.0)
        return times

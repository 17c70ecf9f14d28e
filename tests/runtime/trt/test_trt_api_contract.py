"""optpipe's calls into Polygraphy, checked against Polygraphy's real signatures, without TensorRT.

Polygraphy imports TensorRT lazily, so its loader classes can be imported and their
signatures inspected on a machine without TensorRT (checked in a subprocess below).
The keyword arguments come from the same builder functions the real calls in
:mod:`optpipe.runtime.tensorrt.engine` use, so renaming a key on either side fails here. This
is a contract check on names only: nothing stands in for TensorRT, and whether the
values are accepted is only known on the GPU machine (the ``gpu`` tests).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.trt import (
    CreateConfig,
    EngineBytesFromNetwork,
    EngineFromBytes,
    NetworkFromOnnxPath,
    Profile,
    TrtRunner,
)

from optpipe.runtime.tensorrt import engine as trt_engine


def accepted_keywords(func: Callable[..., Any], cls: type | None = None) -> set[str]:
    """Names ``func`` accepts as keywords; ``**kwargs`` of an ``__init__`` is followed up the MRO.

    Polygraphy's ``CreateConfig.__init__`` takes ``**kwargs`` and hands them to
    ``_CreateConfigCommon.__init__``; a bare ``**kwargs`` anywhere else would accept
    anything, which would make this check meaningless, so it fails instead.
    """
    names: set[str] = set()
    params = inspect.signature(func).parameters.values()
    names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        assert cls is not None and func.__name__ == "__init__", f"{func.__qualname__} takes **kwargs"
        parents = [c for c in cls.__mro__[1:] if "__init__" in vars(c) and c is not object]
        assert parents, f"{cls.__name__}.__init__ forwards **kwargs to no parent"
        names |= accepted_keywords(vars(parents[0])["__init__"], parents[0])
    return names - {"self"}


def assert_accepts(func: Callable[..., Any], kwargs: dict[str, Any], cls: type | None = None) -> None:
    unknown = set(kwargs) - accepted_keywords(func, cls)
    assert not unknown, f"{func.__qualname__} has no parameter(s) {sorted(unknown)}"


def test_polygraphy_signatures_are_inspectable_without_importing_tensorrt() -> None:
    code = (
        "import inspect, json, sys\n"
        "from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, TrtRunner\n"
        "sig = inspect.signature(NetworkFromOnnxPath.__init__)\n"
        "print(json.dumps({'tensorrt_imported': 'tensorrt' in sys.modules, 'params': list(sig.parameters)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tensorrt_imported"] is False
    assert "strongly_typed" in result["params"]


def test_network_from_onnx_path_accepts_our_kwargs() -> None:
    kwargs = trt_engine.network_kwargs(None)
    assert kwargs["strongly_typed"] is True  # precision lives in the ONNX; TensorRT 11 requires it
    assert_accepts(NetworkFromOnnxPath.__init__, kwargs)
    assert list(inspect.signature(NetworkFromOnnxPath.__init__).parameters)[1] == "path"


def test_create_config_accepts_our_kwargs_and_no_precision_flags() -> None:
    kwargs = trt_engine.config_kwargs(
        profiles=[Profile()],
        builder_optimization_level=3,
        memory_pool_limits=None,
        load_timing_cache=None,
        hardware_compatibility_level=None,
        version_compatible=False,
    )
    assert_accepts(CreateConfig.__init__, kwargs, CreateConfig)
    # TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrator.
    assert not {"fp16", "int8", "bf16", "fp8", "tf32", "calibrator", "precision_constraints"} & set(kwargs)
    assert kwargs["version_compatible"] is None  # Polygraphy only sets VERSION_COMPATIBLE when truthy
    assert trt_engine.config_kwargs(**{**kwargs, "version_compatible": True})["version_compatible"] is True


def test_engine_bytes_from_network_accepts_our_kwargs(tmp_path: Path) -> None:
    kwargs = trt_engine.engine_bytes_kwargs(object(), tmp_path / "timing.cache")
    assert kwargs["save_timing_cache"] == str(tmp_path / "timing.cache")
    assert_accepts(EngineBytesFromNetwork.__init__, kwargs)
    assert list(inspect.signature(EngineBytesFromNetwork.__init__).parameters)[1] == "network"


def test_profile_add_accepts_our_kwargs() -> None:
    kwargs = trt_engine.shape_profile_add_kwargs((1, 3), (8, 3), (64, 3))
    assert_accepts(Profile.add, kwargs)
    profile = Profile()  # pure Python: no TensorRT needed to fill it
    profile.add("x", **kwargs)
    assert tuple(profile["x"].min) == (1, 3) and tuple(profile["x"].max) == (64, 3)


def test_engine_from_bytes_takes_the_plan_positionally() -> None:
    params = list(inspect.signature(EngineFromBytes.__init__).parameters)
    assert params[1] == "serialized_engine"


def test_trt_runner_methods_and_timed_infer_kwargs() -> None:
    assert list(inspect.signature(TrtRunner.__init__).parameters)[1] == "engine"
    for method in ("activate", "deactivate", "infer", "get_input_metadata"):
        assert callable(getattr(TrtRunner, method)), method
    # BaseRunner.infer(feed_dict, check_inputs=True, *args, **kwargs) forwards the rest to infer_impl.
    infer = inspect.signature(BaseRunner.infer).parameters
    assert "feed_dict" in infer and "check_inputs" in infer
    forwarded = {k: v for k, v in trt_engine.TIMED_INFER_KWARGS.items() if k not in infer}
    assert_accepts(TrtRunner.infer_impl, forwarded)
    assert forwarded == {"copy_outputs_to_host": False}


def test_polygraphy_cuda_wrapper_exists() -> None:
    from polygraphy import cuda

    assert callable(cuda.wrapper)  # engine._cudart uses cuda.wrapper().handle (a ctypes CDLL of libcudart)
    assert "self.handle = ctypes.CDLL" in inspect.getsource(cuda.Cuda.__init__)


@pytest.mark.gpu
def test_tensorrt_names_we_use_exist_in_the_installed_tensorrt() -> None:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    missing = []
    for dotted in trt_engine.TRT_NAMES_USED:
        obj: Any = trt.ICudaEngine if dotted.startswith("engine.") else trt
        for part in dotted.removeprefix("engine.").split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(dotted)
                break
    assert not missing, f"TensorRT {trt.__version__} lacks {missing}"
    assert any(hasattr(trt.ICudaEngine, name) for name in trt_engine.DEVICE_MEMORY_ATTRS)

"""Shared fixtures: paths of the sample models and toy models, and a loader for them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
TOY_MODELS = Path(__file__).resolve().parent / "fixtures" / "models" / "toy_models.py"


def load_file_module(path: Path) -> ModuleType:
    """Import a Python file by path (tests use the same models the CLI loads by path)."""
    spec = importlib.util.spec_from_file_location(f"_test_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toy() -> ModuleType:
    return load_file_module(TOY_MODELS)


def build_context(
    tmp_path: Path,
    model: object,
    examples: dict[str, object],
    output_names: tuple[str, ...],
    batch: object | None = None,
) -> object:
    """A BuildContext with golden data, as ``build()`` makes it, for testing single passes."""
    import numpy as np
    import torch

    from optpipe.compare.golden import make_golden
    from optpipe.infra.pass_base import BuildContext
    from optpipe.model.input_parsing import DynamicArg, resolve_input_specs
    from optpipe.runtime.runners import TorchRunner
    from optpipe.runtime.target import get_target

    arrays = {k: np.asarray(v) for k, v in examples.items()}
    dynamic = [DynamicArg(batch)] if batch is not None else []  # type: ignore[arg-type]
    specs = resolve_input_specs(list(arrays), [(a.shape, str(a.dtype)) for a in arrays.values()], dynamic)
    reference = TorchRunner(model, tuple(arrays), output_names)
    golden = make_golden(reference, arrays, batch)  # type: ignore[arg-type]
    return BuildContext(
        work_dir=tmp_path,
        target=get_target("cpu"),
        input_specs=specs,
        output_names=output_names,
        dynamic=tuple(d.dim for d in dynamic),
        model=model,
        example_inputs=tuple(torch.from_numpy(a) for a in arrays.values()),
        golden=golden,
        threads=1,
        log=lambda message: None,
    )


def torch_artifact(ctx: object) -> object:
    """The source artifact a build starts from."""
    from optpipe.core.artifact import Artifact, ArtifactKind

    return Artifact(ArtifactKind.TORCH, None, "", ctx.input_specs, ())  # type: ignore[attr-defined]


@pytest.fixture(autouse=True, scope="session")
def _isolated_pass_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Builds in tests use a cache of their own: a user's ~/.cache/optpipe must not turn passes into hits."""
    import os

    os.environ["OPTPIPE_CACHE_DIR"] = str(tmp_path_factory.mktemp("optpipe-cache"))


def trt_usable() -> bool:
    """TensorRT importable and a CUDA GPU present (what the gpu-marked tests need)."""
    from optpipe.core.errors import EnvironmentUnavailable
    from optpipe.runtime.tensorrt.engine import check_trt_available

    try:
        check_trt_available()
    except EnvironmentUnavailable:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    """Pin reduce_range for processes started outside a test's monkeypatch too (module-scoped Ray clusters)."""
    import os

    os.environ.setdefault("OPTPIPE_INT8_REDUCE_RANGE", "1")


@pytest.fixture(autouse=True)
def _pinned_reduce_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may depend on the CPU's instruction set: pin the INT8 reduce_range choice.

    Left to ``cpu_needs_reduce_range()``, a CPU without VNNI quantizes to 7-bit weights and one with
    AVX-512 VNNI to 8-bit ones, so a gate verdict or a kept-node count would differ between CI machines.
    Tests get the no-VNNI choice (7-bit weights, correct on every x86 CPU); a test that wants the other
    passes ``reduce_range`` explicitly.
    """
    import optpipe.precision.dynamic_quantize as int8_dynamic
    import optpipe.precision.static_quantize as int8

    monkeypatch.setenv(int8.REDUCE_RANGE_ENV, "1")  # also reaches subprocesses this test starts
    monkeypatch.setattr(int8, "cpu_needs_reduce_range", lambda: True)
    monkeypatch.setattr(int8_dynamic, "cpu_needs_reduce_range", lambda: True)

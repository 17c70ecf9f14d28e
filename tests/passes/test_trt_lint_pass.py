"""The trt-lint and engine-trt passes and their wiring into the TensorRT target (CPU only).

The lint pass runs on hand-made ONNX files here (milliseconds); the end-to-end
"a build stops at the lint" case lives in test_split_build.py. Nothing here
stands in for TensorRT: the engine pass is only run where it must fail
(TensorRT absent), which is the behaviour a CPU machine really has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import trt_usable
from onnx import TensorProto, helper, numpy_helper
from optpipe.passes.engine_trt import TrtEngineConfig, TrtEnginePass
from optpipe.passes.trt_lint import TrtLintConfig, TrtLintPass, lint_shape_profiles

from optpipe.builder.options import TensorRTOptions, parse_build_options
from optpipe.builder.pass_configs import engine_pass, trt_engine_config
from optpipe.builder.run import variant_passes
from optpipe.builder.split_finish import split_next_step
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import EXIT_ENVIRONMENT, EXIT_USAGE, PassError, UserInputError
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.infra.pass_base import BuildContext
from optpipe.infra.registry import pre_engine_passes
from optpipe.runtime.target import CpuTarget
from optpipe.runtime.tensorrt.target import TensorRTTarget


def save(tmp_path: Path, nodes: list[onnx.NodeProto], x_shape: list[object], inits: tuple = ()) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime refuses (DESIGN.md)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def ctx_for(tmp_path: Path, shape: tuple[object, ...], dynamic: tuple[DynamicDim, ...] = ()) -> BuildContext:
    return BuildContext(
        work_dir=tmp_path,
        target=TensorRTTarget(),
        input_specs=(TensorSpec("x", shape, "float32"),),
        output_names=("y",),
        dynamic=dynamic,
        log=lambda message: None,
    )


def onnx_artifact(path: Path, shape: tuple[object, ...]) -> Artifact:
    spec = TensorSpec("x", shape, "float32")
    return Artifact(ArtifactKind.ONNX, path, "sha", (spec,), (), precision="fp32")


def test_clean_model_passes_unchanged(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], [2, 3])
    artifact = onnx_artifact(path, (2, 3))
    result = TrtLintPass()(artifact, ctx_for(tmp_path, (2, 3)))
    assert result.modified is False
    assert result.artifact == artifact
    assert result.warnings == []
    assert result.metrics["errors"] == 0 and result.metrics["problems"] == []
    assert result.metrics["support_table_tensorrt"]


def test_unsupported_op_stops_with_node_and_fix(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Det", ["x"], ["y"], name="the_det")], [2, 3, 3])
    with pytest.raises(PassError, match=r"(?s)trt-lint.*Det is not supported") as info:
        TrtLintPass()(onnx_artifact(path, (2, 3, 3)), ctx_for(tmp_path, (2, 3, 3)))
    assert info.value.exit_code == EXIT_USAGE
    assert isinstance(info.value.cause, UserInputError)
    message = str(info.value)
    assert "[the_det]" in message and "Fix:" in message
    assert "nothing was sent to the TensorRT builder" in message


def test_every_error_is_listed(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det"),
        helper.make_node("FusedGemm", ["d"], ["y"], name="fused", domain="com.microsoft"),
    ]
    path = save(tmp_path, nodes, [2, 3, 3])
    with pytest.raises(PassError, match="2 problems") as info:
        TrtLintPass()(onnx_artifact(path, (2, 3, 3)), ctx_for(tmp_path, (2, 3, 3)))
    assert "[det]" in str(info.value) and "[fused]" in str(info.value) and "com.microsoft" in str(info.value)


def test_dynamic_batch_needs_the_builds_profile(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], ["batch", 3])
    artifact = onnx_artifact(path, ("batch", 3))
    with pytest.raises(PassError, match="dynamic-dim-no-profile"):
        TrtLintPass()(artifact, ctx_for(tmp_path, ("batch", 3)))
    result = TrtLintPass()(artifact, ctx_for(tmp_path, ("batch", 3), (DynamicDim("batch", 1, 4, 8),)))
    assert result.metrics["errors"] == 0


def test_profile_resolved_from_specs_covers_an_axis_the_exporter_named_differently(tmp_path: Path) -> None:
    # The exporter may call the axis "s0" while the build calls it "batch": the lint is given the
    # same per-input shapes the engine builder will get, so it does not cry wolf.
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], ["s0", 3])
    specs = (TensorSpec("x", ("batch", 3), "float32"),)
    profiles = lint_shape_profiles(specs, (DynamicDim("batch", 1, 4, 8),))
    assert profiles["x"] == ((1, 3), (4, 3), (8, 3))
    ctx = ctx_for(tmp_path, ("batch", 3), (DynamicDim("batch", 1, 4, 8),))
    result = TrtLintPass()(onnx_artifact(path, ("batch", 3)), ctx)
    assert result.metrics["errors"] == 0


def test_warnings_go_to_the_report_or_stop_when_asked(tmp_path: Path) -> None:
    big = numpy_helper.from_array(np.array([2**40], dtype=np.int64), "big")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "big"], ["y"], name="reshape"),
    ]
    path = save(tmp_path, nodes, [2, 3], inits=(big,))
    artifact = onnx_artifact(path, (2, 3))
    result = TrtLintPass()(artifact, ctx_for(tmp_path, (2, 3)))
    assert result.metrics["warnings"] == 1
    assert [w.split(":", 1)[0] for w in result.warnings] == ["trt-lint"]
    assert "int64-out-of-range" in result.warnings[0]
    with pytest.raises(PassError, match="int64-out-of-range"):
        TrtLintPass(TrtLintConfig(warnings_as_errors=True))(artifact, ctx_for(tmp_path, (2, 3)))


def test_unreadable_onnx_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(PassError, match="cannot read ONNX") as info:
        TrtLintPass()(onnx_artifact(path, (2, 3)), ctx_for(tmp_path, (2, 3)))
    assert info.value.exit_code == EXIT_USAGE


def test_tensorrt_target_lints_before_its_engine() -> None:
    options = parse_build_options(trt={"builder_optimization_level": 5, "hardware_compatibility": "ampere_plus"})
    split = variant_passes("fp32", TensorRTTarget(), options, engine=False)
    assert [p.name for p in split] == ["trt-lint"]
    full = variant_passes("fp32", TensorRTTarget(), options, engine=True)
    assert [p.name for p in full] == ["trt-lint", "engine-trt", "validate"]  # the benchmark is one build step
    expected = TrtEngineConfig(builder_optimization_level=5, hardware_compatibility="ampere_plus")
    assert full[1].config == expected
    assert pre_engine_passes(CpuTarget()) == []


@pytest.mark.parametrize(
    ("trt", "match"),
    [
        ({"builder_optimization_level": 6}, "0..5"),
        ({"workspace_bytes": 0}, "workspace"),
        ({"hardware_compatibility": "turing_plus"}, "ampere_plus"),
        ({"opt_level": 3}, "unknown TensorRT option"),
    ],
)
def test_bad_engine_options_are_refused_before_building(trt: dict[str, object], match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        trt_engine_config(TensorRTOptions.parse(trt))
    with pytest.raises(UserInputError, match=match):  # a split build checks them on the CPU machine
        split_next_step("out", "no TensorRT", TensorRTOptions.parse(trt))


def test_engine_config_from_options_keeps_defaults_for_missing_values() -> None:
    trt = TensorRTOptions.parse({"timing_cache": Path("c.bin"), "workspace_bytes": None})
    config = trt_engine_config(trt)
    assert config == TrtEngineConfig(timing_cache="c.bin")
    assert engine_pass(TensorRTTarget(), parse_build_options()).config == TrtEngineConfig()


def test_split_next_step_says_how_to_finish() -> None:
    text = split_next_step("build/out", "TensorRT is not installed.", TensorRTOptions())
    assert "optpipe engine build/out" in text
    assert "NVIDIA GPU" in text
    # no index hosts optpipe: the hint builds a wheel here or installs from the repository
    assert "pip wheel --no-deps" in text and "whl[tensorrt]'" in text
    assert "pip install 'optpipe[tensorrt] @ git+" in text


@pytest.mark.skipif(trt_usable(), reason="TensorRT and a GPU are usable here; this tests their absence")
def test_engine_pass_without_tensorrt_is_an_environment_error(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], [2, 3])
    with pytest.raises(PassError, match="engine-trt") as info:
        TrtEnginePass()(onnx_artifact(path, (2, 3)), ctx_for(tmp_path, (2, 3)))
    assert info.value.exit_code == EXIT_ENVIRONMENT
    assert not (tmp_path / "fp32" / "model.plan").exists()

"""INT8 builds never leave files in the user's working directory (ONNX Runtime's tools write there)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from optpipe.cli.main import main
from optpipe.core.scratch_dir import scratch_cwd
from optpipe.precision.static_quantize import quantize_int8

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "toy_models.py"


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _matmul_inverse(path: Path) -> Path:
    """MatMul then com.microsoft Inverse: ORT runs it, but its symbolic shape inference cannot type Inverse.

    ``quant_pre_process`` then saves ``sym_shape_infer_temp.onnx`` into the current directory and raises.
    """
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], (np.eye(4) * 2 + 0.1).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="matmul"),
         helper.make_node("Inverse", ["a"], ["y"], name="inverse", domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_symbolic_shape_failure_leaves_working_directory_unchanged(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = _matmul_inverse(tmp_path / "model.onnx")
    cwd = tmp_path / "user-cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    rng = np.random.default_rng(0)
    samples = [{"x": (np.eye(4) + 0.1 * rng.standard_normal((4, 4))).astype(np.float32)[None]} for _ in range(4)]
    result = quantize_int8(src, tmp_path / "q.onnx", samples, style="tensorrt")
    assert result.status == "quantized"
    assert any("symbolic shape inference failed" in w for w in result.warnings)  # the real failing path ran
    assert _listing(cwd) == ["notes.txt"]
    assert Path.cwd() == cwd


@pytest.mark.slow
def test_int8_build_with_guard_leaves_working_directory_unchanged(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "user-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, [
        "build", f"{TOY}:TinyNet", "--out", str(tmp_path / "out"), "--precision", "int8", "--synthetic-calib",
        "--tolerance", "*:min_cosine=0.99999999", "--guard-max-keep", "0.5", "--no-benchmark", "--no-cache",
    ], catch_exceptions=False)  # an unreachable gate: every guard round quantizes again
    assert result.exit_code in (0, 1), result.output
    assert _listing(cwd) == []


def test_scratch_cwd_restores_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), scratch_cwd() as scratch:
        assert Path(os.getcwd()) == scratch.resolve()
        Path("left-behind.onnx").write_text("x")
        raise RuntimeError("boom")
    assert Path.cwd() == tmp_path
    assert not scratch.exists()
    assert _listing(tmp_path) == []

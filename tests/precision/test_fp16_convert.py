"""Tests for optpipe.precision.fp16_convert: accuracy, automatic overflow blocking, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.precision.fp16_convert import convert_fp16


def _mlp(path: Path, big_scale: float = 1.0) -> Path:
    """x -> MatMul(w1) -> Mul(scale) -> Relu -> MatMul(w2) -> y; ``big_scale`` makes the Mul overflow FP16."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((16, 4)) / big_scale).astype(np.float32), "w2")
    scale = numpy_helper.from_array(np.array(big_scale, np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Mul", ["h", "scale"], ["hs"], name="scale_mul"),
        helper.make_node("Relu", ["hs"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w1, w2, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime refuses
    onnx.save(model, path)
    return path


def _samples(n: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(n)]


def _run(path: Path, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, s)[0] for s in samples])


def test_fp16_close_to_fp32(tmp_path: Path) -> None:
    src = _mlp(tmp_path / "m.onnx")
    samples = _samples()
    result = convert_fp16(src, tmp_path / "m16.onnx", calib_samples=samples)
    assert result.kept_fp32 == {} and result.converted_nodes == 4 and result.warnings == []
    ref, got = _run(src, samples), _run(result.path, samples)
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)
    inits = onnx.load(str(result.path)).graph.initializer
    assert {i.data_type for i in inits} == {TensorProto.FLOAT16}


def test_overflow_node_kept_in_fp32(tmp_path: Path) -> None:
    src = _mlp(tmp_path / "big.onnx", big_scale=1e5)  # |hs| ~ 1e5..1e6 > 65504
    samples = _samples()
    result = convert_fp16(src, tmp_path / "big16.onnx", calib_samples=samples)
    assert "hs" in result.overflow
    # the producer and every consumer of the overflowing tensor stay FP32
    assert {"scale_mul", "relu", "mm2"} <= set(result.kept_fp32)
    assert "65504" in result.kept_fp32["scale_mul"]
    ref, got = _run(src, samples), _run(result.path, samples)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)
    # without the automatic blocking the same model overflows
    naive = convert_fp16(src, tmp_path / "naive16.onnx")
    assert any("not range-checked" in w for w in naive.warnings)
    assert "hs" not in naive.overflow


def test_user_block_list_and_unknown_node(tmp_path: Path) -> None:
    src = _mlp(tmp_path / "m.onnx")
    result = convert_fp16(src, tmp_path / "m16.onnx", node_block_list=["relu"])
    assert result.kept_fp32 == {"relu": "requested"}
    with pytest.raises(UserInputError, match=r"not in .*\['nope'\]"):
        convert_fp16(src, tmp_path / "x.onnx", node_block_list=["nope"])


def test_corrupt_model_is_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(UserInputError, match="cannot read ONNX model"):
        convert_fp16(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_over_the_protobuf_limit_converts_like_a_small_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 2 GiB, ORT's converter cannot infer shapes in memory; the file form must give the same model.

    The limit lowered to 0 sends this small model down that path; the overflow scan (every tensor exposed)
    and the finite-output check run their sessions from a file too.
    """
    from optpipe.precision import onnx_graph

    src = _mlp(tmp_path / "m.onnx", big_scale=1e5)
    samples = _samples()
    small = convert_fp16(src, tmp_path / "small" / "m16.onnx", calib_samples=samples)
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_ABOVE", 0)
    large = convert_fp16(src, tmp_path / "large" / "m16.onnx", calib_samples=samples, external_above=0)
    assert large.kept_fp32 == small.kept_fp32 and "scale_mul" in large.kept_fp32
    np.testing.assert_array_equal(_run(large.path, samples), _run(small.path, samples))

"""The int4-weight probe: one session whose MatMuls switch between their 4-bit and kept forms, real kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.guard.weight_only_probe import SWITCHES, Probe, output_gains, real_length, switchable
from optpipe.precision.int4_options import Int4Options
from optpipe.precision.weight_only_quantize import quantize_int4_weight

K = 64
OPTIONS = Int4Options(block_size=16, accuracy_level=0)


def _two_branches(path: Path, quiet: float = 1e-3) -> Path:
    """y = x @ W_loud + quiet * (x @ W_quiet): W_quiet's 4-bit error barely reaches the output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w_loud"),
             numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w_quiet"),
             numpy_helper.from_array(np.array(quiet, np.float32), "quiet")]  # fmt: skip
    nodes = [helper.make_node("MatMul", ["x", "w_loud"], ["a"], name="loud"),
             helper.make_node("MatMul", ["x", "w_quiet"], ["b"], name="soft"),
             helper.make_node("Mul", ["b", "quiet"], ["c"], name="scale"),
             helper.make_node("Add", ["a", "c"], ["y"], name="sum")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", K])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _built(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = _two_branches(tmp_path / "m.onnx")
    quantize_int4_weight(src, tmp_path / "q4.onnx", options=OPTIONS)
    quantize_int4_weight(src, tmp_path / "q8.onnx", options=OPTIONS, eight_bit_nodes=["loud", "soft"])
    return src, tmp_path / "q4.onnx", tmp_path / "q8.onnx"


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return np.asarray(ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)[0])


def test_the_switches_run_exactly_the_4_bit_or_the_kept_model(tmp_path: Path) -> None:
    """All switches on is the built 4-bit model, all off the 8-bit one, bit for bit: the probe runs their kernels."""
    src, q4, q8 = _built(tmp_path)
    model = switchable(onnx.load(str(q4)), onnx.load(str(q8)), onnx.load(str(src)))
    assert model.names == ("loud", "soft")
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    assert np.array_equal(_run(model.model, {"x": x, SWITCHES: np.ones(2, bool)}), _run(q4, {"x": x}))
    assert np.array_equal(_run(model.model, {"x": x, SWITCHES: np.zeros(2, bool)}), _run(q8, {"x": x}))
    # a kept 8-bit node costs more bytes than its 4-bit form (blocks of 128 pad this K of 64), less than FP32
    assert all(0 < extra < 2 * K * K for extra in model.extra_bytes.values()), model.extra_bytes


def test_kept_as_fp32_switches_back_to_the_fp32_weight(tmp_path: Path) -> None:
    src, q4, _ = _built(tmp_path)
    model = switchable(onnx.load(str(q4)), None, onnx.load(str(src)))
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    assert np.allclose(_run(model.model, {"x": x, SWITCHES: np.zeros(2, bool)}), _run(src, {"x": x}), atol=1e-5)
    assert model.extra_bytes["loud"] > 3 * K * K  # 4 bytes a weight against ~0.6


def test_the_node_that_reaches_the_output_gains_most(tmp_path: Path) -> None:
    """Both weights err alike locally; only the probe of the output sees that one of them hardly matters."""
    src, q4, q8 = _built(tmp_path)
    model = switchable(onnx.load(str(q4)), onnx.load(str(q8)), onnx.load(str(src)))
    rng = np.random.default_rng(2)
    gains = output_gains(Probe(model, [{"x": rng.standard_normal((1, K)).astype(np.float32)} for _ in range(3)]))
    assert gains["loud"] > 100 * abs(gains["soft"]), gains


def test_padding_is_cut_only_where_a_mask_says_where_it_starts() -> None:
    ids = np.array([[101, 7, 8, 102, 0, 0]], np.int64)
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int64)
    short = real_length({"input_ids": ids, "attention_mask": mask, "other": np.ones((1, 3), np.float32)})
    assert short["input_ids"].tolist() == [[101, 7, 8, 102]] and short["attention_mask"].shape == (1, 4)
    assert short["other"].shape == (1, 3)  # not the mask's shape: left alone
    left = np.array([[0, 0, 1, 1, 1, 1]], np.int64)  # left padding: cutting the tail would cut real tokens
    assert real_length({"input_ids": ids, "attention_mask": left})["input_ids"].shape == (1, 6)
    full = np.ones((1, 6), np.int64)
    assert real_length({"input_ids": ids, "attention_mask": full})["input_ids"].shape == (1, 6)

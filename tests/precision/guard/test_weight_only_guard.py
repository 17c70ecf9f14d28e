"""The int4-weight guard: keep by output gain per byte within the size budget; the gate, never the probe, decides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.guard.weight_only_guard import (
    WeightOnlyBudget,
    allowed_ratio,
    gate_ratio,
    ordered,
    weight_bytes,
    weight_only_guard,
)
from optpipe.precision.int4_options import Int4Options
from optpipe.precision.weight_only_quantize import quantize_int4_weight

K, BLOCK = 64, 16
#: How much each branch's output counts: two loud branches, one middling, three nearly silent.
SCALES = (1.0, 1.0, 0.3, 0.003, 0.003, 0.003)
OPTIONS = Int4Options(block_size=BLOCK, accuracy_level=0)
BAR = 0.9995


def _exact_then_random(rng: np.random.Generator) -> np.ndarray:
    """A weight whose first K/2 rows 4 bits hold exactly (each block of 16 along K is 0..15) and the rest random."""
    exact = np.stack([rng.permutation(16) for _ in range(K * K // 32)]).reshape(K // 32, K, 16)
    top = exact.transpose(0, 2, 1).reshape(K // 2, K).astype(np.float32) * 0.1
    return np.concatenate([top, rng.standard_normal((K // 2, K)).astype(np.float32)])


def _branches(path: Path) -> Path:
    """y = sum_i SCALES[i] * (x @ W_i): nodes b0..b5, every weight 4-bit-exact in its first K/2 rows only."""
    rng = np.random.default_rng(0)
    inits, nodes, terms = [], [], []
    for i, scale in enumerate(SCALES):
        inits += [numpy_helper.from_array(_exact_then_random(rng), f"w{i}"),
                  numpy_helper.from_array(np.array(scale, np.float32), f"s{i}")]  # fmt: skip
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"], name=f"b{i}"),
                  helper.make_node("Mul", [f"m{i}", f"s{i}"], [f"t{i}"], name=f"scale{i}")]  # fmt: skip
        terms.append(f"t{i}")
    nodes.append(helper.make_node("Sum", terms, ["y"], name="sum"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", K])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _rows(count: int, seed: int, full: bool = True) -> list[dict[str, np.ndarray]]:
    """Rows of batch 1; ``full=False`` leaves the last K/2 features zero (4 bits then err nowhere)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        x = rng.standard_normal((1, K)).astype(np.float32)
        if not full:
            x[:, K // 2 :] = 0
        rows.append({"x": x})
    return rows


def _run(path: Path, rows: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(session.run(None, row)[0]).ravel() for row in rows]


def _gate(src: Path, rows: list[dict[str, np.ndarray]], log: list[dict[str, Any]], bar: float = BAR) -> Any:
    """The gate's shape: per-row cosine against FP32 on ``rows``, a parity record per run like validate_outputs'."""
    reference = _run(src, rows)

    def gate(path: Path) -> bool:
        got = _run(path, rows)
        cosines = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(reference, got, strict=True)]
        passed = min(cosines) >= bar
        log.append({"passed": passed, "outputs": {"y": {"cosine": float(np.mean(cosines)), "cosine_min": min(cosines),
                                                        "tolerance": {"min_cosine": bar, "min_row_cosine": bar}}}})
        return passed

    return gate


def _guard(tmp_path: Path, gate_rows: list[dict[str, np.ndarray]], size_fraction: float = 1.0, bar: float = BAR,
           seconds: float | None = None) -> Any:
    src = _branches(tmp_path / "m.onnx")
    dst = tmp_path / "out" / "model.onnx"
    log: list[dict[str, Any]] = []

    def build(keep: list[str]) -> Any:
        return quantize_int4_weight(src, dst, options=OPTIONS, eight_bit_nodes=keep)

    def kept_model(path: Path) -> Path:
        quantize_int4_weight(src, path, options=OPTIONS, eight_bit_nodes=[f"b{i}" for i in range(len(SCALES))])
        return path

    budget = WeightOnlyBudget(int(size_fraction * weight_bytes(src)), len(SCALES), seconds)
    result = weight_only_guard(src, gate_rows, _gate(src, gate_rows, log, bar), log, build=build, kept_model=kept_model,
                               budget=budget)  # fmt: skip
    return result, budget


def test_it_keeps_the_branches_that_reach_the_output_and_passes(tmp_path: Path) -> None:
    result, budget = _guard(tmp_path, _rows(6, 1))
    assert result.passed and result.stopped == "gate passed", result.stopped
    assert result.history[0] == ((), False)  # the all-4-bit model failed first
    assert {"b0", "b1"} <= set(result.kept_nodes) and not {"b3", "b4", "b5"} & set(result.kept_nodes), result.kept_nodes
    assert result.iterations == len(result.history) <= 4  # a plan verified, not a node per round
    assert weight_bytes(result.path) <= budget.max_bytes


def test_a_size_budget_too_small_for_what_the_gate_needs_is_not_passed(tmp_path: Path) -> None:
    src = _branches(tmp_path / "m.onnx")
    four_bit = quantize_int4_weight(src, tmp_path / "q4.onnx", options=OPTIONS).path
    assert four_bit is not None
    fraction = (weight_bytes(four_bit) + 100) / weight_bytes(src)  # room for no 8-bit MatMul
    result, _ = _guard(tmp_path, _rows(6, 1), size_fraction=fraction)
    assert not result.passed and "size budget" in result.stopped, result.stopped


@pytest.mark.parametrize("bar", [0.999999, BAR], ids=["wrong_verdict", "twin"])
def test_wrong_verdict_a_plan_the_probe_rows_pass_is_judged_by_the_gate_rows(tmp_path: Path, bar: float) -> None:
    """The probe ranks on the first 3 guard rows, whose last K/2 features are zero: there 4 bits are exact, so its
    plan looks clean. The gate's other rows see the 4-bit (and 8-bit) error: at a bar not even 8 bits meet on
    them, the planned model must not pass, and the guard says in one line why it stopped.
    Twin: at a bar the kept MatMuls meet, the same plan passes."""
    rows = _rows(3, 1, full=False) + _rows(4, 2)
    result, _ = _guard(tmp_path, rows, bar=bar)
    assert result.history[0] == ((), False)
    if bar == BAR:
        assert result.passed and result.kept_nodes, result.stopped
    else:
        assert not result.passed and result.stopped and result.stopped != "gate passed", result.stopped
        assert all(not passed for _kept, passed in result.history)


def test_a_spent_time_budget_stops_with_the_last_model_failed(tmp_path: Path) -> None:
    result, _ = _guard(tmp_path, _rows(6, 1), seconds=0.0)
    assert not result.passed and result.stopped.startswith("time budget") and result.iterations == 1


def test_the_target_is_the_share_of_error_the_gate_allows() -> None:
    record: Mapping[str, Any] = {"outputs": {"y": {"cosine": 0.9, "cosine_min": 0.8,
                                                   "tolerance": {"min_cosine": 0.99, "min_row_cosine": 0.98}}}}
    assert allowed_ratio(record) == pytest.approx(0.1)  # (1 - 0.99) / (1 - 0.9) < (1 - 0.98) / (1 - 0.8)
    assert allowed_ratio({}) == pytest.approx(0.1)


def test_what_the_gate_measured_is_compared_with_what_the_probe_predicted() -> None:
    first = {"outputs": {"y": {"cosine": 0.9, "cosine_min": 0.8}}}
    last = {"outputs": {"y": {"cosine": 0.97, "cosine_min": 0.96}}}
    assert gate_ratio(first, last) == pytest.approx(0.3)  # the larger of 0.03 / 0.1 and 0.04 / 0.2
    assert gate_ratio({}, last) == 0.0


def test_order_is_gain_per_byte_and_stops_at_the_budget() -> None:
    gains = {"q": 0.001, "v": 0.05, "ffn": 0.2, "noise": -0.01}
    extra = {"q": 10, "v": 10, "ffn": 100, "noise": 1}
    assert ordered(gains, extra, room=1000, max_nodes=10) == ["v", "ffn", "q"]  # 0.005/B, 0.002/B, 0.0001/B
    assert ordered(gains, extra, room=50, max_nodes=10) == ["v"]  # ffn does not fit: the order stops there
    assert ordered(gains, extra, room=1000, max_nodes=1) == ["v"]

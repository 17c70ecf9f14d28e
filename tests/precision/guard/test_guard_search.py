"""The guard's search: logarithmic rounds, one calibration, a time budget, fragile nodes, captured logs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.builder.log import LogCapture
from optpipe.precision import static_quantize as int8_module
from optpipe.precision.fragile import mask_softmax_nodes
from optpipe.precision.guard.localize import guarded_quantize

WIDTH, LAYERS, BAD = 16, 48, 12


def _chain(weights: list[np.ndarray]) -> onnx.ModelProto:
    """x -> MatMul(W0) -> ... -> MatMul(Wn): named nodes mm0..mmN."""
    nodes, inits, current = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        out = "y" if i == len(weights) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out], name=f"mm{i}"))
        current = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@dataclass
class _Lowered:
    path: Path | None
    quantizable_count: int


class _NoisyLowering:
    """A real lowering: every MatMul weight not kept gets a perturbation; the first BAD layers a large one."""

    def __init__(self, clean: list[np.ndarray], out: Path) -> None:
        rng = np.random.default_rng(1)
        self.clean, self.out, self.builds = clean, out, 0
        self.noise = [rng.normal(size=w.shape) * (0.08 if i < BAD else 0.0005) for i, w in enumerate(clean)]

    def __call__(self, keep: list[str]) -> _Lowered:
        self.builds += 1
        pairs = enumerate(zip(self.clean, self.noise, strict=True))
        weights = [w if f"mm{i}" in keep else w + n for i, (w, n) in pairs]
        onnx.save(_chain(weights), str(self.out))
        return _Lowered(self.out, LAYERS)


def _cosine_gate(reference: Path, samples: list[dict[str, np.ndarray]], threshold: float):  # type: ignore[no-untyped-def]
    ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    expected = np.concatenate([ref.run(None, s)[0] for s in samples]).ravel()

    def gate(path: Path) -> bool:
        low = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = np.concatenate([low.run(None, s)[0] for s in samples]).ravel()
        return float(expected @ got / np.linalg.norm(expected) / np.linalg.norm(got)) >= threshold

    return gate


@pytest.fixture()
def chain(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    weights = [np.linalg.qr(rng.normal(size=(WIDTH, WIDTH)))[0] for _ in range(LAYERS)]  # orthogonal: stable norms
    path = tmp_path / "fp32.onnx"
    onnx.save(_chain(weights), str(path))
    samples = [{"x": rng.normal(size=(4, WIDTH)).astype(np.float32)} for _ in range(4)]
    return path, weights, samples


def test_guard_rounds_grow_with_log_of_the_nodes_to_keep(chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, weights, samples = chain
    lowering = _NoisyLowering(weights, tmp_path / "low.onnx")
    result = guarded_quantize(src, tmp_path / "low.onnx", samples, _cosine_gate(src, samples, 0.999),
                              quantize=lowering, max_keep_fraction=1.0)  # fmt: skip
    assert result.passed, result.stopped
    assert result.stopped == "gate passed"
    assert {f"mm{i}" for i in range(BAD)} <= set(result.kept_nodes)  # every bad layer kept...
    assert len(result.kept_nodes) < 2 * BAD  # ...and the bisection trimmed the last step
    # One node per round would need BAD + 1 gate runs; growing steps plus bisection need about 2 log2(BAD).
    assert result.iterations <= 2 * math.ceil(math.log2(BAD)) + 2 < BAD + 1


def test_a_larger_first_step_needs_fewer_rounds_and_still_passes(chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``first_step`` (int4-weight keeping MatMuls as 8-bit): the first round keeps that many groups, not one."""
    src, weights, samples = chain
    rounds = {}
    for first in (1, 8):
        lowering = _NoisyLowering(weights, tmp_path / f"low{first}.onnx")
        result = guarded_quantize(src, tmp_path / f"low{first}.onnx", samples, _cosine_gate(src, samples, 0.999),
                                  quantize=lowering, max_keep_fraction=1.0, first_step=first)  # fmt: skip
        assert result.passed and {f"mm{i}" for i in range(BAD)} <= set(result.kept_nodes), result.stopped
        assert len(result.history[1][0]) == first  # the round after the first build kept `first` nodes
        rounds[first] = result.iterations
    assert rounds[8] < rounds[1], rounds


def test_time_budget_stops_the_guard_with_the_reason(chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, weights, samples = chain
    lowering = _NoisyLowering(weights, tmp_path / "low.onnx")
    result = guarded_quantize(src, tmp_path / "low.onnx", samples, _cosine_gate(src, samples, 0.999),
                              quantize=lowering, max_keep_fraction=1.0, guard_seconds=1e-6)  # fmt: skip
    assert not result.passed and result.iterations == 1
    assert "time budget" in result.stopped
    assert result.path is not None  # the best model so far (the only one) is still reported


@pytest.mark.parametrize("budget", [1.5, 60.0], ids=["rebuild_past_the_budget", "twin_time_for_a_rebuild"])
def test_a_rebuild_that_would_end_past_the_budget_is_not_started_and_the_guard_fails(
    chain, tmp_path: Path, budget: float  # type: ignore[no-untyped-def]
) -> None:
    """ViT-B/16's static INT8 spent 60 s past its 60 s budget on a rebuild and its gate. A rebuild that cannot end
    within the budget (it takes as long as the last build) is not started: the guard stops with the budget as its
    reason and "not passed", although the rebuild would have passed - stopping early only ever fails.
    Twin: with time for it, the same rebuild is built, judged and passes."""
    src, weights, samples = chain
    lowering = _NoisyLowering(weights, tmp_path / "low.onnx")

    def slow(keep: list[str]) -> _Lowered:
        time.sleep(2.0)  # every build: longer than the 1.5 s budget
        return lowering(keep)

    result = guarded_quantize(src, tmp_path / "low.onnx", samples, lambda _path: lowering.builds > 1,
                              quantize=slow, max_keep_fraction=1.0, guard_seconds=budget)  # fmt: skip
    if budget < 2.0:
        assert not result.passed and result.iterations == 1 and lowering.builds == 1
        assert result.stopped.startswith("time budget") and "rebuild of about 2 s" in result.stopped
        assert result.path is not None and result.table  # the first build is still reported, with its table
    else:
        assert result.passed and result.iterations == 2 and lowering.builds == 2


@pytest.mark.slow
def test_int8_ranges_are_calibrated_once_across_guard_rounds(
    chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    src, _, samples = chain
    calls = []
    real = int8_module.compute_ranges

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(int8_module, "compute_ranges", counting)
    # An unreachable cosine forces several rounds of real INT8 rebuilds.
    result = guarded_quantize(src, tmp_path / "int8.onnx", samples, lambda _path: False,
                              int8_options={"style": "cpu", "reduce_range": True}, max_keep_fraction=0.2)  # fmt: skip
    assert result.iterations >= 3 and len(result.results) >= 3
    assert len(calls) == 1


def test_mask_add_and_its_softmax_are_the_fragile_nodes() -> None:
    nodes = [
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="qk"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="attn_softmax", axis=-1),
        helper.make_node("Mul", ["probs", "q"], ["scaled"], name="mul"),
        helper.make_node("Softmax", ["scaled"], ["other"], name="plain_softmax", axis=-1),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "attn", [value(n, TensorProto.FLOAT, [2, 2]) for n in ("q", "k", "mask")],
                              [value("other", TensorProto.FLOAT, [2, 2])])  # fmt: skip
    assert mask_softmax_nodes(helper.make_model(graph)) == ["mask_add", "attn_softmax"]


def test_third_party_logs_go_to_the_file_not_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root_handlers = logging.getLogger().handlers[:]
    capture = LogCapture(tmp_path / "build.log").start()
    logging.warning("Axis 1 is out-of-range for weight LayerNorm.weight")  # as onnxruntime's quantizer does
    logging.getLogger("onnxruntime.quantization").warning("quantizer note")
    logging.getLogger("transformers.modeling_utils").warning("transformers note")
    capture.stop()
    captured = capsys.readouterr()
    assert "out-of-range" not in captured.err + captured.out
    text = (tmp_path / "build.log").read_text()
    assert "Axis 1 is out-of-range" in text and "quantizer note" in text and "transformers note" in text
    assert logging.getLogger().handlers == root_handlers  # restored


def _entry(node: str, nodes: tuple[str, ...]) -> object:
    from optpipe.precision.guard.localize import LayerError

    return LayerError(node=node, op_type="", module_path="", rel_error=0.1, cosine=0.9, contribution=0.1,
                      tensor=node, nodes=nodes)  # fmt: skip


def test_a_ranked_node_outside_the_eligible_set_points_at_its_eligible_producers() -> None:
    """Dynamic INT8 changes only MatMul/Gemm with constant weights: keeping a Softmax changes nothing."""
    from optpipe.precision.guard.localize import _next_nodes

    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
             helper.make_node("Softmax", ["q"], ["s"], name="soft"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="out")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])  # fmt: skip
    model = helper.make_model(graph)
    producer = {out: n.name for n in nodes for out in n.output}
    eligible = frozenset({"proj", "out"})
    table = [_entry("soft", ("soft",))]
    assert _next_nodes(table, set(), producer, set(), model) == ["soft"]  # no restriction: the node itself
    assert _next_nodes(table, set(), producer, set(), model, eligible) == ["proj"]  # its eligible producer
    assert _next_nodes(table, {"proj"}, producer, set(), model, eligible) == []  # already kept: nothing new
    assert _next_nodes([_entry("out", ("out",))], set(), producer, set(), model, eligible) == ["out"]


def _spent_inside_the_round(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[list[float | None]]:
    """Make the per-layer analysis (the round's first step) outlast ``seconds``; record the sensitivity's gains."""
    import time

    from optpipe.precision.guard import localize

    real_errors, real_gains = localize.per_layer_errors, localize.output_sensitivity
    measured: list[list[float | None]] = []

    def slow_errors(*args, **kwargs):  # type: ignore[no-untyped-def]
        table = real_errors(*args, **kwargs)
        time.sleep(seconds)
        return table

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        measured.append(real_gains(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(localize, "per_layer_errors", slow_errors)
    monkeypatch.setattr(localize, "output_sensitivity", recorded)
    return measured


@pytest.mark.parametrize("budget", [0.5, None], ids=["budget_spent_in_the_round", "twin_no_budget"])
def test_wrong_verdict_a_budget_spent_inside_the_round_stops_there_and_fails(
    chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: float | None  # type: ignore[no-untyped-def]
) -> None:
    """The budget is checked inside the round, not only between rounds (ViT-B/16: one round cost minutes).

    Spent during the per-layer analysis, the guard measures no output sensitivity, builds nothing more and
    stops with the budget as its one-line reason, its last judged model (failed) reported: never "passed".
    Twin: without a budget the round goes on (sensitivity measured, a rebuild judged) to the keep limit.
    """
    src, _, samples = chain
    measured = _spent_inside_the_round(monkeypatch, 1.0 if budget else 0.0)
    result = guarded_quantize(src, tmp_path / "int8.onnx", samples, lambda _path: False,
                              int8_options={"style": "cpu", "reduce_range": True}, max_keep_fraction=0.05,
                              guard_seconds=budget)  # fmt: skip
    assert not result.passed and result.table  # the per-layer table of the first build is still reported
    if budget:
        assert measured == [] and result.iterations == 1 and len(result.results) == 1
        assert result.stopped.startswith("time budget")
    else:
        assert measured and all(any(g is not None for g in gains) for gains in measured)
        assert result.iterations >= 2 and result.stopped.startswith("keep limit")


@pytest.mark.parametrize("budget", [600.0, None], ids=["budget", "twin_no_budget"])
def test_the_output_sensitivity_measures_only_while_a_rebuild_can_follow(
    chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: float | None  # type: ignore[no-untyped-def]
) -> None:
    """The sensitivity's deadline is the guard's less the last build's seconds: what it measures past that point
    could never be used by a rebuild (ViT-B/16 spent 50 s so). Twin: without a budget it has no deadline."""
    from optpipe.precision.guard import localize

    seen: dict[str, float | None] = {}
    given: list[tuple[float | None, float | None]] = []
    real_out_of_time, real_by = localize._Search._out_of_time, localize.by_output_sensitivity

    def out_of_time(self, needed: float = 0.0) -> bool:  # type: ignore[no-untyped-def]
        seen["deadline"], seen["build_s"] = self.deadline, self.build_s
        return real_out_of_time(self, needed)

    def by_sensitivity(*args, **kwargs):  # type: ignore[no-untyped-def]
        deadline, build_s = seen["deadline"], seen["build_s"]
        given.append((kwargs["deadline"], None if deadline is None or build_s is None else deadline - build_s))
        return real_by(*args, **kwargs)

    monkeypatch.setattr(localize._Search, "_out_of_time", out_of_time)
    monkeypatch.setattr(localize, "by_output_sensitivity", by_sensitivity)
    src, _, samples = chain
    guarded_quantize(src, tmp_path / "int8.onnx", samples, lambda _path: False,
                     int8_options={"style": "cpu", "reduce_range": True}, max_keep_fraction=0.05,
                     guard_seconds=budget)  # fmt: skip
    assert given
    for deadline, expected in given:
        assert deadline == expected and (deadline is None) == (budget is None)

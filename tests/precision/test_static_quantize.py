"""Tests for optpipe.precision.static_quantize and calib_cache: accuracy, TensorRT Q/DQ rules, ranges, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.precision.calib_cache import CacheKey, CalibCache, load_ranges, save_ranges
from optpipe.precision.static_quantize import COMPUTE_OPS, compute_ranges, quantize_int8
from optpipe.precision.static_quantize import cpu_needs_reduce_range as cpu_needs_reduce_range_unpatched


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime refuses
    onnx.save(model, path)
    return path


def _cnn(path: Path) -> Path:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm, plus a MatMul head."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16),
             init("wf", 10, 16), init("bf", 10), init("wm", 10, 6)]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
        helper.make_node("MatMul", ["logits", "wm"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _samples(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _cosine(a: Path, b: Path, samples: list[dict[str, np.ndarray]], emulate: bool = False) -> float:
    """Output cosine; ``emulate`` runs Q/DQ as float math instead of ORT's CPU integer kernels."""
    options = ort.SessionOptions()
    if emulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), options, providers=["CPUExecutionProvider"])
    x = np.concatenate([sa.run(None, s)[0] for s in samples]).ravel()
    y = np.concatenate([sb.run(None, s)[0] for s in samples]).ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def test_cpu_style_close_to_fp32(cnn: Path, tmp_path: Path) -> None:
    result = quantize_int8(cnn, tmp_path / "q.onnx", _samples(16), style="cpu")
    assert result.status == "quantized" and result.path is not None
    assert result.quantized_count == result.quantizable_count == 4
    assert _cosine(cnn, result.path, _samples(8, seed=1)) > 0.99
    model = onnx.load(str(result.path))
    q_types = {
        i.data_type
        for i in model.graph.initializer
        if i.name.endswith("zero_point") and not i.name.startswith("w")
    }
    assert TensorProto.UINT8 in q_types  # U8S8: uint8 activations
    assert not any(n.domain == "com.microsoft" for n in model.graph.node)


def test_tensorrt_style_follows_rules(cnn: Path, tmp_path: Path) -> None:
    result = quantize_int8(cnn, tmp_path / "trt.onnx", _samples(16), style="tensorrt")
    assert result.status == "quantized" and result.path is not None
    model = onnx.load(str(result.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8, f"{node.name}: zero point {zero_point.dtype}"
        assert not zero_point.any(), f"{node.name}: zero point not 0"
        if node.op_type == "DequantizeLinear":
            # Q/DQ only on the inputs of the compute ops
            users = consumers.get(node.output[0], [])
            assert users and all(u.op_type in COMPUTE_OPS for u in users), node.name
            # no int32 bias DequantizeLinear
            if node.input[0] in inits:
                assert inits[node.input[0]].dtype == np.int8, (
                    f"{node.name} dequantizes {inits[node.input[0]].dtype}"
                )
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            weight_dq = producers[node.input[1]]
            assert weight_dq.op_type == "DequantizeLinear"
            scale = inits[weight_dq.input[1]]
            axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
            if node.op_type in ("Conv", "Gemm"):
                assert scale.ndim == 1 and scale.size > 1 and axis == 0, node.name  # per-channel, axis 0
            if node.op_type == "MatMul":
                assert scale.ndim == 1 and scale.size > 1 and axis == 1, node.name
    # TensorRT computes these Q/DQ semantics exactly; ORT's CPU S8S8 kernels on AVX2 without VNNI
    # saturate (measured cosine 0.97 here), so check the model's math, not this CPU's kernels.
    assert _cosine(cnn, result.path, _samples(8, seed=1), emulate=True) > 0.99


@pytest.mark.slow
def test_entropy_ranges_differ_from_minmax(tmp_path: Path) -> None:
    # a heavy-tailed input: entropy should clip the tail, minmax keeps it
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    src = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mm.onnx")
    samples = [{"x": rng.standard_t(2, size=(16, 32)).astype(np.float32)} for _ in range(64)]
    minmax = quantize_int8(src, tmp_path / "a.onnx", samples, style="tensorrt", method="minmax")
    entropy = quantize_int8(src, tmp_path / "b.onnx", samples, style="tensorrt", method="entropy")
    lo_m, hi_m = minmax.ranges["x"]
    lo_e, hi_e = entropy.ranges["x"]
    assert hi_e - lo_e < 0.5 * (hi_m - lo_m), (minmax.ranges["x"], entropy.ranges["x"])
    assert minmax.warnings == [] and entropy.warnings == []


def test_calibration_cache_reuse(cnn: Path, tmp_path: Path) -> None:
    samples = _samples(16)
    cache_dir = tmp_path / "cache"
    first = quantize_int8(cnn, tmp_path / "a.onnx", samples, cache_dir=cache_dir)
    assert not first.cache_hit and len(list(cache_dir.glob("*.json"))) == 1
    second = quantize_int8(cnn, tmp_path / "b.onnx", samples, cache_dir=cache_dir)
    assert second.cache_hit and second.ranges == first.ranges
    other = quantize_int8(cnn, tmp_path / "c.onnx", _samples(16, seed=9), cache_dir=cache_dir)
    assert not other.cache_hit  # different data, different key

    # a user-supplied cache file: used without samples when the model matches
    cache_file = tmp_path / "calib.json"
    quantize_int8(cnn, tmp_path / "d.onnx", samples, cache_file=cache_file)
    reused = quantize_int8(cnn, tmp_path / "e.onnx", None, cache_file=cache_file)
    assert reused.cache_hit and reused.status == "quantized"

    key, ranges = load_ranges(cache_file)
    save_ranges(cache_file, CacheKey("0" * 64, key.data_sha256, key.method, key.params), ranges)
    with pytest.raises(UserInputError, match="different model_sha256"):
        quantize_int8(cnn, tmp_path / "f.onnx", None, cache_file=cache_file)
    stale = quantize_int8(cnn, tmp_path / "g.onnx", samples, cache_file=cache_file)
    assert not stale.cache_hit and any("stale" in w for w in stale.warnings)


def test_cache_file_validation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserInputError, match="not an optpipe cache"):
        load_ranges(bad)
    bad.write_text("{")
    with pytest.raises(UserInputError, match="not valid JSON"):
        load_ranges(bad)
    key = CacheKey("a", "b", "minmax")
    store = CalibCache(tmp_path / "c")
    assert store.lookup(key) is None
    store.store(key, {"t": (-1.0, 2.0)})
    assert store.lookup(key) == {"t": (-1.0, 2.0)}
    with pytest.raises(UserInputError, match="invalid"):
        save_ranges(tmp_path / "r.json", key, {"t": (3.0, 1.0)})
        load_ranges(tmp_path / "r.json")


def test_explicit_ranges_skip_calibration(cnn: Path, tmp_path: Path) -> None:
    first = quantize_int8(cnn, tmp_path / "a.onnx", _samples(16))
    again = quantize_int8(cnn, tmp_path / "b.onnx", None, ranges=first.ranges)
    assert again.status == "quantized" and again.ranges == first.ranges
    # The guard's rebuild estimate leaves the calibration out (a rebuild reuses the ranges): it is timed apart.
    assert first.calibration_seconds > again.calibration_seconds >= 0.0
    with pytest.raises(UserInputError, match="not in the model"):
        quantize_int8(cnn, tmp_path / "c.onnx", None, ranges={"no_such_tensor": (0.0, 1.0)})


def test_nothing_quantizable(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Sigmoid", ["r"], ["y"], name="sig"),
        ],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    src = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "p.onnx")
    samples = [{"x": np.ones((1, 4), np.float32)}]
    result = quantize_int8(src, tmp_path / "q.onnx", samples)
    assert result.status == "nothing_quantizable" and result.path is None
    assert any("no Conv/ConvTranspose/Gemm/MatMul" in w for w in result.warnings)
    assert not (tmp_path / "q.onnx").exists()


def test_exclusions_and_bad_arguments(cnn: Path, tmp_path: Path) -> None:
    samples = _samples(16)
    result = quantize_int8(cnn, tmp_path / "q.onnx", samples, style="tensorrt", exclude_nodes=["conv2"])
    assert result.excluded_nodes == ["conv2"] and "conv2" not in result.quantized_nodes
    assert result.quantized_count == 3
    with pytest.raises(UserInputError, match=r"\['nope'\]"):
        quantize_int8(cnn, tmp_path / "q.onnx", samples, exclude_nodes=["nope"])
    with pytest.raises(UserInputError, match="unknown INT8 style"):
        quantize_int8(cnn, tmp_path / "q.onnx", samples, style="gpu")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="needs samples"):
        quantize_int8(cnn, tmp_path / "q.onnx", None)


def test_guard_base_counts_the_ops_each_style_quantizes(cnn: Path, tmp_path: Path) -> None:
    """The guard's limit is a share of what the style quantizes: ORT's CPU style also does Relu/GAP/Flatten."""
    cpu = quantize_int8(cnn, tmp_path / "cpu.onnx", _samples(16), style="cpu")
    trt = quantize_int8(cnn, tmp_path / "trt.onnx", _samples(16), style="tensorrt")
    assert trt.guard_base == trt.quantizable_count == 4  # conv1, conv2, fc, head
    assert cpu.quantizable_count == 4
    assert cpu.guard_base == 8  # + relu1, relu2, gap, flatten


_REAL_PROBE = cpu_needs_reduce_range_unpatched  # bound at collection, before the autouse fixture pins it


def test_reduce_range_env_pins_the_cpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPTPIPE_INT8_REDUCE_RANGE overrides the CPU probe both ways; anything else leaves the probe in charge."""
    from optpipe.precision.static_quantize import REDUCE_RANGE_ENV

    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(REDUCE_RANGE_ENV, value)
        assert _REAL_PROBE() is expected
    monkeypatch.delenv(REDUCE_RANGE_ENV)
    probed = _REAL_PROBE()
    monkeypatch.setenv(REDUCE_RANGE_ENV, "maybe")
    assert _REAL_PROBE() is probed


def test_pre_processing_runs_once_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard rebuilds the same source every round: ORT's pre-processing (slow on transformers) runs once."""
    from optpipe.precision import static_quantize

    src = _cnn(tmp_path / "once.onnx")
    unique = onnx.load(str(src))
    unique.doc_string = str(tmp_path)  # bytes no other test pre-processed in this process
    onnx.save(unique, str(src))
    calls: list[str] = []
    real = static_quantize._pre_process

    def counting(source: Path, dst: Path, external: bool = False) -> list[str]:
        calls.append(str(source))
        return real(source, dst, external)

    monkeypatch.setattr(static_quantize, "_pre_process", counting)
    first = quantize_int8(src, tmp_path / "a.onnx", _samples(4))
    second = quantize_int8(src, tmp_path / "b.onnx", _samples(4), exclude_nodes=[first.quantized_nodes[0]])
    assert len(calls) == 1
    assert first.quantized_nodes[0] not in second.quantized_nodes  # the rebuild still honours its own exclusions
    # Another source (different bytes) is pre-processed on its own.
    other = onnx.load(str(src))
    other.doc_string = f"{tmp_path} changed"
    onnx.save(other, str(tmp_path / "other.onnx"))
    quantize_int8(tmp_path / "other.onnx", tmp_path / "c.onnx", _samples(4))
    assert len(calls) == 2


def test_models_that_differ_only_in_their_data_file_are_quantized_apart(tmp_path: Path) -> None:
    """External weights: two byte-identical .onnx files with different .data files are different models.

    The pre-processing cache (and the calibration key) once hashed the .onnx alone: the second model was
    quantized from the first one's pre-processed weights, an artifact that computes another model's function.
    """
    from optpipe.onnx.utils import save_onnx
    from optpipe.precision.dynamic_quantize import quantize_int8_dynamic

    models = []
    for seed in (0, 1):
        model = onnx.load(str(_cnn(tmp_path / f"plain{seed}.onnx")))
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        rng = np.random.default_rng(seed + 10)
        for init in [i for i in model.graph.initializer if weights[i.name].nbytes > 1024]:  # the external ones
            init.CopyFrom(numpy_helper.from_array((rng.standard_normal(weights[init.name].shape) * 0.3)
                                                  .astype(np.float32), init.name))
        path = tmp_path / f"m{seed}" / "model.onnx"
        save_onnx(model, path, external_above=0)
        models.append(path)
    assert models[0].read_bytes() == models[1].read_bytes()
    samples = _samples(2)
    for index, src in enumerate(models):
        dst = tmp_path / f"q{index}" / "model.onnx"
        result = quantize_int8_dynamic(src, dst, external_above=0)
        assert result.path == dst and (dst.parent / "model.onnx.data").is_file()
        assert _cosine(src, dst, samples) > 0.99
    static = [quantize_int8(src, tmp_path / f"s{i}" / "model.onnx", samples, external_above=0).path
              for i, src in enumerate(models)]
    assert all(path is not None and (path.parent / "model.onnx.data").is_file() for path in static)
    assert _cosine(models[1], static[1], samples) > 0.99  # type: ignore[arg-type]


def _ort_ranges(model: Path, samples: list[dict[str, np.ndarray]], method: str, tmp: Path) -> dict[str, tuple]:
    """ONNX Runtime's own calibration, unchunked: every sample's activations held at once, as ORT does it."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from optpipe.precision.static_quantize import _Reader

    enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    extra = {"minmax": {}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
             "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True}}[method]
    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / f"{method}.onnx"),
                                   calibrate_method=enum, extra_options=extra)
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(_Reader(samples))
        data = calibrator.compute_data()
    return {name: (float(np.min(d.range_value[0])), float(np.max(d.range_value[1]))) for name, d in data.items()}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_chunked_calibration_computes_exactly_the_unchunked_ranges(cnn: Path, tmp_path: Path, method: str) -> None:
    """A budget of one byte calibrates one tensor (histograms) or one sample (minmax) per run: same ranges."""

    samples = _samples(12)
    reference = _ort_ranges(cnn, samples, method, tmp_path)
    chunked = compute_ranges(cnn, samples, method, calib_bytes=1)  # type: ignore[arg-type]
    default = compute_ranges(cnn, samples, method)  # type: ignore[arg-type]
    assert len(reference) >= 6
    assert chunked == reference
    assert default == reference


def test_byte_chunks_hold_at_most_the_budget_and_every_name_once() -> None:
    from optpipe.precision.static_quantize import _byte_chunks

    names, sizes = ["a", "b", "c", "d", "e"], [40, 30, 50, 10, 100]
    assert _byte_chunks(names, sizes, 80) == [["a", "b"], ["c", "d"], ["e"]]  # "e" alone is over: one name
    assert _byte_chunks(names, sizes, 1) == [[n] for n in names]
    assert _byte_chunks(names, sizes, 10**9) == [names]


def _same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Same nodes, inputs, outputs, shapes and weights (the bytes differ only in how tensors are written)."""
    assert a.graph.node == b.graph.node and a.graph.value_info == b.graph.value_info
    assert a.graph.input == b.graph.input and a.graph.output == b.graph.output
    first = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    second = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_pre_processing_with_external_weights_makes_the_same_model(cnn: Path, tmp_path: Path) -> None:
    """The quantizers' input is what ORT's quant_pre_process makes of the source itself (its weights inline)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from optpipe.precision.static_quantize import _pre_process

    quant_pre_process(str(cnn), str(tmp_path / "direct.onnx"))
    assert _pre_process(cnn, tmp_path / "ours.onnx") == []
    assert not (tmp_path / "ours.onnx.data").exists()  # one self-contained file, as before
    _same_model(onnx.load(str(tmp_path / "direct.onnx")), onnx.load(str(tmp_path / "ours.onnx")))


def test_the_calibrator_drops_its_graph_before_making_its_session(cnn: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT's calibrator made its session while still holding the model it had augmented and saved (the weights
    twice, ViT-B/16's INT8 peak); here it holds none by then, and ORT's method is as it was afterwards."""
    from onnxruntime.quantization.calibrate import CalibraterBase

    original = CalibraterBase.create_inference_session
    held: list[bool] = []

    def spy(self: object) -> None:
        held.append(getattr(self, "model", None) is not None)
        original(self)

    monkeypatch.setattr(CalibraterBase, "create_inference_session", spy)
    for method in ("minmax", "entropy"):
        assert compute_ranges(cnn, _samples(4), method)
    assert held == [False, False] and CalibraterBase.create_inference_session is spy

"""Post-training static INT8 quantization into explicit Q/DQ ONNX.

Two styles, because the target decides what "fast and correct" means:

* ``"cpu"`` - ONNX Runtime's fast CPU form: uint8 activations, int8
  per-channel weights (U8S8), every op ORT knows quantized, outputs too, so
  its kernels fuse Q/DQ around Conv/MatMul into integer kernels.
* ``"tensorrt"`` - what TensorRT's strongly typed builder expects: int8 only,
  symmetric (zero-point 0) activations and weights, per-channel weights
  (Conv/Gemm axis 0, MatMul axis 1), Q/DQ only on the inputs of
  Conv/ConvTranspose/Gemm/MatMul and no int32 bias DequantizeLinear.

Ranges are computed here with ``create_calibrator`` rather than inside
``quantize_static``: its built-in Entropy method uses 128 histogram bins and so
silently equals MinMax. The computed ranges are handed to ``quantize_static``
through its documented ``calibration_cache_path`` argument, so the quantizer
itself never re-runs calibration.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from optpipe.core.errors import EnvironmentUnavailable, UserInputError
from optpipe.core.memory import release_free_heap
from optpipe.core.scratch_dir import scratch_cwd
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, model_sha256, onnx_bytes, onnx_files, save_onnx
from optpipe.precision import onnx_graph
from optpipe.precision.bias_correction import BiasCorrection, correct_biases, measure_means
from optpipe.precision.calib_cache import (
    CacheKey,
    CalibCache,
    Ranges,
    load_ranges,
    save_ranges,
    validate_ranges,
)
from optpipe.precision.calib_data import check_sample_count, data_fingerprint

Style = Literal["cpu", "tensorrt"]
Method = Literal["minmax", "entropy", "percentile"]

#: The ops whose INT8 kernels bring the speed; a model without any of them has
#: nothing worth quantizing.
COMPUTE_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Result:
    """What ``quantize_int8`` did.

    ``status`` is ``"quantized"`` (``path`` written) or
    ``"nothing_quantizable"`` (``path`` is ``None``, nothing written: the
    model has no Conv/ConvTranspose/Gemm/MatMul left to quantize, and the
    caller should keep the FP32 model rather than ship a Q/DQ-decorated copy).
    Node names refer to the pre-processed model, which keeps the source's
    names for the nodes that matter.
    """

    status: Literal["quantized", "nothing_quantizable"]
    path: Path | None
    style: str
    method: str
    quantized_nodes: list[str]
    quantizable_nodes: list[str]
    excluded_nodes: list[str]
    ranges: Ranges
    warnings: list[str] = field(default_factory=list)
    cache_hit: bool = False
    # What bias correction changed (optpipe.precision.bias_correction); None when it did not run.
    bias_correction: dict[str, object] | None = None
    # Nodes of the op types this style quantizes (ORT's CPU style also quantizes Add, Softmax,
    # Mul...): the base of the accuracy guard's "at most N% of quantizable nodes" limit.
    guard_base: int = 0
    # Seconds spent calibrating (0 when the ranges were given or cached): a rebuild reuses the ranges, so the
    # guard estimates a rebuild's seconds as this build's without them.
    calibration_seconds: float = 0.0

    @property
    def quantized_count(self) -> int:
        return len(self.quantized_nodes)

    @property
    def quantizable_count(self) -> int:
        return len(self.quantizable_nodes)


def _check_style_and_method(style: str, method: str) -> None:
    if style not in ("cpu", "tensorrt"):
        raise UserInputError(f"unknown INT8 style '{style}'; use 'cpu' or 'tensorrt'")
    if method not in ("minmax", "entropy", "percentile"):
        raise UserInputError(f"unknown calibration method '{method}'; use minmax, entropy or percentile")


def quantize_int8(
    src: Path,
    dst: Path,
    samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    style: Style = "cpu",
    method: Method = "minmax",
    exclude_nodes: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
    cache_dir: Path | None = None,
    cache_file: Path | None = None,
    percentile: float = 99.999,
    reduce_range: bool | None = None,
    bias_correction: bool = True,
    external_above: int = EXTERNAL_DATA_ABOVE,
    calib_bytes: int | None = None,
) -> Int8Result:
    """Quantize ``src`` to a Q/DQ model at ``dst``.

    Ranges come from, in order: ``ranges`` (tensor name -> (low, high)), a
    matching entry in ``cache_dir`` or ``cache_file``, or calibration on
    ``samples`` (the result is then stored in the cache). ``cache_file`` is a
    user-supplied file: a key mismatch is an error when there are no samples
    to recompute from, otherwise a warning, and the file is then rewritten.
    ``exclude_nodes`` (names in ``src``) stay in FP32.

    ``reduce_range`` (7-bit weights, cpu style only): ``None`` picks it from
    this CPU - on x86 without VNNI, ORT's U8S8 kernels sum pairs of u8*s8
    products in int16 and saturate; measured here on an AVX2 machine, a small
    CNN fell to output cosine 0.96 with full-range weights and 0.9998 with
    reduced range (the same Q/DQ model emulated in float gave 0.9999).

    ``bias_correction``: shift Conv/Gemm biases so each quantized layer keeps its FP32 output mean
    (:mod:`optpipe.precision.bias_correction`); needs ``samples``, skipped with a warning without them.
    ``external_above``: files of more bytes keep their weights in a ``.data`` file (needed over 2 GB).
    ``calib_bytes``: the most activation bytes calibration may hold at once (:func:`compute_ranges`).
    """
    _check_style_and_method(style, method)
    # Absolute paths: the quantizer runs in a scratch working directory (it writes files into the current one).
    src, dst = Path(src).absolute(), Path(dst).absolute()
    cache_dir, cache_file = _absolute(cache_dir), _absolute(cache_file)
    with tempfile.TemporaryDirectory(prefix="optpipe-int8-") as tmp_text, scratch_cwd():
        tmp = Path(tmp_text)
        pre_path, pre, excluded, warnings = _prepare(src, tmp, exclude_nodes, external_above)
        quantizable = [n.name for n in pre.graph.node if n.op_type in COMPUTE_OPS]
        nothing = _nothing_left(style, method, quantizable, excluded, warnings,
                                f"the model has no {'/'.join(COMPUTE_OPS)} node")  # fmt: skip
        if nothing is not None:
            return nothing
        op_types = list(COMPUTE_OPS) if style == "tensorrt" else None
        params = {"op_types": op_types, "percentile": percentile if method == "percentile" else None}
        key = CacheKey(model_sha256(src), data_fingerprint(samples) if samples else "", method, params)
        final_ranges, cache_hit, calibration_seconds = _timed_ranges(
            pre_path, tmp, samples, key, ranges, cache_dir, cache_file, op_types, percentile, warnings, calib_bytes)
        if ranges is not None:
            _check_ranges_name_tensors(pre, final_ranges)
        reduce_range = (style == "cpu" and cpu_needs_reduce_range()) if reduce_range is None else reduce_range
        correction = (_correct_biases(pre_path, pre, samples, final_ranges, excluded, style, reduce_range, key,
                                      external_above) if bias_correction else None)
        if bias_correction and correction is None:
            warnings.append("bias correction skipped: it needs calibration samples (ranges alone were given)")
        guard_base = sum(1 for n in pre.graph.node if n.op_type in style_op_types(style))
        del pre  # the quantizer loads its own copy from pre_path: one copy of the weights, not two
        release_free_heap()
        out_path = tmp / "quantized.onnx"
        _run_quantizer(pre_path, out_path, tmp, final_ranges, style, method, excluded, reduce_range,
                       external=onnx_bytes(pre_path) > external_above)
        quantized_model = onnx.load(str(out_path))
        quantized = _quantized_nodes(quantized_model)
        if not quantized:
            warnings.append("the quantizer quantized no node (no ranges for their inputs?)")
            return Int8Result("nothing_quantizable", None, style, method, [], quantizable, excluded,
                              final_ranges, warnings, cache_hit)  # fmt: skip
        onnx_graph.save_atomic(quantized_model, dst, external_above)
    return Int8Result(
        "quantized", dst, style, method, quantized, quantizable, excluded, final_ranges, warnings, cache_hit,
        bias_correction=correction.to_dict() if correction is not None else None, guard_base=guard_base,
        calibration_seconds=calibration_seconds,
    )  # fmt: skip


def _check_ranges_name_tensors(model: onnx.ModelProto, ranges: Ranges) -> None:
    """Refuse user-given ranges for tensors the model does not have (a typo would silently calibrate nothing)."""
    known = {t for n in model.graph.node for t in [*n.input, *n.output]}
    unknown = sorted(set(ranges) - known)
    if unknown:
        raise UserInputError(f"ranges name tensors not in the model: {unknown[:5]}")


def style_op_types(style: str) -> frozenset[str]:
    """Op types a style quantizes: TensorRT's only its compute ops; ORT's CPU style every op it has a kernel for.

    For the CPU style ``op_types_to_quantize`` is left unset, and ONNX Runtime
    then quantizes the union of its QLinear and QDQ operator registries.
    """
    if style == "tensorrt":
        return frozenset(COMPUTE_OPS)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def compute_ranges(
    model_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    method: Method,
    *,
    op_types: Sequence[str] | None = None,
    percentile: float = 99.999,
    calib_bytes: int | None = None,
) -> Ranges:
    """Calibrate ``model_path`` on ``samples``: tensor name -> (low, high).

    Entropy uses 2048 histogram bins folded into 128 quantized bins (the
    TensorRT recipe); with ORT's default 128 bins the search has one candidate
    and returns the MinMax range. Percentile clips symmetric |x| at
    ``percentile``.

    Memory: ONNX Runtime's histogram calibrators add every activation as a graph output and hold
    each one for every sample before building the histograms (BERT-base: ~15 MB a row, gigabytes for a
    hundred rows). Here a histogram is built from the same values, a few tensors at a time: each chunk
    of tensors holds at most ``calib_bytes`` (default :data:`HISTOGRAM_CHUNK_BYTES`) of activations, and
    since each tensor's histogram sees all of its values in one call, the ranges are exactly those of one
    unchunked call (tests/precision/test_static_quantize.py). MinMax reduces each activation to its
    min and max inside the graph; it runs :data:`MINMAX_ROWS` samples at a time (one with ``calib_bytes``)
    and merges by min/max, which is exact too.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if not samples:
        raise UserInputError("calibration needs at least one sample")
    enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]  # fmt: skip
    extra: dict[str, object] = {}
    if method == "entropy":
        extra = {"num_bins": 2048, "num_quantized_bins": 128}
    elif method == "percentile":
        extra = {"num_bins": 2048, "percentile": percentile, "symmetric": True}
    rows = list(samples)
    with tempfile.TemporaryDirectory(prefix="optpipe-calib-") as tmp:
        # The calibrator's copy keeps its weights in a data file, and so does the graph it augments: saved a
        # tensor at a time, not serialised whole (the model and two encoded copies of its weights at once,
        # BERT-base's INT8 peak); its session reads them from that file.
        with _graph_dropped_before_session():
            calibrator = create_calibrator(
                onnx_graph.externalized_copy(Path(model_path), Path(tmp)),
                list(op_types) if op_types else None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=enum,
                use_external_data_format=True,
                extra_options=extra,
            )
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            if method == "minmax":
                # A few samples at a time: MinMax merges each chunk's ranges and drops its activations, instead
                # of holding every sample's outputs at once. (ORT's own max_intermediate_outputs drops the
                # chunks without merging them in 1.32.)
                step = 1 if calib_bytes is not None else MINMAX_ROWS
                for start in range(0, len(rows), step):
                    calibrator.collect_data(_Reader(rows[start : start + step]))
                data = calibrator.calibrate_tensors_range
            else:
                _collect_histograms(calibrator, rows, calib_bytes or HISTOGRAM_CHUNK_BYTES)
                data = calibrator.compute_data()
        del calibrator  # its session, before the temporary folder with the augmented model goes
    out: Ranges = {}
    for name, tensor_data in data.items():
        lo, hi = tensor_data.range_value
        out[name] = (float(np.min(lo)), float(np.max(hi)))
    return out


@contextlib.contextmanager
def _graph_dropped_before_session() -> Iterator[None]:
    """While ONNX Runtime's ``create_calibrator`` runs, its calibrator drops the model it augmented before it
    makes the session (``calibrator.model`` is None afterwards).

    Why: the augmented model is saved (its weights in a data file) before the session is made from that file,
    yet the calibrator still held the loaded model, weights and all, under the new session: ViT-B/16's INT8 pass
    peaked there. Nothing after the session reads it (the calibrators collect from the session's outputs).
    """
    from onnxruntime.quantization.calibrate import CalibraterBase

    original = CalibraterBase.create_inference_session

    def create_inference_session(self: Any) -> None:
        self.model = None
        release_free_heap()
        original(self)

    CalibraterBase.create_inference_session = create_inference_session
    try:
        yield
    finally:
        CalibraterBase.create_inference_session = original


#: Samples per MinMax calibration run (each holds only per-tensor minima and maxima).
MINMAX_ROWS = 8
#: Activation bytes one chunk of a histogram calibration holds, over every sample, by default.
HISTOGRAM_CHUNK_BYTES = 512 << 20


def _collect_histograms(calibrator: object, rows: Sequence[Mapping[str, np.ndarray]], budget: int) -> None:
    """Feed ORT's histogram collector the calibration tensors in chunks that hold at most ``budget`` bytes.

    The tensor sizes are read from one run on the first row; a chunk's run over every row fetches only
    its tensors (ONNX Runtime computes what they need), and the collector, which keeps one histogram per
    tensor, gets each tensor's values from every row in a single call, as an unchunked run gives them.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    session = calibrator.infer_session  # type: ignore[attr-defined]
    feed_names = {i.name for i in session.get_inputs()}
    names = sorted(calibrator.tensors_to_calibrate)  # type: ignore[attr-defined]
    feeds = [{k: v for k, v in row.items() if k in feed_names} for row in rows]
    first = session.run(names, feeds[0])
    sizes = [int(np.asarray(value).nbytes) * len(feeds) for value in first]
    del first
    calibrator.collector = HistogramCollector(  # type: ignore[attr-defined]
        method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,  # type: ignore[attr-defined]
        num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,  # type: ignore[attr-defined]
        scenario=calibrator.scenario)  # type: ignore[attr-defined]
    for chunk in _byte_chunks(names, sizes, budget):
        values: dict[str, list[np.ndarray]] = {name: [] for name in chunk}
        for feed in feeds:
            for name, value in zip(chunk, session.run(chunk, feed), strict=True):
                values[name].append(value)
        calibrator.collector.collect(values)  # type: ignore[attr-defined]
        del values


def _byte_chunks(names: Sequence[str], sizes: Sequence[int], budget: int) -> list[list[str]]:
    """``names`` in order, grouped so that each group's ``sizes`` sum to at most ``budget`` (one name at least)."""
    chunks: list[list[str]] = []
    held = 0
    for name, size in zip(names, sizes, strict=True):
        if chunks and held + size <= budget:
            chunks[-1].append(name)
            held += size
        else:
            chunks.append([name])
            held = size
    return chunks


REDUCE_RANGE_ENV = "OPTPIPE_INT8_REDUCE_RANGE"


def cpu_needs_reduce_range() -> bool:
    """True on x86 CPUs without VNNI, where ORT's U8S8 integer kernels can saturate.

    ``OPTPIPE_INT8_REDUCE_RANGE=1|0`` pins the choice for every process of a run (a fleet of mixed CPUs,
    Ray workers, the test suite), so a verdict does not depend on which machine quantized.
    """
    import os
    import platform

    pinned = os.environ.get(REDUCE_RANGE_ENV, "").strip()
    if pinned in ("0", "1"):
        return pinned == "1"

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown x86: the safe choice costs a little weight precision, never correctness
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


class _Reader:
    """The CalibrationDataReader protocol (``get_next``) over a list of samples."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._iter = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._iter, None)
        return dict(item) if item is not None else None


def _absolute(path: Path | None) -> Path | None:
    """``path`` made absolute (the quantizer runs in a scratch working directory), or None."""
    return Path(path).absolute() if path is not None else None


def _prepare(
    src: Path, tmp: Path, exclude_nodes: Sequence[str], external_above: int = EXTERNAL_DATA_ABOVE,
    *, weights: bool = True,
) -> tuple[Path, onnx.ModelProto, list[str], list[str]]:
    """Pre-process ``src`` into ``tmp/pre.onnx``, the quantizers' input, and map ``exclude_nodes`` onto it.

    Returns the pre-processed file and model, the excluded node names in it and the warnings so far.
    ``pre.onnx`` keeps its weights in ``pre.onnx.data`` when ``src`` is larger than ``external_above``;
    then ``weights=False`` returns the model without them (a caller that reads only its graph).
    """
    if not Path(src).is_file():  # a corrupt one is refused by the first load (onnx_graph.load_model)
        raise UserInputError(f"ONNX model '{src}' does not exist")
    pre_path = tmp / "pre.onnx"  # the source is not held while pre-processing (the step that peaks)
    warnings = _pre_processed(src, pre_path, onnx_bytes(src) > external_above)
    pre = onnx.load(str(pre_path), load_external_data=weights)
    pre_names = {n.name for n in pre.graph.node}
    # The source is read again only when a name to exclude is not in the pre-processed graph (ORT renamed
    # or fused it): reading it costs twice its weights at once.
    source = (onnx_graph.load_skeleton(src) if any(n not in pre_names for n in exclude_nodes)
              else onnx.ModelProto())
    return pre_path, pre, _map_exclusions(source, pre, exclude_nodes, src), warnings


def _nothing_left(
    style: str, method: str, quantizable: list[str], excluded: list[str], warnings: list[str], none_found: str
) -> Int8Result | None:
    """The ``nothing_quantizable`` result when every quantizable node is excluded or there is none, else None.

    ``none_found`` says why there is none (which ops the quantizer looks for).
    """
    if any(n not in set(excluded) for n in quantizable):
        return None
    why = f"all {len(quantizable)} quantizable nodes are excluded" if quantizable else none_found
    return Int8Result("nothing_quantizable", None, style, method, [], quantizable, excluded, {},
                      [*warnings, f"nothing to quantize: {why}"])  # fmt: skip


#: Pre-processed models of this process, by source sha256: (file in _PRE_DIR, warnings). Bounded, oldest dropped.
_PRE_CACHE: dict[str, tuple[Path, list[str]]] = {}
_PRE_CACHE_SIZE = 2
_PRE_CLEANUP: list[object] = []  # the atexit hook, registered with the first entry


def _copy_model(src: Path, dst: Path) -> None:
    """Copy an ONNX file and its external data file (same names: its ``location`` entries stay valid)."""
    import shutil

    for file in onnx_files(src):
        shutil.copyfile(file, dst.parent / file.name.replace(src.name, dst.name, 1))


def _pre_processed(src: Path, dst: Path, external: bool = False) -> list[str]:
    """``quant_pre_process(src)`` copied to ``dst``, computed once per source file content in this process.

    Why: pre-processing (symbolic shape inference and ORT's optimizer) is the slow part of a
    quantizer call - measured 42-95 s for a 22 M-parameter transformer on 2 loaded cores - and the
    accuracy guard rebuilds the same source once per round, dynamic INT8 once more. The result
    depends only on the source bytes (and this process's onnxruntime), so it is kept on disk.
    """
    import shutil

    key = f"{model_sha256(src)}:{external}"
    hit = _PRE_CACHE.get(key)
    if hit is not None and hit[0].is_file():
        _copy_model(hit[0], dst)
        return list(hit[1])
    warnings = _pre_process(src, dst, external)
    keep = Path(tempfile.mkdtemp(prefix="optpipe-pre-")) / dst.name
    _copy_model(dst, keep)
    while len(_PRE_CACHE) >= _PRE_CACHE_SIZE:
        old, _ = _PRE_CACHE.pop(next(iter(_PRE_CACHE)))
        shutil.rmtree(old.parent, ignore_errors=True)
    if not _PRE_CLEANUP:
        _PRE_CLEANUP.append(atexit.register(_drop_pre_cache))
    _PRE_CACHE[key] = (keep, list(warnings))
    return warnings


def _drop_pre_cache() -> None:
    import shutil

    for path, _ in _PRE_CACHE.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    _PRE_CACHE.clear()


def _pre_process(src: Path, dst: Path, external: bool = False) -> list[str]:
    """ORT's quant_pre_process; symbolic shape inference crashes on some graphs, so retry without it.

    Memory: ``quant_pre_process`` holds the model, its symbolic-shape copy and ONNX Runtime's
    optimizer session at once (7.8x the weights at its peak on a 4-layer BERT, BERT-base's build
    peaked here). It runs on a copy of ``src`` whose weights are external data
    (:func:`~optpipe.precision.onnx_graph.externalized_copy`),
    so its in-memory models are the graph alone and ONNX Runtime reads the weights from the file; the
    result is read back and written inline to ``dst``: the same nodes, shapes and weights as the
    pre-processing of ``src`` itself (tests/precision/test_static_quantize.py). ``external``: ``dst``
    keeps its weights in ``<dst>.data`` (over 2 GB protobuf cannot hold them inline).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="optpipe-pre-", dir=dst.parent) as tmp_text:
        tmp = Path(tmp_text)
        light, out = onnx_graph.externalized_copy(src, tmp), tmp / "pre.onnx"
        storage = {"save_as_external_data": True, "all_tensors_to_one_file": True,
                   "external_data_location": "pre.onnx.data"}
        failed = None
        try:
            quant_pre_process(str(light), str(out), **storage)
        except Exception as first:  # symbolic shape inference fails with assorted errors on transformer graphs
            failed = type(first).__name__  # retried below, not in here: the traceback holds the failed copies
        if failed is not None:
            release_free_heap()
            try:
                quant_pre_process(str(light), str(out), skip_symbolic_shape=True, **storage)
            except Exception as exc:  # give the user the cause in one line
                raise UserInputError(f"quantization pre-processing of '{src}' failed: {exc}") from exc
        data = tmp / str(storage["external_data_location"])
        if external and out.name == dst.name and data.is_file():  # already laid out as dst's: moved, not read
            os.replace(data, dst.parent / f"{dst.name}.data")  # (2.4 GB model: 2.4 GB loaded and written again)
            os.replace(out, dst)
        else:  # inline again unless too large: the quantizers and the cache read one file
            save_onnx(onnx.load(str(out)), dst, external_above=0 if external else EXTERNAL_DATA_ABOVE)
    release_free_heap()
    return [] if failed is None else [f"symbolic shape inference failed ({failed}); pre-processed without it"]


def _map_exclusions(
    source: onnx.ModelProto, pre: onnx.ModelProto, names: Sequence[str], src: Path
) -> list[str]:
    """Translate node names of ``src`` to the pre-processed model via their output tensors.

    Pre-processing runs ORT's basic optimizer, which can rename or fuse
    nodes; output tensor names survive it far better than node names.
    """
    pre_names = {n.name for n in pre.graph.node}
    producer = {out: n.name for n in pre.graph.node for out in n.output}
    source_nodes = {n.name: n for n in source.graph.node}
    mapped: list[str] = []
    unknown: list[str] = []
    for name in names:
        if name in pre_names:
            mapped.append(name)
        elif name in source_nodes:
            targets = [producer[o] for o in source_nodes[name].output if o in producer]
            if targets:
                mapped.extend(targets)
            else:
                _LOG.debug("node %s was optimised away before quantization", name)
        else:
            unknown.append(name)
    if unknown:
        raise UserInputError(f"exclude_nodes names nodes not in '{src}': {unknown}")
    return list(dict.fromkeys(mapped))


def _timed_ranges(*args: Any) -> tuple[Ranges, bool, float]:
    """:func:`_resolve_ranges` and its seconds (``Int8Result.calibration_seconds``: the guard's rebuilds reuse the
    ranges, so a rebuild's estimate leaves them out)."""
    started = time.monotonic()
    final_ranges, cache_hit = _resolve_ranges(*args)
    return final_ranges, cache_hit, time.monotonic() - started


def _resolve_ranges(
    pre_path: Path,
    tmp: Path,
    samples: Sequence[Mapping[str, np.ndarray]] | None,
    key: CacheKey,
    ranges: Mapping[str, tuple[float, float]] | None,
    cache_dir: Path | None,
    cache_file: Path | None,
    op_types: list[str] | None,
    percentile: float,
    warnings: list[str],
    calib_bytes: int | None = None,
) -> tuple[Ranges, bool]:
    if ranges is not None:
        return validate_ranges(dict(ranges), "ranges"), False
    if cache_file is not None and Path(cache_file).is_file():
        stored, cached = load_ranges(Path(cache_file))
        differs = stored.mismatch(key) if samples else [
            f for f in stored.mismatch(key) if f != "data_sha256"
        ]  # fmt: skip
        if not differs:
            return cached, True
        if not samples:
            raise UserInputError(
                f"calibration cache '{cache_file}' was made for a different {', '.join(differs)} "
                "and there are no samples to recalibrate with"
            )
        warnings.append(
            f"calibration cache '{cache_file}' is stale ({', '.join(differs)} differ); recalibrated"
        )
    store = CalibCache(cache_dir) if cache_dir is not None else None
    if store is not None and samples:
        hit = store.lookup(key)
        if hit is not None:
            return hit, True
    if not samples:
        raise UserInputError("INT8 calibration needs samples, ranges or an existing calibration cache file")
    warning = check_sample_count(len(samples), key.method)
    if warning:
        warnings.append(warning)
    method: Method = key.method  # type: ignore[assignment]  # the key was built from a validated Method
    release_free_heap()  # calibration loads the model twice more (its own copy and a session)
    computed = compute_ranges(pre_path, samples, method, op_types=op_types, percentile=percentile,
                              calib_bytes=calib_bytes)
    release_free_heap()  # the calibrator's model and session
    if store is not None:
        store.store(key, computed)
    if cache_file is not None:
        save_ranges(Path(cache_file), key, computed)
    return computed, False


#: FP32 per-channel input means of the Conv/Gemm inputs, by (source, data, style): the guard's rounds
#: quantize one source with the same samples, so the FP32 pass runs once. Bounded, oldest dropped.
_MEANS_CACHE: dict[tuple[str, str, str, int], dict[str, tuple[np.ndarray, np.ndarray]]] = {}


def _correct_biases(
    pre_path: Path,
    pre: onnx.ModelProto,
    samples: Sequence[Mapping[str, np.ndarray]] | None,
    ranges: Ranges,
    excluded: list[str],
    style: str,
    reduce_range: bool,
    key: CacheKey,
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> BiasCorrection | None:
    """Bias-correct ``pre`` and rewrite ``pre_path``; None when there are no samples to measure means on."""
    if not samples:
        return None
    cache_key = (key.model_sha256, key.data_sha256, style, hash(tuple(sorted(ranges.items()))))
    means = _MEANS_CACHE.get(cache_key)
    if means is None:
        means = measure_means(pre, samples, ranges, style, pre_path)  # pre_path holds pre as it is now
        while len(_MEANS_CACHE) >= 2:
            _MEANS_CACHE.pop(next(iter(_MEANS_CACHE)))
        _MEANS_CACHE[cache_key] = means
    correction = correct_biases(pre, samples, ranges, excluded=excluded, style=style,
                                reduce_range=reduce_range, means=means)  # fmt: skip
    if correction.nodes:
        onnx_graph.save_atomic(pre, pre_path, external_above)
    return correction


def _run_quantizer(
    pre_path: Path,
    out_path: Path,
    tmp: Path,
    ranges: Ranges,
    style: str,
    method: str,
    excluded: list[str],
    reduce_range: bool,
    *,
    external: bool = False,
) -> None:
    """ORT's ``quantize_static`` on ``pre_path`` with the given ranges; ``external``: write ``out_path``'s
    weights to an external data file (ORT's ``use_external_data_format``, needed over 2 GB)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise EnvironmentUnavailable(
            "INT8 quantization with precomputed ranges needs onnxruntime >= 1.32 "
            "(quantize_static's calibration_cache_path); upgrade onnxruntime"
        )
    enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]  # fmt: skip
    tensors = TensorsData(
        enum,
        {
            name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()
        },
    )
    cache_path = tmp / "ort-ranges.json"
    save_tensors_data(tensors, cache_path)

    if style == "tensorrt":
        activation_type, op_types = QuantType.QInt8, list(COMPUTE_OPS)
        extra: dict[str, object] = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": list(COMPUTE_OPS),
            "QuantizeBias": False,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        }
        reduce_range = False  # TensorRT uses full 8-bit weights
    else:
        activation_type, op_types, extra = QuantType.QUInt8, None, {"WeightSymmetric": True}
    quantize_static(
        str(pre_path),
        str(out_path),
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(excluded),
        calibrate_method=enum,
        extra_options=extra,
        calibration_cache_path=str(cache_path),
        use_external_data_format=external,
    )


def _quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes whose data and weight inputs both come from DequantizeLinear."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in COMPUTE_OPS and len(n.input) >= 2 and all(i in dq_outputs for i in n.input[:2])
    ]

"""Accuracy guard: find the nodes that break a low-precision model and keep them in FP32.

Naive static INT8 is often useless on real models (cosine 0.37 on a real
sentence-transformer), usually because of a handful of nodes (attention-mask
Adds, Softmax inputs, outlier channels). A global accuracy number says *that*
the model broke; this module says *where*, by running the FP32 and the
low-precision model side by side with every intermediate tensor exposed.

Tensor matching: FP16 conversion keeps tensor names. ONNX Runtime's QDQ
quantizer keeps the name ``T`` of a float tensor and inserts
``T -> QuantizeLinear -> DequantizeLinear -> consumers``; consumers see the
DequantizeLinear output, so that is what ``T`` is compared with. When the
quantizer folds a node away (ORT's CPU style removes a Relu after a Conv and
lets the Conv write the Relu's output name), the folded node's own output no
longer exists; it is merged into the first node whose output does, and
reported in that node's ``nodes`` so that keeping one keeps both.

Ranking: a node's *contribution* is the relative error of its output minus the
largest relative error among its inputs - the error it adds, not the error it
inherits - so the first broken node ranks above everything downstream of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from optpipe.core.errors import UserInputError
from optpipe.core.memory import release_free_heap
from optpipe.precision import onnx_graph
from optpipe.precision.fp16_convert import convert_fp16
from optpipe.precision.guard.paired_stats import paired_sums
from optpipe.precision.guard.sensitivity import output_sensitivity
from optpipe.precision.static_quantize import quantize_int8


@dataclass(frozen=True)
class LayerError:
    """Error of one node's output in the low-precision model against FP32.

    ``nodes`` is this node plus any nodes folded into it (see module docs);
    ``module_path`` is the PyTorch module (e.g. ``encoder.layer.0.attn``)
    when the exporter recorded it, else ``""``.
    """

    node: str
    op_type: str
    module_path: str
    rel_error: float
    cosine: float
    contribution: float
    tensor: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class GuardResult:
    """Outcome of ``guarded_quantize``.

    ``passed`` is the gate's last verdict; ``path`` holds the last model built
    (also when the gate never passed, so the caller can report on it).
    ``table`` is the per-layer analysis of the *first* build, the one that
    explains why nodes were kept; ``history`` lists (kept nodes, gate verdict)
    for every build.
    """

    path: Path | None
    passed: bool
    kept_nodes: list[str]
    iterations: int
    table: list[LayerError]
    history: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)
    limit: int = 0
    status: str = "ok"
    # The Int8Result / Fp16Result of every build, in order: results[0] says whether the ranges came
    # from a cache and what the quantizer warned; results[-1] describes the model at ``path``.
    results: list[Any] = field(default_factory=list)
    stopped: str = ""  # why the search ended: gate passed, keep limit, time budget, nothing left


#: ``output_gains(fp32, built model path, rows, candidate node names) -> {node: output error removed}``.
OutputGains = Callable[[onnx.ModelProto, Path, Sequence[Mapping[str, np.ndarray]], Sequence[str]], Mapping[str, float]]


#: Elements per float32 dot product in :meth:`_Stats.add` (short sums; the chunks add up in float64).
STATS_CHUNK = 8192


def _flat32(values: np.ndarray) -> np.ndarray:
    """``values`` as one float32 (float64 stays float64) vector, without a copy when it already is one."""
    array = np.asarray(values)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    return array.ravel()


class _Stats:
    __slots__ = ("count", "diff2", "dot", "low2", "nonfinite", "ref2")

    def __init__(self) -> None:
        self.diff2 = self.ref2 = self.low2 = self.dot = 0.0
        self.nonfinite = False
        self.count = 0

    def add(self, ref: np.ndarray, low: np.ndarray) -> None:
        """Add one row's tensors: float32 dot products over :data:`STATS_CHUNK` elements, summed in float64.

        Why not float64 copies: converting and multiplying every intermediate tensor in float64 took 67 of
        ViT-B/16's 101 s of per-layer analysis (28 ms a tensor); chunked float32 BLAS is 25x faster and agrees
        to about 1e-8 relative (each chunk's sum is short, the chunks are summed in float64).
        """
        self.count += 1
        a, b = _flat32(ref), _flat32(low)
        if a.shape != b.shape:
            self.nonfinite = True
            return
        if not np.isfinite(b).all():
            self.nonfinite = True
            return
        diff = a - b
        for start in range(0, a.size, STATS_CHUNK):
            x, y, d = a[start : start + STATS_CHUNK], b[start : start + STATS_CHUNK], diff[start : start + STATS_CHUNK]
            self.diff2 += float(np.dot(d, d))
            self.ref2 += float(np.dot(x, x))
            self.low2 += float(np.dot(y, y))
            self.dot += float(np.dot(x, y))

    def add_sums(self, diff2: float, ref2: float, low2: float, dot: float, finite: float) -> None:
        """Add one row's sums computed elsewhere (:data:`~optpipe.precision.guard.paired_stats.SUMS`); ``finite``
        is 0 when every low-precision value was finite, as :meth:`add` checks them."""
        self.count += 1
        if finite != 0.0:  # NaN: a non-finite low-precision value
            self.nonfinite = True
            return
        self.diff2 += diff2
        self.ref2 += ref2
        self.low2 += low2
        self.dot += dot

    def rel(self) -> float:
        if self.nonfinite:
            return math.inf
        return math.sqrt(self.diff2) / max(math.sqrt(self.ref2), 1e-12)

    def cosine(self) -> float:
        if self.nonfinite:
            return 0.0
        if self.ref2 == 0.0 and self.low2 == 0.0:
            return 1.0
        return self.dot / max(math.sqrt(self.ref2 * self.low2), 1e-30)


def tensor_map(fp32: onnx.ModelProto, lowp: onnx.ModelProto) -> dict[str, str]:
    """FP32 tensor name -> the low-precision tensor holding the same value as its consumers see it."""
    low_names = {i.name for i in lowp.graph.input} | {o for n in lowp.graph.node for o in n.output}
    dq_of_q: dict[str, str] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in lowp.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in lowp.graph.node:
        if node.op_type == "QuantizeLinear":
            for user in consumers.get(node.output[0], []):
                if user.op_type == "DequantizeLinear":
                    dq_of_q.setdefault(node.input[0], user.output[0])
                    break
    mapping: dict[str, str] = {}
    for node in fp32.graph.node:
        for out in node.output:
            if out in dq_of_q:
                mapping[out] = dq_of_q[out]
            elif out in low_names:
                mapping[out] = out
    return mapping


def per_layer_errors(
    fp32_path: Path,
    lowp_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    max_samples: int = 16,
) -> list[LayerError]:
    """Per-node relative error and cosine of ``lowp_path`` against ``fp32_path``, worst contribution first.

    Both models run with optimisation off, so Q/DQ is evaluated as float
    emulation; a CPU integer kernel can differ slightly (e.g. u8s8 saturation),
    which the caller's gate on the real model catches.
    """
    if not samples:
        raise UserInputError("per-layer error analysis needs at least one sample")
    # Memory: the two models run as one graph that outputs five numbers per tensor pair (paired_stats), so no
    # activation outlives its consumers; the ranking needs the FP32 graph alone.
    release_free_heap()  # what the quantizer freed goes back first: these sessions are the pass's largest step
    fp32 = onnx_graph.load_skeleton(Path(fp32_path))
    lowp = onnx_graph.load_skeleton(Path(lowp_path))
    mapping = tensor_map(fp32, lowp)
    fp_types = onnx_graph.float_tensor_types(fp32)
    mapping = {k: v for k, v in mapping.items() if fp_types.get(k) in onnx_graph.FLOAT_TYPES}
    used = onnx_graph.single_rows(fp32, samples, max_samples)

    stats = {name: _Stats() for name in mapping}
    low_types = onnx_graph.float_tensor_types(lowp)
    del lowp
    pairs = {k: v for k, v in mapping.items() if low_types.get(v) in onnx_graph.FLOAT_TYPES}
    sums = paired_sums(Path(fp32_path), Path(lowp_path), pairs, (fp_types, low_types), used)
    if sums is not None:
        for row in sums:
            for name, values in row.items():
                stats[name].add_sums(*(float(v) for v in values))
    else:  # the two graphs cannot be merged (an operator domain at two versions): every tensor exposed
        _exposed_stats(Path(fp32_path), Path(lowp_path), mapping, used, stats)
    available = {name for name, s in stats.items() if s.count}
    return _rank(fp32, stats, available)


def _exposed_stats(fp32_path: Path, lowp_path: Path, mapping: Mapping[str, str],
                   rows: Sequence[Mapping[str, np.ndarray]], stats: Mapping[str, _Stats]) -> None:
    """Add each row's tensors to ``stats`` from two sessions exposing every mapped tensor (held until a row ends)."""
    low_names = list(dict.fromkeys(mapping.values()))
    fp_run = onnx_graph.ExposedSession(onnx_graph.load_model(fp32_path), list(mapping), consume=True)
    low_run = onnx_graph.ExposedSession(onnx_graph.load_model(lowp_path), low_names, consume=True)
    for ref_values, low_values in zip(fp_run.run(rows), low_run.run(rows), strict=True):
        for name, low_name in mapping.items():
            if name in ref_values and low_name in low_values:
                stats[name].add(ref_values[name], low_values[low_name])


def _rank(fp32: onnx.ModelProto, stats: Mapping[str, _Stats], available: set[str]) -> list[LayerError]:
    producer = {out: node for node in fp32.graph.node for out in node.output}
    memo: dict[str, tuple[float, tuple[str, ...]]] = {}

    def inherited(tensor: str) -> tuple[float, tuple[str, ...]]:
        """Error arriving through ``tensor`` and the folded nodes crossed to find it."""
        if tensor in memo:
            return memo[tensor]
        memo[tensor] = (0.0, ())  # breaks cycles; graphs are DAGs but be safe
        if tensor in available:
            result: tuple[float, tuple[str, ...]] = (stats[tensor].rel(), ())
        elif tensor in producer:
            result = arriving(producer[tensor])
        else:
            result = (0.0, ())  # graph input or initializer: exact in both models
        memo[tensor] = result
        return result

    def arriving(node: onnx.NodeProto) -> tuple[float, tuple[str, ...]]:
        """Largest error arriving through ``node``'s inputs, and ``node`` with the folded nodes crossed."""
        err, folded = 0.0, [node.name]
        for inp in node.input:
            if inp:
                e, f = inherited(inp)
                err = max(err, e)
                folded.extend(f)
        return err, tuple(dict.fromkeys(folded))

    nodes_by_name = {node.name: node for node in fp32.graph.node}
    table: list[LayerError] = []
    for node in fp32.graph.node:
        outs = [o for o in node.output if o in available]
        if not outs or node.op_type == "Constant":
            continue
        worst = max(outs, key=lambda o: stats[o].rel())
        in_err, folded = arriving(node)
        rel = stats[worst].rel()
        contribution = rel - in_err if not (math.isinf(rel) and math.isinf(in_err)) else 0.0
        table.append(
            LayerError(
                node=node.name,
                op_type=node.op_type,
                module_path=_module_path(nodes_by_name, (node.name, *folded)),
                rel_error=rel,
                cosine=stats[worst].cosine(),
                contribution=contribution,
                tensor=worst,
                nodes=tuple(dict.fromkeys(folded)),
            )
        )
    table.sort(key=lambda le: le.contribution, reverse=True)
    return table


def by_output_sensitivity(
    table: Sequence[LayerError],
    fp32: onnx.ModelProto,
    lowp_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    kept: Sequence[str] = (),
    candidates: int = 32,
    deadline: float | None = None,
) -> list[LayerError]:
    """``table`` with its first ``candidates`` positive entries re-ordered by output sensitivity.

    The per-layer contribution finds candidates cheaply, but errors grow downstream, so it
    favours late layers (see :mod:`optpipe.precision.guard.sensitivity`). The candidates whose FP32
    emulation lowers the output error most take the first of the candidates' places, the
    others follow in their old order. An entry already ``kept`` stays where it is: it points
    the search at its producers, whose quantized output or weights carry the error. Past ``deadline``
    (``time.monotonic()``, the guard's budget) the candidates not yet measured keep their old order.
    """
    done = set(kept)
    head = [e for e in table if e.contribution > 0 and not set(e.nodes) <= done][:candidates]
    if len(head) < 2 or not samples:
        return list(table)
    gains = output_sensitivity(fp32, onnx_graph.load_model(Path(lowp_path)), samples, [e.nodes for e in head],
                               deadline=deadline)
    gain = {id(e): g for e, g in zip(head, gains, strict=True) if g is not None and g > 0}
    order = sorted((e for e in head if id(e) in gain), key=lambda e: gain[id(e)], reverse=True)
    ranked = iter(order + [e for e in head if id(e) not in gain])
    moved = {id(e) for e in head}
    return [next(ranked) if id(e) in moved else e for e in table]


def _module_path(nodes: Mapping[str, onnx.NodeProto], names: Sequence[str]) -> str:
    """Module path of the first node in ``names`` that has one (folded Relus have none, their Conv does)."""
    for name in names:
        if name in nodes:
            path = onnx_graph.module_path(nodes[name])
            if path:
                return path
    return ""


def _lowering(
    src: Path,
    dst: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    precision: str,
    opts: dict[str, Any],
    quantize: Callable[[list[str]], Any] | None,
    user_kept: list[str],
    results: list[Any],
) -> Callable[[Sequence[str]], tuple[Path | None, int]]:
    """The guard's build step: lower ``src`` to ``dst`` with ``user_kept`` and ``kept`` (chosen by the guard) in FP32.

    Returns ``build(kept=()) -> (path or None, nodes the guard's limit counts)``; each
    result is appended to ``results``. INT8 ranges are calibrated by the first
    build and reused by every rebuild.
    """
    ranges: Any = opts.pop("ranges", None)

    def build(kept: Sequence[str] = ()) -> tuple[Path | None, int]:
        nonlocal ranges
        if quantize is not None:
            custom = quantize([*user_kept, *kept])
            results.append(custom)
            return custom.path, custom.quantizable_count
        if precision == "int8":
            result = quantize_int8(src, dst, samples, exclude_nodes=[*user_kept, *kept], ranges=ranges, **opts)
            results.append(result)
            ranges = result.ranges or ranges
            return result.path, result.guard_base or result.quantizable_count
        fp16 = convert_fp16(src, dst, node_block_list=[*user_kept, *kept], calib_samples=samples, **opts)
        results.append(fp16)
        return fp16.path, fp16.total_nodes

    return build


def guarded_quantize(
    src: Path,
    dst: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    gate: Callable[[Path], bool],
    *,
    precision: Literal["int8", "fp16"] = "int8",
    int8_options: Mapping[str, object] | None = None,
    fp16_options: Mapping[str, object] | None = None,
    max_keep_fraction: float = 0.1,
    max_keep: int | None = None,
    localize_samples: int = 8,
    quantize: Callable[[list[str]], Any] | None = None,
    guard_seconds: float | None = None,
    on_round: Callable[[int, int, bool], None] | None = None,
    eligible: Callable[[onnx.ModelProto], Collection[str]] | None = None,
    min_keep: int = 1,
    output_gains: OutputGains | None = None,
    first_step: int = 1,
) -> GuardResult:
    """Build a low-precision model and keep its worst nodes in FP32 until ``gate`` passes.

    ``gate(path) -> bool`` is the caller's accuracy check on the built model
    (e.g. output cosine >= 0.99 on held-out data). Each failed build is
    analysed with :func:`per_layer_errors` and the next top-ranked nodes not
    yet kept (each with its folded nodes; 1, 2, 4... groups in successive
    rounds, the last step bisected once the gate passes, see :class:`_Search`)
    are kept in FP32 - INT8 ``exclude_nodes`` or FP16 ``node_block_list`` - and
    the model rebuilt. ``guard_seconds`` (``--guard-seconds``) bounds the search: when spent, the last model
    built is returned with ``stopped`` saying so. When the top-ranked node
    is already kept, the error must enter through its inputs (ORT's CPU style
    quantizes producers' outputs too), so their producers are kept next.
    Stops when the gate passes or ``max_keep`` nodes are kept (default
    ``ceil(max_keep_fraction * quantizable nodes)``, at least 1). INT8 ranges
    are calibrated once and reused by every rebuild.

    ``quantize(keep) -> result`` replaces the built-in INT8/FP16 builders
    (e.g. dynamic INT8): it gets the node names to keep in FP32 (the user's
    ``exclude_nodes`` from ``int8_options`` first) and returns an object with
    ``path`` (None when nothing is left to lower) and ``quantizable_count``.
    ``on_round(round, nodes_kept, passed)`` is called after each gate check, for progress lines.
    ``eligible(fp32 model)``: the only nodes whose keeping changes the model (dynamic INT8 quantizes
    MatMul/Gemm with constant weights alone); a ranked node outside them points the search at its
    nearest eligible producers instead. None: every node is eligible.
    ``min_keep``: the fewest nodes the fraction allows (a floor on the limit, never above the quantizable count).
    ``output_gains(fp32, built model path, rows, candidates) -> {node: gain}``: the output error each eligible
    candidate removes when kept in FP32 (dynamic INT8:
    :func:`~optpipe.precision.guard.dynamic_sensitivity.dynamic_output_gains`); when given, each round keeps the
    eligible nodes of largest positive gain first, then follows the table.
    ``first_step``: node groups the first round keeps (1, 2, 4... from 1 by default); a pass whose kept node is cheap
    and whose error is spread over most nodes (int4-weight keeping MatMuls as 8-bit) starts larger, for fewer rounds.
    """
    src, dst = Path(src), Path(dst)
    # The graph alone for the whole search (names, producers, eligibility); the weights are loaded again only
    # where the output sensitivity runs the FP32 model, so they are not held beside every rebuild.
    fp32 = onnx_graph.load_skeleton(src)
    # Any: the options are forwarded as keyword arguments to quantize_int8 / convert_fp16, which check them.
    opts: dict[str, Any] = dict(int8_options or {}) if precision == "int8" else dict(fp16_options or {})
    user_kept = list(opts.pop("exclude_nodes" if precision == "int8" else "node_block_list", ()))
    results: list[Any] = []
    build = _lowering(src, dst, samples, precision, opts, quantize, [*user_kept], results)
    started = time.monotonic()
    path, quantizable = build(())
    # A rebuild reuses the first build's INT8 ranges: its estimate is the first build without the calibration.
    calibrating = float(getattr(results[0], "calibration_seconds", 0.0)) if results else 0.0
    first_build_s = time.monotonic() - started - calibrating
    if path is None:
        return GuardResult(None, False, [], 1, [], [((), False)], 0, "nothing_quantizable", results)
    floor = max(1, min(min_keep, quantizable))
    limit = max_keep if max_keep is not None else max(floor, math.ceil(max_keep_fraction * quantizable))
    search = _Search(src, samples, gate, build, fp32, user_kept, limit, localize_samples,
                     None if guard_seconds is None else time.monotonic() + guard_seconds, on_round,
                     None if eligible is None else frozenset(eligible(fp32)), output_gains)
    search.build_s = first_build_s  # what the first rebuild is expected to take
    path = search.run(path, max(1, first_step))
    if path is None:  # everything quantizable is now kept: the FP32 model is the answer
        return GuardResult(None, False, search.kept, search.iterations, search.first_table, search.history, limit,
                           "nothing_quantizable", results, search.stopped)  # fmt: skip
    return GuardResult(path, search.passed, search.kept, search.iterations, search.first_table, search.history,
                       limit, results=results, stopped=search.stopped)  # fmt: skip


#: Why the guard stopped when its budget ran out (one line in the report and the build's warnings).
TIME_SPENT = "time budget (--guard-seconds) spent; the last model built is reported"


class _Search:
    """The guard's search over the ranked nodes: growing steps, then bisection of the last step.

    Each failing round keeps twice as many ranked node groups as the round
    before (1, 2, 4, ...), re-ranked on the model just built; once the gate
    passes after a step of several groups, the step is bisected for the
    shortest prefix that still passes. Rounds grow with log(nodes), not nodes.
    """

    def __init__(self, src: Path, samples: Sequence[Mapping[str, np.ndarray]], gate: Callable[[Path], bool],
                 build: Callable[[Sequence[str]], tuple[Path | None, int]], fp32: onnx.ModelProto, user_kept: list[str],
                 limit: int, localize_samples: int, deadline: float | None,
                 on_round: Callable[[int, int, bool], None] | None = None,
                 eligible: frozenset[str] | None = None, output_gains: OutputGains | None = None) -> None:  # fmt: skip
        self.src, self.samples, self.gate, self.build, self.fp32 = src, samples, gate, build, fp32
        self.user_kept, self.limit, self.localize_samples, self.deadline = user_kept, limit, localize_samples, deadline
        self.on_round = on_round  # one progress line per gate run (issue 13)
        self.kept: list[str] = []
        self.history: list[tuple[tuple[str, ...], bool]] = []
        self.first_table: list[LayerError] = []
        self.iterations = 0
        self.passed = False
        self.stopped = ""
        self.producer = {out: node.name for node in fp32.graph.node for out in node.output}
        self.nodes = {node.name: node for node in fp32.graph.node}  # once: each group looked up nodes anew (N x groups)
        self.constant = {node.name for node in fp32.graph.node if node.op_type == "Constant"}
        self.eligible = eligible  # None: every node may be kept
        self.output_gains = output_gains
        self.build_s = 0.0  # seconds the last build took: what the next rebuild is expected to take

    def _judge(self, path: Path) -> bool:
        self.iterations += 1
        passed = bool(self.gate(path))
        self.history.append((tuple(self.kept), passed))
        if self.on_round is not None:
            self.on_round(self.iterations, len(self.kept), passed)
        return passed

    def _out_of_time(self, needed: float = 0.0) -> bool:
        """Past the deadline, or ``needed`` seconds from now would be (a rebuild not started is one not paid for)."""
        return self.deadline is not None and time.monotonic() + needed >= self.deadline

    def _time_spent(self) -> str:
        """Why the search stopped on its budget: spent, or too little of it left for a rebuild."""
        if self._out_of_time():
            return TIME_SPENT
        return f"{TIME_SPENT} (no time left for a rebuild of about {self.build_s:.0f} s)"

    def measure_until(self) -> float | None:
        """Until when a ranking step may measure: the deadline less a rebuild's seconds (None: no budget).

        A ranking is worth its seconds only when a rebuild can follow it within the budget. ViT-B/16's static
        INT8: once its per-layer analysis took 10 s instead of 18 s, the output sensitivity measured for 50 s up
        to the deadline, and no rebuild could follow: the pass took 30 s longer for a ranking never used.
        """
        return None if self.deadline is None else self.deadline - self.build_s

    def _rebuild(self, kept: Sequence[str]) -> Path | None:
        """Build with ``kept`` in FP32, timed: the next rebuild's estimate."""
        started = time.monotonic()
        path, _ = self.build(kept)
        self.build_s = time.monotonic() - started
        return path

    def run(self, path: Path, first_step: int = 1) -> Path | None:
        """Search from the first build at ``path``; the path of the last model built (None: nothing left)."""
        step, last_groups = first_step, []
        while True:
            if self._judge(path):
                self.passed, self.stopped = True, "gate passed"
                break
            if len(self.kept) >= self.limit:
                self.stopped = f"keep limit reached ({self.limit} nodes)"
                return path
            if self._out_of_time():
                self.stopped = TIME_SPENT
                return path
            rows = onnx_graph.single_rows(self.fp32, self.samples, self.localize_samples)
            table = per_layer_errors(self.src, path, self.samples, max_samples=self.localize_samples)
            if self._out_of_time(self.build_s):  # inside the round too: the analysis alone can outlast the budget,
                # and the ranking after it is only worth its seconds when a rebuild still fits in the budget
                self.first_table, self.stopped = self.first_table or table, self._time_spent()
                return path
            if self.output_gains is None:  # Q/DQ emulation; output_gains replaces it where there is no Q/DQ
                table = by_output_sensitivity(table, onnx_graph.load_model(self.src), path, rows,
                                              kept=[*self.kept, *self.user_kept], deadline=self.measure_until())
            self.first_table = self.first_table or table
            if self._out_of_time(self.build_s):
                # No rebuild the budget cannot pay for: one that would end past the deadline (the last build's
                # seconds) is not started. ViT-B/16's static INT8: the rebuild and its gate ran 60 s past the
                # 60 s budget, to a verdict that was still "not passed"; stopping earlier can only fail, never pass.
                self.stopped = self._time_spent()
                return path
            groups = self._next_groups(table, step, self._by_gain(path, rows))
            if not groups:
                self.stopped = "no ranked node left to keep"
                return path
            self.kept.extend(node for group in groups for node in group)
            new_path = self._rebuild(self.kept)
            if new_path is None:
                return None
            path, step, last_groups = new_path, step * 2, groups
        return self._bisect(path, last_groups) if self.iterations > 1 and len(last_groups) > 1 else path

    def _by_gain(self, path: Path, rows: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
        """Eligible nodes not kept, largest positive output gain first (empty without ``output_gains``)."""
        if self.output_gains is None or self.eligible is None:
            return []
        taken = set(self.kept) | set(self.user_kept)
        candidates = [n.name for n in self.fp32.graph.node if n.name in self.eligible and n.name not in taken]
        # The FP32 weights are read again here only: the search itself holds the graph alone (self.fp32).
        gains = dict(self.output_gains(onnx_graph.load_model(self.src), path, rows, candidates))
        return sorted((n for n, g in gains.items() if g > 0), key=lambda n: gains[n], reverse=True)

    def _next_groups(self, table: Sequence[LayerError], step: int, by_gain: Sequence[str] = ()) -> list[list[str]]:
        """Up to ``step`` next node groups, ``by_gain``'s nodes first, then the table's ranking, within the limit."""
        groups: list[list[str]] = []
        taken = set(self.kept) | set(self.user_kept)
        added = 0
        ranked = iter(by_gain)
        # A group (a node and the nodes folded into it) is kept whole, so the limit may be overshot by one group.
        while len(groups) < step and len(self.kept) + added < self.limit:
            chosen = next(([n] for n in ranked if n not in taken), None)
            chosen = chosen or _next_nodes(table, taken, self.producer, self.constant, self.nodes, self.eligible)
            if not chosen:
                break
            groups.append(chosen)
            taken.update(chosen)
            added += len(chosen)
        return groups

    def _bisect(self, path: Path, groups: list[list[str]]) -> Path | None:
        """The shortest prefix of the last step's ``groups`` that passes (all of them pass, none failed)."""
        base = self.kept[: len(self.kept) - sum(len(g) for g in groups)]
        low, high = 0, len(groups)
        built = high
        while high - low > 1 and not self._out_of_time(self.build_s):  # the passing model stands: only trimmed
            mid = (low + high) // 2
            self.kept = base + [n for g in groups[:mid] for n in g]
            probe = self._rebuild(self.kept)
            built = mid
            if probe is not None and self._judge(probe):
                high = mid
            else:
                low = mid
        self.kept = base + [n for g in groups[:high] for n in g]
        if built != high:  # the last probe failed: rebuild the passing prefix
            path_again, _ = self.build(self.kept)
            return path_again
        return path


def _eligible_sources(
    entry: LayerError,
    nodes: Mapping[str, onnx.NodeProto],
    producer: Mapping[str, str],
    kept: set[str],
    eligible: frozenset[str],
    hops: int = 8,
) -> list[str]:
    """The entry's own eligible nodes not yet kept, else the nearest eligible producers upstream (breadth-first)."""
    own = [n for n in entry.nodes if n in eligible and n not in kept]
    if own:
        return own
    frontier, seen = [entry.node], {entry.node}
    for _ in range(hops):
        parents = [producer[i] for name in frontier if name in nodes for i in nodes[name].input if i in producer]
        parents = [p for p in dict.fromkeys(parents) if p not in seen]
        found = [p for p in parents if p in eligible and p not in kept]
        if found:
            return found
        seen.update(parents)
        frontier = [p for p in parents if p not in eligible]  # a kept eligible node stops the walk there
        if not frontier:
            break
    return []


def _next_nodes(
    table: Sequence[LayerError],
    kept: set[str],
    producer: Mapping[str, str],
    constant: set[str],
    fp32: onnx.ModelProto | Mapping[str, onnx.NodeProto],
    eligible: frozenset[str] | None = None,
) -> list[str]:
    nodes = fp32 if isinstance(fp32, Mapping) else {node.name: node for node in fp32.graph.node}
    for entry in table:
        if entry.contribution <= 0:
            break
        if eligible is not None:
            found = _eligible_sources(entry, nodes, producer, kept, eligible)
            if found:
                return found
            continue
        new = [n for n in entry.nodes if n not in kept and n not in constant]
        if new:
            return new
        upstream = [
            producer[i]
            for i in nodes[entry.node].input
            if i in producer and producer[i] not in kept and producer[i] not in constant
        ]
        if upstream:
            return list(dict.fromkeys(upstream))
    return []

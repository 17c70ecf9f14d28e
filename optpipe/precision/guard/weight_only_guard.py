"""The accuracy guard of ``int4-weight``: keep the MatMuls whose 4-bit weights cost the output most per byte.

Why not :func:`~optpipe.precision.guard.localize.guarded_quantize`: it ranks by local error (Q/DQ emulation)
and keeps a node or a few per round, one rebuild and gate run each. On bert_wide the error is spread over 80
of 120 MatMuls while 4-bit Q/K cost nothing at the output; it never got there within its budget.

Here, after the all-4-bit build fails the gate:

1. one switchable session (:mod:`optpipe.precision.guard.weight_only_probe`) measures on a few guard rows what
   each MatMul's 4-bit weights do to the output (one run per candidate per row);
2. candidates are ordered by output gain per byte their kept form adds, and cut where the artifact would
   exceed the size the user allows (``max_bytes``);
3. the shortest prefix whose predicted error on the probe rows is under the gate's bar (the bar scaled from the
   first gate run: what ratio of its error the tolerances allow, with a margin) is chosen by bisection in the
   session;
4. that model is built and judged by the gate on the guard rows; if it fails, the target is halved and steps
   2-4 run again while the size and time budgets allow.

The guard never sees the test rows: the build's validate pass judges the result on them. What cannot reach
the tolerance within the budgets is reported in one line (``stopped``) and the variant is not passed.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.precision import onnx_graph
from optpipe.precision.guard.localize import TIME_SPENT, GuardResult, LayerError
from optpipe.precision.guard.weight_only_probe import Probe, error, output_gains, switchable, tensor_bytes

#: The probe's rows (guard rows at their real length): enough to rank, few enough that 120 MatMuls of bert_wide
#: cost about as much as two gate runs.
PROBE_ROWS = 3
#: The share of the gate's allowed error the probe aims for (its rows are not the gate's rows).
MARGIN = 0.6
#: When the gate's records say nothing usable, aim for a tenth of the first build's error.
DEFAULT_RATIO = 0.1


@dataclass(frozen=True)
class WeightOnlyBudget:
    """What the guard may spend: ``max_bytes`` of artifact, ``max_nodes`` kept, ``seconds`` of time (None: no limit)."""

    max_bytes: int
    max_nodes: int
    seconds: float | None


def allowed_ratio(record: Mapping[str, Any]) -> float:
    """How much of a failed gate run's error the tolerances allow: min over outputs of (1 - bar) / (1 - got).

    Read from the gate's own parity record (each output's cosine, worst row's cosine and tolerance), so the
    guard aims at the bars the gate applies, overrides included.
    """
    ratios = []
    for out in (record.get("outputs") or {}).values():
        tolerance = out.get("tolerance") or {}
        for bar, got in ((tolerance.get("min_cosine"), out.get("cosine")),
                         (tolerance.get("min_row_cosine"), out.get("cosine_min"))):  # fmt: skip
            if bar is not None and got is not None and got < bar:
                ratios.append((1.0 - float(bar)) / max(1.0 - float(got), 1e-12))
    return min(ratios) if ratios else DEFAULT_RATIO


def gate_ratio(first: Mapping[str, Any], last: Mapping[str, Any]) -> float:
    """How much of the first gate run's error the last one has left: max over outputs of (1 - got) / (1 - first).

    Over the same figures :func:`allowed_ratio` reads (the cosine and the worst row's), so the guard can
    compare what its probe predicted with what the gate measured. 0 when the records say nothing.
    """
    ratios = []
    before, after = first.get("outputs") or {}, last.get("outputs") or {}
    for name, out in after.items():
        for key in ("cosine", "cosine_min"):
            old, new = (before.get(name) or {}).get(key), out.get(key)
            if old is not None and new is not None and old < 1:
                ratios.append((1.0 - float(new)) / (1.0 - float(old)))
    return max(ratios) if ratios else 0.0


def ordered(gains: Mapping[str, float], extra: Mapping[str, int], room: int, max_nodes: int) -> list[str]:
    """Candidates of positive gain, most gain per byte first, as many as ``room`` bytes and ``max_nodes`` hold."""
    ranked = sorted((n for n, g in gains.items() if g > 0), key=lambda n: gains[n] / max(extra[n], 1), reverse=True)
    chosen: list[str] = []
    used = 0
    for name in ranked:
        if len(chosen) >= max_nodes or used + max(extra[name], 0) > room:
            break
        chosen.append(name)
        used += max(extra[name], 0)
    return chosen


def shortest_prefix(probe: Probe, order: Sequence[str], target: float) -> int | None:
    """The fewest of ``order``'s nodes kept whose probe error is at most ``target`` (None: not even all of them)."""
    if error(probe.distances(probe.kept(order))) > target:
        return None
    low, high = 0, len(order)  # error(low) > target (unless low is 0 and already passing), error(high) <= target
    if error(probe.distances(probe.kept(()))) <= target:
        return 0
    while high - low > 1:
        mid = (low + high) // 2
        if error(probe.distances(probe.kept(order[:mid]))) <= target:
            high = mid
        else:
            low = mid
    return high


def weight_bytes(path: Path) -> int:
    """Bytes of an ONNX model's initializers (by shape: external data is not read).

    Why weights and not the file: the size budget is a share of what the weights cost; a small model's
    graph (names, attributes) is a large share of its file and no precision shrinks it.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    return tensor_bytes(inits, list(inits))


class _Guard:
    """One int4-weight guard run (see the module docs); ``run`` returns the :class:`GuardResult`."""

    def __init__(self, src: Path, samples: Sequence[Mapping[str, np.ndarray]], gate: Callable[[Path], bool],
                 gate_log: Sequence[Mapping[str, Any]], build: Callable[[list[str]], Any],
                 kept_model: Callable[[Path], Path | None], budget: WeightOnlyBudget,
                 on_round: Callable[[int, int, bool], None] | None) -> None:  # fmt: skip
        self.src, self.samples, self.gate, self.gate_log, self.build = src, samples, gate, gate_log, build
        self.kept_model, self.budget, self.on_round = kept_model, budget, on_round
        self.deadline: float | None = None  # set after the first build, as guarded_quantize's
        self.results: list[Any] = []
        self.history: list[tuple[tuple[str, ...], bool]] = []
        self.kept: list[str] = []
        self.table: list[LayerError] = []

    def _judge(self, path: Path) -> bool:
        passed = bool(self.gate(path))
        self.history.append((tuple(self.kept), passed))
        if self.on_round is not None:
            self.on_round(len(self.history), len(self.kept), passed)
        return passed

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _result(self, path: Path | None, passed: bool, stopped: str) -> GuardResult:
        status = "ok" if path is not None else "nothing_quantizable"
        return GuardResult(path, passed, list(self.kept), len(self.history), self.table, self.history,
                           self.budget.max_nodes, status, self.results, stopped)  # fmt: skip

    def _built(self, keep: list[str]) -> Path | None:
        result = self.build(keep)
        self.results.append(result)
        return None if result.path is None else Path(result.path)

    def run(self) -> GuardResult:
        path = self._built([])
        if path is None:
            return self._result(None, False, "nothing_quantizable")
        self.deadline = None if self.budget.seconds is None else time.monotonic() + self.budget.seconds
        if self._judge(path):
            return self._result(path, True, "gate passed")
        if self._late():
            return self._result(path, False, TIME_SPENT)
        four_bit = weight_bytes(path)
        room = self.budget.max_bytes - four_bit
        if room <= 0:
            return self._result(path, False, f"the all-4-bit model's weights ({four_bit:,} bytes) already fill the "
                                f"size budget ({self.budget.max_bytes:,} bytes): nothing can be kept")
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int4-probe.") as scratch:
            probe = self._probe(path, Path(scratch))
        if probe is None:
            return self._result(path, False, "no MatMul could be probed in its kept form")
        return self._search(path, probe, room)

    def _probe(self, path: Path, scratch: Path) -> Probe | None:
        """The switchable session over the all-4-bit model at ``path`` (the kept model is built in ``scratch``)."""
        kept_path = self.kept_model(scratch / "kept.onnx")
        kept = onnx_graph.load_model(kept_path) if kept_path is not None else None
        fp32 = onnx_graph.load_model(self.src) if kept is None else onnx_graph.load_skeleton(path)
        model = switchable(onnx_graph.load_model(path), kept, fp32)
        del kept, fp32
        if not model.names:
            return None
        rows = onnx_graph.single_rows(model.model, self.samples, PROBE_ROWS)
        self.extra = dict(model.extra_bytes)
        return Probe(model, rows)

    def _search(self, path: Path, probe: Probe, room: int) -> GuardResult:
        gains = output_gains(probe, self._late)
        if self._late():  # the probe ran out of time: a ranking of some MatMuls only is no plan
            return self._result(path, False, TIME_SPENT)
        self.table = [LayerError(n, "MatMul", "", float("nan"), float("nan"), gains[n], "", (n,))  # gain: contribution
                      for n in sorted(gains, key=lambda n: gains[n], reverse=True)]  # fmt: skip
        order = ordered(gains, self.extra, room, self.budget.max_nodes)
        if not order:  # the probe's rows see no MatMul whose 4-bit weights cost the output: nothing to keep
            return self._result(path, False, self._out_of_room(order, gains, room))
        start = error(probe.distances(probe.kept(())))
        aim = ratio = allowed_ratio(self.gate_log[-1] if self.gate_log else {}) * MARGIN
        first = self.gate_log[-1] if self.gate_log else {}
        note = ""
        while True:
            if self._late():
                return self._result(path, False, TIME_SPENT + note)
            count = shortest_prefix(probe, order, ratio * start)
            best = count is None
            chosen = list(order if count is None else order[:count])
            if self.kept and len(chosen) <= len(self.kept):  # the bar moved nowhere new: one more node at least
                chosen = list(order[: len(self.kept) + 1])
                best = len(chosen) >= len(order)
            self.kept = chosen
            built = self._built(chosen)
            if built is None:
                return self._result(None, False, "nothing_quantizable")
            path = built
            if self._judge(path):
                return self._result(path, True, "gate passed")
            predicted = error(probe.distances(probe.kept(chosen))) / max(start, 1e-30)
            measured = gate_ratio(first, self.gate_log[-1] if self.gate_log else {})
            note = (f" (with {len(chosen)} MatMul(s) kept the probe predicted {predicted:.3g} of the 4-bit model's "
                    f"error on its {PROBE_ROWS} rows, the gate measured {measured:.3g} on its rows)")
            if best or len(chosen) >= len(order):
                return self._result(path, False, self._out_of_room(order, gains, room) + note)
            # The probe's rows under-predicted the gate's by measured / predicted: aim that much lower (at least half).
            ratio = min(ratio / 2, aim * predicted / measured) if measured > 0 else ratio / 2

    def _out_of_room(self, order: Sequence[str], gains: Mapping[str, float], room: int) -> str:
        """Why keeping more cannot help: the size budget, the node limit, or no candidate left with a gain."""
        positive = sum(1 for g in gains.values() if g > 0)
        if not positive:
            return (f"no MatMul's 4-bit weights cost the output on the probe's {PROBE_ROWS} guard rows, yet the gate "
                    "fails on its rows: nothing to keep")
        if not order:
            first = max((n for n in gains if gains[n] > 0), key=lambda n: gains[n] / max(self.extra[n], 1))
            return (f"size budget: the {room:,} bytes it leaves above the 4-bit weights cannot hold the first MatMul "
                    f"to keep ('{first}', {self.extra[first]:,} bytes more)")
        if len(order) < positive:
            return (f"size budget spent: {len(order)} MatMul(s) kept in their higher-precision form fill the "
                    f"{room:,} bytes the budget leaves above the 4-bit weights, and the gate still fails")
        return "every MatMul whose 4-bit weights cost the output is kept, and the gate still fails"


def weight_only_guard(
    src: Path, samples: Sequence[Mapping[str, np.ndarray]], gate: Callable[[Path], bool],
    gate_log: Sequence[Mapping[str, Any]], *, build: Callable[[list[str]], Any],
    kept_model: Callable[[Path], Path | None], budget: WeightOnlyBudget,
    on_round: Callable[[int, int, bool], None] | None = None,
) -> GuardResult:
    """Build the all-4-bit model; when ``gate`` fails, keep the MatMuls that cost the output most per byte.

    ``build(keep) -> result`` writes the model with ``keep`` in their kept form (``.path``, None when nothing is
    left); ``kept_model(path)`` writes the model with every candidate in its kept form at ``path`` and returns it
    (None: the kept form is FP32, read from ``src``). ``gate_log``: the gate's parity records, the last one
    the latest verdict's (the guard reads the bars and the first build's error from it).
    """
    if budget.max_nodes < 1:
        budget = WeightOnlyBudget(budget.max_bytes, 1, budget.seconds)
    return _Guard(Path(src), samples, gate, gate_log, build, kept_model, budget, on_round).run()


def max_nodes(fraction: float, count: int) -> int:
    """The node limit of a fraction of ``count`` candidates (at least 1)."""
    return max(1, math.ceil(fraction * count))

"""Where an artifact's time goes: ONNX Runtime's per-node profiler on the golden inputs.

ONNX Runtime records one ``<node>_kernel_time`` event per node per run when the
session is created with ``SessionOptions.enable_profiling``; this module runs
the artifact on the build's golden inputs, drops the first (warm-up) run, and
sums the events by op type and by node. Node names in the optimized artifact
are those of the portable ONNX (ORT appends ``_token_N`` to nodes it re-lays
out), so each node is traced back to its PyTorch module path the same way the
per-layer error table does (:mod:`optpipe.precision.node_modules`, given by
the caller: this module sits below the precision layer).

The profile is a separate measurement from the benchmark: the profiler adds
per-node overhead, so its totals are for "which op dominates", not latency.
TensorRT engines are profiled by :mod:`optpipe.runtime.tensorrt.layer_timing`.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optpipe.core.errors import UserInputError

KERNEL_SUFFIX = "_kernel_time"
_TOKEN = re.compile(r"(_token_\d+)+$")
_NCHWC = re.compile(r"_nchwc$")


@dataclass(frozen=True)
class OpTypeTime:
    """Time of every node of one op type, summed over the profiled runs."""

    op_type: str
    nodes: int
    total_ms: float
    percent: float


@dataclass(frozen=True)
class NodeTime:
    """One node's time per run (mean over the profiled runs) and where it came from in PyTorch."""

    node: str
    op_type: str
    module_path: str
    mean_us: float
    percent: float


@dataclass(frozen=True)
class OpProfile:
    """A variant's per-op profile, as stored in ``report.json`` (``variants[].profile``)."""

    runtime: str
    runs: int
    total_ms: float  # sum of node times over the profiled runs
    op_types: tuple[OpTypeTime, ...]
    top_nodes: tuple[NodeTime, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["op_types"] = [asdict(o) for o in self.op_types]
        data["top_nodes"] = [asdict(n) for n in self.top_nodes]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpProfile:
        """Back from ``report.json``."""
        return cls(str(data["runtime"]), int(data["runs"]), float(data["total_ms"]),
                   tuple(OpTypeTime(**o) for o in data["op_types"]),
                   tuple(NodeTime(**n) for n in data["top_nodes"]))

    def format(self, limit: int = 10) -> str:
        """A console table: op types by share of time, then the slowest nodes."""
        lines = [f"  per-op profile ({self.runtime}, {self.runs} runs, node time {self.total_ms:.3f} ms):"]
        lines.append(f"    {'op type':<22} {'nodes':>5} {'total ms':>10} {'share':>7}")
        for op in self.op_types[:limit]:
            lines.append(f"    {op.op_type:<22} {op.nodes:>5} {op.total_ms:>10.3f} {op.percent:>6.1f}%")
        lines.append(f"    {'top nodes':<34} {'op type':<16} {'us/run':>9} {'share':>7}  module")
        for node in self.top_nodes[:limit]:
            lines.append(f"    {node.node[:34]:<34} {node.op_type[:16]:<16} {node.mean_us:>9.1f} "
                         f"{node.percent:>6.1f}%  {node.module_path or '-'}")
        return "\n".join(lines)


def _source_name(node: str) -> str:
    """The ONNX name behind an ORT kernel's node name (layout-transformed copies get suffixes)."""
    return _NCHWC.sub("", _TOKEN.sub("", node))


def node_times(events: Sequence[Mapping[str, Any]], skip_runs: int = 1) -> tuple[dict[str, tuple[str, float]], int]:
    """Per node: (op type, total µs) over the runs after the first ``skip_runs``; and how many runs counted."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    if len(runs) <= skip_runs:
        raise ValueError(f"the profile holds {len(runs)} runs; need more than {skip_runs}")
    start = runs[skip_runs][0]
    totals: dict[str, tuple[str, float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX) or event["ts"] < start:
            continue
        node = _TOKEN.sub("", name[: -len(KERNEL_SUFFIX)])
        op_type = str((event.get("args") or {}).get("op_name", "?"))
        previous = totals.get(node, (op_type, 0.0))[1]
        totals[node] = (op_type, previous + float(event["dur"]))
    return totals, len(runs) - skip_runs


def summarize_profile(totals: Mapping[str, tuple[str, float]], runs: int, paths: Mapping[str, str],
                      runtime: str, top: int = 15) -> OpProfile:
    """Aggregate node totals (µs) into op-type shares and the ``top`` slowest nodes."""
    total_us = sum(us for _op, us in totals.values()) or 1.0
    by_type: dict[str, list[float]] = {}
    for op_type, us in totals.values():
        by_type.setdefault(op_type, []).append(us)
    op_types = sorted((OpTypeTime(op, len(times), sum(times) / 1e3, 100 * sum(times) / total_us)
                       for op, times in by_type.items()), key=lambda o: -o.total_ms)
    nodes = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    top_nodes = tuple(NodeTime(name, op, paths.get(name) or paths.get(_source_name(name), ""), us / runs,
                               100 * us / total_us)
                      for name, (op, us) in nodes)
    return OpProfile(runtime, runs, sum(us for _op, us in totals.values()) / 1e3, tuple(op_types), top_nodes)


def profile_onnx(artifact: Path, feeds: Sequence[Mapping[str, Any]], *, paths: Mapping[str, str] | None = None,
                 runs: int = 20, threads: int | None = None, top: int = 15) -> OpProfile:
    """Profile ``artifact`` with ONNX Runtime's CPU provider over ``feeds`` (cycled for ``runs`` runs + 1 warm-up).

    ``paths`` maps ONNX node (and output) names to PyTorch module paths
    (:func:`optpipe.precision.node_modules.node_module_paths` of the build's ONNX files).
    """
    import onnxruntime as ort

    from optpipe.runtime.runners import ort_session_options

    if not feeds:
        raise UserInputError("profiling needs at least one input batch (the build's golden data)")
    with tempfile.TemporaryDirectory(prefix="optpipe-profile-") as scratch:
        options = ort_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        for index in range(runs + 1):
            feed = feeds[index % len(feeds)]
            session.run(None, {k: v for k, v in feed.items() if k in names})
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
    totals, counted = node_times(events)
    return summarize_profile(totals, counted, paths or {}, "onnxruntime-cpu", top)

"""The accuracy gate of the precision passes and the report rows of the guard.

The gate runs a *candidate* low-precision ONNX file on ONNX Runtime's CPU
provider against the build's golden data with the same per-precision
tolerances the final validate pass applies, but only on the rows the guard may
use (shape cases and guard rows, :meth:`optpipe.compare.golden.GoldenData.for_guard`):
the test rows are kept for the final verdict, so a variant the guard tuned to
pass is still judged on rows it never saw. For the TensorRT Q/DQ style
the candidate runs with graph optimisation disabled: ORT then evaluates Q/DQ
as float emulation, which is what TensorRT's strongly typed INT8 computes in
spirit; ORT's own fused integer kernels (U8S8 with its saturation) are not
what TensorRT runs, so judging a TensorRT-style model by them would mislead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from optpipe.precision import onnx_graph
from optpipe.precision.guard.localize import GuardResult, LayerError

#: Rows of the per-layer table kept in the report (worst contribution first); a
#: transformer has thousands of nodes and only the top of the ranking explains anything.
MAX_TABLE_ROWS = 30


def gate_runtime_note(style: str) -> str:
    """How the gate ran the candidate, for the report."""
    if style == "tensorrt":
        return (
            "onnxruntime CPU with graph optimisation disabled (Q/DQ emulated in float); "
            "ORT's int8 kernels are not what TensorRT runs, so the GPU validation after the engine "
            "build is the final word"
        )
    return "onnxruntime CPU, ORT_ENABLE_ALL (the same kernels the cpu engine runs)"


def make_gate(
    ctx: Any, precision: str, tolerances: Mapping[str, Mapping[str, float]], level: str,
    output_kinds: Mapping[str, str] | None = None,
) -> tuple[Callable[[Path], bool], list[dict[str, Any]]]:
    """A ``gate(path) -> bool`` for guarded_quantize and the list its parity records go to (guard rows only)."""
    from optpipe.compare.parity import validate_outputs
    from optpipe.runtime.runners import OrtRunner

    log: list[dict[str, Any]] = []
    rows = ctx.golden.for_guard() if ctx.golden is not None else None

    def gate(path: Path) -> bool:
        runner = OrtRunner(path, threads=ctx.threads, level=level)
        parity = validate_outputs(runner, ctx, precision, {k: dict(v) for k, v in tolerances.items()}, output_kinds,
                                  golden=rows)
        log.append(parity)
        return bool(parity["passed"])

    return gate, log


def export_module_paths(work_dir: Path) -> dict[str, str]:
    """Node name -> PyTorch module path, read from the exporter's own file (``*.export.onnx``).

    onnxslim drops node metadata, so the simplified model the precision passes
    read no longer knows its modules; node names survive simplification, so
    the exported file next to it still maps them.
    """
    paths: dict[str, str] = {}
    for file in sorted(Path(work_dir).glob("*.export.onnx")):
        try:
            model = onnx.load(str(file), load_external_data=False)
        except Exception:  # a missing or odd export file only costs the module column
            continue
        for node in model.graph.node:
            module = onnx_graph.module_path(node)
            if module:
                paths.setdefault(node.name, module)
    return paths


def layer_rows(
    table: Sequence[LayerError], modules: Mapping[str, str] | None = None, limit: int = MAX_TABLE_ROWS
) -> list[dict[str, Any]]:
    """The report's ``layer_errors``: node, op_type, module, rel_error, cosine, contribution."""
    modules = modules or {}
    rows = []
    for entry in list(table)[:limit]:
        module = entry.module_path or next((modules[n] for n in entry.nodes if n in modules), "")
        rows.append(
            {
                "node": entry.node,
                "op_type": entry.op_type,
                "module": module,
                "rel_error": _finite(entry.rel_error),
                "cosine": _finite(entry.cosine),
                "contribution": _finite(entry.contribution),
            }
        )
    return rows


def kept_rows(
    src: Path, kept: Sequence[str], table: Sequence[LayerError], modules: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Each node the guard kept in higher precision, with its op type and PyTorch module path."""
    modules = modules or {}
    model: onnx.ModelProto = onnx_graph.load_model(src)
    nodes = {n.name: n for n in model.graph.node}
    by_name = {entry.node: entry for entry in table}
    rows = []
    for name in kept:
        node = nodes.get(name)
        module = onnx_graph.module_path(node) if node is not None else ""
        if not module and name in by_name:
            module = by_name[name].module_path
        module = module or modules.get(name, "")
        rows.append({"node": name, "op_type": node.op_type if node is not None else "", "module": module})
    return rows


def guard_record(
    result: GuardResult, gate_log: Sequence[Mapping[str, Any]], kept: list[dict[str, Any]], enabled: bool
) -> dict[str, Any]:
    """The report's ``guard`` record: verdict, iterations, limit, kept nodes and the gate history."""
    history = []
    for index, (nodes, passed) in enumerate(result.history):
        parity = gate_log[index] if index < len(gate_log) else {}
        cosines = {name: out.get("cosine") for name, out in (parity.get("outputs") or {}).items()}
        history.append(
            {"kept": list(nodes), "passed": passed, "cosine": cosines, "failures": list(parity.get("failures", []))}
        )
    return {
        "enabled": enabled,
        "passed": result.passed,
        "iterations": result.iterations,
        "limit": result.limit,
        "stopped": result.stopped,
        "kept_nodes": kept,
        "history": history,
    }


def _finite(value: float) -> float | None:
    """JSON has no Inf/NaN: they become null (the row's meaning is 'broken')."""
    return float(value) if value == value and abs(value) != float("inf") else None

"""What the guarded precision passes (``fp16``, ``int8``, ``int8-dynamic``) share.

Option parsing (the guard flags, where calibration data comes from), sample
loading once per build, running :func:`~optpipe.precision.guard.localize.guarded_quantize`
behind the accuracy gate and the guard's part of the report. Each pass keeps
what is its own: its Config (the documented options), its builder options, its
status names and its metrics. Heavy modules (onnx, onnxruntime) are imported
inside the functions, so option checking before a build stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option
from optpipe.precision.names import DEFAULT_GUARD_SECONDS, IN_MEMORY

if TYPE_CHECKING:
    import numpy as np

    from optpipe.infra.pass_base import BuildContext
    from optpipe.precision.guard.localize import GuardResult


Samples = list[dict[str, "np.ndarray"]]


@dataclass(frozen=True)
class GuardedConfig:
    """The accuracy-guard fields every precision pass's Config has (fp16, int8, int8-dynamic inherit them)."""

    guard: bool = option(True, help="The accuracy guard: keep the worst nodes in FP32 until the gate passes.",
                         flags=("no_guard",))
    max_keep_fraction: float = option(
        0.1, help="Most nodes the guard may keep, as a fraction of the nodes the pass lowers (at least 1).",
        flags=("guard_max_keep",))
    # Samples (golden cases) the per-layer error analysis runs on.
    localize_samples: int = 8
    # The accuracy gate's tolerance overrides ({output or "*": {field: value}}): the build's --tolerance.
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    # What each output means ({output or "*": kind}, --output-kind): the gates that fit it; others inferred.
    output_kinds: dict[str, str] = field(default_factory=dict)
    guard_seconds: float | None = option(
        DEFAULT_GUARD_SECONDS, help="The guard's time budget in seconds (--guard-seconds, default 60); None: no "
        "budget.",
        flags=("guard_seconds",))


def calib_data(config: Any) -> Any:
    """What :func:`~optpipe.precision.calib_data.load_samples` reads for a Config's ``calib_data`` (and ``samples``)."""
    source = config.calib_data
    # Samples in memory: given so (IN_MEMORY), or a file's rows left after the build held some out for parity.
    data = config.samples if source == IN_MEMORY or config.samples is not None else source
    if data is None:
        raise UserInputError("in-memory calibration data was announced but not passed to build()")
    return data


def precision_facts(ctx: BuildContext, samples: Sequence[Mapping[str, np.ndarray]], source: str) -> dict[str, Any]:
    """What a guarded precision pass (fp16, int8) reads outside its config (its ``cache_facts``).

    The samples it calibrates / checks ranges on (by content, whatever their
    source: a file, a directory, ``FILE.py:NAME``, in-memory or synthetic; the
    gate's tolerances are in its config, the golden data in every key) and the
    target's Q/DQ style. The helpers' code is keyed
    through :func:`guard_code_modules`. ``threads`` is left out on purpose: it
    changes ORT's float reductions only in the last bits.
    """
    from optpipe.precision.calib_data import data_fingerprint

    return {
        "samples": data_fingerprint(samples),
        "sample_count": len(samples),
        "sample_source": source,
        "qdq_style": getattr(ctx.target, "qdq_style", None),
    }


def guard_code_modules() -> tuple[ModuleType, ...]:
    """The modules whose code decides a guarded precision pass's output (its ``code_modules``)."""
    from optpipe.compare import output_kinds, parity
    from optpipe.core import data_cast
    from optpipe.onnx import shapes
    from optpipe.precision import bias_correction, calib_cache, calib_data, fp16_convert, onnx_graph, static_quantize
    from optpipe.precision.guard import gate, localize, sensitivity

    this = sys.modules[__name__]
    return (static_quantize, bias_correction, fp16_convert, localize, sensitivity, gate, calib_cache, calib_data,
            onnx_graph, shapes, data_cast, this, parity, output_kinds)  # fmt: skip


def golden_inputs(ctx: BuildContext) -> Samples:
    """The inputs of the golden cases the guard may use (none without golden data): never the test rows.

    The fp16 range scan and the per-layer analysis steer which nodes stay in higher precision, so
    they see what the guard's gate sees and nothing the final verdict keeps to itself.
    """
    return [dict(case.inputs) for case in ctx.golden.for_guard().cases] if ctx.golden is not None else []


def samples_once(
    owner: Any, ctx: BuildContext, load: Callable[[BuildContext], tuple[Samples, str]]
) -> tuple[Samples, str]:
    """``load(ctx)`` (samples and where they came from), called once per build and remembered on ``owner``.

    cache_facts and run share them: in-memory data may be a one-shot iterator.
    """
    loaded = getattr(owner, "_loaded", None)
    if loaded is not None and loaded[0] is ctx:
        return list(loaded[1]), loaded[2]
    samples, source = load(ctx)
    owner._loaded = (ctx, samples, source)
    return list(samples), source


def run_guard(
    ctx: BuildContext,
    src: Path,
    dst: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    config: GuardedConfig,
    *,
    gate_name: str,
    level: str,
    guard: bool | None = None,
    **builder: Any,
) -> tuple[GuardResult, list[dict[str, Any]]]:
    """Build the low-precision model with ``guarded_quantize`` behind the accuracy gate ``gate_name``.

    ``level`` is the graph optimisation the gate runs the candidate with;
    ``guard`` (default ``config.guard``) lets the guard keep nodes at all;
    ``builder`` goes to ``guarded_quantize`` (precision, its options, quantize).
    Returns the guard's result and the gate's parity records.
    """
    from optpipe.precision.guard.gate import make_gate
    from optpipe.precision.guard.localize import guarded_quantize

    gate, gate_log = make_gate(ctx, gate_name, dict(config.tolerances), level, dict(config.output_kinds))
    result = guarded_quantize(
        src,
        dst,
        samples,
        gate,
        max_keep_fraction=config.max_keep_fraction,
        max_keep=None if (config.guard if guard is None else guard) else 0,
        localize_samples=config.localize_samples,
        guard_seconds=config.guard_seconds,
        on_round=guard_progress(ctx, gate_name, gate_log),
        **builder,
    )
    return result, gate_log


def guard_progress(ctx: BuildContext, precision: str, gate_log: Sequence[Mapping[str, Any]]) -> Callable[..., None]:
    """``on_round`` for guarded_quantize: one line per round (nodes kept, worst cosine) through the build's log.

    A guard on a large model can run for many minutes; without these lines the console shows nothing.
    """

    def on_round(round_: int, kept: int, passed: bool) -> None:
        parity = gate_log[-1] if gate_log else {}
        outputs = parity.get("outputs") or {}
        cosines = {name: o.get("cosine") for name, o in outputs.items() if o.get("cosine") is not None}
        error = ""
        if cosines:
            worst = min(cosines, key=lambda name: cosines[name])
            error = f", cosine {cosines[worst]:.6f} ('{worst}')"
        verdict = "gate passed" if passed else "gate failed"
        ctx.log(f"     {precision} guard round {round_}: {kept} node(s) kept in higher precision{error}, {verdict}")

    return on_round


def guard_report(
    ctx: BuildContext,
    src: Path,
    result: GuardResult,
    gate_log: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, np.ndarray]],
    config: GuardedConfig,
    *,
    precision: str,
    advice: str = "",
    kept_as: str | Callable[[Mapping[str, Any]], str] = "FP32",
) -> tuple[dict[str, Any], list[str]]:
    """The guard's report: metrics ``guard``, ``kept_nodes``, ``iterations``, ``layer_errors``, and warnings.

    The per-layer table is the guard's first one, or computed on the final
    model (when the gate passed at once; none without samples). The warnings
    name the nodes kept, grouped by what each became (``kept_as``: a name, or a rule from a kept row to one,
    e.g. int4-weight's ``kept_as`` int8 turns kept MatMuls into INT8 while a kept Gather stays FP32) and,
    when the gate still fails, the limit, followed by ``advice``.
    """
    from optpipe.precision.guard.gate import export_module_paths, guard_record, kept_rows, layer_rows
    from optpipe.precision.guard.localize import per_layer_errors

    assert result.path is not None
    table = result.table or (
        per_layer_errors(src, result.path, samples, max_samples=config.localize_samples) if samples else []
    )
    modules = export_module_paths(ctx.work_dir)
    kept = kept_rows(src, result.kept_nodes, table, modules)
    metrics = {
        "guard": guard_record(result, gate_log, kept, config.guard),
        "kept_nodes": kept,
        "iterations": result.iterations,
        "layer_errors": layer_rows(table, modules),
    }
    warnings: list[str] = []
    if result.kept_nodes:
        rule = kept_as if callable(kept_as) else (lambda _row: kept_as)
        groups: dict[str, list[str]] = {}
        for k in kept:
            groups.setdefault(rule(k), []).append(f"{k['node']} ({k['module'] or k['op_type']})")
        parts = [f"{len(names)} node(s) in {name}: {', '.join(names)}" for name, names in groups.items()]
        warnings.append(f"{precision}: the accuracy guard kept {'; '.join(parts)}")
    if not result.passed:
        warnings.append(unreached_line(precision, result, gate_log, advice))
    return metrics, warnings


def guarded_outcome(
    ctx: BuildContext, src: Path, guarded: tuple[GuardResult, Sequence[Mapping[str, Any]]],
    samples: Sequence[Mapping[str, np.ndarray]], config: GuardedConfig, metrics: dict[str, Any], **report: Any,
) -> list[str]:
    """The tail every guarded pass's ``run`` shares, after :func:`run_guard` (``guarded``, its result and gate log).

    Adds to ``metrics`` and returns the warnings; ``report`` (``precision``, ``advice``, ``kept_as``) goes to
    :func:`guard_report`.

    The first build's warnings, then :func:`skip_nothing_quantizable` when nothing was lowered (never
    FP32 under the low precision's label), ``status`` (``quantized`` or ``gate_failed``), the node
    counts and :func:`guard_report`'s metrics and warnings (``advice`` and ``kept_as`` go to it).
    """
    result, gate_log = guarded
    first = result.results[0] if result.results else None
    warnings: list[str] = list(first.warnings) if first is not None else []
    if result.path is None:
        skip_nothing_quantizable(report["precision"], result, metrics)
    guard_metrics, guard_warnings = guard_report(ctx, src, result, gate_log, samples, config, **report)
    status = "quantized" if result.passed else "gate_failed"
    metrics.update(status=status, **quantized_counts(result), **guard_metrics)
    return warnings + guard_warnings


def unreached_line(precision: str, result: GuardResult, gate_log: Sequence[Mapping[str, Any]], advice: str) -> str:
    """One line: which gate the guard could not reach, with what it kept, and why it stopped (limit, budget...)."""
    last = gate_log[-1] if gate_log else {}
    failures = list(last.get("failures") or [])
    what = f" ({failures[0]})" if failures else ""
    stopped = f"; stopped: {result.stopped}" if result.stopped else ""
    if result.stopped.startswith("time budget"):  # the node limit was not what stopped it
        advice = advice.replace("--guard-max-keep", "--guard-seconds")
    return (f"{precision}: the accuracy gate still fails{what} after keeping {len(result.kept_nodes)} node(s) "
            f"(limit {result.limit}{stopped}){advice}")


def quantized_counts(result: GuardResult) -> dict[str, int]:
    """``quantized`` and ``quantizable`` node counts of the last INT8 build."""
    last = result.results[-1] if result.results else None
    return {
        "quantized": last.quantized_count if last is not None else 0,
        "quantizable": last.quantizable_count if last is not None else 0,
    }


def skip_nothing_quantizable(precision: str, result: GuardResult, metrics: dict[str, Any]) -> NoReturn:
    """Raise VariantSkipped for an INT8 build that found nothing to quantize (never ship FP32 labelled INT8)."""
    from optpipe.precision import VariantSkipped

    last = result.results[-1] if result.results else None
    why = last.warnings[-1] if last is not None and last.warnings else "nothing to quantize"
    metrics.update(
        status="nothing_quantizable",
        quantizable=last.quantizable_count if last is not None else 0,
        quantized=0,
        kept_nodes=result.kept_nodes,
    )
    raise VariantSkipped(f"{precision} skipped: {why}", metrics)  # the builder says what to use instead

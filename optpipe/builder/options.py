"""``BuildOptions``: every option of a build, typed, parsed and validated once.

Why one parser: the command line, the config file (``optpipe build -c``) and
the Python API (``optpipe.build(...)``) all set the same options. Each rule
(a tolerance's fields and ranges, the precision names, the guard fraction, the
TensorRT option keys) lives in one function here; the click parameter types
(:class:`PrecisionsType`, :class:`ToleranceType`) call those functions, so a
config-file value, a flag and a keyword argument are refused with the same
message. The result is a tree of frozen dataclasses, so no part of a build can
change an option another part already read.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from optpipe.core.errors import UserInputError
from optpipe.core.precisions import AUTO, FUSED_PRECISIONS, PRECISIONS
from optpipe.core.value_checks import parse_size
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE
from optpipe.passes.engine_trt import TrtEngineConfig
from optpipe.passes.export_onnx import EXPORTER_CHOICES
from optpipe.passes.fuse_transformer import FUSE_AUTO, FUSE_CHOICES
from optpipe.precision.names import CALIB_METHODS, DEFAULT_GUARD_SECONDS, IN_MEMORY
from optpipe.runtime.target import TARGET_CLASSES

#: ``--target``: the registered targets' names.
TARGET_NAMES = tuple(TARGET_CLASSES)
#: Tolerance fields (those of :class:`optpipe.compare.parity.Tolerance`); the ``min_*`` ones are fractions.
TOLERANCE_FIELDS = ("atol", "max_nrmse", "min_cosine", "min_decision", "min_logit_cosine", "min_row_cosine",
                    "min_top1", "min_top1_all", "rtol", "top1_margin")
FRACTION_FIELDS = frozenset({"min_cosine", "min_decision", "min_logit_cosine", "min_row_cosine", "min_top1",
                             "min_top1_all", "top1_margin"})
#: TensorRT option keys: the fields of the engine-trt pass's Config, which checks their values.
TRT_KEYS = tuple(f.name for f in dataclasses.fields(TrtEngineConfig))

P = ParamSpec("P")
R = TypeVar("R")


def parse_precisions(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"fp32,int8"`` or ``["fp32", "int8"]`` -> ``("fp32", "int8")``, duplicates dropped; or ``("auto",)``."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise UserInputError(f"precisions: expected a list of precisions such as [\"fp32\", \"int8\"], got {value!r}")
    names = tuple(dict.fromkeys(p.strip() for item in items for p in item.split(",") if p.strip()))
    allowed = (*PRECISIONS, *FUSED_PRECISIONS, AUTO)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise UserInputError(f"unknown precision {', '.join(map(repr, unknown)) or '(none)'}; expected one of "
                             f"{', '.join(allowed)}")
    if AUTO in names and len(names) > 1:
        raise UserInputError(f"'auto' selects the precisions itself; give it alone, not with {', '.join(names)}")
    return names


def check_tolerance(output: str, name: str, value: Any) -> float:
    """The one rule for a tolerance value: a known field, a finite number >= 0, a fraction <= 1 for ``min_*``."""
    if name not in TOLERANCE_FIELDS:
        raise UserInputError(f"unknown tolerance field '{name}' for output '{output}'; expected one of "
                             f"{', '.join(TOLERANCE_FIELDS)}")
    try:
        number = float(value) if not isinstance(value, bool | str) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserInputError(f"tolerance {output}:{name}={value} must be a finite number")
    if number < 0 or (name in FRACTION_FIELDS and number > 1):
        what = "a fraction in [0, 1]" if name in FRACTION_FIELDS else "a number >= 0"
        raise UserInputError(f"tolerance {output}:{name}={value} must be {what}")
    return number


def parse_tolerance_text(text: str) -> tuple[str, str, float]:
    """``OUTPUT:FIELD=VALUE`` (OUTPUT may be ``*``), checked by :func:`check_tolerance`."""
    try:
        output, rest = text.split(":", 1)
        name, value = rest.split("=", 1)
        number = float(value)
    except ValueError:
        raise UserInputError(
            f"'{text}': expected OUTPUT:FIELD=VALUE, e.g. logits:min_cosine=0.995 or '*:atol=1e-3'"
        ) from None
    return output.strip(), name.strip(), check_tolerance(output.strip(), name.strip(), number)


@dataclass(frozen=True)
class Tolerances:
    """Per-output parity tolerance overrides (``*`` = every output), each value checked once."""

    items: tuple[tuple[str, str, float], ...] = ()

    @classmethod
    def parse(cls, value: Tolerances | Mapping[str, Mapping[str, Any]] | Iterable[Any] | None) -> Tolerances:
        """From ``{output: {field: value}}``, ``(output, field, value)`` triples or ``OUTPUT:FIELD=VALUE`` texts."""
        if value is None:
            return cls()
        if isinstance(value, Tolerances):
            return value
        triples: list[tuple[str, str, float]] = []
        if isinstance(value, Mapping):
            for output, fields in value.items():
                if not isinstance(fields, Mapping):
                    raise UserInputError(f"tolerances.{output}: expected a table of tolerance fields, got {fields!r}")
                triples.extend((str(output), str(k), check_tolerance(str(output), str(k), v))
                               for k, v in fields.items())
            return cls(tuple(triples))
        for item in value:
            if isinstance(item, str):
                triples.append(parse_tolerance_text(item))
            else:
                output, name, number = item
                triples.append((str(output), str(name), check_tolerance(str(output), str(name), number)))
        return cls(tuple(triples))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{output: {field: value}}``; a later item wins over an earlier one."""
        out: dict[str, dict[str, float]] = {}
        for output, name, value in self.items:
            out.setdefault(output, {})[name] = value
        return out

    def merged(self, other: Tolerances) -> Tolerances:
        """These tolerances with ``other``'s on top."""
        return Tolerances(self.items + other.items)

    def check_outputs(self, outputs: Sequence[str]) -> None:
        """Every named output exists (or is ``*``): refused before any export."""
        unknown = sorted({o for o, _n, _v in self.items} - set(outputs) - {"*"})
        if unknown:
            raise UserInputError(
                f"tolerance given for unknown output(s) {', '.join(unknown)}; the outputs are {', '.join(outputs)}"
            )


@dataclass(frozen=True)
class OutputKinds:
    """What each output means (``logits``, ``multilabel``, ``embedding``, ``regression``, ``generic``;
    :mod:`optpipe.compare.output_kinds`).

    Only the kinds the user set; the others are inferred from the golden outputs when the build has
    them. ``*`` sets every output.
    """

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: OutputKinds | Mapping[str, str] | Iterable[Any] | None) -> OutputKinds:
        """From ``{output: kind}``, ``(output, kind)`` pairs or ``NAME=KIND`` texts, each kind checked."""
        from optpipe.compare.output_kinds import check_kind, parse_output_kind

        if value is None:
            return cls()
        if isinstance(value, OutputKinds):
            return value
        pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
        items: list[tuple[str, str]] = []
        for pair in pairs:
            if isinstance(pair, str):
                items.append(parse_output_kind(pair))
                continue
            if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise UserInputError(f"output kinds: expected {{output: kind}} or NAME=KIND texts, got {pair!r}")
            items.append((pair[0], check_kind(pair[1], f"output kind of '{pair[0]}'")))
        return cls(tuple(items))

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def check_outputs(self, outputs: Sequence[str]) -> None:
        """Every named output exists (or is ``*``): refused before any export."""
        unknown = sorted({name for name, _kind in self.items} - set(outputs) - {"*"})
        if unknown:
            raise UserInputError(
                f"output kind given for unknown output(s) {', '.join(unknown)}; the outputs are {', '.join(outputs)}"
            )


def calib_source(data: Any) -> str | None:
    """How a Config records calibration data: None, the path as text, or :data:`IN_MEMORY`."""
    return None if data is None else (str(data) if isinstance(data, str | Path) else IN_MEMORY)


@dataclass(frozen=True)
class CalibrationSource:
    """Where INT8/FP16 calibration samples come from and how INT8 calibrates."""

    source: str | None = None  # a path, FILE.py:NAME, IN_MEMORY, or None (no data)
    synthetic: bool = False  # calibrate on random inputs when there is no data (flagged in the report)
    method: str = "minmax"
    cache: str | None = None  # --calib-cache FILE
    samples: Any = field(default=None, compare=False, repr=False)  # the in-memory samples, when IN_MEMORY
    # Declared value ranges of integer inputs (--input NAME:SHAPE:DTYPE:LOW..HIGH): synthetic calibration
    # draws integers there instead of from the example's range.
    input_ranges: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in CALIB_METHODS:
            raise UserInputError(f"unknown calibration method '{self.method}'; use one of {', '.join(CALIB_METHODS)}")

    @classmethod
    def parse(cls, data: Any = None, synthetic: bool = False, method: str | None = None,
              cache: str | Path | None = None,
              input_ranges: Mapping[str, tuple[float, float]] | None = None) -> CalibrationSource:
        source = calib_source(data)
        ranges = tuple((str(name), float(low), float(high)) for name, (low, high) in (input_ranges or {}).items())
        return cls(source, bool(synthetic), str(method or "minmax"), str(cache) if cache else None,
                   data if source == IN_MEMORY else None, ranges)

    def ranges_dict(self) -> dict[str, tuple[float, float]]:
        return {name: (low, high) for name, low, high in self.input_ranges}


#: The accuracy guard's default time budget per variant, in seconds. Why a budget by default: a guard
#: that cannot reach the gate (static INT8 on a transformer: cosine 0.83 -> 0.88 over 4 rounds) otherwise
#: searches to its node limit, and an `auto` build of a 22 M-parameter model took 26 minutes. A round
#: already running finishes, so a variant's guard may overrun this by one round.


@dataclass(frozen=True)
class GuardOptions:
    """The accuracy guard of the fp16/int8 passes, and nodes kept in FP32 from the start."""

    enabled: bool = True
    max_keep_fraction: float = 0.1  # --guard-max-keep
    int8_exclude: tuple[str, ...] = ()  # ONNX node names the int8 passes keep in FP32
    fp16_block: tuple[str, ...] = ()  # ONNX node names the fp16 pass keeps in FP32
    # --guard-seconds: the guard's time budget; when spent it reports the best variant so far and why it
    # stopped. None: no budget (the node limit alone ends the search; the Python API only).
    guard_seconds: float | None = DEFAULT_GUARD_SECONDS

    def __post_init__(self) -> None:
        fraction = self.max_keep_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise UserInputError(f"--guard-max-keep must be a fraction in [0, 1], got {fraction}")
        _check_positive("--guard-seconds", self.guard_seconds)


def _check_positive(flag: str, value: float | None, integer: bool = False, minimum: float = 0.0) -> None:
    """``value`` is None or a number > ``minimum`` (>= for integers), else a one-line user error."""
    if value is None:
        return
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if integer:
        bad = bad or not isinstance(value, int) or value < minimum
        if bad:
            raise UserInputError(f"{flag} must be an integer >= {int(minimum)}, got {value!r}")
    elif bad or value <= minimum:
        raise UserInputError(f"{flag} must be a number > {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class BenchmarkOptions:
    """The benchmark: whether it runs, at which batch, and how long it measures (a time budget per runtime)."""

    enabled: bool = True
    batch: int | None = None  # --batch; checked against the input specs once they are known
    seconds: float = 2.0  # --bench-seconds: timed seconds per runtime (as trtexec's --duration)
    warmup: int = 5  # --warmup: untimed calls per runtime before timing
    min_calls: int = 5  # --iterations: fewest timed calls per runtime, even past the budget

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch < 1:
            raise UserInputError(f"--batch must be >= 1, got {self.batch}")
        _check_positive("--bench-seconds", self.seconds)
        _check_positive("--warmup", self.warmup, integer=True, minimum=0)
        _check_positive("--iterations", self.min_calls, integer=True, minimum=1)


@dataclass(frozen=True)
class SweepOptions:
    """The batch x threads sweep (``--sweep``, ``optpipe sweep``): off by default, so a default build stays fast."""

    enabled: bool = False
    seconds: float = 0.25  # --sweep-seconds: timed seconds per runtime at each point (a budget, not a count)
    latency_budget_ms: float | None = None  # --latency-budget: the best throughput is chosen within it

    def __post_init__(self) -> None:
        _check_positive("--sweep-seconds", self.seconds)
        if self.latency_budget_ms is not None:
            _check_positive("--latency-budget", self.latency_budget_ms)


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT engine options; None = the engine pass's default (or, for ``optpipe engine``, the recorded one).

    Their values are checked by the engine-trt pass's Config when the plan is made (before any work).
    """

    builder_optimization_level: int | None = None
    workspace_bytes: int | None = None
    timing_cache: str | None = None
    hardware_compatibility: str | None = None
    version_compatible: bool | None = None

    @classmethod
    def parse(cls, value: TensorRTOptions | Mapping[str, Any] | None) -> TensorRTOptions:
        if isinstance(value, TensorRTOptions):
            return value
        values = dict(value or {})
        unknown = set(values) - set(TRT_KEYS)
        if unknown:
            raise UserInputError(f"unknown TensorRT option(s) {', '.join(sorted(unknown))}; known: "
                                 f"{', '.join(TRT_KEYS)}")
        if values.get("timing_cache") is not None:
            values["timing_cache"] = str(values["timing_cache"])
        if values.get("version_compatible") is False:
            values["version_compatible"] = None  # a flag left off is "not set", so a recorded True stays
        return cls(**values)

    def set_values(self) -> dict[str, Any]:
        """The options that are set (the report's ``build.trt``; the engine pass's Config fields)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def over(self, recorded: TensorRTOptions) -> TensorRTOptions:
        """These options on top of ``recorded`` (those of the split build)."""
        return TensorRTOptions(**{**recorded.set_values(), **self.set_values()})

    def __bool__(self) -> bool:
        return bool(self.set_values())


@dataclass(frozen=True)
class EvalOptions:
    """Labelled eval data for task accuracy per variant, and the allowed drop."""

    data: Any = field(default=None, compare=False, repr=False)  # (inputs, labels), checked against the specs
    origin: str | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UserInputError(f"--max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")


@dataclass(frozen=True)
class BuildOptions:
    """Every option of one build (not the model and its inputs), as the CLI, config file and API give them."""

    target: str = "cpu"
    precisions: tuple[str, ...] = ("fp32",)
    exporter: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    model_name: str = ""
    tolerances: Tolerances = Tolerances()
    output_kinds: OutputKinds = OutputKinds()
    calibration: CalibrationSource = CalibrationSource()
    guard: GuardOptions = GuardOptions()
    benchmark: BenchmarkOptions = BenchmarkOptions()
    trt: TensorRTOptions = TensorRTOptions()
    eval: EvalOptions = EvalOptions()
    profile: bool = False  # --profile: also profile each engine per op type and node (its own session, untimed)
    # --static-batch: keep axis 0 at the example's size (default: dynamic, 1..64, when the model can vary it)
    static_batch: bool = False
    # --static-seq: keep token inputs at the example's length (default: a dynamic seq axis, optpipe.model.default_seq)
    static_seq: bool = False
    sweep: SweepOptions = SweepOptions()
    # --rebench: measure validation and benchmark again instead of reusing an identical cached measurement
    rebench: bool = False
    # --require-judged (default) / --allow-unjudged: a gate that cannot judge (too few decided rows, a
    # reference without spread) makes the verdict UNJUDGED (exit 4), never a pass; allowed, it passes with
    # the unjudged gates listed. Default True so that no build passes on a gate that judged nothing.
    require_judged: bool = True
    # --fuse: the cpu target's fused variants under auto: "auto" (detect), "off", or an ORT optimizer model type
    fuse: str = FUSE_AUTO
    # --external-data-above: every model file keeps its weights in ``<file>.data`` above this many bytes
    # (protobuf refuses a model over 2 GiB; 0 = always, so a test can prove the external-data path)
    external_data_above: int = EXTERNAL_DATA_ABOVE
    # {pass name: {Config field: value}}, checked; applied over the values the options above set.
    pass_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # --max-rss SIZE in bytes: the most memory the build may use; refused before any work when its estimate
    # (optpipe.builder.memory_budget) exceeds it, calibration chunked when only that makes it fit. None: the
    # machine's available memory is the limit of the up-front check.
    max_rss: int | None = None
    # The build's output directory (set by the build, not parsed): int8 may reuse the ranges of the
    # previous build there. Not an option of the build's result, so not compared.
    out_dir: str | None = field(default=None, compare=False)
    # Activation bytes a calibration run may hold (set by the build's memory plan, not parsed; None: the
    # default chunks). Chunked calibration computes the same ranges, so it is not compared either.
    calib_bytes: int | None = field(default=None, compare=False)

    def gate_fields(self) -> dict[str, Any]:
        """``tolerances`` and ``output_kinds`` for a pass whose gate judges parity (precision, validate)."""
        return {"tolerances": self.tolerances.as_dict(), "output_kinds": self.output_kinds.as_dict()}

    @property
    def auto(self) -> bool:
        """``--precision auto``: build the target's candidates, keep the fastest that passes."""
        return self.precisions == (AUTO,)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``report.json`` (``build.options``); in-memory samples are named, not copied."""
        return {
            "target": self.target,
            "precisions": list(self.precisions),
            "exporter": self.exporter,
            "threads": self.threads,
            "tolerances": self.tolerances.as_dict(),
            "output_kinds": self.output_kinds.as_dict(),
            "calibration": {"source": self.calibration.source, "synthetic": self.calibration.synthetic,
                            "method": self.calibration.method, "cache": self.calibration.cache,
                            "input_ranges": {k: list(v) for k, v in self.calibration.ranges_dict().items()}},
            "guard": {"enabled": self.guard.enabled, "max_keep_fraction": self.guard.max_keep_fraction,
                      "int8_exclude": list(self.guard.int8_exclude), "fp16_block": list(self.guard.fp16_block),
                      "seconds": self.guard.guard_seconds},
            "benchmark": {"enabled": self.benchmark.enabled, "batch": self.benchmark.batch,
                          "seconds": self.benchmark.seconds, "warmup": self.benchmark.warmup,
                          "min_calls": self.benchmark.min_calls},
            "trt": self.trt.set_values(),
            "eval": {"origin": self.eval.origin, "max_accuracy_drop": self.eval.max_accuracy_drop},
            "profile": self.profile,
            "static_batch": self.static_batch,
            "static_seq": self.static_seq,
            "sweep": {"enabled": self.sweep.enabled, "seconds": self.sweep.seconds,
                      "latency_budget_ms": self.sweep.latency_budget_ms},
            "rebench": self.rebench,
            "require_judged": self.require_judged,
            "fuse": self.fuse,
            "external_data_above": self.external_data_above,
            "pass_options": {k: dict(v) for k, v in self.pass_options.items()},
            "max_rss": self.max_rss,
        }


def _choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserInputError(f"unknown {what} '{value}'; choose one of: {', '.join(choices)}")
    return value


def parse_build_options(
    *,
    target: str = "cpu",
    precisions: str | Iterable[str] = ("fp32",),
    exporter: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    model_name: str = "",
    tolerances: Tolerances | Mapping[str, Mapping[str, float]] | Iterable[Any] | None = None,
    output_kinds: OutputKinds | Mapping[str, str] | Iterable[Any] | None = None,
    benchmark: bool = True,
    benchmark_batch: int | None = None,
    bench_seconds: float | None = None,
    warmup: int | None = None,
    iterations: int | None = None,
    calib_data: Any = None,
    synthetic_calib: bool = False,
    calib_method: str | None = "minmax",
    calib_cache: str | Path | None = None,
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    eval_data: Any = None,
    eval_origin: str | None = None,
    max_accuracy_drop: float | None = None,
    guard_max_keep: float | None = None,
    no_guard: bool = False,
    guard_seconds: float | None = None,
    int8_exclude: Sequence[str] = (),
    fp16_block: Sequence[str] = (),
    trt: TensorRTOptions | Mapping[str, Any] | None = None,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    profile: bool = False,
    static_batch: bool = False,
    static_seq: bool = False,
    sweep: bool = False,
    sweep_seconds: float | None = None,
    latency_budget: float | None = None,
    rebench: bool = False,
    require_judged: bool = True,
    fuse: str = FUSE_AUTO,
    external_data_above: int | str | None = None,
    max_rss: str | int | None = None,
) -> BuildOptions:
    """The one parser: keyword arguments (as ``optpipe.build`` and the CLI name them) -> :class:`BuildOptions`.

    Pass options are checked here too; ``pass_options["validate"]["tolerances"]`` also reach the
    precision gates and ``pass_options["engine-trt"]`` the recorded TensorRT options, as the flags do.
    """
    from optpipe.infra.pass_options import check_pass_options

    per_pass = check_pass_options(pass_options)  # a typo fails now, before anything runs
    parsed_tolerances, kinds, trt_options = _with_pass_tables(per_pass, Tolerances.parse(tolerances),
                                                              OutputKinds.parse(output_kinds),
                                                              TensorRTOptions.parse(trt))
    return BuildOptions(
        target=_choice("target", target, TARGET_NAMES),
        precisions=parse_precisions(precisions),
        exporter=_choice("exporter", exporter, EXPORTER_CHOICES),
        threads=_threads(threads),
        overwrite=bool(overwrite),
        model_name=model_name,
        tolerances=parsed_tolerances,
        output_kinds=kinds,
        calibration=CalibrationSource.parse(calib_data, synthetic_calib, calib_method, calib_cache, input_ranges),
        guard=GuardOptions(not no_guard, 0.1 if guard_max_keep is None else guard_max_keep,
                           tuple(int8_exclude), tuple(fp16_block),
                           DEFAULT_GUARD_SECONDS if guard_seconds is None else guard_seconds),
        benchmark=_benchmark_options(benchmark, benchmark_batch, bench_seconds, warmup, iterations),
        trt=trt_options,
        eval=EvalOptions(eval_data, eval_origin, max_accuracy_drop),
        pass_options=per_pass,
        profile=bool(profile),
        static_batch=_flag("static_batch", static_batch),
        static_seq=_flag("static_seq", static_seq),
        sweep=SweepOptions(_flag("sweep", sweep), SweepOptions.seconds if sweep_seconds is None else sweep_seconds,
                           latency_budget),
        rebench=_flag("rebench", rebench), require_judged=_flag("require_judged", require_judged),
        fuse=_choice("--fuse value", fuse, FUSE_CHOICES),
        external_data_above=_external_data_above(external_data_above),
        max_rss=_size("--max-rss", max_rss),
    )


def _threads(threads: int | None) -> int | None:
    """``--threads``: None (ONNX Runtime's default) or a count >= 1."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise UserInputError(f"--threads must be >= 1, got {threads}")
    return threads


def _external_data_above(value: int | str | None) -> int:
    """``--external-data-above``: a size (``2GB``, ``500M``, ``0``) or a byte count; None = the 1.8 GB default."""
    size = _size("--external-data-above", value, minimum=0, example="0, 500MB, 2GB")
    return EXTERNAL_DATA_ABOVE if size is None else size


def _size(name: str, value: str | int | None, *, minimum: int = 1_000_000, example: str = "6GB") -> int | None:
    """A size option (``10GB``, ``1.5GiB``, bytes as an int) in bytes, at least ``minimum``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserInputError(f"{name} must be a size such as {example}, got {value!r}")
    size = value if isinstance(value, int) else parse_size(value.strip())
    if size < minimum:
        least = "0" if minimum == 0 else f"{minimum / 1e6:g}MB"
        raise UserInputError(f"{name} must be a size of at least {least} (e.g. {example}), got {value!r}")
    return size


def _with_pass_tables(per_pass: Mapping[str, Mapping[str, Any]], tolerances: Tolerances, kinds: OutputKinds,
                      trt: TensorRTOptions) -> tuple[Tolerances, OutputKinds, TensorRTOptions]:
    """The options that pass tables also set, with those tables on top (checked ``pass_options``).

    ``validate``'s tolerances and output kinds reach the precision gates too, which judge by them;
    ``engine-trt``'s fields are recorded in report.json, so ``optpipe engine`` uses them as well.
    """
    validate = per_pass.get("validate", {})
    if "tolerances" in validate:
        tolerances = tolerances.merged(Tolerances.parse(validate["tolerances"]))
    if "output_kinds" in validate:
        kinds = OutputKinds(kinds.items + OutputKinds.parse(validate["output_kinds"]).items)
    if per_pass.get("engine-trt"):
        trt = TensorRTOptions.parse(per_pass["engine-trt"]).over(trt)
    return tolerances, kinds, trt


def _benchmark_options(enabled: bool, batch: int | None, seconds: float | None, warmup: int | None,
                       iterations: int | None) -> BenchmarkOptions:
    """BenchmarkOptions from the flags; a flag left out (None) keeps the default budget."""
    default = BenchmarkOptions()
    return BenchmarkOptions(bool(enabled), batch, default.seconds if seconds is None else seconds,
                            default.warmup if warmup is None else warmup,
                            default.min_calls if iterations is None else iterations)


def _flag(name: str, value: Any) -> bool:
    """A boolean option: True or False (a config file's ``static_batch = "no"`` is refused, not truthy)."""
    if not isinstance(value, bool):
        raise UserInputError(f"{name} must be true or false, got {value!r}")
    return value


def reject_unknown_keywords(func: Callable[P, R]) -> Callable[P, R]:
    """Make an unknown keyword a TypeError that names it and the closest valid keyword (difflib).

    Python's own message names only the unknown keyword; ``calib_dat=`` deserves "did you mean
    'calib_data'?".
    """
    parameters = inspect.signature(func).parameters
    valid = [name for name, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        unknown = [name for name in kwargs if name not in valid]
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keywords: {', '.join(valid)}"
            raise TypeError(f"{func.__name__}() got an unexpected keyword argument '{unknown[0]}'{hint}")
        return func(*args, **kwargs)

    return wrapper

"""``BuildFlags``: every parameter of ``optpipe build``, typed, handed to the command as one bundle.

Why a bundle: the command has some fifty flags; as a frozen dataclass they reach the command body
(and the helpers it calls) as one typed value instead of fifty parameters or an untyped dict, and
:meth:`BuildFlags.parser_arguments` is the one place where a flag's name differs from its
:func:`~optpipe.builder.options.parse_build_options` keyword (``--precision`` -> ``precisions``,
``--no-benchmark`` -> ``benchmark``). tests/builder/test_option_table.py proves the flags, the
config-file keys and ``build()``'s keywords agree.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optpipe.builder.options import TensorRTOptions


@dataclass(frozen=True)
class BuildFlags:
    """The values of ``optpipe build``'s parameters (click's names), as click or a config file gave them."""

    model: str | None
    out_dir: Path | None
    weights: Path | None
    inputs: tuple[str, ...]
    dynamics: tuple[str, ...]
    static_batch: bool
    static_seq: bool
    sweep: bool
    sweep_seconds: float | None
    latency_budget: float | None
    rebench: bool
    require_judged: bool
    target: str
    precision: tuple[str, ...]
    output_names: str | None
    tolerances: tuple[tuple[str, str, float], ...]
    threads: int | None
    benchmark_batch: int | None
    no_benchmark: bool
    exporter: str
    fuse: str
    overwrite: bool
    no_strict_weights: bool
    trust_pickle: bool
    as_json: bool
    config_file: Path | None
    executor: str | None
    no_cache: bool
    cache_dir: Path | None
    junit: Path | None
    trt_options: TensorRTOptions
    calib_data: str | None
    synthetic_calib: bool
    calib_method: str
    calib_cache: Path | None
    eval_data: Path | None
    max_accuracy_drop: float | None
    guard_max_keep: float | None
    no_guard: bool
    output_kinds: tuple[tuple[str, str], ...]
    guard_seconds: float | None
    bench_seconds: float | None
    warmup: int | None
    iterations: int | None
    mlflow_uri: str | None = None
    profile: bool | None = None
    opset: int | None = None
    external_data_above: str | None = None
    pass_options: dict[str, dict[str, Any]] | None = None  # set by a config file's passes tables
    max_rss: str | None = None

    def parser_arguments(self) -> dict[str, Any]:
        """The :func:`~optpipe.builder.options.parse_build_options` keywords these flags set."""
        pass_options = self.pass_options
        if self.opset is not None:  # the export pass's own option, as a config file's [passes.export] would set it
            pass_options = {**(pass_options or {}), "export": {**(pass_options or {}).get("export", {}),
                                                               "opset": self.opset}}
        same = ("target", "exporter", "threads", "overwrite", "tolerances", "benchmark_batch", "static_batch",
                "static_seq", "sweep", "sweep_seconds", "latency_budget", "rebench", "require_judged", "fuse",
                "calib_data", "synthetic_calib", "calib_method", "calib_cache", "max_accuracy_drop",
                "guard_max_keep", "no_guard", "output_kinds", "guard_seconds", "bench_seconds", "warmup",
                "iterations", "external_data_above", "max_rss")  # fmt: skip
        return {**{name: getattr(self, name) for name in same}, "model_name": self.model,
                "precisions": self.precision, "benchmark": not self.no_benchmark, "trt": self.trt_options,
                "pass_options": pass_options, "profile": bool(self.profile)}


def bundled_flags(func: Callable[[BuildFlags], Any]) -> Callable[..., Any]:
    """Hand the command's keyword arguments to ``func`` as one :class:`BuildFlags` (apply innermost)."""
    names = {field.name for field in dataclasses.fields(BuildFlags)}

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        unknown = set(kwargs) - names
        if unknown:  # a click parameter added without its BuildFlags field: a programming error, said plainly
            raise TypeError(f"BuildFlags has no field for {', '.join(sorted(unknown))}")
        return func(BuildFlags(**kwargs))

    return wrapper

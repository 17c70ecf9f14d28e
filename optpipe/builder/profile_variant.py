"""``optpipe profile DIR``: the per-op profile of a finished build's variant, on its golden inputs.

Reads ``report.json`` (which variant, which artifact) and ``golden/`` (the
inputs), so any complete build directory can be profiled later, without the
model. It prints and returns the profile and never rewrites the directory
(``report.json`` is covered by ``manifest.json``; ``optpipe build --profile``
puts the profile in the report instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optpipe.core.errors import EnvironmentUnavailable, UserInputError
from optpipe.core.records import VariantResult
from optpipe.precision.node_modules import node_module_paths
from optpipe.report.build_report import Report, ReportUnreadable, read_report
from optpipe.runtime.op_profile import OpProfile, profile_onnx


@dataclass(frozen=True)
class VariantProfile:
    """Which variant was profiled, and its profile."""

    precision: str
    artifact: str
    profile: OpProfile

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "artifact": self.artifact, "profile": self.profile.to_dict()}


def _read_report(directory: Path) -> Report:
    """``DIR/report.json`` through the one report reader; UserInputError (exit 2) when it is not one."""
    path = directory / "report.json"
    try:
        report = read_report(path)
    except ReportUnreadable as error:
        raise UserInputError(f"{directory} is not a build directory: {path.name}: {error}") from None
    if not report.variants:
        raise UserInputError(f"{path} has no variants: not an optpipe report")
    return report


def choose_variant(report: Report, precision: str | None) -> VariantResult:
    """The named variant, else the selected one, else the first with a built artifact."""
    built = [v for v in report.variants if v.artifact]
    if precision is None:
        precision = (report.selected or {}).get("precision")
    if precision is None and built:
        return built[0]
    for variant in report.variants:
        if variant.precision == precision:
            if not variant.artifact:
                raise UserInputError(f"variant '{precision}' has no built artifact (status "
                                     f"{variant.status}): nothing to profile")
            return variant
    names = ", ".join(v.precision for v in built) or "none"
    raise UserInputError(f"no variant '{precision}' in this build; built variants: {names}")


def profile_variant(directory: Path, variant: VariantResult, target: str, runs: int = 20,
                    threads: int | None = None) -> VariantProfile:
    """Profile one variant's artifact on the golden inputs (ONNX Runtime; TensorRT on a GPU machine)."""
    from optpipe.compare.golden import GoldenData

    golden = GoldenData.load(directory / "golden")
    feeds = [case.inputs for case in golden.cases]
    sources = [directory / p for p in (variant.onnx, "model.onnx", "model.export.onnx") if p]
    assert variant.artifact is not None  # choose_variant returns built variants only
    artifact = directory / variant.artifact
    if target == "tensorrt":
        from optpipe.runtime.tensorrt.engine import TrtEngineRunner
        from optpipe.runtime.tensorrt.layer_timing import engine_layer_timing

        with TrtEngineRunner(artifact) as runner:
            profile = engine_layer_timing(runner, feeds, node_module_paths(sources), runs=runs)
    elif target == "cpu":
        paths = node_module_paths([artifact, *sources])
        profile = profile_onnx(artifact, feeds, paths=paths, runs=runs, threads=threads)
    else:
        raise EnvironmentUnavailable(f"no profiler for target '{target}'")
    return VariantProfile(variant.precision, variant.artifact, profile)


def profile_build_dir(directory: str | Path, precision: str | None = None, runs: int = 20,
                      threads: int | None = None) -> VariantProfile:
    """``optpipe profile DIR [--variant P]``."""
    root = Path(directory)
    report = _read_report(root)
    return profile_variant(root, choose_variant(report, precision), report.target, runs, threads)

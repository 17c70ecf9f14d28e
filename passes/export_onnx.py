"""Export a PyTorch module to ONNX.

The dynamo exporter (torch.export based) runs first; when it fails, or when
its graph gives wrong results at a batch size other than the example's
(torch 2.13 can silently freeze a dynamic batch inside a Reshape), the
TorchScript exporter is tried. The report records which exporter produced the
model and why a fallback happened. Both failing is a user error (exit 2) that
carries both messages.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optpipe.compare import onnx_outputs
from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import UserInputError, full_message, summary_line
from optpipe.core.progress import Elapsed
from optpipe.core.tensor_spec import TensorSpec
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, load_graph, onnx_bytes, onnx_files, rename_outputs, save_onnx

EXPORTERS = ("dynamo", "torchscript")
#: ``--exporter``: ``auto`` tries the exporters in order; or one of them.
EXPORTER_CHOICES = ("auto", *EXPORTERS)


@dataclass(frozen=True)
class ExportConfig:
    """Options of the export pass."""

    exporter: str = option("auto", help='"auto" = dynamo, then TorchScript on failure; or "dynamo" / "torchscript"',
                           choices=EXPORTER_CHOICES, flags=("exporter",))
    opset: int | None = None  # None = the exporter's default (20 for dynamo in torch 2.13)
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The exporters print progress and deprecation noise; keep the console for optpipe."""
    names = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _dynamic_shapes(specs: tuple[TensorSpec, ...], ctx: BuildContext) -> dict[str, dict[int, Any]] | None:
    import torch

    bounds = {d.axis_name: d for d in ctx.dynamic}
    dims: dict[str, Any] = {}
    shapes: dict[str, dict[int, Any]] = {}
    for spec in specs:
        axes = {}
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                if dim not in dims:
                    bound = bounds.get(dim)
                    dims[dim] = (
                        torch.export.Dim(dim, min=bound.min, max=bound.max) if bound else torch.export.Dim(dim)
                    )
                axes[axis] = dims[dim]
        shapes[spec.name] = axes
    return shapes if dims else None


@dataclass(frozen=True)
class _ExportCall:
    """What ``torch.onnx.export`` is called with: the module, its positional and its keyword arguments."""

    module: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None


def _call_arguments(ctx: BuildContext) -> _ExportCall:
    """Module, positional and keyword arguments to export with: inputs bound by name are exported as keywords."""
    from optpipe.model.input_binding import KeywordInputs

    if isinstance(ctx.model, KeywordInputs):
        return _ExportCall(ctx.model.module, (), ctx.model.keywords(ctx.example_inputs))
    return _ExportCall(ctx.model, tuple(ctx.example_inputs), None)


def _export(exporter: str, path: Path, ctx: BuildContext, opset: int | None, external_above: int) -> None:
    import torch

    names = [spec.name for spec in ctx.input_specs]
    call = _call_arguments(ctx)
    with _quiet_exporter():
        if exporter == "dynamo":
            shapes = _dynamic_shapes(ctx.input_specs, ctx)
            # dynamic_shapes is keyed by forward()'s parameter names: by name for keyword inputs, else positional.
            dynamic: Any = None
            if shapes:
                dynamic = shapes if call.kwargs else tuple(shapes[name] for name in names)
            program = torch.onnx.export(
                call.module,
                call.args,
                kwargs=call.kwargs,
                dynamo=True,
                input_names=names,
                dynamic_shapes=dynamic,
                opset_version=opset,
            )  # no output_names: torch renames into a clash with internal values (optpipe.onnx.utils)
            assert program is not None
            program.save(str(path))  # one file for small models, external data above 2 GB
            _release_weights(program)
            _finish_file(path, list(ctx.output_names), external_above)
        else:
            dynamic_axes = {
                spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
                for spec in ctx.input_specs
            }
            torch.onnx.export(
                call.module,
                call.args,
                str(path),
                kwargs=call.kwargs,
                dynamo=False,
                input_names=names,
                output_names=list(ctx.output_names),
                dynamic_axes={k: v for k, v in dynamic_axes.items() if v} or None,
                opset_version=opset or 17,
            )
            _finish_file(path, None, external_above)


def _release_weights(program: Any) -> None:
    """Drop the exported graph's references to the PyTorch weights once the file is written.

    Why: onnxscript's rewrite rules are module-level objects whose pattern matchers keep the last graph they
    matched (``SimplePatternMatcher._graph``), so the exporter's graph outlives the export, and its
    initializers wrap the model's parameter tensors: the weights could never be freed or paged out
    (BERT-base: 0.42 GB kept resident all build long; with this, :mod:`optpipe.model.paged_weights`
    frees them). The file is written; the graph's values are not needed again.
    """
    model = getattr(program, "model", None)
    graph = getattr(model, "graph", None)
    for value in getattr(graph, "initializers", {}).values():
        value.const_value = None


def _finish_file(path: Path, names: list[str] | None, external_above: int) -> None:
    """Give the graph's outputs ``names`` (dynamo) and store its weights as every optpipe model is stored.

    The exporters decide external data themselves (above 2 GB; TorchScript one file per tensor);
    :func:`~optpipe.onnx.utils.save_onnx` puts the weights in one ``<name>.data`` above
    ``external_above``. A file already laid out so is renamed without reading its weights.
    """
    import onnx

    files = onnx_files(path)
    data = path.parent / f"{path.name}.data"
    laid_out = files == ([path, data] if onnx_bytes(path) > external_above else [path])
    outputs = [output.name for output in load_graph(path).graph.output]  # the names, not the weights
    rename = names is not None and outputs != names
    if laid_out and not rename:
        return
    if laid_out:  # renamed in place: an external model's graph alone is rewritten (save_onnx)
        model = onnx.load(str(path), load_external_data=False)
    else:
        model = onnx.load(str(path))
        for stale in files[1:]:
            stale.unlink()
    if names is not None and rename:
        rename_outputs(model, names)
    save_onnx(model, path, external_above=external_above)


def check_against_golden(path: Path, ctx: BuildContext, atol: float = 1e-3,
                         rtol: float = 1e-2) -> list[dict[str, Any]]:
    """Run the ONNX file on every golden case; raise when a case fails or differs.

    This is a coarse check for broken graphs (a frozen batch, wrong outputs),
    not the parity gate: the validate pass applies the real tolerances. Returns the model's outputs, a dict
    per case (simplify compares its result with them: :mod:`optpipe.compare.onnx_outputs`).
    """
    import numpy as np

    from optpipe.runtime.runners import OrtRunner

    if ctx.golden is None:
        return []
    runner = OrtRunner(path, threads=ctx.threads, level="basic", log_level=4)
    seen = []
    for case in ctx.golden.cases:
        try:
            results = runner.infer(case.inputs)
        except Exception as error:
            raise RuntimeError(  # the whole message: ORT explains which index differs on its second line
                f"the ONNX model fails at batch {case.batch} ({case.name}): {full_message(error, root_cause=True)}"
            ) from None  # the message already carries the cause; root_cause must not skip past it
        for name, reference in case.outputs.items():
            got = results[name]
            if got.shape != reference.shape:
                raise RuntimeError(
                    f"output '{name}' has shape {tuple(got.shape)} at batch {case.batch}, PyTorch gives "
                    f"{tuple(reference.shape)} (the exporter froze a dynamic dimension)"
                )
            if not np.allclose(got, reference, atol=atol, rtol=rtol, equal_nan=False):
                worst = float(np.max(np.abs(got.astype(np.float64) - reference)))
                raise RuntimeError(
                    f"output '{name}' differs from PyTorch at batch {case.batch} (max abs error {worst:.3g})"
                )
        seen.append(results)
    runner.close()
    return seen


def _declared_axes(ctx: BuildContext) -> dict[str, list[tuple[str, int]]]:
    """Non-batch dynamic axis names -> the (input, axis) pairs declared with them.

    The batch axis is already checked at other sizes by the golden cases.
    """
    axes: dict[str, list[tuple[str, int]]] = {}
    for spec in ctx.input_specs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and not (axis == 0 and dim == "batch"):
                axes.setdefault(dim, []).append((spec.name, axis))
    return axes


def _second_size(name: str, example: int, ctx: BuildContext) -> int | None:
    """A size other than the example's inside the declared bounds (the smallest such), or None."""
    bound = next((d for d in ctx.dynamic if d.axis_name == name), None)
    low, high = (bound.min, bound.max) if bound else (1, max(2, example * 2))
    for candidate in (low, example + 1, example - 1, high):
        if candidate != example and low <= candidate <= high and candidate >= 1:
            return candidate
    return None


def check_dynamic_axes(path: Path, ctx: BuildContext) -> None:
    """Every declared non-batch dynamic axis must be symbolic in the ONNX file and work at a second size.

    An exporter can silently freeze an axis (a Reshape to the example's size); a report that
    calls such an axis dynamic would be wrong. A failure here makes the exporter count as failed
    (so the other one is tried); a model that itself cannot run at the second size is the user's
    error.
    """
    import numpy as np
    import onnx

    from optpipe.onnx.shapes import graph_inputs
    from optpipe.runtime.runners import OrtRunner, TorchRunner

    declared = _declared_axes(ctx)
    if not declared or ctx.golden is None or not ctx.golden.cases:
        return
    shapes = {v.name: v.shape or () for v in graph_inputs(onnx.load(str(path), load_external_data=False).graph)}
    example = ctx.golden.cases[0].inputs
    for name, places in declared.items():
        for input_name, axis in places:
            dims = shapes.get(input_name, ())
            if axis >= len(dims) or isinstance(dims[axis], int):
                raise RuntimeError(f"dynamic axis '{name}' ({input_name}.{axis}) is static in the exported model")
        size = _second_size(name, int(example[places[0][0]].shape[places[0][1]]), ctx)
        if size is None:
            continue
        feed = dict(example)
        for input_name, axis in places:
            value = feed[input_name]
            feed[input_name] = np.ascontiguousarray(np.take(value, np.arange(size) % value.shape[axis], axis=axis))
        names = tuple(s.name for s in ctx.input_specs)
        try:
            reference = TorchRunner(ctx.model, names, tuple(ctx.output_names)).infer(feed)
        except Exception as error:
            raise UserInputError(
                f"--dynamic axis '{name}' ({', '.join(f'{i}.{a}' for i, a in places)}) cannot vary: the PyTorch "
                f"model fails when it is {size}: {summary_line(error)}; declare it static or fix the model"
            ) from None
        got = OrtRunner(path, threads=ctx.threads, level="basic", log_level=4).infer(feed)
        for output, want in reference.items():
            if got[output].shape != want.shape or not np.allclose(got[output], want, atol=1e-3, rtol=1e-2):
                raise RuntimeError(f"dynamic axis '{name}' does not work at size {size}: output '{output}' "
                                   "differs from PyTorch (the exporter froze it)")


@contextlib.contextmanager
def _interrupts_noticed() -> Iterator[list[bool]]:
    """Record a Ctrl-C (SIGINT) during the export, even if the exporter swallows the KeyboardInterrupt.

    A failed dynamo export falls back to TorchScript; an interrupt turned into an ordinary exception
    by code between the signal and us must stop the build instead of triggering that fallback.
    """
    noticed = [False]
    if threading.current_thread() is not threading.main_thread():
        yield noticed
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if previous == signal.SIG_IGN:
            return
        noticed[0] = True
        if callable(previous):
            previous(signum, frame)  # Python's default handler raises KeyboardInterrupt
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield noticed
    finally:
        signal.signal(signal.SIGINT, previous)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _model_exited(error: SystemExit) -> UserInputError:
    return UserInputError(f"the model's code called sys.exit({error.code!r}) during the ONNX export; "
                          "a model must not exit the process")


def _reraise_interrupt(error: Exception, interrupted: list[bool]) -> None:
    """Re-raise an interrupt or exit hidden in ``error`` (its cause chain) or noticed by the signal handler."""
    for link in _chain(error):
        if isinstance(link, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if isinstance(link, SystemExit):
            raise _model_exited(link) from None
    if interrupted[0]:
        raise KeyboardInterrupt from None


def exported_opset(path: Path) -> int | None:
    """The default-domain opset of the exported file (what ``--opset`` asked for, or what the exporter chose)."""
    model = load_graph(path)  # the opsets, not the weights
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class ExportOnnx(Pass):
    """torch nn.Module -> ONNX (dynamo exporter, TorchScript fallback)."""

    name = "export"
    description = "export to ONNX (dynamo exporter, TorchScript fallback), checked at other batch sizes"
    input_kind = ArtifactKind.TORCH
    output_kind = ArtifactKind.ONNX
    Config = ExportConfig
    uses = ("torch", "onnx", "onnxscript", "onnxruntime")
    cacheable = True

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:
        if ctx.model is None:
            raise UserInputError("the export pass needs a PyTorch model in the build context")
        if self.config.exporter not in EXPORTER_CHOICES:
            raise UserInputError(f"unknown exporter '{self.config.exporter}'; use auto, dynamo or torchscript")

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        order = EXPORTERS if self.config.exporter == "auto" else (self.config.exporter,)
        path = ctx.path("model.export.onnx")
        failures: list[str] = []  # whole messages, for report.json
        summaries: list[str] = []  # one line each, for the console and the exit-2 error
        for exporter in order:
            for stale in path.parent.glob(path.name + "*"):
                stale.unlink()
            try:
                with Elapsed(f"export ({exporter})"), _interrupts_noticed() as interrupted:  # ticker on a terminal
                    _export(exporter, path, ctx, self.config.opset, self.config.external_data_above)
                    outputs = check_against_golden(path, ctx)
                    check_dynamic_axes(path, ctx)
            except SystemExit as error:
                raise _model_exited(error) from None
            except UserInputError:  # the model itself cannot do what was declared: no exporter can help
                raise
            except Exception as error:  # never KeyboardInterrupt: Ctrl-C stops the build, not one exporter
                _reraise_interrupt(error, interrupted)
                failures.append(f"{exporter}: {full_message(error, root_cause=True)}")
                summaries.append(f"{exporter}: {summary_line(error, root_cause=True)}")
                continue
            files = onnx_files(path)
            metrics: dict[str, Any] = {
                "exporter": exporter,
                "fallback_reason": "; ".join(failures) or None,
                "bytes": sum(f.stat().st_size for f in files),
                "external_data": len(files) > 1,
                "checked_batches": [case.batch for case in ctx.golden.cases] if ctx.golden else [],
            }
            warnings_ = [f"dynamo exporter failed, used TorchScript: {summaries[0]}"] if summaries else []
            metrics["opset"] = exported_opset(path)
            metrics["requested_opset"] = self.config.opset
            if self.config.opset is not None and metrics["opset"] != self.config.opset:
                warnings_.append(f"opset {self.config.opset} was requested, but the {exporter} exporter wrote "
                                 f"opset {metrics['opset']} (it does not support the requested one)")
            result = artifact.derive(
                kind=ArtifactKind.ONNX,
                path=path,
                sha256=sha256_files(files),
                producer=f"export/{exporter}",
            )
            onnx_outputs.remember(ctx.shared, result.sha256, ctx.threads, outputs)  # simplify's comparison
            return PassResult(result, modified=True, metrics=metrics, warnings=warnings_)
        raise UserInputError("no exporter could export the model: " + " | ".join(summaries))

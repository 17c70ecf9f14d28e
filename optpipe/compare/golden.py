"""Golden data: the inputs a build validates on and PyTorch's outputs for them.

Saved in the build directory (``golden/<case>.npz``) so that parity can be
re-checked later, on another machine (the GPU box finishing a split build) or
by ``optpipe verify``, without the PyTorch model.

Cases: the example inputs; when the batch is dynamic, the same rows at other
batch sizes (torch 2.13's exporter can silently freeze the batch, so a
dynamic artifact is never trusted at only the example's batch); and real rows
that make top-1 agreement meaningful (the model file's ``eval_data()``, rows
held out of the calibration data).

Every case has a *role* (saved with it as ``meta:role``, with ``meta:source``):
``shape`` cases (the example and its resized copies) check shapes and may serve
both the accuracy guard and the verdict; ``guard`` rows are real rows the guard
may tune on; ``test`` rows are seen only by the final verdict. Why: a guard that
stops when the gate passes, judged again on the same rows, proves nothing
(issue 17); a verdict on rows the guard never saw is evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optpipe.core.artifact import atomic_path
from optpipe.core.errors import OptpipeError, UserInputError, first_line
from optpipe.core.tensor_spec import DynamicDim
from optpipe.runtime.runners import Runner

if TYPE_CHECKING:
    from optpipe.core.records import RowSplitRecord
    from optpipe.onnx.producers import Producer

INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"
META_PREFIX = "meta:"

#: The example and its copies at other batch sizes / axis sizes: shape checks, used by guard and verdict.
ROLE_SHAPE = "shape"
#: Real rows the accuracy guard (and the fp16 range scan, the per-layer analysis) may use.
ROLE_GUARD = "guard"
#: Real rows only the final verdict (validate, verify) sees: never the guard, never calibration.
ROLE_TEST = "test"
ROLES = (ROLE_SHAPE, ROLE_GUARD, ROLE_TEST)
#: Where a case's rows come from.
SOURCE_EXAMPLE, SOURCE_CALIBRATION, SOURCE_EVAL = "example", "calibration", "eval_data"


@dataclass
class GoldenCase:
    """One batch of inputs with the reference outputs, its role (who may look at it) and its rows' source."""

    name: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    role: str = ROLE_SHAPE
    source: str = SOURCE_EXAMPLE

    @property
    def batch(self) -> int:
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


@dataclass(frozen=True)
class RealRows:
    """Real rows to add to the golden data as cases ``<prefix>-N``, with their role and source."""

    prefix: str
    role: str
    source: str
    rows: dict[str, np.ndarray]


@dataclass
class GoldenData:
    """All golden cases of a build."""

    cases: list[GoldenCase]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for case in self.cases:
            arrays = {INPUT_PREFIX + k: v for k, v in case.inputs.items()}
            arrays.update({OUTPUT_PREFIX + k: v for k, v in case.outputs.items()})
            arrays.update({META_PREFIX + "role": np.array(case.role), META_PREFIX + "source": np.array(case.source)})
            final = directory / f"{case.name}.npz"
            with atomic_path(final) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub rejects **dict[str, ndarray]

    @classmethod
    def load(cls, directory: Path) -> GoldenData:
        """Every ``*.npz`` case in ``directory``; a file numpy cannot read is a UserInputError naming it."""
        cases = []
        for path in sorted(directory.glob("*.npz")):
            inputs, outputs, meta = _load_case(path)
            role, source = meta.get("role") or _legacy_role(path.stem), meta.get("source") or _legacy_source(path.stem)
            if role not in ROLES:
                raise UserInputError(f"golden file {path} has an unknown role '{role}' (expected {', '.join(ROLES)})")
            cases.append(GoldenCase(path.stem, inputs, outputs, role, source))
        return cls(cases)

    def for_guard(self) -> GoldenData:
        """The cases the accuracy guard may use: every case but the test rows."""
        return GoldenData([case for case in self.cases if case.role != ROLE_TEST])

    def rows(self, role: str) -> int:
        """How many rows the cases of ``role`` hold."""
        return sum(case.batch for case in self.cases if case.role == role)

    def case(self, name: str) -> GoldenCase:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(name)


def _legacy_role(name: str) -> str:
    """The role of a case saved before roles were (build directories of older optpipe versions).

    Their held-out rows (``heldout*``, ``calib-heldout*``) were gate rows of the guard: guard, not test.
    """
    return ROLE_GUARD if name.startswith(("heldout", "calib-heldout")) else ROLE_SHAPE


def _legacy_source(name: str) -> str:
    if name.startswith("calib-heldout"):
        return SOURCE_CALIBRATION
    return SOURCE_EVAL if name.startswith("heldout") else SOURCE_EXAMPLE


def _load_case(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """One golden ``.npz`` (inputs, outputs, ``meta:`` strings), read without unpickling; any defect names the file."""
    if path.is_symlink():
        raise UserInputError(f"{path} is a symbolic link; golden data must be files of the build")
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {k[len(INPUT_PREFIX) :]: data[k] for k in data.files if k.startswith(INPUT_PREFIX)}
            outputs = {k[len(OUTPUT_PREFIX) :]: data[k] for k in data.files if k.startswith(OUTPUT_PREFIX)}
            meta = {k[len(META_PREFIX) :]: str(data[k]) for k in data.files if k.startswith(META_PREFIX)}
    except Exception as error:  # BadZipFile, a truncated member, a pickled array, not an npz at all
        raise UserInputError(f"golden file {path} cannot be read: {first_line(error)}") from None
    if not inputs or not outputs:
        raise UserInputError(f"golden file {path} is not optpipe golden data (no input:/output: arrays)")
    return inputs, outputs, meta


def resize_batch(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The same rows repeated or cut to ``batch`` rows (valid values for any input kind)."""
    resized = {}
    for name, value in inputs.items():
        index = np.arange(batch) % value.shape[0]
        resized[name] = np.ascontiguousarray(value[index])
    return resized


def other_batch_sizes(example_batch: int, batch_dim: DynamicDim | None) -> list[int]:
    """Batch sizes to validate besides the example's: the minimum and one more."""
    if batch_dim is None:
        return []
    sizes = []
    for candidate in (batch_dim.min, example_batch + 1, batch_dim.opt):
        if candidate != example_batch and batch_dim.min <= candidate <= batch_dim.max and candidate not in sizes:
            sizes.append(candidate)
    return sizes[:2]


def resize_axes(inputs: dict[str, np.ndarray], axes: Sequence[tuple[str, int]], size: int) -> dict[str, np.ndarray]:
    """``inputs`` with every listed ``(input, axis)`` cut or tiled to ``size`` (values stay valid: ids, masks)."""
    resized = dict(inputs)
    for name, axis in axes:
        value = resized[name]
        index = np.arange(size) % value.shape[axis]
        resized[name] = np.ascontiguousarray(np.take(value, index, axis=axis))
    return resized


def axis_cases(
    example: dict[str, np.ndarray], dynamic_axes: Sequence[tuple[DynamicDim, Sequence[tuple[str, int]]]]
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """One case per declared dynamic axis size (min, opt, max) other than the example's.

    ``--dynamic seq=4:16:32@input_ids.1,attention_mask.1`` gives cases ``seq4``
    and ``seq32`` for a length-16 example: an exporter that froze the sequence
    length is caught here, not on the user's first longer sentence.
    """
    feeds: list[tuple[str, dict[str, np.ndarray]]] = []
    for dim, axes in dynamic_axes:
        if not axes:
            continue
        name, axis = axes[0]
        current = example[name].shape[axis]
        for size in dict.fromkeys((dim.min, dim.opt, dim.max)):
            if size != current:
                feeds.append((f"{dim.axis_name}{size}", resize_axes(example, axes, size)))
    return feeds


#: Most held-out rows in one golden case when the batch is dynamic. Why not the batch's maximum: every
#: case runs whole through PyTorch, onnxslim's check, each gate and the guard, and a 40-row case of
#: 224x224 photos held EfficientNet-Lite0's build at 1.2 GB of activations before any ONNX work.
HELDOUT_CHUNK = 16


def _heldout_chunk(batch_dim: DynamicDim | None, example_batch: int) -> int:
    """Rows per held-out case: up to :data:`HELDOUT_CHUNK` within a dynamic batch; the static batch itself."""
    return min(batch_dim.max, HELDOUT_CHUNK) if batch_dim else example_batch


def heldout_feeds(heldout: dict[str, np.ndarray], limit: int, chunk: int, static: bool,
                  prefix: str = "heldout") -> list[tuple[str, dict[str, np.ndarray]]]:
    """Up to ``limit`` held-out rows, re-batched into cases of at most ``chunk`` rows (exactly ``chunk`` if static).

    Held-out rows come in any batch size; the artifact takes what its batch allows. A static batch
    drops the last incomplete chunk (a repeated row would count twice); fewer rows than one batch
    are tiled to it. One case is named ``heldout``; several ``heldout-1``, ``heldout-2``, ...
    """
    rows = min(limit, next(iter(heldout.values())).shape[0])
    if static and rows >= chunk:
        rows -= rows % chunk
    spans = [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]
    if static and rows < chunk:
        spans = [(0, chunk)]
    feeds = []
    for number, (start, stop) in enumerate(spans, start=1):
        index = np.arange(start, stop) % rows
        name = prefix if len(spans) == 1 else f"{prefix}-{number}"
        feeds.append((name, {k: np.ascontiguousarray(v[index]) for k, v in heldout.items()}))
    return feeds


def make_golden(
    reference: Runner,
    example: dict[str, np.ndarray],
    batch_dim: DynamicDim | None,
    real_rows: Sequence[RealRows] = (),
    heldout_limit: int = 64,
    dynamic_axes: Sequence[tuple[DynamicDim, Sequence[tuple[str, int]]]] = (),
) -> GoldenData:
    """Run the reference runner on every case and collect the outputs.

    ``dynamic_axes`` lists the declared dynamic dimensions other than the
    batch (with the ``(input, axis)`` pairs they apply to); each is validated
    at its min, opt and max. ``real_rows``: real rows with their role (guard or
    test rows, :func:`real_row_sets`), each set re-batched into cases ``<prefix>-N``.
    """
    feeds: list[tuple[str, dict[str, np.ndarray], str, str]] = [("example", example, ROLE_SHAPE, SOURCE_EXAMPLE)]
    example_batch = next(iter(example.values())).shape[0]
    shape_feeds = [(f"batch{size}", resize_batch(example, size))
                   for size in other_batch_sizes(example_batch, batch_dim)]
    shape_feeds.extend(axis_cases(example, dynamic_axes))
    feeds.extend((name, feed, ROLE_SHAPE, SOURCE_EXAMPLE) for name, feed in shape_feeds)
    chunk = _heldout_chunk(batch_dim, example_batch)
    for rows in real_rows:
        feeds.extend((name, feed, rows.role, rows.source) for name, feed in
                     heldout_feeds(rows.rows, heldout_limit, chunk, static=batch_dim is None, prefix=rows.prefix))
    return GoldenData([_reference_case(reference, *feed) for feed in feeds])


def real_row_sets(eval_rows: Mapping[str, np.ndarray] | None, calib_guard: Mapping[str, np.ndarray] | None,
                  calib_test: Mapping[str, np.ndarray] | None) -> list[RealRows]:
    """The build's real golden rows by role: ``eval_data()`` rows judge only (test); held-out calibration rows split.

    Why eval rows are never guard rows: they are the task-accuracy set; a guard tuned on them would
    make both the verdict and the accuracy figure evidence of nothing.
    """
    sets = [RealRows("heldout-test", ROLE_TEST, SOURCE_EVAL, dict(eval_rows or {})),
            RealRows("calib-heldout-guard", ROLE_GUARD, SOURCE_CALIBRATION, dict(calib_guard or {})),
            RealRows("calib-heldout-test", ROLE_TEST, SOURCE_CALIBRATION, dict(calib_test or {}))]
    return [rows for rows in sets if rows.rows]


def _reference_case(reference: Runner, name: str, feed: dict[str, np.ndarray], role: str, source: str) -> GoldenCase:
    """One golden case: PyTorch's outputs on ``feed``, checked finite; a failing model is a UserInputError."""
    batch = next(iter(feed.values())).shape[0]
    try:
        outputs = reference.infer(feed)
    except OptpipeError:
        raise
    except (Exception, SystemExit) as error:  # SystemExit: the model's code called sys.exit()
        raise UserInputError(
            f"the PyTorch model fails on the '{name}' inputs (batch {batch}): {first_line(error)}; "
            "check --input/--dynamic against what the model accepts"
        ) from None
    for output, value in outputs.items():
        # A reference with NaN/Inf cannot judge anything; without this check every exporter
        # would be blamed for "differing from PyTorch".
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise UserInputError(
                f"the PyTorch model itself produces NaN/Inf in output '{output}' on the '{name}' inputs "
                f"(batch {batch}); fix the model or its inputs (--input LOW..HIGH ranges, weights)"
            )
    return GoldenCase(name, feed, outputs, role, source)


ROW_SPLIT_RULE = ("shape cases (the example, resized to other batch/axis sizes) serve the guard and the verdict; "
                  "eval_data() rows are test rows only (the verdict and task accuracy, never the guard or "
                  "calibration); rows held out of the calibration data are split into guard and test rows by "
                  "build.holdout.rule")


def row_split_record(golden: GoldenData, seed: int) -> RowSplitRecord:
    """``report.build.row_split``: rows, sources and cases of each role."""
    from optpipe.core.records import RowSet, RowSplitRecord

    def row_set(role: str) -> RowSet:
        cases = [case for case in golden.cases if case.role == role]
        sources: dict[str, int] = {}
        for case in cases:
            sources[case.source] = sources.get(case.source, 0) + case.batch
        return RowSet(sum(case.batch for case in cases), sources, tuple(case.name for case in cases))

    return RowSplitRecord(row_set(ROLE_SHAPE), row_set(ROLE_GUARD), row_set(ROLE_TEST), seed, ROW_SPLIT_RULE)


def output_kinds_of(golden: GoldenData, given: Mapping[str, str] | None,
                    producers: Mapping[str, Producer] | None = None) -> dict[str, str]:
    """Each output's kind (optpipe.compare.output_kinds): the user's, else inferred from the largest golden case and
    ``producers``, the ops that compute the outputs in the exported graph (optpipe.onnx.producers)."""
    from optpipe.compare.output_kinds import resolve_kinds

    largest = max(golden.cases, key=lambda case: case.batch)
    return resolve_kinds(largest.outputs, given, producers)

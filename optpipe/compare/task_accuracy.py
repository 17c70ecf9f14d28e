"""Task accuracy of each variant on labelled held-out data, and its drop gate.

Parity (cosine, top-1 agreement with PyTorch) says whether a variant computes
the same function; accuracy on labelled data says what that costs the user in
the metric they care about. Accuracy is the argmax of the first classifier-like
output (``[N, C]``, ``C >= 2``) against the labels, computed by running the
variant's engine on the eval inputs in batches the engine accepts (the largest
allowed by the dynamic batch range, or the static batch with the last chunk
padded). The FP32 PyTorch model is scored the same way once per build, and
each variant's *drop* in points is gated by ``--max-accuracy-drop``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.compare.parity import is_classifier_like
from optpipe.core.data_cast import cast_to_model_dtype
from optpipe.core.errors import OptpipeError, UserInputError, first_line
from optpipe.core.records import VariantResult
from optpipe.core.tensor_spec import TensorSpec

EvalSet = tuple[dict[str, np.ndarray], np.ndarray]

#: Largest batch used for accuracy runs when the batch axis is dynamic (bounded by its max).
EVAL_BATCH = 64


def load_eval_npz(path: str | Path, input_names: Sequence[str]) -> EvalSet:
    """``--eval-data FILE.npz``: one array per input name (first axis = samples) plus ``labels``."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"eval data '{file}' does not exist")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # BadZipFile, a truncated member (EOFError, zlib.error), a pickled array
        raise UserInputError(f"cannot read eval data '{file}': {first_line(exc)}") from None
    return check_eval_set(arrays, arrays.pop("labels", None), input_names, str(file))


def check_eval_set(
    inputs: Mapping[str, Any],
    labels: Any,
    input_names: Sequence[str],
    origin: str,
    input_specs: Sequence[TensorSpec] | None = None,
) -> EvalSet:
    """Validate names, labels, row counts and finiteness; one UserInputError line per defect.

    With ``input_specs`` (known once the build has resolved them) each input's
    trailing shape must match the model's (dynamic dimensions take any size) and
    its dtype must be of the same kind, cast like calibration data (float64 ->
    float32); float data for an integer input, or the reverse, is refused.
    """
    if labels is None:
        raise UserInputError(f"eval data {origin} has no 'labels' array")
    missing = sorted(set(input_names) - set(inputs))
    extra = sorted(set(inputs) - set(input_names))
    if missing or extra:
        raise UserInputError(
            f"eval data {origin}: inputs {sorted(inputs)} do not match the model's {list(input_names)}"
        )
    label_array = _check_labels(labels, origin)
    arrays = {name: np.ascontiguousarray(np.asarray(inputs[name])) for name in input_names}
    for spec in input_specs or ():
        if spec.name in arrays:
            arrays[spec.name] = _check_input(arrays[spec.name], spec, origin)
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != label_array.shape[0]:
            raise UserInputError(
                f"eval data {origin}: input '{name}' has {arr.shape[0] if arr.ndim else 0} rows but there are "
                f"{label_array.shape[0]} labels"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UserInputError(f"eval data {origin}: input '{name}' contains NaN or Inf")
    if label_array.size == 0:
        raise UserInputError(f"eval data {origin} is empty")
    return arrays, label_array.astype(np.int64)


def _check_labels(labels: Any, origin: str) -> np.ndarray:
    """Labels as one integer class index per sample: shape [N] (or [N, 1]), integer-valued."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise UserInputError(
            f"eval data {origin}: 'labels' has shape {tuple(array.shape)}; expected one class index per sample "
            "(shape [N]); for one-hot labels save labels.argmax(axis=1)"
        )
    if array.dtype.kind not in "iuf":
        raise UserInputError(
            f"eval data {origin}: 'labels' has dtype {array.dtype}; expected integer class indices"
        )
    whole = np.isfinite(array) & (array == np.round(array)) if array.dtype.kind == "f" else None
    if whole is not None and not whole.all():
        bad = array[~whole][0]
        raise UserInputError(
            f"eval data {origin}: 'labels' must be integer class indices, found {float(bad):g} "
            f"(dtype {array.dtype})"
        )
    return array


def _check_input(arr: np.ndarray, spec: TensorSpec, origin: str) -> np.ndarray:
    """One eval input against the model's spec: rank, static trailing dims, dtype kind (same-kind cast)."""
    where = f"eval data {origin}, input '{spec.name}'"
    expected = "[N" + "".join(f", {d}" for d in spec.shape[1:]) + "]"
    if arr.ndim != len(spec.shape) or arr.ndim == 0:
        raise UserInputError(
            f"{where}: shape {tuple(arr.shape)} (rank {arr.ndim}), expected {expected} (first axis = samples)"
        )
    for axis, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:], strict=True), start=1):
        if isinstance(want, int) and want >= 0 and got != want:
            raise UserInputError(
                f"{where}: shape {tuple(arr.shape)} differs from the model's {expected} at axis {axis}"
            )
    return np.ascontiguousarray(cast_to_model_dtype(arr, np.dtype(spec.dtype), where))


def classifier_output(output_names: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The first output shaped like class scores, or None (accuracy then does not apply)."""
    return next((name for name in output_names if is_classifier_like(tuple(shapes.get(name, ())))), None)


def _batches(rows: int, batch: int, static: bool) -> list[tuple[int, int]]:
    spans = [(start, min(start + batch, rows)) for start in range(0, rows, batch)]
    return spans if spans else [(0, 0)]


def score(
    infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    eval_set: EvalSet,
    output: str,
    batch: int,
    static: bool,
    infer_many: InferMany | None = None,
) -> dict[str, Any]:
    """Accuracy (%) of ``infer`` on ``eval_set``, reading class scores from ``output``.

    ``infer_many(feeds, rows)``, when given, runs the whole sequence of batches (the cached reference
    groups them into few cache entries); else ``infer`` runs each batch. A run that fails on the eval
    data (values the model rejects, e.g. token ids out of range) is a one-line :class:`UserInputError`,
    not a traceback.
    """
    try:
        return _score(infer_many or _one_by_one(infer), eval_set, output, batch, static)
    except OptpipeError:
        raise
    except Exception as exc:
        raise UserInputError(f"running the model on the eval data failed: {first_line(exc)}") from exc


#: Runs a sequence of feeds (and is told the total rows, for progress); yields each feed's outputs in order.
InferMany = Callable[[Iterable[dict[str, np.ndarray]], int], Iterable[Mapping[str, np.ndarray]]]


def _one_by_one(infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]) -> InferMany:
    return lambda feeds, _rows: (infer(feed) for feed in feeds)


def _feeds(inputs: Mapping[str, np.ndarray], spans: Sequence[tuple[int, int]], batch: int,
           static: bool) -> Iterator[dict[str, np.ndarray]]:
    for start, stop in spans:
        feed = {name: arr[start:stop] for name, arr in inputs.items()}
        pad = batch - (stop - start) if static else 0
        if pad:  # a static-batch engine takes exactly `batch` rows: repeat rows, drop their results
            index = np.arange(batch) % (stop - start)
            feed = {name: np.ascontiguousarray(arr[start:stop][index]) for name, arr in inputs.items()}
        yield feed


def _score(
    infer_many: InferMany,
    eval_set: EvalSet,
    output: str,
    batch: int,
    static: bool,
) -> dict[str, Any]:
    inputs, labels = eval_set
    rows = labels.shape[0]
    predictions = []
    spans = _batches(rows, batch, static)
    for (start, stop), result in zip(spans, infer_many(_feeds(inputs, spans, batch, static), rows), strict=True):
        scores = np.asarray(result[output])
        predictions.append(np.argmax(scores.reshape(scores.shape[0], -1), axis=1)[: stop - start])
    predicted = np.concatenate(predictions)
    correct = int((predicted == labels).sum())
    return {"accuracy": 100.0 * correct / rows, "correct": correct, "samples": rows, "output": output,
            "batch": batch}  # fmt: skip


def eval_batch(input_specs: Sequence[Any], dynamic: Sequence[Any]) -> tuple[int, bool]:
    """Batch size for accuracy runs and whether it is static (then every call needs exactly it)."""
    batch_dim = next((d for d in dynamic if d.axis_name == "batch"), None)
    if batch_dim is not None:
        return max(batch_dim.min, min(EVAL_BATCH, batch_dim.max)), False
    first = input_specs[0].shape[0] if input_specs and input_specs[0].shape else 1
    return (first if isinstance(first, int) else 1), True


def variant_accuracy(
    runner: Any,
    eval_set: EvalSet,
    output: str,
    batch: int,
    static: bool,
    reference: Mapping[str, Any],
    max_drop: float | None,
) -> tuple[dict[str, Any], str | None]:
    """The variant's accuracy record (with its drop vs PyTorch FP32) and a gate failure line or None."""
    record = score(runner.infer, eval_set, output, batch, static)
    record["reference_accuracy"] = reference["accuracy"]
    record["drop_points"] = reference["accuracy"] - record["accuracy"]
    record["max_drop_points"] = max_drop
    failure = None
    if max_drop is not None and record["drop_points"] > max_drop:
        failure = (
            f"accuracy {record['accuracy']:.2f}% is {record['drop_points']:.2f} points below FP32 PyTorch's "
            f"{reference['accuracy']:.2f}% (allowed: --max-accuracy-drop {max_drop:g})"
        )
    record["passed"] = failure is None
    return record, failure


class AccuracyCheck:
    """Scores the PyTorch reference once, then each variant's engine, and applies the drop gate."""

    def __init__(
        self,
        eval_set: EvalSet,
        reference: Any,
        output_shapes: Mapping[str, Sequence[int]],
        output_names: Sequence[str],
        input_specs: Sequence[Any],
        dynamic: Sequence[Any],
        max_drop: float | None,
    ) -> None:
        self.eval_set = eval_set
        self.max_drop = max_drop
        self.output = classifier_output(output_names, output_shapes)
        self.batch, self.static = eval_batch(input_specs, dynamic)
        self.reference: dict[str, Any] | None = None
        if self.output is not None:  # a cached reference stores the eval set as a few grouped entries
            self.reference = score(reference.infer, eval_set, self.output, self.batch, self.static,
                                   infer_many=getattr(reference, "infer_many", None))
        elif max_drop is not None:
            raise UserInputError(
                "--max-accuracy-drop needs a classifier-like output ([N, C] scores); the model's outputs "
                f"{list(output_names)} have none"
            )

    def record(self) -> dict[str, Any]:
        """The report's ``accuracy`` record: the FP32 PyTorch accuracy every drop is measured against."""
        if self.reference is None:
            return {"status": "not applicable: no classifier-like output"}
        return {"torch_fp32": self.reference, "max_drop_points": self.max_drop}

    def apply(self, variant: VariantResult, runner: Any) -> VariantResult:
        """The variant with its ``accuracy``; a drop beyond the limit fails it with one line."""
        if self.output is None or self.reference is None:
            return variant
        record, failure = variant_accuracy(
            runner, self.eval_set, self.output, self.batch, self.static, self.reference, self.max_drop
        )
        variant = replace(variant, accuracy=record)
        return variant.with_failure(failure) if failure else variant

"""Calibration / evaluation data: loading, validation and sample-count checks.

A *sample* is one complete set of model inputs for one inference call: a
``dict`` mapping every model input name to a numpy array of exactly the rank
the model declares (batch axis included). Every loader returns
``list[dict[str, np.ndarray]]`` so calibration, FP16 range checks and accuracy
gates all consume the same thing.

Accepted sources (``load_samples``):

* ``.npz`` file - one array per input name. An array whose rank is the model
  rank + 1 holds samples on its first axis (``arr[i]`` is sample ``i``). An
  array of exactly the model rank is one batch that is split along axis 0:
  into rows of batch 1 when the model's first axis is dynamic, into chunks of
  the static batch size otherwise. All inputs must yield the same count.
* directory - its ``.npz`` files (each one sample or one batch, same rule as
  above) followed by its ``.npy`` files, both in sorted file-name order.
  A ``.npy`` file belongs to the input named by its stem, or by the part of
  the stem after a double underscore: ``0001__input_ids.npy`` and
  ``0001__attention_mask.npy`` are the two inputs of sample group ``0001``;
  ``input_ids.npy`` alone holds all samples of ``input_ids``. A model with a
  single input accepts any ``.npy`` name. Each group is read with the ``.npz``
  rule, and an array one rank short of the model's is one unbatched sample.
* ``"FILE.py:NAME"`` - ``NAME`` in that Python file is an iterable, or a
  callable taking no arguments that returns one, yielding samples.
* any Python iterable of samples, or a mapping ``{input name: array}`` (read
  like an ``.npz``).

A yielded sample is a ``dict`` keyed by input name, a ``tuple``/``list`` in
model input order, or a bare array for a single-input model. Torch tensors are
accepted. A sample array whose rank is one less than the model's gets a
leading batch axis of 1 (datasets usually yield unbatched items).

Validation (each failure is one :class:`~optpipe.core.errors.UserInputError` line):
missing or unexpected input names (listed with the model's names), wrong rank
or a static dimension that differs, a dtype of another kind (float data for
an int input or the reverse: this is almost always a preprocessing bug, so it
is refused), NaN or Inf (the input and sample index are named), and no data.
Dtypes of the *same* kind are cast (float64 -> float32 is the common case of
numpy defaults; integers are cast only when every value fits), because
refusing them would only force every user to write the same ``astype``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from optpipe.core.data_cast import cast_to_model_dtype
from optpipe.core.errors import UserInputError, first_line
from optpipe.core.tensor_spec import TensorSpec
from optpipe.model.loading import import_python_file, imported_model_file

Sample = dict[str, np.ndarray]

#: Fewest samples each calibration method needs before its ranges are stable.
#: MinMax only needs to see the extremes of typical inputs; histogram methods
#: (entropy, percentile) estimate distribution tails, which need many more
#: values to be more than noise. TensorRT's and ONNX Runtime's examples use a
#: few hundred; 64 is the floor below which we warn.
MIN_SAMPLES: dict[str, int] = {"minmax": 16, "entropy": 64, "percentile": 64}



def load_samples(
    source: str | Path | Iterable[Any] | Mapping[str, Any],
    input_specs: Sequence[TensorSpec],
    *,
    max_samples: int | None = None,
) -> list[Sample]:
    """Load and validate samples from any supported source (see module docstring).

    ``max_samples`` truncates after validation of the kept samples, so a huge
    directory is not read beyond what calibration will use.
    """
    specs = list(input_specs)
    if not specs:
        raise UserInputError("the model has no inputs, so no calibration data can be loaded")
    raw: Iterable[Any]
    origin: str
    if isinstance(source, Mapping):
        raw, origin = _split_arrays(dict(source), specs, "mapping"), "the given mapping"
    elif isinstance(source, (str, Path)):
        raw, origin = _from_path_or_callable(source, specs)
    elif isinstance(source, Iterable):
        raw, origin = source, "the given iterable"
    else:
        raise UserInputError(
            f"calibration data source of type {type(source).__name__} is not supported; "
            "give an .npz file, a directory, 'FILE.py:NAME' or an iterable of input dicts"
        )

    samples: list[Sample] = []
    for index, item in enumerate(raw):
        if max_samples is not None and index >= max_samples:
            break
        samples.append(_validate_sample(item, specs, index))
    if not samples:
        raise UserInputError(f"calibration data from {origin} is empty: it yielded no samples")
    return rebatch(samples, specs)


def rebatch(samples: list[Sample], specs: Sequence[TensorSpec]) -> list[Sample]:
    """Samples of any batch size regrouped into the model's static batch (unchanged when axis 0 is dynamic).

    Why: calibration data often comes one row per sample while the model was exported at its
    example's batch. Rows are kept in order; a last incomplete batch is dropped (a repeated row
    would weigh twice), and fewer rows than one batch are tiled to it.
    """
    batch = specs[0].shape[0] if specs and specs[0].shape else None
    sizes = {next(iter(sample.values())).shape[0] for sample in samples}
    if not isinstance(batch, int) or not _shared_batch(specs) or sizes == {batch}:
        return samples
    names = [spec.name for spec in specs]
    rows = {name: np.concatenate([sample[name] for sample in samples]) for name in names}
    total = rows[names[0]].shape[0]
    count = max(1, total // batch)
    return [{name: np.ascontiguousarray(rows[name][np.arange(i * batch, (i + 1) * batch) % total]) for name in names}
            for i in range(count)]


def check_sample_count(n: int, method: str) -> str | None:
    """Return a warning when ``n`` samples are too few for ``method``, else ``None``.

    This is a warning, not an error: a smoke test or a tiny model may
    legitimately calibrate on few samples, but the report should say so.
    """
    needed = MIN_SAMPLES.get(method)
    if needed is None:
        raise UserInputError(f"unknown calibration method '{method}'; use one of {sorted(MIN_SAMPLES)}")
    if n < needed:
        return (
            f"only {n} calibration sample(s) for '{method}' calibration; it needs at least {needed} "
            "for stable ranges, so the INT8 model may be less accurate than it could be"
        )
    return None


def synthetic_samples(
    input_specs: Sequence[TensorSpec],
    n: int,
    seed: int = 0,
    *,
    dynamic_dims: Mapping[str, int] | None = None,
    int_high: int = 2,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[Sample]:
    """Random samples shaped like the inputs, for when the user explicitly asks.

    Calibrating on noise gives ranges that match noise, not real data: only use
    this when no data exists and the user opted in. Floats are standard
    normal; integers are uniform in ``[0, int_high)`` (the default 2 keeps
    masks, indices and token ids valid for any vocabulary) unless
    ``int_ranges`` gives an input's inclusive ``(low, high)`` (see
    :func:`integer_ranges`: token ids drawn from {0, 1} calibrate a language
    model for two tokens only); bools are random.
    Dynamic dimensions take their size from ``dynamic_dims`` (default 1).
    """
    if n <= 0:
        raise UserInputError(f"synthetic calibration needs a positive sample count, got {n}")
    dims = dict(dynamic_dims or {})
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for _ in range(n):
        sample: Sample = {}
        for spec in input_specs:
            shape = tuple(d if isinstance(d, int) else int(dims.get(d, 1)) for d in spec.shape)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                sample[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                low, high = (int_ranges or {}).get(spec.name, (0, int_high - 1))
                sample[spec.name] = rng.integers(low, high + 1, size=shape).astype(dtype)
            elif dtype.kind == "b":
                sample[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                raise UserInputError(f"cannot synthesise data for input '{spec.name}' of dtype {spec.dtype}")
        out.append(sample)
    return out


@dataclass(frozen=True)
class IntRange:
    """The inclusive value range synthetic calibration draws an integer input from, and where it came from."""

    low: int
    high: int
    origin: str  # "--input LOW..HIGH" or "example inputs"

    def to_dict(self) -> dict[str, int | str]:
        return {"low": self.low, "high": self.high, "from": self.origin}


def integer_ranges(
    input_specs: Sequence[TensorSpec],
    example: Mapping[str, np.ndarray] | None,
    declared: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, IntRange]:
    """Ranges for the integer inputs: the declared ``--input ...:LOW..HIGH`` (HIGH exclusive, as for the
    example) or the minimum and maximum seen in the example inputs."""
    ranges: dict[str, IntRange] = {}
    for spec in input_specs:
        if np.dtype(spec.dtype).kind not in "iu":
            continue
        if declared and spec.name in declared:
            low, high = declared[spec.name]
            ranges[spec.name] = IntRange(int(low), max(int(low), int(high) - 1), "--input LOW..HIGH")
        elif example is not None and spec.name in example and np.asarray(example[spec.name]).size:
            value = np.asarray(example[spec.name])
            ranges[spec.name] = IntRange(int(value.min()), int(value.max()), "example inputs")
    return ranges


def data_fingerprint(samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every sample, in order.

    Used as the calibration-data half of a calibration-cache key.
    """
    import hashlib

    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            arr = np.ascontiguousarray(sample[name])
            digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            digest.update(arr.tobytes())
        digest.update(b"\x00")
    return digest.hexdigest()


# --------------------------------------------------------------------------- sources


def _from_path_or_callable(source: str | Path, specs: list[TensorSpec]) -> tuple[Iterable[Any], str]:
    text = str(source)
    if isinstance(source, str) and ".py:" in text and not Path(text).exists():
        return _from_python(text, specs), text
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"calibration data '{path}' does not exist")
    if path.is_dir():
        return _from_directory(path, specs), str(path)
    if path.suffix == ".npz":
        return _split_arrays(_read_npz(path), specs, str(path)), str(path)
    if path.suffix == ".npy":
        return _from_npy_group({"": [path]}, specs), str(path)
    raise UserInputError(f"calibration data '{path}' is not an .npz file, a directory or 'FILE.py:NAME'")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:  # BadZipFile, a truncated member (EOFError, zlib.error), a pickled array
        raise UserInputError(f"cannot read calibration file '{path}': {first_line(exc)}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except Exception as exc:  # BadZipFile, a truncated member (EOFError, zlib.error), a pickled array
        raise UserInputError(f"cannot read calibration file '{path}': {first_line(exc)}") from None


def _from_directory(path: Path, specs: list[TensorSpec]) -> Iterable[Sample]:
    npz_files = sorted(path.glob("*.npz"))
    npy_files = sorted(path.glob("*.npy"))
    if not npz_files and not npy_files:
        raise UserInputError(f"calibration directory '{path}' holds no .npz or .npy files")
    groups: dict[str, list[Path]] = {}
    for file in npy_files:
        groups.setdefault(_npy_group_key(file, specs), []).append(file)

    def generate() -> Iterable[Sample]:
        for file in npz_files:
            yield from _split_arrays(_read_npz(file), specs, str(file))
        yield from _from_npy_group(groups, specs)

    return generate()


def _npy_input_name(file: Path, specs: list[TensorSpec]) -> str | None:
    stem = file.stem
    names = sorted((s.name for s in specs), key=len, reverse=True)
    for name in names:
        if stem == name or stem.endswith("__" + name):
            return name
    return specs[0].name if len(specs) == 1 else None


def _npy_group_key(file: Path, specs: list[TensorSpec]) -> str:
    name = _npy_input_name(file, specs)
    if name is None:
        raise UserInputError(
            f"calibration file '{file.name}' names no model input; name .npy files '<input>.npy' or "
            f"'<sample>__<input>.npy' with inputs {[s.name for s in specs]}"
        )
    stem = file.stem
    if len(specs) == 1 and stem != name and not stem.endswith("__" + name):
        return stem  # single-input model: every file is its own group
    return stem[: -len(name) - 2] if stem != name else ""


def _from_npy_group(groups: dict[str, list[Path]], specs: list[TensorSpec]) -> Iterable[Sample]:
    for key in sorted(groups):
        arrays: dict[str, np.ndarray] = {}
        for file in groups[key]:
            name = _npy_input_name(file, specs)
            assert name is not None  # checked by _npy_group_key
            if name in arrays:
                raise UserInputError(f"calibration files give input '{name}' twice in group '{key}'")
            arrays[name] = _read_npy(file)
        label = f"files '{key}*.npy'" if key else "files '<input>.npy'"
        yield from _split_arrays(arrays, specs, label)


def _from_python(spec_text: str, specs: list[TensorSpec]) -> Iterable[Any]:
    file_text, _, attr = spec_text.rpartition(":")
    file = Path(file_text)
    if not file.is_file():
        raise UserInputError(f"calibration data file '{file}' does not exist (from '{spec_text}')")
    if not attr.isidentifier():
        raise UserInputError(f"'{attr}' in '{spec_text}' is not a Python name; use 'FILE.py:NAME'")
    module = imported_model_file(file) or _import_data_file(file)
    if not hasattr(module, attr):
        raise UserInputError(f"'{file}' defines no '{attr}' (from '{spec_text}')")
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, Iterable):
        try:
            obj = obj()
        except Exception as exc:  # user code
            raise UserInputError(f"calling '{spec_text}' failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping):
        return _split_arrays(dict(obj), specs, spec_text)
    if not isinstance(obj, Iterable):
        raise UserInputError(
            f"'{spec_text}' gave a {type(obj).__name__}; it must be (or return) an iterable of input dicts"
        )
    return obj


def _import_data_file(file: Path) -> ModuleType:
    """Import a calibration data file that is not the build's model file, under a name of its own."""
    return import_python_file(file, f"_optpipe_calib_{abs(hash(file.resolve()))}", keep=False,
                              what="a calibration data file")


def _split_arrays(arrays: dict[str, Any], specs: list[TensorSpec], origin: str) -> list[Sample]:
    """Split ``{input: array}`` (the .npz rule) into samples."""
    _check_names(set(arrays), specs, origin)
    counts: dict[str, int] = {}
    per_input: dict[str, list[np.ndarray]] = {}
    for spec in specs:
        arr = _to_numpy(arrays[spec.name])
        rank = len(spec.shape)
        if arr.ndim == rank + 1:
            parts = [arr[i] for i in range(arr.shape[0])]
        elif arr.ndim == rank and rank > 0:
            first = spec.shape[0]
            # Rows that do not fill the model's static batch evenly are split one by one; load_samples re-batches.
            step = first if isinstance(first, int) and first > 0 and arr.shape[0] % first == 0 else 1
            parts = [arr[i : i + step] for i in range(0, arr.shape[0], step)]
        elif arr.ndim == rank - 1 and rank > 0:
            parts = [arr[np.newaxis]]  # one unbatched item
        else:
            raise UserInputError(
                f"{origin}: input '{spec.name}' has shape {tuple(arr.shape)}; expected {_fmt(spec.shape)} "
                f"or that with a leading samples axis"
            )
        counts[spec.name] = len(parts)
        per_input[spec.name] = parts
    if len(set(counts.values())) > 1:
        raise UserInputError(f"{origin}: inputs give different sample counts: {counts}")
    n = next(iter(counts.values()))
    return [{name: per_input[name][i] for name in per_input} for i in range(n)]


# --------------------------------------------------------------------------- validation


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_names(names: set[str], specs: list[TensorSpec], origin: str) -> None:
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in names]
    unexpected = sorted(names - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if unexpected:
            parts.append(f"unexpected inputs {unexpected}")
        raise UserInputError(f"{origin}: {'; '.join(parts)}; the model's inputs are {expected}")


def _validate_sample(item: Any, specs: list[TensorSpec], index: int) -> Sample:
    where = f"calibration sample {index}"
    if isinstance(item, Mapping):
        values = dict(item)
        for key in values:
            if not isinstance(key, str):
                raise UserInputError(f"{where}: keys must be input names (str), got {key!r}")
    elif isinstance(item, (tuple, list)):
        if len(item) != len(specs):
            raise UserInputError(
                f"{where}: a tuple of {len(item)} value(s) for {len(specs)} inputs {[s.name for s in specs]}"
            )
        values = {spec.name: v for spec, v in zip(specs, item, strict=True)}
    elif len(specs) == 1 and (isinstance(item, np.ndarray) or hasattr(item, "detach")):
        values = {specs[0].name: item}
    else:
        raise UserInputError(
            f"{where} is a {type(item).__name__}; a sample must be a dict of input name -> array "
            "or a tuple in input order"
        )
    _check_names(set(values), specs, where)
    shared = _shared_batch(specs)
    samples = {spec.name: _validate_array(_to_numpy(values[spec.name]), spec, index, shared) for spec in specs}
    if shared and len({a.shape[0] for a in samples.values()}) > 1:
        raise UserInputError(f"{where}: the inputs differ in batch size (axis 0): "
                             f"{', '.join(f'{k}: {v.shape[0]}' for k, v in samples.items())}")
    return samples


def _shared_batch(specs: Sequence[TensorSpec]) -> bool:
    """Whether axis 0 is one batch shared by every input (the same static size, or all dynamic)."""
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    return None not in firsts and (len(firsts) == 1 or all(isinstance(f, str) for f in firsts))


def _validate_array(arr: np.ndarray, spec: TensorSpec, index: int, shared_batch: bool = False) -> np.ndarray:
    where = f"calibration sample {index}, input '{spec.name}'"
    rank = len(spec.shape)
    if arr.ndim == rank - 1 and rank > 0:
        arr = arr[np.newaxis]
    if arr.ndim != rank:
        raise UserInputError(
            f"{where}: rank {arr.ndim} (shape {tuple(arr.shape)}), expected rank {rank} {_fmt(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if axis == 0 and shared_batch:
            continue  # any batch size: load_samples re-batches to the model's batch
        if isinstance(want, int) and want >= 0 and got != want:
            raise UserInputError(
                f"{where}: shape {tuple(arr.shape)} differs from the model's "
                f"{_fmt(spec.shape)} at axis {axis}"
            )
    if arr.size == 0:
        raise UserInputError(f"{where}: the array is empty (shape {tuple(arr.shape)})")
    arr = cast_to_model_dtype(arr, np.dtype(spec.dtype), where)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            what = "NaN" if np.isnan(arr).any() else "Inf"
            raise UserInputError(f"{where} contains {what} ({int((~finite).sum())} value(s))")
    return np.ascontiguousarray(arr)

"""The default dynamic sequence axis: token ids and masks accept any length up to the model's limit.

Why a default: tokenizers pad to a fixed length (128 is common), so an example and its
calibration data usually arrive padded, and an export at that shape makes every served
sentence pay for the padding (real sentences use 10-35 of 128 tokens: the call at their own
length costs a quarter). Optimum exports batch and sequence dynamic by default for this
reason. Which inputs: integer rank-2 inputs that share their axis-1 size, and inputs named
like a tokenizer's outputs (``input_ids``, ``attention_mask``, ``token_type_ids``).

The bounds come from what is known rather than guessed: min and opt are the shortest and the
median *real* length (the count of ``mask > 0``, or of non-zero ids without a mask) over the
example, the eval, held-out and calibration rows; max is the model's position limit (a
``max_position_embeddings`` attribute, or the size of a position-embedding table), else the
example's length. Golden cases at min, opt and max then check the artifact at short and long
lengths, and TensorRT's optimisation profile uses the same figures. A model that cannot run at
other lengths (PyTorch itself fails there) is exported static with one warning, as for batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from optpipe.compare.golden import resize_axes
from optpipe.core.errors import OptpipeError, first_line
from optpipe.core.tensor_spec import DynamicDim
from optpipe.runtime.runners import Runner

SEQ = "seq"
#: Tokenizer output names (Hugging Face's) that mark an input as token-shaped even when not an integer.
TOKEN_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids",
               "decoder_attention_mask")
#: Attributes that hold a transformer's position limit (BERT/GPT-2/T5-style configs).
POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length")

Axes = tuple[tuple[str, int], ...]


def token_axes(examples: Mapping[str, np.ndarray]) -> Axes:
    """The ``(input, 1)`` pairs that are a token sequence axis, or ``()`` when the inputs are not token-shaped.

    Candidates are rank-2 inputs that are integers or carry a tokenizer's name; they must share
    one axis-1 size (a length shared by ids and mask). When integer inputs disagree, the group of the
    named ones wins; with no named one the choice would be a guess, so none is made.
    """
    candidates = {name: value for name, value in examples.items()
                  if value.ndim == 2 and (np.issubdtype(value.dtype, np.integer) or name in TOKEN_NAMES)}
    lengths = {int(value.shape[1]) for value in candidates.values()}
    if len(lengths) > 1:
        named = {int(candidates[name].shape[1]) for name in candidates if name in TOKEN_NAMES}
        if len(named) != 1:
            return ()
        length = named.pop()
        candidates = {name: value for name, value in candidates.items() if value.shape[1] == length}
    if not candidates or next(iter(candidates.values())).shape[1] < 2:
        return ()
    return tuple((name, 1) for name in candidates)


def real_lengths(rows: Mapping[str, np.ndarray], axes: Axes) -> np.ndarray:
    """Each row's unpadded length: ``mask > 0`` counted in an input named like a mask, else non-zero ids.

    Padding id 0 is BERT's and most tokenizers' (a tokenizer with another pad id gives a mask too).
    """
    names = [name for name, _axis in axes if name in rows]
    if not names:
        return np.zeros(0, dtype=np.int64)
    masks = [name for name in names if "mask" in name.lower()]
    source = np.asarray(rows[masks[0] if masks else names[0]])
    if source.ndim != 2:
        return np.zeros(0, dtype=np.int64)
    return np.count_nonzero(source > 0 if masks else source != 0, axis=1).astype(np.int64)


def data_lengths(row_sets: Iterable[Mapping[str, np.ndarray] | None], axes: Axes) -> np.ndarray:
    """The real lengths of every row of every set (None sets skipped); rows of length 0 are dropped."""
    found = [real_lengths(rows, axes) for rows in row_sets if rows]
    joined = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return joined[joined > 0]


def position_limit(model: Any) -> int | None:
    """The longest sequence the model accepts, read from it (not run), or None when it says nothing.

    A ``config.max_position_embeddings``-like attribute on any submodule (Hugging Face models), else
    the size of an ``nn.Embedding`` named like a position table; the smallest found wins.
    """
    limits: list[int] = []
    modules = getattr(model, "named_modules", None)
    if not callable(modules):
        return None
    for name, module in modules():
        for holder in (module, getattr(module, "config", None)):
            for attribute in POSITION_ATTRIBUTES:
                value = getattr(holder, attribute, None) if holder is not None else None
                if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                    limits.append(value)
        size = getattr(module, "num_embeddings", None)
        if "position" in name.lower() and isinstance(size, int) and size > 1:
            limits.append(size)
    return min(limits) if limits else None


def default_seq_dim(example_length: int, lengths: np.ndarray, limit: int | None) -> DynamicDim:
    """min/opt/max of the sequence axis: shortest and median real length, and the position limit.

    The example's own length always lies within (the exporter traces it); without data the
    example's real lengths are all there is, and without a limit the example's length is the max.
    """
    high = max(limit or example_length, example_length)
    if lengths.size == 0:
        return DynamicDim(SEQ, 1, example_length, high)
    low = int(min(lengths.min(), example_length))
    if low >= high:  # every known row is as long as the limit: a one-value range is no axis (torch refuses it)
        low = 1
    opt = int(np.clip(round(float(np.median(lengths))), low, high))
    return DynamicDim(SEQ, max(1, low), max(1, opt), high)


def seq_blocker(reference: Runner, examples: Mapping[str, np.ndarray], axes: Axes, dim: DynamicDim) -> str | None:
    """Why the PyTorch model cannot run at other lengths (tried at min and max), or None."""
    current = int(examples[axes[0][0]].shape[axes[0][1]])
    for size in dict.fromkeys((dim.min, dim.max)):
        if size == current:
            continue
        try:
            reference.infer(resize_axes(dict(examples), axes, size))
        except OptpipeError:
            raise
        except Exception as error:  # user code: any failure means "cannot vary the length"
            return f"the PyTorch model fails at sequence length {size}: {first_line(error)}"
    return None


def static_seq_warning(reason: str) -> str:
    """The one warning of a token model exported at the example's length although the default is dynamic."""
    return (f"the sequence length stays static (only the example's length is accepted): {reason}; declare "
            "--dynamic seq=MIN:OPT:MAX@INPUT.AXIS,... for the lengths it takes, or pass --static-seq to silence "
            "this")


def declares_axes(declared: Sequence[tuple[str, int]] | None, axes: Axes) -> bool:
    """Whether a user's ``--dynamic ...@INPUT.AXIS`` already names one of these token axes."""
    return declared is not None and any(pair in axes for pair in declared)


#: The real-length buckets the benchmark times besides the example: the median, the 90th percentile, the longest.
SERVING_BUCKETS = (("p50", 50.0), ("p90", 90.0), ("max", 100.0))


def serving_feeds(row_sets: Sequence[Mapping[str, np.ndarray]], axes: Axes, batch: int, bounds: DynamicDim,
                  ) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """``(bucket, length, feed)`` at the p50/p90/max real length of the rows: what a server is fed.

    Each feed holds ``batch`` real rows whose own lengths are closest to the bucket's, cut to it
    (their padding dropped), so the timing is of real tokens at real lengths, within ``bounds``.
    Empty when the rows have no real lengths (no token data).
    """
    rows: list[tuple[int, Mapping[str, np.ndarray], int]] = []  # (real length, set, row index)
    for row_set in row_sets:
        for index, length in enumerate(real_lengths(row_set, axes).tolist()):
            if length > 0:
                rows.append((int(length), row_set, index))
    if not rows:
        return []
    lengths = np.asarray([length for length, _set, _index in rows])
    feeds: list[tuple[str, int, dict[str, np.ndarray]]] = []
    for name, percentile in SERVING_BUCKETS:
        length = int(np.clip(np.percentile(lengths, percentile, method="nearest"), bounds.min, bounds.max))
        if any(existing == length for _name, existing, _feed in feeds):
            continue
        nearest = sorted(rows, key=lambda row: (abs(row[0] - length), row[0]))[:batch]
        picked = [resize_axes({k: v[i : i + 1] for k, v in row_set.items()}, axes, length)
                  for _length, row_set, i in nearest]
        feed = {k: np.concatenate([row[k] for row in picked])[np.arange(batch) % len(picked)] for k in picked[0]}
        feeds.append((name, length, {k: np.ascontiguousarray(v) for k, v in feed.items()}))
    return feeds

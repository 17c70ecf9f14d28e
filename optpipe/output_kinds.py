"""What each model output means, and the parity gates that fit it.

A gate must judge what an output means: argmax agreement is the right check
for class scores and a wrong one for a sentence embedding (two embeddings 0.993
apart in cosine can have different argmax coordinates). Each output therefore
has a kind:

* ``logits``: class scores ``[N, C]``; top-1 agreement is gated, but only over
  rows where the reference decides (its top class leads the runner-up by at
  least ``top1_margin`` in probability) and only over at least
  :data:`MIN_TOP1_ROWS` such rows (over 2 rows one flip is 50%). A flip between
  two classes the reference itself scores within a few points (0.097 vs 0.094)
  is not a changed decision: on EfficientNet-Lite0 with real photos every
  INT8 flip was such a near tie, while all 27 decided rows agreed;
* ``embedding``: one vector per row; judged by per-row cosine (mean and
  minimum) and reported with how well each row's nearest neighbour among the
  other rows is preserved (similarity ranking);
* ``regression``: one value (or a few) per row; cosine over the batch and
  element-wise errors, no top-1;
* ``generic``: anything else; cosine, top-1 reported but never gated.

Inference is conservative: a kind is only guessed from evidence (the output's
name, rows of unit L2 norm, rows that are probabilities, one value per row);
otherwise the output is ``generic``. The user sets kinds with ``--output-kind
NAME=KIND``, ``output_kinds`` in a config file or ``build(output_kinds=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optpipe.errors import UserInputError

KINDS: tuple[str, ...] = ("logits", "embedding", "regression", "generic")
#: Fewest distinct rows over which top-1 agreement is a verdict rather than noise.
MIN_TOP1_ROWS = 20
_LOGITS_NAME = re.compile(r"(logit|class|score|prob|pred|label)", re.IGNORECASE)
_EMBEDDING_NAME = re.compile(r"(embed|sentence_vec|pooler|feature|vector)", re.IGNORECASE)


def check_kind(kind: str, where: str) -> str:
    """``kind`` when it is one of :data:`KINDS`, else a one-line user error."""
    if kind not in KINDS:
        raise UserInputError(f"{where}: unknown output kind '{kind}'; expected one of {', '.join(KINDS)}")
    return kind


def parse_output_kind(text: str) -> tuple[str, str]:
    """``NAME=KIND`` from the command line (``*`` = every output)."""
    name, sep, kind = text.partition("=")
    if not sep or not name.strip():
        raise UserInputError(f"--output-kind {text!r}: expected NAME=KIND, e.g. embedding=embedding")
    return name.strip(), check_kind(kind.strip(), f"--output-kind {text}")


def infer_kind(name: str, reference: np.ndarray) -> str:
    """The kind of one output from its name and PyTorch values; ``generic`` when unsure."""
    shape = reference.shape
    if len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1):
        return "regression"
    if len(shape) != 2:
        return "generic"
    if _LOGITS_NAME.search(name):  # the name is the author's word; it wins over the values
        return "logits"
    rows = reference.astype(np.float64)
    if _EMBEDDING_NAME.search(name) or (shape[1] >= 8 and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3)):
        return "embedding"
    if _are_probabilities(rows):
        return "logits"
    return "generic"


def resolve_kinds(
    references: Mapping[str, np.ndarray], given: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Kind of every output: the user's (by name, then ``*``) or the inferred one."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(references) - {"*"})
    if unknown:
        raise UserInputError(
            f"output kind given for unknown output(s) {', '.join(unknown)}; the outputs are {', '.join(references)}"
        )
    kinds = {}
    for name, value in references.items():
        kind = given.get(name, given.get("*"))
        kinds[name] = check_kind(kind, f"output kind of '{name}'") if kind else infer_kind(name, np.asarray(value))
    return kinds


@dataclass(frozen=True)
class KindJudgement:
    """The kind-specific part of one output's parity verdict."""

    kind: str
    rows: int  # distinct rows judged (repeated golden rows count once)
    top1_gated: bool
    top1_agreement: float | None  # over all distinct rows (reported)
    row_cosine_mean: float | None
    row_cosine_min: float | None
    neighbour_agreement: float | None  # embeddings: share of rows whose nearest other row is unchanged
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # logits: agreement over the rows where the reference decides (the gated figure), and how many there are
    top1_decided_agreement: float | None = None
    top1_decided_rows: int | None = None


def _are_probabilities(rows: np.ndarray) -> bool:
    """Rows that are already probabilities: non-negative, each summing to 1."""
    return bool(np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: kept when they already are (non-negative, summing to 1), else softmax."""
    rows = np.asarray(scores, dtype=np.float64)
    if _are_probabilities(rows):
        return rows
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def decided_rows(scores: np.ndarray, margin: float) -> np.ndarray:
    """Mask of rows whose top class leads the runner-up by at least ``margin`` in probability."""
    ordered = np.sort(class_probabilities(scores), axis=1)
    return np.asarray((ordered[:, -1] - ordered[:, -2]) >= margin)


def _top1_gate(
    ref: np.ndarray, got: np.ndarray, min_top1: float | None, margin: float | None
) -> tuple[float | None, int, bool, list[str], list[str]]:
    """Top-1 agreement of logits over the decided rows: (agreement, rows, gated, failures, warnings)."""
    decided = decided_rows(ref, margin) if margin else np.ones(ref.shape[0], dtype=bool)
    count = int(np.count_nonzero(decided))
    agree = np.argmax(ref, axis=1) == np.argmax(got, axis=1)
    value = float(np.mean(agree[decided])) if count else None
    gated = min_top1 is not None and value is not None and count >= MIN_TOP1_ROWS
    where = f"{count} rows" if not margin else (
        f"{count} decided rows (reference top-2 probability gap >= {margin}; "
        f"{ref.shape[0] - count} near-tie rows not gated)")  # fmt: skip
    failures = [f"top-1 agreement {value:.4f} < {min_top1} over {where}"] if (
        gated and value is not None and min_top1 is not None and value < min_top1) else []  # fmt: skip
    warnings = [] if gated or min_top1 is None else [
        f"top-1 agreement over only {where} is reported, not gated (needs >= {MIN_TOP1_ROWS}; "
        "give eval_data() or --eval-data with more rows)"]  # fmt: skip
    return value, count, gated, failures, warnings


def _same_row_shape(
    references: Sequence[np.ndarray], results: Sequence[np.ndarray], keys: Sequence[Sequence[bytes]] | None
) -> tuple[list[np.ndarray], list[np.ndarray], list[Sequence[bytes]] | None]:
    """The cases whose per-row shape is the one that covers the most rows."""
    counts: dict[tuple[int, ...], int] = {}
    for ref in references:
        counts[tuple(ref.shape[1:])] = counts.get(tuple(ref.shape[1:]), 0) + (ref.shape[0] if ref.ndim else 1)
    shape = max(counts, key=lambda k: counts[k]) if counts else ()
    chosen = [i for i, ref in enumerate(references) if tuple(ref.shape[1:]) == shape]
    return ([references[i] for i in chosen], [results[i] for i in chosen],
            None if keys is None else [keys[i] for i in chosen])  # fmt: skip


def _distinct_rows(arrays: Sequence[np.ndarray], keys: Sequence[Sequence[bytes]] | None) -> np.ndarray:
    """Rows of every case stacked, each distinct input row once (``keys`` identify rows)."""
    stacked = [a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1) for a in arrays]
    if keys is None:
        return np.concatenate(stacked).astype(np.float64)
    seen: set[bytes] = set()
    rows = []
    for array, case_keys in zip(stacked, keys, strict=True):
        for row, key in zip(array, case_keys, strict=True):
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def _row_cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sum(ref * got, axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


def neighbour_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    """Share of rows whose most similar other row (cosine) is the same in both; None under 3 rows."""
    if ref.shape[0] < 3:
        return None

    def nearest(rows: np.ndarray) -> np.ndarray:
        unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.asarray(np.argmax(similarity, axis=1))

    return float(np.mean(nearest(ref) == nearest(got)))


def judge(
    kind: str,
    references: Sequence[np.ndarray],
    results: Sequence[np.ndarray],
    *,
    min_top1: float | None,
    min_row_cosine: float | None = None,
    row_keys: Sequence[Sequence[bytes]] | None = None,
    top1_margin: float | None = None,
) -> KindJudgement:
    """Gate one output by its kind over its distinct rows.

    Cases whose rows have another shape (golden cases at other sequence lengths)
    are left to the cosine of :func:`optpipe.parity.compare_output`; the kind's
    checks use the row shape that covers the most rows.
    """
    references, results, row_keys = _same_row_shape(references, results, row_keys)
    ref = _distinct_rows(references, row_keys)
    got = _distinct_rows(results, row_keys)
    rows = int(ref.shape[0])
    failures: list[str] = []
    warnings: list[str] = []
    finite = bool(np.all(np.isfinite(got)))
    top1 = decided_top1 = decided_count = None
    gated = False
    if kind in ("logits", "generic") and ref.ndim == 2 and ref.shape[1] >= 2 and finite:
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
    if kind == "logits" and top1 is not None:
        decided_top1, decided_count, gated, top1_failures, top1_warnings = _top1_gate(ref, got, min_top1, top1_margin)
        failures.extend(top1_failures)
        warnings.extend(top1_warnings)
    elif kind == "logits" and not finite and min_top1 is not None:
        failures.append("top-1 agreement cannot be judged: the output has non-finite values")
    cos_mean = cos_min = agreement = None
    if kind == "embedding":
        cosines = _row_cosines(ref, got) if finite else np.zeros(max(rows, 1))
        cos_mean, cos_min = float(np.mean(cosines)), float(np.min(cosines))
        agreement = neighbour_agreement(ref, got) if finite else 0.0
        if min_row_cosine is not None and cos_min < min_row_cosine:
            failures.append(f"per-row cosine min {cos_min:.6f} < {min_row_cosine} over {rows} rows")
    return KindJudgement(kind, rows, gated, top1, cos_mean, cos_min, agreement, tuple(failures), tuple(warnings),
                         decided_top1, decided_count)  # fmt: skip


def row_keys(inputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """One key per input row (its bytes over every input), to count repeated golden rows once."""
    arrays = [np.ascontiguousarray(inputs[name]) for name in sorted(inputs)]
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    return [b"".join(a[i].tobytes() if a.ndim else a.tobytes() for a in arrays) for i in range(batch)]

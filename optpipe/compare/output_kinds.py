"""What each model output means, and the parity gates that fit it.

A gate must judge what an output means: argmax agreement is the right check
for class scores and a wrong one for a sentence embedding (two embeddings 0.993
apart in cosine can have different argmax coordinates), and a batch cosine is
the wrong check for a regression (an intercept dominates it). Each output
therefore has a kind, and each kind its gates (:mod:`optpipe.compare.kind_gates`):

* ``logits``: class scores, one decision per row (``[N, C]``), per token
  (``[N, T, V]``, class axis last) or per pixel (``[N, C, H, W]``, class axis
  1). Top-1 agreement is gated over units where the reference decides (its top
  class leads the runner-up by ``top1_margin`` in probability; on
  EfficientNet-Lite0 with real photos every INT8 flip was such a near tie),
  over at least :data:`MIN_TOP1_ROWS` of them, and over all units as a floor
  (``min_top1_all``): near-tie flips pass, a collapse does not;
* ``multilabel``: independent yes/no decisions, multi-label sigmoid outputs and
  binary ``[N, 1]`` logits (a binary logit is multilabel with one label);
  decision agreement over decided decisions (``min_decision``) and all of them;
* ``embedding``: one vector per row; per-row cosine (mean and minimum) gated,
  and how well each row's nearest neighbour is preserved (reported);
* ``regression``: values per row; error relative to the reference's spread over
  the rows (``max_nrmse``; R^2 = 1 - NRMSE^2 reported), never a batch cosine;
* ``generic``: anything else; cosine, top-1 reported but never gated.

Inference (:func:`infer_kind`) reads the output's name, the op that computes it
in the exported graph (:mod:`optpipe.onnx.producers`) and its values, and is
conservative: a kind is only guessed from evidence; otherwise ``generic``. The
user sets kinds with ``--output-kind NAME=KIND``, ``output_kinds`` in a config
file or ``build(output_kinds=...)``.

A gate that has too little evidence to judge is *unjudged*, never passed: the
record lists it under ``unjudged`` and the build's result is UNJUDGED (exit 4)
unless the user allowed it (``--allow-unjudged``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from optpipe.compare.kind_gates import (
    MIN_DECIDED_UNITS,
    Gate,
    are_probabilities,
    class_units,
    decision_gates,
    failure_text,
    probabilities,
    row_cosine_gate,
    spread_gate,
    top1_gates,
    unjudged_text,
)
from optpipe.core.errors import UserInputError

if TYPE_CHECKING:
    from optpipe.onnx.producers import Producer

KINDS: tuple[str, ...] = ("logits", "multilabel", "embedding", "regression", "generic")
#: Fewest decided units (rows, tokens, pixels, decisions) over which agreement is a verdict rather than noise.
MIN_TOP1_ROWS = MIN_DECIDED_UNITS
_LOGITS_NAME = re.compile(r"(logit|class|score|prob|pred|label)", re.IGNORECASE)
#: Names that say "class scores" for a token or pixel output ("pred"/"score" also name boxes and detections).
_POSITION_LOGITS_NAME = re.compile(r"(logit|class|seg)", re.IGNORECASE)
_EMBEDDING_NAME = re.compile(r"(embed|sentence_vec|pooler|feature|vector)", re.IGNORECASE)
_SOFTMAX = ("softmax", "log_softmax")


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


def _softmax_over(producer: Producer | None, axis: int, rank: int) -> bool:
    """The output is a (log-)softmax over ``axis``."""
    if producer is None or producer.op not in _SOFTMAX or producer.axis is None:
        return False
    return producer.axis % rank == axis % rank


def _kind_of_rows(name: str, rows: np.ndarray, producer: Producer | None) -> str:
    """``[N, C]`` with C >= 2: name, then producer and values."""
    op = producer.op if producer else None
    if op == "sigmoid":
        return "multilabel"
    if _LOGITS_NAME.search(name) or _softmax_over(producer, 1, 2):  # the name is the author's word
        return "logits"
    if _EMBEDDING_NAME.search(name) or (rows.shape[1] >= 8 and np.allclose(np.linalg.norm(rows, axis=1), 1.0,
                                                                            atol=1e-3)):
        return "embedding"
    if are_probabilities(rows) or op == "linear":  # probabilities, or a final Linear/Gemm over C >= 2 classes
        return "logits"
    return "generic"


def _kind_of_positions(name: str, shape: tuple[int, ...], producer: Producer | None) -> str:
    """``[N, T, V]`` (class axis last) or ``[N, C, H, W]`` (class axis 1): only a name or a producer decides."""
    class_axis = len(shape) - 1 if len(shape) == 3 else 1
    op = producer.op if producer else None
    if op == "sigmoid" and (shape[class_axis] == 1 or _POSITION_LOGITS_NAME.search(name)):
        return "multilabel"
    if shape[class_axis] >= 2 and (_POSITION_LOGITS_NAME.search(name)
                                   or _softmax_over(producer, class_axis, len(shape))):
        return "logits"
    return "generic"


def infer_kind(name: str, reference: np.ndarray, producer: Producer | None = None) -> str:
    """The kind of one output from its name, the op that computes it and its PyTorch values; ``generic`` when unsure.

    ``[N]`` and ``[N, 1]`` are regression unless a name or a Sigmoid says they are a binary decision.
    """
    shape = tuple(reference.shape)
    op = producer.op if producer else None
    if len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1):
        binary = len(shape) == 2 and (op == "sigmoid" or bool(_LOGITS_NAME.search(name)))
        return "multilabel" if binary else "regression"
    if len(shape) == 2:
        return _kind_of_rows(name, reference.astype(np.float64), producer)
    if len(shape) in (3, 4):
        return _kind_of_positions(name, shape, producer)
    return "generic"


def resolve_kinds(
    references: Mapping[str, np.ndarray], given: Mapping[str, str] | None = None,
    producers: Mapping[str, Producer] | None = None,
) -> dict[str, str]:
    """Kind of every output: the user's (by name, then ``*``) or the inferred one (``producers``: graph evidence)."""
    given = dict(given or {})
    producers = producers or {}
    unknown = sorted(set(given) - set(references) - {"*"})
    if unknown:
        raise UserInputError(
            f"output kind given for unknown output(s) {', '.join(unknown)}; the outputs are {', '.join(references)}"
        )
    kinds = {}
    for name, value in references.items():
        kind = given.get(name, given.get("*"))
        kinds[name] = (check_kind(kind, f"output kind of '{name}'") if kind
                       else infer_kind(name, np.asarray(value), producers.get(name)))  # fmt: skip
    return kinds


@dataclass(frozen=True)
class KindJudgement:
    """The kind-specific part of one output's parity verdict."""

    kind: str
    rows: int  # distinct rows judged (repeated golden rows count once)
    top1_gated: bool
    top1_agreement: float | None  # over all distinct units with a unique reference top class (reported)
    row_cosine_mean: float | None
    row_cosine_min: float | None
    neighbour_agreement: float | None  # embeddings: share of rows whose nearest other row is unchanged
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # logits: agreement over the units where the reference decides (the gated figure), and how many there are
    top1_decided_agreement: float | None = None
    top1_decided_rows: int | None = None
    gates: tuple[Gate, ...] = ()  # every gate of the kind: what it judged, over how many units
    unjudged: tuple[str, ...] = ()  # gates that could not judge, with what they lacked: never a pass
    r2: float | None = None  # regression: 1 - NRMSE^2 of the worst column


@dataclass(frozen=True)
class GateBars:
    """The thresholds of the kind gates (from :class:`optpipe.compare.parity.Tolerance`); None disables one."""

    min_top1: float | None = None
    min_top1_all: float | None = None
    top1_margin: float | None = None
    min_decision: float | None = None
    min_row_cosine: float | None = None
    max_nrmse: float | None = None


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: kept when they already are (non-negative, summing to 1), else softmax."""
    return probabilities(scores)


def decided_rows(scores: np.ndarray, margin: float) -> np.ndarray:
    """Mask of rows whose top class leads the runner-up by at least ``margin`` in probability."""
    ordered = np.sort(class_probabilities(scores), axis=1)
    return np.asarray((ordered[:, -1] - ordered[:, -2]) >= margin)


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


def _kind_gates(kind: str, ref: np.ndarray, got: np.ndarray, row_shape: tuple[int, ...],
                bars: GateBars) -> tuple[tuple[Gate, ...], dict[str, float | None]]:
    """The gates of ``kind`` over finite distinct rows, and the figures the record reports besides them."""
    if kind == "logits" and row_shape and row_shape[0 if len(row_shape) != 2 else 1] >= 2:
        ref_units, over = class_units(ref, row_shape)
        got_units, _ = class_units(got, row_shape)
        decided, floor = top1_gates(ref_units, got_units, over, min_top1=bars.min_top1,
                                    min_top1_all=bars.min_top1_all, margin=bars.top1_margin)
        return (decided, floor), {"top1": floor.value, "decided": decided.value, "decided_count": decided.count}
    if kind == "multilabel":
        return decision_gates(ref, got, min_decision=bars.min_decision, min_all=bars.min_top1_all,
                              margin=bars.top1_margin), {}
    if kind == "regression":
        gate, r2 = spread_gate(ref, got, bars.max_nrmse)
        return (gate,), {"r2": r2}
    if kind == "embedding":
        cosines = _row_cosines(ref, got)
        return (row_cosine_gate(cosines, bars.min_row_cosine),), {
            "cos_mean": float(np.mean(cosines)) if cosines.size else None,
            "cos_min": float(np.min(cosines)) if cosines.size else None, "neighbours": neighbour_agreement(ref, got)}
    return (), {}


def judge(
    kind: str,
    references: Sequence[np.ndarray],
    results: Sequence[np.ndarray],
    *,
    min_top1: float | None,
    min_row_cosine: float | None = None,
    row_keys: Sequence[Sequence[bytes]] | None = None,
    top1_margin: float | None = None,
    bars: GateBars | None = None,
) -> KindJudgement:
    """Gate one output by its kind over its distinct rows.

    A pure function of (reference rows, candidate rows, kind, bars): judging a
    subset of the rows is calling it on that subset. Cases whose rows have
    another shape (golden cases at other sequence lengths) are left to the cosine
    of :func:`optpipe.compare.parity.compare_output`; the kind's gates use the row shape
    that covers the most rows. ``bars`` wins over the separate keywords.
    """
    bars = bars or GateBars(min_top1=min_top1, min_row_cosine=min_row_cosine, top1_margin=top1_margin)
    references, results, row_keys = _same_row_shape(references, results, row_keys)
    row_shape = tuple(references[0].shape[1:]) if references and references[0].ndim else ()
    ref = _distinct_rows(references, row_keys)
    got = _distinct_rows(results, row_keys)
    rows = int(ref.shape[0])
    top1 = None
    if kind == "generic" and ref.ndim == 2 and len(row_shape) == 1 and row_shape[0] >= 2 and np.all(np.isfinite(got)):
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))  # reported, never gated
    if not np.all(np.isfinite(got)):
        broken = (f"the {kind} gates cannot pass: the output has non-finite values",) if kind != "generic" else ()
        return KindJudgement(kind, rows, False, None, None, None, None, broken)
    gates, figures = _kind_gates(kind, ref, got, row_shape, bars)
    decided_count = figures.get("decided_count")
    failures = tuple(failure_text(g) for g in gates if g.judged and g.passed is False)
    unjudged = tuple(unjudged_text(g) for g in gates if not g.judged)
    decided_gate = gates[0] if kind == "logits" and gates else None
    return KindJudgement(
        kind, rows, bool(decided_gate and decided_gate.judged and decided_gate.threshold is not None),
        figures.get("top1", top1), figures.get("cos_mean"), figures.get("cos_min"), figures.get("neighbours"),
        failures, (), figures.get("decided"), None if decided_count is None else int(decided_count), gates, unjudged,
        figures.get("r2"))


def row_keys(inputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """One key per input row (its bytes over every input), to count repeated golden rows once."""
    arrays = [np.ascontiguousarray(inputs[name]) for name in sorted(inputs)]
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    return [b"".join(a[i].tobytes() if a.ndim else a.tobytes() for a in arrays) for i in range(batch)]

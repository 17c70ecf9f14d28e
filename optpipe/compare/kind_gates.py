"""The gates that judge one output by what it means, each a record of what it judged and over how many units.

Every gate answers three questions, because a verdict that cannot say them is
not evidence: what was measured (``name``, ``value`` against ``threshold``),
over what and how many (``over``: rows, tokens, pixels, decisions, values;
``count``), and whether it could judge at all (``judged``). A gate with too
little evidence (fewer than :data:`MIN_DECIDED_UNITS` decided rows, a reference
that does not vary over the rows) is *unjudged*: it neither passes nor fails,
and the build says so (:mod:`optpipe.compare.output_kinds`, exit code 4).

* :func:`top1_gates`: class scores along a class axis, one decision per row
  (``[N, C]``), per token (``[N, T, V]``) or per pixel (``[N, C, H, W]``).
  Agreement is gated over the *decided* units (the reference's top class leads
  the runner-up by ``margin`` in probability: a flip between two classes the
  reference scores 0.097 vs 0.094 is not a changed decision), and, as a floor,
  over every unit with a unique top class: near-tie flips are allowed, a
  collapse (every top-1 swapped among low-confidence rows) is not.
* :func:`decision_gates`: independent yes/no decisions (multi-label sigmoid,
  a binary ``[N, 1]`` logit): a sigmoid probability or a logit is a two-class
  softmax over ``(0, z)``, so the decided-unit margin means the same thing.
* :func:`spread_gate`: regression, error relative to the reference's spread
  over the rows (normalised RMSE, with R^2 = 1 - NRMSE^2 reported): a batch
  cosine is dominated by the intercept (y = 1000 + signal has cosine 0.9999999
  with R^2 = -9.3).
* :func:`row_cosine_gate`: embeddings, the worst row's cosine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Fewest decided units (rows, tokens, pixels, decisions) over which agreement is a verdict, not noise
#: (over 2 rows one flip is 50%). Below it the gate is unjudged.
MIN_DECIDED_UNITS = 20
#: Fewest rows over which the reference's spread is estimated (the standard deviation of 8 rows is within
#: about 27% of the truth, so a 0.1 NRMSE bar acts between 0.07 and 0.13; of 2 rows it means nothing).
MIN_SPREAD_ROWS = 8


@dataclass(frozen=True)
class Gate:
    """One check of one output: what it measured, over what and how many, and whether it could judge."""

    name: str  # top1_decided | top1_all | decision_decided | decision_all | nrmse | row_cosine_min
    over: str  # rows | tokens | pixels | decisions | values
    count: int  # units the value is computed over
    value: float | None
    threshold: float | None  # None: reported, not gated
    judged: bool  # False: too little evidence to judge (see ``note``); never a pass
    passed: bool | None  # None when not judged or not gated
    note: str | None = None  # what was left out, or why it could not judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``top-1 agreement 0.9500 (>= 0.95) over 40 decided rows``."""
        measure, qualifier = _LABELS.get(self.name, (self.name, ""))
        value = "-" if self.value is None else f"{self.value:.4f}"
        bar = "" if self.threshold is None else f" ({'<=' if self.name == 'nrmse' else '>='} {self.threshold})"
        where = f"all {self.count} {self.over}" if qualifier == "all " else f"{self.count} {qualifier}{self.over}"
        return f"{measure} {value}{bar} over {where}"


_LABELS = {
    "top1_decided": ("top-1 agreement", "decided "), "top1_all": ("top-1 agreement", "all "),
    "decision_decided": ("decision agreement", "decided "), "decision_all": ("decision agreement", "all "),
    "nrmse": ("error / reference spread (NRMSE)", ""), "row_cosine_min": ("per-row cosine min", ""),
}


def failure_text(gate: Gate) -> str:
    """The failure line of a gate that judged and failed."""
    return f"{gate.describe()} fails" + (f" ({gate.note})" if gate.note else "")


def unjudged_text(gate: Gate) -> str:
    """The line of a gate that could not judge: what is missing and how to give it."""
    measure, qualifier = _LABELS.get(gate.name, (gate.name, ""))
    return f"{measure} over {qualifier}{gate.over} cannot be judged: {gate.note}"


def _agreement_gate(name: str, over: str, agree: np.ndarray, threshold: float | None, minimum: int,
                    note: str | None) -> Gate:
    """A gate on the share of ``agree``; unjudged under ``minimum`` units when it has a threshold."""
    count = int(agree.size)
    value = float(np.mean(agree)) if count else None
    if threshold is None:
        return Gate(name, over, count, value, None, True, None, note)
    if count < minimum:
        why = f"only {count} {over}, needs >= {minimum}" + (f"; {note}" if note else "")
        return Gate(name, over, count, value, threshold, False, None, why)
    assert value is not None
    return Gate(name, over, count, value, threshold, True, value >= threshold, note)


def class_units(rows: np.ndarray, row_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """``[rows, prod(row_shape)]`` class scores as ``[units, classes]``: rows, tokens (last axis) or pixels (axis 1)."""
    full = rows.reshape((rows.shape[0], *row_shape))
    if len(row_shape) == 1:
        return full, "rows"
    if len(row_shape) == 2:  # [N, T, V]: one decision per token
        return full.reshape(-1, row_shape[-1]), "tokens"
    moved = np.moveaxis(full, 1, -1)  # [N, C, H, W...]: one decision per pixel over the channel axis
    return moved.reshape(-1, row_shape[0]), "pixels"


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: kept when they already are (non-negative, summing to 1), else softmax."""
    rows = np.asarray(scores, dtype=np.float64)
    if are_probabilities(rows):
        return rows
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def are_probabilities(rows: np.ndarray) -> bool:
    """Rows that are already probabilities: non-negative, each summing to 1."""
    return bool(rows.size and np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def top1_gates(ref: np.ndarray, got: np.ndarray, over: str, *, min_top1: float | None,
               min_top1_all: float | None, margin: float | None) -> tuple[Gate, Gate]:
    """Top-1 agreement of ``[units, classes]`` scores over the decided units, and the all-units floor.

    Units whose reference has no unique top class (all zero, exact ties) have no top-1 and are left out
    of both; near ties (gap under ``margin``) count in the floor only.
    """
    ordered = np.sort(ref, axis=1)
    unique = (ordered[:, -1] - ordered[:, -2]) > 1e-6 * np.maximum(np.abs(ordered[:, -1]), 1.0)
    gap = np.diff(np.sort(probabilities(ref), axis=1)[:, -2:], axis=1)[:, 0]
    decided = unique & (gap >= margin) if margin else unique
    agree = np.argmax(ref, axis=1) == np.argmax(got, axis=1)
    tied = int(np.count_nonzero(~unique))
    tie_note = f"{tied} {over} with tied reference scores left out" if tied else None
    near = int(np.count_nonzero(unique & ~decided))
    decided_note = (f"decided: reference top-2 probability gap >= {margin}; {near} near-tie {over} not in this gate"
                    if margin else None)  # fmt: skip
    return (_agreement_gate("top1_decided", over, agree[decided], min_top1, MIN_DECIDED_UNITS, decided_note),
            _agreement_gate("top1_all", over, agree[unique], min_top1_all, MIN_DECIDED_UNITS, tie_note))


def _yes_probability(values: np.ndarray, are_probs: bool) -> np.ndarray:
    return values if are_probs else 1.0 / (1.0 + np.exp(-np.clip(values, -60.0, 60.0)))


def decision_gates(ref: np.ndarray, got: np.ndarray, *, min_decision: float | None, min_all: float | None,
                   margin: float | None) -> tuple[Gate, Gate]:
    """Agreement of independent yes/no decisions (every element a decision) over decided ones, and the floor.

    Values are probabilities (threshold 0.5) when every reference value lies in [0, 1], else logits
    (threshold 0). A decision is decided when its two-class gap ``|2p - 1|`` is at least ``margin``.
    """
    ref, got = ref.ravel(), got.ravel()
    are_probs = bool(ref.size and np.all((ref >= 0) & (ref <= 1)))
    p_ref = _yes_probability(ref, are_probs)
    agree = (p_ref > 0.5) == (_yes_probability(got, are_probs) > 0.5)
    decided = np.abs(2 * p_ref - 1) >= margin if margin else np.ones(ref.shape, dtype=bool)
    near = int(np.count_nonzero(~decided))
    where = "probabilities, yes at > 0.5" if are_probs else "logits, yes at > 0"
    decided_note = f"{where}; decided: |2p - 1| >= {margin}; {near} near-even decisions not in this gate" if margin \
        else where
    return (_agreement_gate("decision_decided", "decisions", agree[decided], min_decision, MIN_DECIDED_UNITS,
                            decided_note),
            _agreement_gate("decision_all", "decisions", agree, min_all, MIN_DECIDED_UNITS, where))


def spread_gate(ref: np.ndarray, got: np.ndarray, max_nrmse: float | None) -> tuple[Gate, float | None]:
    """Regression: RMSE over the rows divided by the reference's standard deviation over the rows (worst column).

    Returns the gate and R^2 (``1 - NRMSE^2``, the worst column's). Unjudged under
    :data:`MIN_SPREAD_ROWS` rows or when the reference does not vary over the rows.
    """
    rows = int(ref.shape[0])
    spread = ref.std(axis=0) if rows else np.zeros(0)
    varies = spread > 1e-9 * np.maximum(np.abs(ref).max(axis=0), 1e-30) if rows else np.zeros(0, dtype=bool)
    if rows < MIN_SPREAD_ROWS or not np.any(varies):
        why = (f"only {rows} rows, needs >= {MIN_SPREAD_ROWS} to measure the reference's spread" if rows
               < MIN_SPREAD_ROWS else "the reference does not vary over the rows")  # fmt: skip
        return Gate("nrmse", "rows", rows, None, max_nrmse, max_nrmse is None, None, why), None
    rmse = np.sqrt(np.mean((got - ref) ** 2, axis=0))
    nrmse = float(np.max(rmse[varies] / spread[varies]))
    constant = int(np.count_nonzero(~varies))
    note = f"{constant} constant columns left out" if constant else None
    passed = None if max_nrmse is None else bool(nrmse <= max_nrmse)
    return Gate("nrmse", "rows", rows, nrmse, max_nrmse, True, passed, note), 1.0 - nrmse**2


def row_cosine_gate(cosines: np.ndarray, min_row_cosine: float | None) -> Gate:
    """Embeddings: the worst row's cosine with the reference's row."""
    worst = float(np.min(cosines)) if cosines.size else None
    passed = None if min_row_cosine is None or worst is None else bool(worst >= min_row_cosine)
    judged = worst is not None or min_row_cosine is None
    return Gate("row_cosine_min", "rows", int(cosines.size), worst, min_row_cosine, judged, passed,
                None if judged else "no rows")

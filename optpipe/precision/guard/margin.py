"""The guard's margin: tune on the guard rows to a stricter bar than the user's, so rows it never saw pass too.

Why: the guard stops at the first model that clears the bar on the rows it tunes on, so it stops where
those rows *just* pass, and rows it never saw sit lower. Measured on all-MiniLM-L6-v2 (issue 19,
``--tolerance '*:min_row_cosine=0.99'``): the dynamic INT8 guard passed its 24 guard rows at a worst-row
cosine of 0.9937, the 52 test rows gave 0.9894 and 40 held-out sentences at their own lengths 0.9858, so
the variant was rejected and FP32 shipped. Tuning to a stricter bar closes part of the gap ``1 - bar``:
with :data:`GUARD_MARGIN` = 0.5 the guard aims at 0.995 for a bar of 0.99 (0.99 for the default 0.98).

Only similarity bars get a margin (``min_cosine``, ``min_row_cosine``, ``min_logit_cosine``): they
measure a continuous error that shrinks as nodes are kept. Top-1 and decision agreement count flips of
near ties, which keeping nodes does not move steadily. The final verdict never sees the margin: the
test rows are judged by the user's bars (:func:`optpipe.compare.parity.validate_outputs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optpipe.compare.parity import tolerance_for

#: Fraction of the gap ``1 - bar`` the guard closes on its own rows (0: tune to the user's bar exactly).
GUARD_MARGIN = 0.5
#: The tolerance fields the margin tightens: similarities in [0, 1], higher is better.
MARGIN_FIELDS: tuple[str, ...] = ("min_cosine", "min_row_cosine", "min_logit_cosine")


def stricter_bar(bar: float, margin: float) -> float:
    """``bar`` moved ``margin`` of the way to 1 (0.99 at 0.5 -> 0.995); rounded to 6 digits for the report."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"the guard margin is a fraction in [0, 1), got {margin}")
    return round(bar + margin * (1.0 - bar), 6) if bar < 1.0 else bar


def guard_tolerances(
    precision: str,
    outputs: Sequence[str],
    tolerances: Mapping[str, Mapping[str, float]],
    margin: float = GUARD_MARGIN,
) -> dict[str, dict[str, float]]:
    """The overrides the guard's gate uses: the user's ``tolerances`` plus each output's similarity bars tightened.

    Each output's bars are resolved as the verdict resolves them (the precision's defaults, then
    ``tolerances['*']``, then ``tolerances[output]``), then moved by :func:`stricter_bar`; they are written
    per output, so they win over ``'*'``. A bar that is off (None) stays off; ``margin`` 0 changes nothing.
    """
    guarded = {key: dict(value) for key, value in tolerances.items()}
    if margin == 0.0:
        return guarded
    for name in outputs:
        resolved = tolerance_for(precision, name, tolerances)
        bars = {f: stricter_bar(float(getattr(resolved, f)), margin) for f in MARGIN_FIELDS
                if getattr(resolved, f) is not None}  # fmt: skip
        if bars:
            guarded[name] = {**guarded.get(name, {}), **bars}
    return guarded


def margin_note(precision: str, outputs: Sequence[str], tolerances: Mapping[str, Mapping[str, float]],
                margin: float = GUARD_MARGIN) -> dict[str, dict[str, float]]:
    """For the report: each output's tightened bars the guard aimed at (empty when the margin is 0)."""
    guarded = guard_tolerances(precision, outputs, tolerances, margin)
    return {name: {f: v for f, v in guarded.get(name, {}).items() if f in MARGIN_FIELDS}
            for name in outputs if margin and guarded.get(name)}  # fmt: skip

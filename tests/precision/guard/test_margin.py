"""The guard's margin: it tunes its rows to a stricter similarity bar than the user's, the verdict keeps the user's."""

from __future__ import annotations

import numpy as np
import pytest

from optpipe.compare.parity import judge_output, tolerance_for
from optpipe.precision.guard.margin import guard_tolerances, margin_note, stricter_bar

KINDS = {"embedding": "embedding"}
USER = {"*": {"min_row_cosine": 0.99}}


def _rows_at(worst: float, rows: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Unit reference rows and candidates whose per-row cosines are in [worst, 1), the last one exactly ``worst``."""
    rng = np.random.default_rng(0)
    refs, got = [], []
    for cosine in np.linspace(0.9999, worst, rows):
        a = rng.normal(size=64)
        a /= np.linalg.norm(a)
        b = rng.normal(size=64)
        b -= (b @ a) * a
        b /= np.linalg.norm(b)
        refs.append(a[None].astype(np.float32))
        got.append((cosine * a + np.sqrt(1 - cosine**2) * b)[None].astype(np.float32))
    return refs, got


def _passes(worst: float, tolerances: dict[str, dict[str, float]]) -> bool:
    refs, got = _rows_at(worst)
    tolerance = tolerance_for("int8-dynamic", "embedding", tolerances)
    return bool(judge_output("embedding", refs, got, tolerance, KINDS)["passed"])


def test_the_bar_moves_the_given_share_of_its_gap_to_one() -> None:
    assert stricter_bar(0.99, 0.5) == 0.995
    assert stricter_bar(0.98, 0.5) == 0.99
    assert stricter_bar(0.99, 0.0) == 0.99
    assert stricter_bar(1.0, 0.5) == 1.0
    with pytest.raises(ValueError):
        stricter_bar(0.99, 1.0)


def test_every_similarity_bar_of_each_output_is_tightened_and_top1_is_not() -> None:
    guarded = guard_tolerances("int8-dynamic", ["embedding", "logits"], USER, 0.5)
    assert guarded["*"] == {"min_row_cosine": 0.99}  # the user's own overrides are kept as given
    for name in ("embedding", "logits"):
        resolved = tolerance_for("int8-dynamic", name, guarded)
        assert resolved.min_row_cosine == 0.995
        assert resolved.min_cosine == 0.995  # int8-dynamic's default 0.99
        assert resolved.min_logit_cosine == 0.99  # its default 0.98
        assert resolved.min_top1 == tolerance_for("int8-dynamic", name, USER).min_top1
    assert margin_note("int8-dynamic", ["embedding"], USER, 0.5)["embedding"]["min_row_cosine"] == 0.995
    assert guard_tolerances("int8-dynamic", ["embedding"], USER, 0.0) == USER
    assert margin_note("int8-dynamic", ["embedding"], USER, 0.0) == {}


def test_a_bar_the_user_switched_off_stays_off() -> None:
    user = {"*": {"min_cosine": 0.97}}  # a user's min_cosine switches the logits default off (parity.py)
    resolved = tolerance_for("int8-dynamic", "logits", guard_tolerances("int8-dynamic", ["logits"], user, 0.5))
    assert resolved.min_cosine == 0.985
    assert resolved.min_logit_cosine is None


def test_wrong_verdict_guard_stopping_where_its_rows_just_pass_the_users_bar() -> None:
    """Issue 19: the guard stopped at worst-row cosine 0.9937 on its rows (bar 0.99) and rows it never saw gave
    0.9858. A candidate that scrapes past the user's bar on the guard rows must not end the guard's search."""
    assert _passes(0.992, USER)  # what the guard's gate said before: stop here
    assert not _passes(0.992, guard_tolerances("int8-dynamic", ["embedding"], USER))


def test_wrong_verdict_twin_a_candidate_clear_of_the_margin_ends_the_search() -> None:
    assert _passes(0.996, guard_tolerances("int8-dynamic", ["embedding"], USER))
    assert not _passes(0.985, USER)  # the verdict's own bar is unchanged

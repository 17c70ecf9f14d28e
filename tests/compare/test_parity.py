"""Parity statistics and gates."""

from __future__ import annotations

import numpy as np
import pytest

from optpipe.compare.parity import Tolerance, compare_output, is_classifier_like, tolerance_for
from optpipe.core.errors import UserInputError


def test_identical_outputs_pass_with_zero_error() -> None:
    ref = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    parity = compare_output([ref], [ref.copy()], tolerance_for("fp32", "y"))
    assert parity.passed
    assert parity.max_abs == 0.0
    assert parity.cosine == pytest.approx(1.0)
    assert parity.top1_agreement == 1.0
    assert parity.samples == 4


def test_statistics_are_computed_over_all_cases() -> None:
    ref = [np.array([[1.0, 2.0]]), np.array([[4.0, 0.5], [1.0, 1.0]])]
    got = [np.array([[1.5, 2.0]]), np.array([[4.0, 0.5], [1.0, 1.0]])]
    parity = compare_output(ref, got, Tolerance())
    assert parity.max_abs == pytest.approx(0.5)
    assert parity.max_rel == pytest.approx(0.5)
    assert parity.mean_abs == pytest.approx(0.5 / 6)
    assert parity.samples == 3
    assert parity.passed  # no thresholds set


def test_fp32_gate_fails_on_elementwise_error() -> None:
    ref = np.ones((2, 3), dtype=np.float32)
    parity = compare_output([ref], [ref + 1e-2], tolerance_for("fp32", "y"))
    assert not parity.passed
    assert any("element-wise" in f for f in parity.failures)


def test_int8_gate_fails_on_top1_disagreement_but_passes_on_cosine() -> None:
    ref = np.array([[1.0, 0.99], [0.0, 1.0]])
    got = np.array([[0.99, 1.0], [0.0, 1.0]])
    parity = compare_output([ref], [got], tolerance_for("int8", "logits"))
    assert parity.cosine > 0.99
    assert parity.top1_agreement == 0.5
    assert parity.failures == ("top-1 agreement 0.5000 < 0.95",)


def test_cosine_gate_and_per_output_override() -> None:
    ref = np.array([[1.0, 0.0, 0.0]])
    got = np.array([[1.0, 0.2, 0.0]])  # cosine 0.9806
    assert not compare_output([ref], [got], tolerance_for("int8", "emb")).passed
    relaxed = tolerance_for("int8", "emb", {"emb": {"min_cosine": 0.95}})
    assert compare_output([ref], [got], relaxed).passed
    star = tolerance_for("int8", "other", {"*": {"min_cosine": 0.5}, "emb": {"min_cosine": 0.9}})
    assert star.min_cosine == 0.5


def test_non_finite_results_fail() -> None:
    ref = np.ones((1, 4))
    got = np.array([[1.0, np.nan, 1.0, 1.0]])
    parity = compare_output([ref], [got], tolerance_for("fp16", "y"))
    assert not parity.passed
    assert parity.max_abs == np.inf


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differs from the reference"):
        compare_output([np.ones((2, 3))], [np.ones((3, 3))], Tolerance())


def test_unknown_tolerance_field_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="unknown tolerance field"):
        tolerance_for("fp32", "y", {"y": {"cosine": 0.9}})


def test_classifier_like_shapes() -> None:
    assert is_classifier_like((8, 10))
    assert not is_classifier_like((8, 1))
    assert not is_classifier_like((8, 3, 4))


def test_one_value_per_sample_is_compared_over_the_batch() -> None:
    ref = np.array([[0.5], [-0.001], [1.2], [-0.8]])
    got = np.array([[0.51], [0.002], [1.19], [-0.79]])  # tiny errors, one sign flip near zero
    parity = compare_output([ref], [got], tolerance_for("int8", "regression"))
    assert parity.cosine > 0.999  # per-sample "cosine" would be (1 - 1 + 1 + 1) / 4 = 0.5
    assert parity.passed
    wrong = compare_output([ref], [-ref], tolerance_for("int8", "regression"))
    assert wrong.cosine == pytest.approx(-1.0)
    assert not wrong.passed


def test_the_option_parser_knows_every_tolerance_field() -> None:
    # build_options restates Tolerance's field names (parity imports build_options, so it cannot derive them):
    # a field added to one and not the other would be unsettable or, worse, silently unchecked.
    from dataclasses import fields

    from optpipe.builder.options import FRACTION_FIELDS, TOLERANCE_FIELDS
    from optpipe.compare.parity import Tolerance

    names = {f.name for f in fields(Tolerance)}
    assert set(TOLERANCE_FIELDS) == names
    assert {n for n in names if n.startswith("min_")} | {"top1_margin"} == FRACTION_FIELDS

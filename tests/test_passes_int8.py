"""Int8Pass options: refused without data, checked before any export runs, style from the target."""

from __future__ import annotations

import pytest
from optpipe.passes.int8_calibrate import Int8Config, Int8Pass

from optpipe.errors import UserInputError
from optpipe.target import get_target


def test_style_follows_target() -> None:
    assert Int8Pass.from_options({"calib_data": __file__}, get_target("cpu")).config.style == "cpu"
    assert Int8Pass.from_options({"synthetic_calib": True}, get_target("tensorrt")).config.style == "tensorrt"


def test_refused_without_data() -> None:
    with pytest.raises(UserInputError, match="--synthetic-calib"):
        Int8Pass.from_options({}, get_target("cpu"))


def test_bad_options() -> None:
    with pytest.raises(UserInputError, match="calibration method"):
        Int8Pass.from_options({"synthetic_calib": True, "calib_method": "kl"}, get_target("cpu"))
    with pytest.raises(UserInputError, match="does not exist"):
        Int8Pass.from_options({"calib_data": "/no/such.npz"}, get_target("cpu"))
    with pytest.raises(UserInputError, match="guard-max-keep"):
        Int8Pass.from_options({"synthetic_calib": True, "guard_max_keep": 2}, get_target("cpu"))


def test_in_memory_data_and_no_guard() -> None:
    config = Int8Pass.from_options({"calib_data": {"x": []}, "no_guard": True}, get_target("cpu")).config
    assert config == Int8Config(calib_data="<in-memory>", guard=False)

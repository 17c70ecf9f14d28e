"""optpipe.infra.registry and optpipe.runtime.target: passes and targets found by name, engines by the target's key."""

from __future__ import annotations

import pytest

from optpipe.builder.options import parse_build_options
from optpipe.builder.pass_configs import engine_pass as configured_engine_pass
from optpipe.core.errors import UserInputError
from optpipe.infra.pass_base import Pass
from optpipe.infra.registry import PASSES, engine_pass, pass_class, pre_engine_passes
from optpipe.runtime.target import TARGET_CLASSES, CpuTarget, Target, get_target


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_registered_pass_resolves_to_a_pass_of_that_name(name: str) -> None:
    cls = pass_class(name)
    assert issubclass(cls, Pass)
    assert cls.name == name


@pytest.mark.parametrize("name", sorted(TARGET_CLASSES))
def test_every_target_resolves_and_names_registered_passes(name: str) -> None:
    target = get_target(name)
    assert isinstance(target, Target) and target.name == name
    assert engine_pass(target).name == target.engine_pass_name
    assert [p.name for p in pre_engine_passes(target)] == list(target.check_pass_names)
    assert {target.engine_pass_name, *target.check_pass_names} <= set(PASSES)


def test_engine_pass_gets_the_build_options_into_its_config() -> None:
    options = parse_build_options(trt={"builder_optimization_level": 5})
    trt = configured_engine_pass(get_target("tensorrt"), options)
    assert trt.config.builder_optimization_level == 5
    assert configured_engine_pass(CpuTarget(), options).config_dict() == {"level": "extended",
                                                                   "external_data_above": 1_800_000_000}


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(UserInputError, match="unknown target 'tpu'; choose one of: cpu, tensorrt"):
        get_target("tpu")

"""Numbers that are not numbers and environment variables, checked where they enter (issue 21).

The same rules on the command line, in config files and in the environment: finite numbers, whole
numbers for integer fields, documented ranges; an environment variable is named in its error; all
before any build work (the model below is real, so a value that slipped through would build).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import MODELS
from test_hostile_inputs import assert_one_error_line, run_cli

M = f"{MODELS}:Mlp"


@pytest.mark.parametrize(("flag", "value"), [("--max-accuracy-drop", "nan"), ("--max-accuracy-drop", "inf"),
                                             ("--guard-seconds", "inf"), ("--bench-seconds", "nan"),
                                             ("--guard-max-keep", "nan")])
def test_a_flag_that_is_not_a_finite_number_is_refused_up_front(tmp_path: Path, flag: str, value: str) -> None:
    out = tmp_path / "out"
    code, output = run_cli("build", M, "--input", "x:2x4", flag, value, "--out", str(out))
    assert code == 2, output  # before: the whole build ran, then the manifest could not hold NaN
    assert_one_error_line(output, "not a finite number")
    assert not out.exists()


def test_cache_prune_older_than_nan_is_refused(tmp_path: Path) -> None:
    code, output = run_cli("cache", "prune", "--older-than", "nan", "--cache-dir", str(tmp_path / "cache"))
    assert code == 2, output  # before: a silent no-op, exit 0
    assert_one_error_line(output, "not a finite number")


@pytest.mark.parametrize(("line", "fragment"), [("threads = inf", "not a whole number"),
                                                ("threads = 2.7", "not a whole number"),
                                                ("max_accuracy_drop = nan", "not a finite number"),
                                                ("guard_seconds = inf", "not a finite number")])
def test_a_config_value_that_is_not_a_number_of_its_kind_is_refused(tmp_path: Path, line: str,
                                                                    fragment: str) -> None:
    config = tmp_path / "optpipe.toml"
    config.write_text(f'[[model]]\nspec = "{M}"\ninput = ["x:2x4"]\nout = "out"\n{line}\n')
    code, output = run_cli("build", "-c", str(config))
    assert code == 2, output  # before: an OverflowError traceback, 2.7 silently 2, NaN accepted
    assert_one_error_line(output, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "value"), [("OPTPIPE_INT8_REDUCE_RANGE", "maybe"),
                                             ("OPTPIPE_CACHE_MAX_SIZE", "-1"), ("OPTPIPE_CACHE_MAX_SIZE", "abc"),
                                             ("OPTPIPE_RAY_NUM_CPUS", "0")])
def test_a_bad_environment_variable_is_named_before_any_work(tmp_path: Path, name: str, value: str) -> None:
    out = tmp_path / "out"
    code, output = run_cli("build", M, "--input", "x:2x4", "--no-benchmark", "--out", str(out), env={name: value})
    assert code == 2, output  # before: ignored, or exit 2 after publishing without a summary
    assert_one_error_line(output, f"environment variable {name}=")
    assert not out.exists()

"""Property-based tests: for ANY value of --input, --dynamic, --tolerance or any config file, the CLI
answers with one ``optpipe: error:`` line and exit 2, or accepts it; never a traceback or another code.

Each value goes through the real ``optpipe build`` command. The model spec names a file that does
not exist, so a value that parses ends in the one-line "does not exist" error instead of a build:
the parsers run first, before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optpipe.cli.main import main
from optpipe.core.errors import UserInputError
from optpipe.model.input_parsing import parse_dynamic, parse_input

MISSING_MODEL = "/nonexistent/optpipe-hostile/model.py:Net"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like the option's grammar as often as it looks like garbage.
_pieces = st.sampled_from(["x", "ids", "batch", "seq", ":", "=", "@", ".", ",", "..", "x", "2", "0", "-1", "1e309",
                           "nan", "inf", "int64", "float16", "bool", "3x224", "*", "atol", "min_cosine", " ", "\n",
                           "\x00", "é", "9" * 25, "1:8:32", "0..1000"])
GRAMMARISH = st.lists(_pieces, max_size=10).map("".join)
ANY_TEXT = st.one_of(GRAMMARISH, st.text(max_size=40))


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # anything else is a crash
    return result.exit_code, result.output


def _assert_one_line_exit_2(code: int, output: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("optpipe: error:"), output
    assert "Traceback" not in output


@SETTINGS
@given(text=ANY_TEXT)
def test_any_input_option(tmp_path: Path, text: str) -> None:
    _assert_one_line_exit_2(*_run(["build", MISSING_MODEL, "--input", text, "--out", str(tmp_path / "o")]))


@SETTINGS
@given(text=ANY_TEXT)
def test_any_dynamic_option(tmp_path: Path, text: str) -> None:
    _assert_one_line_exit_2(*_run(["build", MISSING_MODEL, "--dynamic", text, "--out", str(tmp_path / "o")]))


@SETTINGS
@given(text=ANY_TEXT)
def test_any_tolerance_option(tmp_path: Path, text: str) -> None:
    _assert_one_line_exit_2(*_run(["build", MISSING_MODEL, "--tolerance", text, "--out", str(tmp_path / "o")]))


@SETTINGS
@given(output=st.sampled_from(["*", "logits"]), field=st.sampled_from(["atol", "rtol", "min_cosine", "min_top1"]),
       value=st.floats(allow_nan=True, allow_infinity=True))
def test_tolerance_values_out_of_range_are_refused_up_front(tmp_path: Path, output: str, field: str,
                                                            value: float) -> None:
    code, text = _run(["build", MISSING_MODEL, "--tolerance", f"{output}:{field}={value!r}",
                       "--out", str(tmp_path / "o")])
    _assert_one_line_exit_2(code, text)
    finite = value == value and abs(value) != float("inf")
    in_range = finite and value >= 0 and (field in ("atol", "rtol") or value <= 1)
    assert ("does not exist" in text) == in_range, text  # accepted values reach the model loading


@SETTINGS
@given(text=ANY_TEXT)
def test_parsers_raise_only_user_input_errors(text: str) -> None:
    """The library parsers either return or raise UserInputError (exit 2); any other exception fails here.

    (The message may quote the user's text, newlines included; the CLI prints it escaped, on one line.)
    """
    for parse in (parse_input, parse_dynamic):
        try:
            parse(text)
        except UserInputError as error:
            assert error.exit_code == 2 and str(error)


_toml_value = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8),
                        st.lists(st.integers(), max_size=3))
_toml_key = st.sampled_from(["spec", "model", "out", "input", "dynamic", "precision", "tolerance", "name",
                             "overwrite", "threads", "passes", "bogus", "weights"])


def _toml_document(entries: list[tuple[str, object]], models: int) -> str:
    import json

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v != v:
            return "nan"
        return json.dumps(v)

    body = "\n".join(f"{k} = {value(v)}" for k, v in entries)
    return "\n".join([body, *(["[[model]]", body] * models)])


@SETTINGS
@given(document=st.one_of(
    st.binary(max_size=200).map(lambda b: b),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(_toml_document, st.lists(st.tuples(_toml_key, _toml_value), max_size=6),
              st.integers(0, 2)).map(str.encode),
))
def test_any_config_file(tmp_path: Path, document: bytes) -> None:
    config = tmp_path / "optpipe.toml"
    config.write_bytes(document)
    code, output = _run(["build", "-c", str(config)])
    # A config whose every [[model]] names a missing model cannot build: always exit 2, one line.
    _assert_one_line_exit_2(code, output)


# Issue 21: every number field of a config file and every OPTPIPE_* variable, by the same rules as the flags.
# (field, lowest allowed value, whole numbers only, low bound open)
_NUMBER_FIELDS = [("threads", 1, True, False), ("batch", 1, True, False), ("warmup", 0, True, False),
                  ("iterations", 1, True, False), ("opset", 7, True, False), ("max_accuracy_drop", 0, False, False),
                  ("guard_max_keep", 0, False, False), ("guard_seconds", 0, False, True),
                  ("bench_seconds", 0, False, True)]


def _toml_number(value: float | int) -> str:
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and abs(value) == float("inf"):
        return "inf" if value > 0 else "-inf"
    return repr(value)


@SETTINGS
@given(spec=st.sampled_from(_NUMBER_FIELDS),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20)))
def test_any_number_in_a_config_file(tmp_path: Path, spec: tuple[str, int, bool, bool], value: float | int) -> None:
    """Accepted exactly when finite, whole for integer fields and in range; else one line naming the field."""
    name, low, whole, open_low = spec
    config = tmp_path / "optpipe.toml"
    config.write_text(f'[[model]]\nspec = "{MISSING_MODEL}"\nout = "o"\n{name} = {_toml_number(value)}\n')
    code, output = _run(["build", "-c", str(config)])
    _assert_one_line_exit_2(code, output)
    finite = value == value and abs(value) != float("inf")
    ok = finite and (value > low if open_low else value >= low)
    ok = ok and (not whole or isinstance(value, int) or float(value).is_integer())  # 4.0 is whole, 2.7 not
    ok = ok and (name != "guard_max_keep" or value <= 1)
    assert ("does not exist" in output) == ok, output  # accepted values reach the model loading
    if not ok:
        assert f".{name}:" in output, output


_ENV_NAMES = st.sampled_from(["OPTPIPE_INT8_REDUCE_RANGE", "OPTPIPE_CACHE_MAX_SIZE", "OPTPIPE_RAY_NUM_CPUS",
                              "OPTPIPE_CACHE_DIR"])
_ENV_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_ENV_TEXT = st.one_of(GRAMMARISH.map(lambda t: t.replace("\x00", "")), st.text(alphabet=_ENV_CHARS, max_size=20))


@SETTINGS
@given(name=_ENV_NAMES, text=_ENV_TEXT)
def test_any_environment_variable(tmp_path: Path, name: str, text: str) -> None:
    """Any value (an environment cannot hold NUL): the build goes on (to the missing model) or one line that
    names the variable, exit 2."""
    result = CliRunner().invoke(main, ["build", MISSING_MODEL, "--out", str(tmp_path / "o")], env={name: text})
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    _assert_one_line_exit_2(result.exit_code, result.output)
    assert "does not exist" in result.output or f"environment variable {name}=" in result.output, result.output
    value = text.strip()
    exact = {"OPTPIPE_INT8_REDUCE_RANGE": value in ("", "0", "1"),  # before: any other value was ignored
             "OPTPIPE_RAY_NUM_CPUS": value == "" or (value.isascii() and value.isdigit() and int(value) >= 1)}
    if name in exact:
        assert ("does not exist" in result.output) == exact[name], result.output

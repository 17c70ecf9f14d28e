"""Every option, pass and build-level: its CLI flag, config-file key, ``build()`` keyword and declaration agree.

A pass option is declared once, on its pass's Config field (``optpipe.infra.declared_options.option``:
help, choices and the ``optpipe build`` flags that set it). The flag, the config-file key and
``build()``'s typed keyword are written where click, the config file and IDEs need them, so this
table-driven check proves they say the same as the declaration: name, default, choices and type.
The checker is itself tested on a deliberately mismatched declaration.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click
import pytest

from optpipe.builder.options import TARGET_NAMES, TRT_KEYS, BuildOptions, parse_build_options
from optpipe.builder.run import build
from optpipe.cli.build import build as build_command
from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option, option_doc
from optpipe.infra.pass_options import check_pass_options, config_fields, flag_fields
from optpipe.infra.registry import PASSES, pass_class
from optpipe.matrix.config_file import known_fields

#: Passes whose fields ``build()`` takes as one table keyword (the TensorRT options: ``trt={...}``).
API_TABLES = {"engine-trt": "trt"}
#: ``build()`` keyword -> its CLI parameter, where the names differ (``--precision`` takes a list;
#: ``--no-benchmark`` is the negation of ``benchmark=True``).
API_TO_CLI = {"precisions": "precision", "benchmark": "no_benchmark"}
#: ``build()`` keywords with no flag: Python objects or tables (a config file sets the pass tables as
#: ``[passes.<name>]``), or values the build derives (``model_name``, ``eval_origin``).
API_ONLY = frozenset({"model", "example_inputs", "input_names", "heldout_inputs", "log", "instruments", "provenance",
                      "pass_options", "input_ranges", "int8_exclude", "fp16_block", "eval_origin", "model_name",
                      "trt", "mlflow", "dynamic"})


def _python_type(param: click.Parameter) -> type | None:
    """The Python type a click parameter yields (None when it is not a plain scalar)."""
    if isinstance(param, click.Option) and param.is_flag:
        return bool
    kind = param.type
    if isinstance(kind, click.types.IntParamType):
        return int
    if isinstance(kind, click.types.FloatParamType):
        return float
    if isinstance(kind, click.Choice | click.Path) or kind is click.STRING:
        return str
    return None


def _accepts(hint: Any, kind: type) -> bool:
    """Whether annotation ``hint`` admits values of ``kind`` (``float | None`` admits float; float admits int)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return kind in args or (kind is int and float in args)


def _default(field: dataclasses.Field[Any]) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _given(value: Any) -> bool:
    """A CLI or API default that says something (None and click's UNSET mean "the pass's default")."""
    return value is not None and value is not inspect.Parameter.empty and "UNSET" not in repr(value)


def pass_option_mismatches(configs: Mapping[str, type], command: click.Command,
                           api: Callable[..., Any]) -> list[str]:
    """Where a pass option's flag, config-file key or ``build()`` keyword disagrees with its declaration.

    ``configs`` maps pass names to their Config dataclasses; an empty list means they all agree.
    """
    params = {p.name: p for p in command.params}
    keywords = inspect.signature(api).parameters
    file_keys = set(known_fields(command))
    wrong: list[str] = []
    for name, config in configs.items():
        hints = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            doc = option_doc(field)
            if doc is None:
                continue
            where = f"{name}.{field.name}"
            default = _default(field)
            if doc.choices and default not in doc.choices:
                wrong.append(f"{where}: default {default!r} is not one of its choices {doc.choices}")
            for flag in doc.flags:
                negated = flag.startswith("no_")
                param = params.get(flag)
                if param is None:
                    wrong.append(f"{where}: flag '{flag}' is not a parameter of '{command.name}'")
                    continue
                key = (param.opts[0].lstrip("-") if param.opts else flag).replace("-", "_")
                if key not in file_keys:
                    wrong.append(f"{where}: config-file key '{key}' (of --{flag}) is not accepted")
                kind = _python_type(param)
                if kind is not None and not _accepts(hints[field.name], kind):
                    wrong.append(f"{where}: --{flag} gives {kind.__name__}, the field is {hints[field.name]}")
                choices = tuple(getattr(param.type, "choices", ()))
                if choices and not set(choices) <= set(doc.choices):
                    wrong.append(f"{where}: --{flag} choices {choices} are not among the declared {doc.choices}")
                if doc.choices and kind is str and not choices:
                    wrong.append(f"{where}: --{flag} takes any text; the field declares choices {doc.choices}")
                if _given(param.default) and (not param.default if negated else param.default) != default:
                    wrong.append(f"{where}: --{flag} defaults to {param.default!r}, the field to {default!r}")
                if flag in keywords:
                    api_default = keywords[flag].default
                    if _given(api_default) and (not api_default if negated else api_default) != default:
                        wrong.append(f"{where}: build({flag}=) defaults to {api_default!r}, the field to {default!r}")
                elif API_TABLES.get(name) not in keywords:
                    wrong.append(f"{where}: --{flag} has no build() keyword")
    return wrong


def test_every_pass_option_agrees_with_its_declaration() -> None:
    configs = {name: pass_class(name).Config for name in PASSES}
    assert pass_option_mismatches(configs, build_command, build) == []


def test_every_flag_that_sets_a_pass_field_is_declared_on_that_field() -> None:
    """The flag -> field map the config file's precedence rule reads covers every flag that a pass reads."""
    flags = flag_fields()
    assert set(flags) == {"exporter", "calib_method", "calib_data", "synthetic_calib", "calib_cache", "no_guard",
                          "guard_max_keep", "benchmark_batch", "bench_seconds", "warmup", "iterations",
                          "tolerances", "output_kinds", "guard_seconds", "timing_cache", "opt_level", "workspace",
                          "hardware_compat", "version_compatible"}
    assert set(flags["no_guard"]) == {("int8", "guard"), ("fp16", "guard"), ("int8-dynamic", "guard"),
                                      ("int4-weight", "guard")}
    trt_fields = {field for pairs in flags.values() for pass_name, field in pairs if pass_name == "engine-trt"}
    assert trt_fields == set(TRT_KEYS)  # build(trt={...}) takes exactly the engine pass's fields


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_field_is_a_config_file_key_with_its_default(name: str) -> None:
    """``[passes.<name>] field = <default>`` is accepted for every field; a declared choice list refuses others."""
    config = pass_class(name).Config
    fields = {f.name: f for f in dataclasses.fields(config)}
    for field_name in config_fields(name):
        field = fields[field_name]
        default = _default(field)
        if default is None:
            continue
        assert check_pass_options({name: {field_name: default}}) == {name: {field_name: default}}
        doc = option_doc(field)
        if doc is not None and doc.choices:
            with pytest.raises(UserInputError, match=f"expected one of {', '.join(doc.choices)}"):
                check_pass_options({name: {field_name: "no-such-choice"}})


def test_the_builder_fills_each_pass_field_with_its_declared_default() -> None:
    """A default build gives every flag-set pass field its declared default (the flag's default is the pass's)."""
    from optpipe.builder.pass_configs import engine_pass, fp16_pass, int4_weight_pass, int8_dynamic_pass, int8_pass
    from optpipe.runtime.target import get_target

    options = parse_build_options(calib_data=__file__)  # int8 refuses a build without data
    built = {"int8": int8_pass(options, get_target("cpu")).config, "fp16": fp16_pass(options).config,
             "int8-dynamic": int8_dynamic_pass(options, get_target("cpu")).config,
             "int4-weight": int4_weight_pass(options, get_target("cpu")).config,
             "engine-trt": engine_pass(get_target("tensorrt"), options).config}
    for flag, pairs in flag_fields().items():
        for name, field in pairs:
            if name in built and flag != "calib_data":
                declared = {f.name: _default(f) for f in dataclasses.fields(built[name])}[field]
                assert getattr(built[name], field) == declared, (flag, name, field)


def test_benchmark_options_default_to_the_benchmark_pass_declaration() -> None:
    from optpipe.passes.benchmark import BenchmarkConfig

    defaults, options = BenchmarkConfig(), BuildOptions().benchmark
    assert (options.seconds, options.warmup, options.min_calls) == (defaults.seconds, defaults.warmup,
                                                                     defaults.min_calls)


def test_every_build_level_keyword_has_its_flag_config_key_and_default() -> None:
    """``build()``'s keywords: the option parser's, each with a flag (unless API-only) and the same default."""
    api = inspect.signature(build).parameters
    parser = inspect.signature(parse_build_options).parameters
    params = {p.name: p for p in build_command.params}
    file_keys = set(known_fields(build_command))
    assert set(parser) <= set(api)
    for keyword, spec in parser.items():
        assert api[keyword].default == spec.default, keyword
    for keyword, spec in api.items():
        if keyword in API_ONLY or keyword in ("out_dir", "output_names"):
            continue  # out_dir is the CLI's argument; output_names the CLI's comma-separated text, the API's list
        cli = API_TO_CLI.get(keyword, keyword)
        assert cli in params, f"build({keyword}=) has no flag"
        param = params[cli]
        assert (param.opts[0].lstrip("-").replace("-", "_") if param.opts else cli) in file_keys, cli
        if _given(param.default) and _given(spec.default) and not isinstance(spec.default, tuple):
            expected = not spec.default if cli.startswith("no_") else spec.default
            assert param.default == expected, keyword
    assert parse_build_options() == BuildOptions()  # the keywords' defaults are the dataclasses'


def test_every_choice_list_is_the_one_constant() -> None:
    from optpipe.passes.export_onnx import EXPORTER_CHOICES
    from optpipe.passes.fuse_transformer import FUSE_CHOICES

    from optpipe.cli.options import HARDWARE_COMPAT_LEVELS
    from optpipe.precision.names import CALIB_METHODS
    from optpipe.runtime.tensorrt.metadata import HARDWARE_LEVELS

    params = {p.name: p for p in build_command.params}
    assert tuple(params["target"].type.choices) == TARGET_NAMES  # type: ignore[attr-defined]
    assert tuple(params["exporter"].type.choices) == EXPORTER_CHOICES  # type: ignore[attr-defined]
    assert tuple(params["calib_method"].type.choices) == CALIB_METHODS  # type: ignore[attr-defined]
    assert set(HARDWARE_COMPAT_LEVELS) == set(HARDWARE_LEVELS) - {"none"}
    for name, values, keyword in (("--fuse value", FUSE_CHOICES, "fuse"), ("target", TARGET_NAMES, "target"),
                                  ("exporter", EXPORTER_CHOICES, "exporter"),
                                  ("calibration method", CALIB_METHODS, "calib_method")):
        for value in values:
            parse_build_options(**{keyword: value}, **({"calib_data": __file__} if keyword == "calib_method" else {}))
        with pytest.raises(UserInputError, match=f"unknown {name} 'no-such-value'.* one of:? {', '.join(values)}$"):
            parse_build_options(**{keyword: "no-such-value"})


# --- the checker catches a mismatch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MismatchedConfig:
    """A declaration that disagrees with the real ``optpipe build``: each field breaks one rule."""

    method: str = option("minmax", help="choices that --calib-method does not offer", choices=("minmax", "kl"),
                         flags=("calib_method",))
    exporter: str = option("dynamo", help="a default that --exporter's 'auto' contradicts", flags=("exporter",))
    max_keep_fraction: int = option(1, help="an int where --guard-max-keep gives a float", flags=("guard_max_keep",))
    missing: bool = option(False, help="a flag that optpipe build does not have", flags=("no_such_flag",))


def test_the_checker_reports_each_kind_of_mismatch() -> None:
    wrong = pass_option_mismatches({"fake": _MismatchedConfig}, build_command, build)
    assert any("fake.method: --calib_method choices" in w for w in wrong), wrong
    assert any("fake.exporter: --exporter defaults to 'auto', the field to 'dynamo'" in w for w in wrong), wrong
    assert any("fake.exporter: build(exporter=) defaults to 'auto'" in w for w in wrong), wrong
    assert any("fake.max_keep_fraction: --guard_max_keep gives float" in w for w in wrong), wrong
    assert any("fake.missing: flag 'no_such_flag' is not a parameter" in w for w in wrong), wrong
    assert any("fake.exporter: --exporter choices ('auto', 'dynamo', 'torchscript') are not among the declared ()"
               in w for w in wrong), wrong
    assert len(wrong) == 6, wrong


def test_a_declared_default_outside_its_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of its choices"):
        option("kl", help="", choices=("minmax",))


def test_the_help_texts_that_list_choices_list_the_constants() -> None:
    """``--output-kind`` and ``--precision`` name their choices in prose (the CLI stays light: no numpy at import)."""
    from optpipe.compare.output_kinds import KINDS
    from optpipe.core.precisions import PRECISIONS

    params = {p.name: p for p in build_command.params}
    kinds_help = params["output_kinds"].help or ""  # type: ignore[attr-defined]
    assert f"{', '.join(KINDS[:-1])} or {KINDS[-1]}" in kinds_help
    precision_help = params["precision"].help or ""  # type: ignore[attr-defined]
    assert f"{', '.join(PRECISIONS)} (cpu target" in precision_help

"""BuildOptions: one parser for the CLI, the config file and the Python API; typed report records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TOY_MODELS, load_file_module

import optpipe
from optpipe.builder.options import (
    BenchmarkOptions,
    BuildOptions,
    GuardOptions,
    OutputKinds,
    Tolerances,
    parse_build_options,
)
from optpipe.builder.pass_configs import guard_fields
from optpipe.cli.main import main
from optpipe.core.errors import UserInputError
from optpipe.core.records import BuildRecord, PassStatus, VariantResult, VariantStatus
from optpipe.report.build_report import Report, ReportUnreadable, read_report


@pytest.fixture(scope="module")
def toy() -> object:
    return load_file_module(TOY_MODELS)


# --- the Python API: an explicit keyword-only signature, unknown keywords named with the closest one -----------


@pytest.mark.parametrize(("typo", "valid"), [("calib_dat", "calib_data"), ("threadz", "threads"),
                                             ("tolerance", "tolerances")])
def test_misspelled_keyword_is_a_type_error_naming_the_closest_valid_one(toy: object, tmp_path: Path, typo: str,
                                                                          valid: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{typo}'; did you mean '{valid}'"):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=out, **{typo: "x.npz"})  # type: ignore[attr-defined]
    assert not out.exists()  # refused before anything ran


def test_keyword_far_from_any_option_lists_the_valid_ones(toy: object, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"valid keywords: .*calib_data"):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=tmp_path / "o", zzzzzz=1)  # type: ignore[attr-defined]


def test_package_ships_py_typed() -> None:
    assert (Path(optpipe.__file__).parent / "py.typed").is_file()
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"optpipe" = ["py.typed"]' in pyproject


# --- tolerances: one rule, refused up front ---------------------------------------------------------------------


@pytest.mark.parametrize(("tolerances", "message"), [
    ({"logits": {"min_cosine": 2.0}}, "tolerance logits:min_cosine=2.0 must be a fraction in [0, 1]"),
    ({"*": {"min_top1": 1.01}}, "must be a fraction in [0, 1]"),
    ({"*": {"atol": -1e-3}}, "tolerance *:atol=-0.001 must be a number >= 0"),
    ({"*": {"rtol": float("nan")}}, "must be a finite number"),
    ({"*": {"cosine": 0.9}}, "unknown tolerance field 'cosine'"),
    ({"*": {"atol": True}}, "must be a finite number"),
])
def test_tolerances_are_checked_once_by_the_parser(tolerances: dict[str, dict[str, float]], message: str) -> None:
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        parse_build_options(tolerances=tolerances)


def test_tolerance_forms_agree() -> None:
    as_table = Tolerances.parse({"logits": {"min_cosine": 0.99, "atol": 1}})
    as_texts = Tolerances.parse(["logits:min_cosine=0.99", "logits:atol=1"])
    as_triples = Tolerances.parse([("logits", "min_cosine", 0.99), ("logits", "atol", 1)])
    assert as_table == as_texts == as_triples
    assert as_table.as_dict() == {"logits": {"min_cosine": 0.99, "atol": 1.0}}
    assert Tolerances.parse(["*:min_cosine=1"]).as_dict() == {"*": {"min_cosine": 1.0}}  # 1 is a valid fraction


def test_python_api_refuses_a_bad_tolerance_before_any_work(toy: object, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match="must be a fraction in"):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=out,  # type: ignore[attr-defined]
                      tolerances={"logits": {"min_cosine": 2.0}}, log=lambda _: None)
    assert not out.exists()


@pytest.mark.parametrize(("flag", "message"), [
    ("logits:min_cosine=1.5", "tolerance logits:min_cosine=1.5 must be a fraction in [0, 1]"),
    ("*:atol=-1", "tolerance *:atol=-1.0 must be a number >= 0"),
])
def test_cli_refuses_out_of_range_tolerances_before_any_build(tmp_path: Path, flag: str, message: str) -> None:
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--tolerance", flag])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "export" not in result.output and not out.exists()


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "optpipe.toml"
    path.write_text(f'[[model]]\nname = "toy"\nspec = "{TOY_MODELS}:TinyNet"\nout = "out"\n{body}\n')
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("tolerances = { logits = { min_cosine = 1.5 } }",
     "model[0] (toy).tolerances: tolerance logits:min_cosine=1.5 must be a fraction in [0, 1]"),
    ("tolerances = { logits = { atol = -1 } }", "model[0] (toy).tolerances: tolerance logits:atol=-1 must be a number"),
    ('calib_dat = "calib.npz"', "model[0] (toy): unknown key 'calib_dat'"),
    ('precisions = ["fp32", "int9"]', "model[0] (toy).precisions: unknown precision 'int9'"),
])
def test_config_file_errors_name_the_file_and_the_field(tmp_path: Path, body: str, message: str) -> None:
    config = _config(tmp_path, body)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert f"{config}: {message}" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()  # nothing was built


# --- parity: the CLI and the config file make the same BuildOptions ---------------------------------------------


@pytest.mark.slow
def test_cli_flags_and_config_file_produce_the_same_build_options(tmp_path: Path) -> None:
    flags = ["--precision", "fp32", "--tolerance", "logits:min_cosine=0.999", "--tolerance", "*:atol=0.01",
             "--threads", "1", "--no-benchmark", "--exporter", "torchscript", "--guard-max-keep", "0.25",
             "--calib-method", "entropy", "--no-guard", "--output-kind", "logits=logits", "--guard-seconds", "30",
             "--bench-seconds", "0.5", "--warmup", "2", "--iterations", "3"]
    cli_out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["build", f"{TOY_MODELS}:TinyNet", "--out", str(cli_out), "--no-cache", *flags])
    assert result.exit_code == 0, result.output
    config = _config(tmp_path, """precisions = ["fp32"]
tolerances = { logits = { min_cosine = 0.999 }, "*" = { atol = 0.01 } }
threads = 1
benchmark = false
exporter = "torchscript"
guard_max_keep = 0.25
calib_method = "entropy"
no_guard = true
output_kind = { logits = "logits" }
guard_seconds = 30
bench_seconds = 0.5
warmup = 2
iterations = 3""")
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache"])
    assert result.exit_code == 0, result.output
    from_cli = json.loads((cli_out / "report.json").read_text())["build"]["options"]
    from_file = json.loads((tmp_path / "out" / "report.json").read_text())["build"]["options"]
    assert from_cli == from_file
    assert from_cli["tolerances"] == {"logits": {"min_cosine": 0.999}, "*": {"atol": 0.01}}
    assert from_cli["guard"] == {"enabled": False, "max_keep_fraction": 0.25, "int8_exclude": [], "fp16_block": [],
                                 "seconds": 30.0}
    assert from_cli["output_kinds"] == {"logits": "logits"}
    assert from_cli["benchmark"] == {"enabled": False, "batch": None, "seconds": 0.5, "warmup": 2, "min_calls": 3}
    assert from_cli["calibration"]["method"] == "entropy" and from_cli["threads"] == 1


def test_python_api_and_parser_agree_with_the_cli_spelling() -> None:
    api = parse_build_options(precisions=["fp32", "int8"], tolerances={"logits": {"min_cosine": 0.99}},
                              guard_max_keep=0.2, int8_exclude=["conv1"], synthetic_calib=True)
    cli = parse_build_options(precisions="fp32,int8", tolerances=("logits:min_cosine=0.99",), guard_max_keep=0.2,
                              int8_exclude=("conv1",), synthetic_calib=True)
    assert api == cli
    assert api.guard == GuardOptions(True, 0.2, ("conv1",), ())
    assert isinstance(api, BuildOptions) and api.precisions == ("fp32", "int8")
    with pytest.raises(UserInputError, match="guard-max-keep"):
        parse_build_options(guard_max_keep=1.5)
    with pytest.raises(UserInputError, match="'auto' selects the precisions itself"):
        parse_build_options(precisions="auto,fp32")



def test_every_parser_keyword_is_a_build_keyword() -> None:
    import inspect

    parser = set(inspect.signature(parse_build_options).parameters)
    assert parser <= set(inspect.signature(optpipe.build).parameters)


def test_output_kinds_and_budgets_are_typed_and_checked_once() -> None:
    options = parse_build_options(output_kinds={"emb": "embedding"}, guard_seconds=30, bench_seconds=0.5, warmup=0,
                                  iterations=3)
    assert options.output_kinds == OutputKinds((("emb", "embedding"),))
    assert options.output_kinds == parse_build_options(output_kinds=("emb=embedding",)).output_kinds
    assert options.guard.guard_seconds == 30 and guard_fields(options)["guard_seconds"] == 30.0
    assert (options.benchmark.seconds, options.benchmark.warmup, options.benchmark.min_calls) == (0.5, 0, 3)
    assert options.gate_fields() == {"tolerances": {}, "output_kinds": {"emb": "embedding"}}
    assert parse_build_options().benchmark == BenchmarkOptions()  # flags left out keep the default budget
    for bad, match in [({"output_kinds": {"emb": "vector"}}, "unknown output kind 'vector'"),
                       ({"output_kinds": ["emb"]}, "expected NAME=KIND"),
                       ({"bench_seconds": 0}, "--bench-seconds must be a number > 0"),
                       ({"warmup": -1}, "--warmup must be an integer >= 0"),
                       ({"iterations": 0}, "--iterations must be an integer >= 1"),
                       ({"guard_seconds": float("nan")}, "--guard-seconds must be a number > 0")]:
        with pytest.raises(UserInputError, match=match):
            parse_build_options(**bad)


def test_output_kind_for_an_unknown_output_is_refused_before_any_work(toy: object, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match="output kind given for unknown output"):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=out, output_kinds={"nope": "logits"},  # type: ignore[attr-defined]
                      benchmark=False)
    assert not out.exists()


# --- typed records: one reader and one writer of report.json ---------------------------------------------------


@pytest.mark.slow
def test_report_round_trips_through_the_one_reader(toy: object, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=out, output_names=("logits",),  # type: ignore[attr-defined]
                           benchmark=False, exporter="torchscript", log=lambda _: None)
    read = read_report(out / "report.json")
    assert read.to_dict() | {"environment": None} == report.to_dict() | {"environment": None}
    (variant,) = read.variants
    assert isinstance(variant, VariantResult) and variant.status is VariantStatus.BUILT and variant.passed
    assert variant["precision"] == "fp32"  # the JSON field names stay readable
    assert isinstance(read.build, BuildRecord) and read.build.outputs == ("logits",)
    assert read.build.options is not None and read.build.options["exporter"] == "torchscript"
    assert {p.status for p in read.passes} == {PassStatus.OK}
    assert json.loads((out / "report.json").read_text())["variants"][0]["status"] == "built"


def test_report_reader_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    for text, message in [("{oops", "cannot read"), ("[]", "not a JSON object"),
                          ('{"schema": "other/1"}', "unknown schema"),
                          ('{"schema": "optpipe.report/1", "target": "cpu", "variants": [{}]}', "malformed record")]:
        path.write_text(text)
        with pytest.raises(ReportUnreadable, match=message):
            read_report(path)
    with pytest.raises(ReportUnreadable, match=r"no report\.json"):
        read_report(tmp_path / "missing" / "report.json")


def test_variant_records_keep_fields_a_newer_writer_added() -> None:
    data = {"precision": "int8", "status": "skipped", "reason": "nothing to quantize", "future_field": 1}
    variant = VariantResult.from_dict(data)
    assert variant.status is VariantStatus.SKIPPED and not variant.counts_against_build
    assert variant.to_dict()["future_field"] == 1 and variant.to_dict()["reason"] == "nothing to quantize"
    report = Report(target="cpu", status="complete", variants=[variant, VariantResult("fp32", VariantStatus.BUILT,
                                                                                       passed=True)])
    assert report.passed  # a skipped variant does not fail the build


# --- a pass gets everything through its Config, so its config is its cache key ---------------------------------


def test_precision_passes_carry_the_gate_tolerances_in_their_config_and_samples_outside_the_key() -> None:
    import dataclasses

    import numpy as np

    from optpipe.builder.pass_configs import fp16_pass, int8_pass
    from optpipe.infra.pass_base import BuildContext
    from optpipe.runtime.target import get_target

    samples = [{"x": np.zeros((1, 1, 8, 8), np.float32)}]
    options = parse_build_options(tolerances={"logits": {"min_cosine": 0.9}}, calib_data=samples)
    for pass_ in (int8_pass(options, get_target("cpu")), fp16_pass(options)):
        key = pass_.config_dict()
        assert key["tolerances"] == {"logits": {"min_cosine": 0.9}} and key["calib_data"] == "<in-memory>"
        assert "samples" not in key and pass_.config.samples is samples  # keyed by content in cache_facts
    other = int8_pass(parse_build_options(tolerances={"logits": {"min_cosine": 0.8}}, calib_data=samples),
                                  get_target("cpu"))
    assert other.config_dict() != int8_pass(options, get_target("cpu")).config_dict()
    assert "options" not in {f.name for f in dataclasses.fields(BuildContext)}  # nothing to read besides the Config


# --- --external-data-above -----------------------------------------------------------------------------------------

#: The passes that write a model file: each must get the build's --external-data-above.
MODEL_WRITERS = {"export", "simplify", "fuse-transformer", "fp16", "int8", "int8-dynamic", "int4-weight", "engine-ort"}


@pytest.mark.parametrize(("given", "expected"), [(None, 1_800_000_000), ("0", 0), (0, 0), ("500MB", 500_000_000),
                                                 ("2GiB", 2 * 1024**3), (4096, 4096)])
def test_external_data_above_takes_a_size(given: object, expected: int) -> None:
    from optpipe.builder.options import parse_build_options

    assert parse_build_options(external_data_above=given).external_data_above == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["lots", -1, True])
def test_external_data_above_refuses_what_is_not_a_size(given: object) -> None:
    from optpipe.builder.options import parse_build_options

    with pytest.raises(UserInputError, match="size"):
        parse_build_options(external_data_above=given)  # type: ignore[arg-type]


def test_cli_refuses_a_bad_external_data_size_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["build", f"{TOY_MODELS}:TinyNet", "--out", str(out),
                                       "--external-data-above", "lots"])
    assert result.exit_code == 2, result.output
    assert "'lots' is not a size" in result.output and "Traceback" not in result.output and not out.exists()


def test_external_data_above_reaches_every_model_writing_pass_and_its_cache_key() -> None:
    """The decision: the threshold is in each writer's config, so in its cache key (the files differ)."""
    from optpipe.builder.options import parse_build_options
    from optpipe.builder.plan import plan_variants
    from optpipe.builder.run import _prefix_pipeline
    from optpipe.runtime.target import get_target

    options = parse_build_options(
        precisions=["fp32", "fp16", "int8", "int8-dynamic", "int8-dynamic+fused", "int4-weight"],
        calib_data=__file__, external_data_above="0")
    plan = plan_variants(options.precisions, get_target("cpu"), options, engine=True)
    passes = [*_prefix_pipeline(options).passes, *(p for pipeline in plan.pipelines() for p in pipeline.passes)]
    writers = {p.name for p in passes if "external_data_above" in p.config_dict()}
    assert writers == MODEL_WRITERS
    assert all(p.config_dict()["external_data_above"] == 0 for p in passes if p.name in writers)
    default = parse_build_options(calib_data=__file__)
    assert {p.config_dict()["external_data_above"] for p in _prefix_pipeline(default).passes} == {1_800_000_000}
    # A per-pass table still wins for its own pass (as every pass option does).
    tabled = parse_build_options(external_data_above="0", pass_options={"simplify": {"external_data_above": 7}})
    assert [p.config.external_data_above for p in _prefix_pipeline(tabled).passes] == [0, 7]

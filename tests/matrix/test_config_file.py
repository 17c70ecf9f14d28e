"""`optpipe build -c FILE`: several models from one file, CLI overrides, and errors that name the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from optpipe.builder.options import BuildOptions
from optpipe.cli.build import build as build_command
from optpipe.cli.main import main
from optpipe.matrix.config_file import ConfigError, load_build_file, worst_exit_code

ROOT = Path(__file__).resolve().parents[2]

TWO_MODELS = f"""
exporter = "torchscript"
benchmark = false
dynamic = ["batch=1:8:64"]
threads = 1

[[model]]
name = "digits"
spec = "{ROOT}/sample_models/digits_cnn.py:DigitsCNN"
weights = "{ROOT}/sample_models/weights/digits_cnn.safetensors"
out = "out/digits"
precisions = ["fp32"]
tolerances = {{ logits = {{ min_cosine = 0.999 }} }}

[[model]]
name = "wine"
spec = "{ROOT}/sample_models/two_heads.py:TwoHeadNet"
weights = "{ROOT}/sample_models/weights/two_heads.safetensors"
out = "out/wine"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "optpipe.toml"
    path.write_text(text)
    return path


def parse(path: Path) -> list[dict[str, object]]:
    ctx = click.Context(build_command)
    return [m.params for m in load_build_file(path, build_command, ctx).models]


@pytest.mark.slow
def test_two_models_build_into_their_own_directories(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS)
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache", "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    for name in ("digits", "wine"):
        report = json.loads((tmp_path / "out" / name / "report.json").read_text())
        assert report["passed"] and report["build"]["dynamic"][0]["max"] == 64
        assert [p["name"] for p in report["passes"]] == ["export", "simplify", "engine-ort", "validate"]
    digits = json.loads((tmp_path / "out" / "digits" / "report.json").read_text())
    assert digits["build"]["tolerances"] == {"logits": {"min_cosine": 0.999}}
    assert 'tests="3"' in junit.read_text()  # digits: 1 output; wine: 2 outputs


@pytest.mark.slow
def test_model_argument_selects_one_entry_and_cli_flags_override(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "wine", "--no-cache", "--out",
                                       str(tmp_path / "elsewhere"), "--exporter", "auto"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out").exists()
    report = json.loads((tmp_path / "elsewhere" / "report.json").read_text())
    assert report["model"].endswith("two_heads.py:TwoHeadNet")


def test_values_are_parsed_like_the_command_line(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS.replace('precisions = ["fp32"]', 'precisions = ["fp32", "int8"]'))
    digits, wine = parse(config)
    assert digits["precision"] == ("fp32", "int8") and "precision" not in wine  # the command's default applies
    assert digits["dynamics"] == ("batch=1:8:64",) and digits["threads"] == 1
    assert digits["no_benchmark"] is True
    assert digits["tolerances"] == (("logits", "min_cosine", 0.999),)
    assert Path(str(digits["out_dir"])) == tmp_path / "out" / "digits"  # relative to the file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("threads = 1", "threads = 'two'", ),
        ("benchmark = false", "benchmark = false\ncolour = 'blue'"),
        ('precisions = ["fp32"]', 'precisions = ["fp8"]'),
        ('exporter = "torchscript"', 'target = "tpu"'),
        ("min_cosine = 0.999", "min_cosin = 0.999"),
        ('name = "wine"', 'name = "wine"\ncache_dir = "x"'),
    ],
)
def test_malformed_files_name_the_field_and_exit_2(tmp_path: Path, change: str, message: str) -> None:
    config = write(tmp_path, TWO_MODELS.replace(change, message, 1))
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert "optpipe.toml" in result.output
    expected = {
        "threads = 'two'": "top level.threads: expected",
        "benchmark = false\ncolour = 'blue'": "unknown key 'colour'",
        'precisions = ["fp8"]': "precisions: unknown precision 'fp8'; expected one of fp32",
        'target = "tpu"': "target: expected one of cpu, tensorrt",
        "min_cosin = 0.999": "unknown tolerance field 'min_cosin'",
        'name = "wine"\ncache_dir = "x"': "cache_dir: only allowed at the top level",
    }[message]
    assert expected in result.output
    assert not (tmp_path / "out").exists()  # nothing was built


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        parse(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse(write(tmp_path, "model = [[["))
    with pytest.raises(ConfigError, match=r"no \[\[model\]\] table"):
        parse(write(tmp_path, 'target = "cpu"'))
    with pytest.raises(ConfigError, match=r"model\[0\]: missing 'spec'"):
        parse(write(tmp_path, '[[model]]\nout = "x"'))
    with pytest.raises(ConfigError, match="also the output of"):
        parse(write(tmp_path, '[[model]]\nspec = "a.py:A"\nout = "x"\n[[model]]\nspec = "b.py:B"\nout = "x"'))


def test_worst_exit_code() -> None:
    assert worst_exit_code([0, 0]) == 0
    assert worst_exit_code([0, 3, 1]) == 1
    assert worst_exit_code([1, 2, 0]) == 2
    assert worst_exit_code([0, 3]) == 3


def test_model_is_required_without_a_config_file() -> None:
    result = CliRunner().invoke(main, ["build", "--out", "x"])
    assert result.exit_code == 2 and "Missing argument 'MODEL'" in result.output


PASSES_FILE = f"""
exporter = "torchscript"

[passes.simplify]
atol = 1e-3

[passes.int8]
method = "entropy"
exclude_nodes = ["conv1"]

[[model]]
name = "digits"
spec = "{ROOT}/sample_models/digits_cnn.py:DigitsCNN"
out = "out/digits"
calib_method = "percentile"

[model.passes.engine-ort]
level = "basic"

[[model]]
name = "wine"
spec = "{ROOT}/sample_models/two_heads.py:TwoHeadNet"
out = "out/wine"

[model.passes.benchmark]
rounds = 3
"""


def parse_models(path: Path) -> list[object]:
    ctx = click.Context(build_command)
    return list(load_build_file(path, build_command, ctx).models)


def test_pass_tables_merge_with_model_flags_winning_over_top_level_tables(tmp_path: Path) -> None:
    digits, wine = parse_models(write(tmp_path, PASSES_FILE))
    # digits' own calib_method beats the top-level [passes.int8] method; the other int8 field stays.
    assert digits.pass_options == {"simplify": {"atol": 1e-3}, "int8": {"exclude_nodes": ("conv1",)},  # type: ignore[attr-defined]
                                   "engine-ort": {"level": "basic"}}
    assert wine.pass_options == {"simplify": {"atol": 1e-3}, "int8": {"method": "entropy",  # type: ignore[attr-defined]
                                 "exclude_nodes": ("conv1",)}, "benchmark": {"rounds": 3}}


@pytest.mark.parametrize(
    ("change", "replacement", "expected"),
    [
        ("[model.passes.engine-ort]", "[model.passes.simplfy]",
         "model[0] (digits).passes.simplfy: unknown pass; passes are: export, simplify,"),
        ("level = \"basic\"", "levl = \"basic\"",
         "model[0] (digits).passes.engine-ort.levl: unknown option of pass 'engine-ort'; its options are: level"),
        ("atol = 1e-3", "atol = \"tight\"", "top level.passes.simplify.atol: expected float, got 'tight'"),
        ("rounds = 3", "rounds = 2.5", "model[1] (wine).passes.benchmark.rounds: expected int"),
        ("method = \"entropy\"", "method = \"kl\"", "top level.passes.int8.method: expected one of minmax, entropy"),
        ("[model.passes.benchmark]\nrounds = 3", "passes = 3", "model[1] (wine).passes: expected a table"),
        ("exporter = \"torchscript\"", "exporter = \"torchscript\"\n[passes.export]\nexporter = \"dynamo\"",
         "top level.passes.export.exporter: also set by 'exporter' in the same table"),
    ],
)
def test_malformed_pass_tables_name_the_field_path(tmp_path: Path, change: str, replacement: str,
                                                   expected: str) -> None:
    config = write(tmp_path, PASSES_FILE.replace(change, replacement, 1))
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert f"optpipe.toml: {expected}" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pass_tables_reach_the_build_and_command_line_flags_win(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import optpipe.builder.run

    seen: list[dict[str, object]] = []
    real = optpipe.builder.run.build_with_options

    def spy(model: object, inputs: object, options: BuildOptions, **kwargs: object) -> object:
        seen.append(dict(options.pass_options))
        return real(model, inputs, options, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(optpipe.builder.run, "build_with_options", spy)
    text = PASSES_FILE.replace('calib_method = "percentile"\n', "no_benchmark = true\n").replace(
        "[model.passes.engine-ort]", "[model.passes.export]\nopset = 17\n[model.passes.engine-ort]")
    config = write(tmp_path, text)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "digits", "--no-cache", "--exporter", "auto"])
    assert result.exit_code == 0, result.output
    # --exporter on the command line beats the file's [passes.*] tables as well as its exporter key.
    assert seen == [{"simplify": {"atol": 1e-3}, "int8": {"method": "entropy", "exclude_nodes": ("conv1",)},
                     "export": {"opset": 17}, "engine-ort": {"level": "basic"}}]
    report = json.loads((tmp_path / "out" / "digits" / "report.json").read_text())
    assert report["passed"]


@pytest.mark.slow
def test_build_applies_and_checks_pass_options(tmp_path: Path) -> None:
    from optpipe.builder.run import build
    from optpipe.core.errors import UserInputError
    from optpipe.model.prepared import prepare_model

    digits = prepare_model(f"{ROOT}/sample_models/digits_cnn.py:DigitsCNN",
                           weights=ROOT / "sample_models/weights/digits_cnn.safetensors")
    configs: dict[str, object] = {}

    class Spy:
        def before_pass(self, pass_: object, artifact: object, ctx: object) -> None:
            configs[pass_.name] = pass_.config  # type: ignore[attr-defined]

        def after_pass(self, *args: object) -> None:
            pass

    def run(pass_options: dict[str, dict[str, object]], out: str) -> object:
        return build(digits.module, digits.example_inputs, out_dir=tmp_path / out, input_names=digits.input_names,
                     output_names=digits.output_names, benchmark=False, exporter="torchscript",
                     log=lambda message: None, instruments=[Spy()], pass_options=pass_options)

    report = run({"simplify": {"atol": 1}, "engine-ort": {"level": "basic"}, "int8": {"method": "entropy"},
                  "validate": {"tolerances": {"logits": {"min_cosine": 0.99}}}}, "a")
    assert configs["simplify"].atol == 1.0 and configs["engine-ort"].level == "basic"  # type: ignore[attr-defined]
    assert configs["validate"].tolerances["logits"] == {"min_cosine": 0.99}  # type: ignore[attr-defined]
    assert report.build["tolerances"] == {"logits": {"min_cosine": 0.99}}  # type: ignore[attr-defined]
    for bad, message in [
        ({"simplfy": {}}, "pass_options.simplfy: unknown pass; passes are: export, simplify"),
        ({"simplify": {"atl": 1.0}}, "pass_options.simplify.atl: unknown option of pass 'simplify'; its options "
                                     "are: atol (float), rtol (float)"),
        ({"benchmark": {"batch": "8"}}, "pass_options.benchmark.batch: expected int | None, got '8'"),
    ]:
        with pytest.raises(UserInputError, match=re.escape(message)):
            run(bad, "b")
        assert not (tmp_path / "b").exists()


STALE_JUNIT = '<?xml version="1.0"?><testsuites tests="1" failures="0" errors="0"/>'


@pytest.mark.parametrize("where", ["model", "top"])
def test_tensorrt_option_on_a_cpu_model_is_a_config_error_before_any_build(tmp_path: Path, where: str) -> None:
    if where == "model":
        text = TWO_MODELS.replace('out = "out/wine"', 'out = "out/wine"\nopt_level = 2')
        field = "model[1] (wine).opt_level"
    else:
        text = 'junit = "junit.xml"\nopt_level = 2\n' + TWO_MODELS
        field = "model[0] (digits).opt_level"
    config = write(tmp_path, text)
    junit = tmp_path / "junit.xml"
    junit.write_text(STALE_JUNIT)
    args = ["build", "-c", str(config), "--no-cache"] + (["--junit", str(junit)] if where == "model" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "optpipe.toml" in result.output and field in result.output
    assert "target" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # found before the first model was built
    xml = junit.read_text()
    assert 'errors="1"' in xml and "ConfigError" in xml and "opt_level" in xml


def test_tensorrt_option_is_allowed_with_a_tensorrt_target(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS.replace('out = "out/wine"', 'out = "out/wine"\nopt_level = 2\n'
                                                'target = "tensorrt"'))
    models = parse(config)
    assert models[1]["opt_level"] == 2 and models[1]["target"] == "tensorrt"


def test_tensorrt_flag_on_the_command_line_for_a_cpu_model_fails_before_any_build(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache", "--opt-level", "2"])
    assert result.exit_code == 2, result.output
    assert "model[0] (digits)" in result.output and "--opt-level" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_usage_error_of_one_model_is_reported_and_the_others_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optpipe.model.prepared

    real = optpipe.model.prepared.prepare_model

    def prepare(spec: str, **kwargs: Any) -> Any:
        if "two_heads" in spec:
            raise click.UsageError("something about wine is wrong")
        return real(spec, **kwargs)

    monkeypatch.setattr(optpipe.model.prepared, "prepare_model", prepare)
    config = write(tmp_path, TWO_MODELS + f"""
[[model]]
name = "digits2"
spec = "{ROOT}/sample_models/digits_cnn.py:DigitsCNN"
weights = "{ROOT}/sample_models/weights/digits_cnn.safetensors"
out = "out/digits2"
""")
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    assert "model[1] (wine)" in result.output and "something about wine is wrong" in result.output
    assert (tmp_path / "out" / "digits" / "report.json").is_file()
    assert (tmp_path / "out" / "digits2" / "report.json").is_file()  # built after the failing model
    xml = junit.read_text()
    assert 'errors="1"' in xml and "UsageError" in xml and "something about wine" in xml
    assert "optpipe: digits2" in xml


def test_static_batch_and_rebench_are_config_keys(tmp_path: Path) -> None:
    config = write(tmp_path, TWO_MODELS.replace('dynamic = ["batch=1:8:64"]\n', "")
                   .replace('precisions = ["fp32"]', 'precisions = ["fp32"]\nstatic_batch = true\nrebench = true'))
    digits, wine = parse(config)
    assert digits["static_batch"] is True and digits["rebench"] is True
    assert "static_batch" not in wine  # the command's default (a dynamic batch) applies

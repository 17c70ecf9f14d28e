"""`optpipe build -c FILE`: several models from one file, CLI overrides, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from optpipe.cli import build as build_command
from optpipe.cli import main
from optpipe.config_file import ConfigError, load_build_file, worst_exit_code

ROOT = Path(__file__).resolve().parents[1]

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
    assert digits["precision"] == "fp32,int8" and "precision" not in wine  # the command's default applies
    assert digits["dynamics"] == ("batch=1:8:64",) and digits["threads"] == 1
    assert digits["no_benchmark"] is True
    assert digits["tolerances"] == ("logits:min_cosine=0.999",)
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

"""JUnit XML: one test case per gate, failures carry the gate's message."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from optpipe.report.junit import error_suite, report_suite, write_junit
from tests.report.test_html import sample_report


def test_one_case_per_variant_and_output(tmp_path: Path) -> None:
    report = sample_report()
    report["variants"].append({"precision": "fp16", "status": "pending", "passed": False, "failures": []})
    report["next_step"] = "copy the directory to a GPU machine"
    path = tmp_path / "junit.xml"
    write_junit(path, [report_suite(report, "digits")])
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {("optpipe.digits.fp32", "parity[logits]"), ("optpipe.digits.int8", "parity[logits]"),
                          ("optpipe.digits.fp16", "parity")}
    failure = cases[("optpipe.digits.int8", "parity[logits]")].find("failure")
    assert failure is not None and "int8 / logits: cosine 0.9 < 0.999" in failure.get("message", "")
    assert cases[("optpipe.digits.fp32", "parity[logits]")].find("failure") is None
    skipped = cases[("optpipe.digits.fp16", "parity")].find("skipped")
    assert skipped is not None and "GPU" in skipped.get("message", "")


def test_failures_outside_an_output_get_their_own_case() -> None:
    report = sample_report()
    variant = report["variants"][0]
    variant["parity"]["failures"].append("inference failed on case 'batch1' (batch 1): bad shape")
    variant["parity"]["passed"] = False
    suite = report_suite(report)
    inference = [c for c in suite.iter("testcase") if c.get("name") == "inference"]
    assert len(inference) == 1 and "bad shape" in inference[0].find("failure").get("message", "")  # type: ignore[union-attr]


def test_error_suite() -> None:
    suite = error_suite("wine", "build failed with exit code 2")
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    error = suite.find("testcase/error")
    assert error is not None and error.get("message") == "build failed with exit code 2"


def test_single_model_build_error_still_writes_junit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from optpipe.cli.main import main

    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(main, ["build", str(tmp_path / "missing.py") + ":Net", "--out", str(tmp_path / "o"),
                                       "--no-cache", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "1" and root.get("errors") == "1"
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "build"
    error = case.find("error")
    assert error is not None and error.get("type") == "UserInputError"
    message = error.get("message", "")
    assert message.startswith("exit 2: UserInputError: ") and "missing.py" in message
    assert message.split(": ", 2)[2] in result.output  # the same one line the log shows
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_config_file_junit_carries_each_models_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from optpipe.cli.main import main

    root_dir = Path(__file__).resolve().parents[2]
    config = tmp_path / "optpipe.toml"
    config.write_text(f"""
benchmark = false
exporter = "torchscript"

[[model]]
name = "good"
spec = "{root_dir}/sample_models/digits_cnn.py:DigitsCNN"
weights = "{root_dir}/sample_models/weights/digits_cnn.safetensors"
out = "out/good"

[[model]]
name = "broken"
spec = "nowhere.py:Net"
out = "out/broken"
""")
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1" and root.get("failures") == "0"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    error = suites["optpipe: broken"].find("testcase/error")
    assert error is not None and "nowhere.py" in error.get("message", "")


STALE = '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="optpipe" tests="1" failures="0" errors="0" />\n'


def test_usage_error_of_the_build_command_writes_junit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from optpipe.cli.main import main

    root_dir = Path(__file__).resolve().parents[2]
    junit = tmp_path / "junit.xml"
    junit.write_text(STALE)  # a passing file from an earlier run must not stay behind
    result = CliRunner().invoke(main, ["build", f"{root_dir}/sample_models/digits_cnn.py:DigitsCNN", "--out",
                                       str(tmp_path / "o"), "--opt-level", "2", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1"
    error = root.find("testsuite/testcase/error")
    assert error is not None and error.get("type") == "UsageError"
    assert "need --target tensorrt" in error.get("message", "")


def test_config_file_error_writes_junit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from optpipe.cli.main import main

    config = tmp_path / "optpipe.toml"
    config.write_text('junit = "from-file.xml"\n[[model]]\nspec = "a.py:A"\nout = "o"\ncolour = "blue"\n')
    cli_junit = tmp_path / "cli.xml"
    for args, junit in (([], tmp_path / "from-file.xml"), (["--junit", str(cli_junit)], cli_junit)):
        junit.write_text(STALE)
        result = CliRunner().invoke(main, ["build", "-c", str(config), "--no-cache", *args])
        assert result.exit_code == 2, result.output
        root = ET.parse(junit).getroot()
        assert root.get("errors") == "1" and root.get("tests") == "1"
        error = root.find("testsuite/testcase/error")
        assert error is not None and error.get("type") == "ConfigError"
        assert "unknown key 'colour'" in error.get("message", "")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("model = [[[")
    junit = tmp_path / "cli.xml"
    junit.write_text(STALE)
    result = CliRunner().invoke(main, ["build", "-c", str(bad_toml), "--junit", str(junit)])
    assert result.exit_code == 2 and "not valid TOML" in (ET.parse(junit).getroot().find("testsuite/testcase/error")
                                                          .get("message", ""))  # type: ignore[union-attr]

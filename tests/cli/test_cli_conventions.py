"""CLI conventions: -h, -V, -q/-v, --log-file, colour rules, a silent library, errors before torch."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import optpipe
from optpipe.cli.main import main
from optpipe.core.console import highlight

ROOT = Path(__file__).resolve().parents[2]
TOY = Path(__file__).parents[1] / "fixtures" / "models" / "toy_models.py"


def test_short_help_and_version() -> None:
    for args in (["-h"], ["build", "-h"], ["cache", "prune", "-h"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args
    for flag in ("-V", "--version"):
        result = CliRunner().invoke(main, [flag])
        assert result.exit_code == 0 and result.output.strip() == f"optpipe, version {optpipe.__version__}"


@pytest.fixture(scope="module")
def quiet_and_verbose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("cli-conv")
    logs = {}
    for name, flags in (("quiet", ["-q"]), ("normal", []), ("logged", ["-q", "--log-file", str(out / "run.log")])):
        result = CliRunner().invoke(main, [*flags, "build", f"{TOY}:TinyNet", "--out", str(out / name),
                                           "--no-benchmark", "--no-cache"])
        assert result.exit_code == 0, result.output
        logs[name] = result.output
    logs["file"] = (out / "run.log").read_text()
    return logs


@pytest.mark.slow
def test_quiet_hides_progress_but_not_the_result(quiet_and_verbose: dict[str, str]) -> None:
    assert "-> export" in quiet_and_verbose["normal"]
    assert "-> export" not in quiet_and_verbose["quiet"]
    assert "result: PASSED (exit 0)" in quiet_and_verbose["quiet"]


@pytest.mark.slow
def test_log_file_gets_every_message_with_timestamps(quiet_and_verbose: dict[str, str]) -> None:
    text = quiet_and_verbose["file"]
    assert "-> export" not in quiet_and_verbose["logged"]  # -q on the console...
    assert " INFO optpipe:   -> export" in text and "validate done in" in text  # ...everything in the file
    assert text.splitlines()[0][:4].isdigit()  # "2026-..." timestamp first


def test_unwritable_log_file_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["--log-file", str(blocker / "x.log"), "passes"])
    assert result.exit_code == 2 and "cannot write" in result.output


def test_verdict_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from optpipe.core.console import echo_result

    styled = highlight("  fp32  pass\n  result: FAILED (exit 1)")
    assert "\x1b[32m\x1b[22mpass" in styled and "\x1b[31m\x1b[1mFAILED" in styled  # green pass, bold red FAILED
    plain = CliRunner().invoke(main, ["passes"], color=False)
    assert "\x1b[" not in plain.output
    # CliRunner(color=True) is what a terminal gets: styles kept, unless NO_COLOR is set
    import click

    @click.command()
    def show() -> None:
        echo_result("result: PASSED (exit 0)")

    assert "\x1b[" in CliRunner().invoke(show, color=True).output
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in CliRunner().invoke(show, color=True).output


@pytest.mark.slow
def test_library_prints_nothing_unless_logging_is_configured(tmp_path: Path, toy: object,
                                                              capfd: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from optpipe.core.console import LOGGER

    for handler in [h for h in LOGGER.handlers if h.name == "optpipe-cli"]:
        LOGGER.removeHandler(handler)  # as in a fresh process that never ran the CLI
    LOGGER.propagate = True
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="optpipe"):
        optpipe.build(toy.TinyNet().eval(), toy.example_inputs(), out_dir=tmp_path / "lib",  # type: ignore[attr-defined]
                      benchmark=False)
    captured = capfd.readouterr()
    assert "-> export" not in captured.out + captured.err  # no print() from the library
    assert any("-> export" in r.getMessage() for r in caplog.records)  # it went to logging.getLogger("optpipe")


@pytest.mark.parametrize("args, message", [
    ([f"{ROOT}/nope.py:Net", "--out", "{tmp}/o"], "model file"),
    ([f"{TOY}:TinyNet", "--out", "{tmp}/existing"], "already exists"),
    ([f"{TOY}:TinyNet", "--out", "{tmp}/o", "--dynamic", "batch=8:1:4"], "--dynamic"),
    ([f"{TOY}:TinyNet", "--out", "{tmp}/o", "--weights", "{tmp}/absent.pt"], "weights file"),
])
def test_errors_that_need_no_torch_come_before_torch_is_imported(tmp_path: Path, args: list[str],
                                                                 message: str) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "x").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in ["build", *args]]
    code = (
        "import sys; from click.testing import CliRunner; from optpipe.cli.main import main; "
        f"r = CliRunner().invoke(main, {argv!r}); print(r.exit_code); print(r.output); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "2" and lines[-1] == "NO-TORCH", done.stdout
    assert message in done.stdout and "optpipe: error:" in done.stdout


def test_passes_lists_each_pass_options_with_types_and_defaults() -> None:
    result = CliRunner().invoke(main, ["passes", "export"])
    assert result.exit_code == 0
    assert "opset: int | None = None" in result.output and "exporter: str = 'auto'" in result.output
    verbose = CliRunner().invoke(main, ["passes", "--verbose"]).output
    assert "benchmark  engine->engine" in verbose and "seconds: float = 2.0" in verbose
    assert "atol: float = 0.0001  # element-wise equivalence tolerance" in verbose  # the field's comment
    unknown = CliRunner().invoke(main, ["passes", "nope"])
    assert unknown.exit_code == 2 and "unknown pass 'nope'" in unknown.output


# torch 2.13's dynamo exporter converts down to 17, but not to 12: it then keeps its own opset 18
@pytest.mark.slow
@pytest.mark.parametrize("exporter, written, warned", [("torchscript", 12, False), ("dynamo", 18, True)])
def test_opset_is_recorded_and_a_changed_one_warns(tmp_path: Path, exporter: str, written: int,
                                                   warned: bool) -> None:
    import json

    result = CliRunner().invoke(main, ["build", f"{TOY}:TinyNet", "--out", str(tmp_path / "o"), "--no-benchmark",
                                       "--no-cache", "--opset", "12", "--exporter", exporter])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    export = next(p for p in report["passes"] if p["name"] == "export")
    assert export["metrics"]["opset"] == written and export["metrics"]["requested_opset"] == 12
    changed = [w for w in report["warnings"] if "opset 12 was requested" in w]
    assert bool(changed) is warned
    if warned:
        assert "wrote opset 18" in changed[0] and "warning: opset 12 was requested" in result.output


@pytest.mark.slow
def test_config_file_json_prints_one_document(tmp_path: Path) -> None:
    import json

    config = tmp_path / "optpipe.toml"
    config.write_text(f'''benchmark = false
[[model]]
name = "one"
spec = "{TOY}:TinyNet"
out = "{tmp_path / 'one'}"
[[model]]
name = "two"
spec = "{TOY}:TinyNet"
out = "{tmp_path / 'two'}"
[[model]]
name = "broken"
spec = "{tmp_path / 'missing.py'}:Net"
out = "{tmp_path / 'three'}"
''')
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--json", "--no-cache"])
    document = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert document["schema"] == "optpipe.build-file/1" and document["exit_code"] == result.exit_code == 2
    assert [b["name"] for b in document["builds"]] == ["one", "two", "broken"]
    assert [b["exit_code"] for b in document["builds"]] == [0, 0, 2]
    assert document["builds"][0]["report"]["variants"][0]["passed"] is True
    assert document["builds"][2]["report"] is None and "missing.py" in result.stderr


def test_build_help_is_grouped_with_examples() -> None:
    text = CliRunner().invoke(main, ["build", "-h"]).output
    titles = ["Model and inputs:", "Precision and calibration:", "Gates:", "Benchmark and profile:",
              "TensorRT (--target tensorrt):", "Output and CI:", "Examples:", "Exit codes:"]
    positions = [text.index(t) for t in titles]
    assert positions == sorted(positions)
    options = text[: text.index("Examples:")]
    for option in ("--weights", "--calib-data", "--tolerance", "--profile", "--opt-level", "--junit", "--mlflow"):
        assert len(re.findall(rf"^  {option}\b", options, flags=re.M)) == 1, option  # listed once
    assert "optpipe build -c optpipe.toml --json" in text


def test_shell_completion_as_documented() -> None:
    import os

    env = {**os.environ, "_OPTPIPE_COMPLETE": "bash_complete", "COMP_WORDS": "optpipe ca", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-c", "from optpipe.cli.main import main; main(prog_name='optpipe')"],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert "plain,cache" in done.stdout.splitlines()

"""Hostile inputs through the real CLI: each gets one ``optpipe: error:`` line, its exit code, no traceback.

The table is the suite's contract: arguments (with ``{name}`` for a corpus file, ``{out}`` for a
fresh output directory, ``{models}`` for hostile_models.py), the exit code and a fragment of the
one error line. No case may run code from the corpus (the ``PWNED`` marker must not appear) or
leave an output directory behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import MODELS, PWNED, make_corpus

from optpipe.cli.main import main

M = f"{MODELS}:Mlp"
X = ("--input", "x:2x4")

CASES: list[tuple[str, list[str], int, str]] = [
    # .pt2 archives (issue 10, case 1 and 8)
    ("pt2-pickled-sample-inputs", ["build", "{pickled_sample_inputs.pt2}", "--out", "{out}"], 2, "--trust-pickle"),
    ("pt2-garbage-member", ["build", "{garbage_model_json.pt2}", "--out", "{out}"], 2, "not a valid torch.export"),
    ("pt2-not-a-zip", ["build", "{not_a_zip.pt2}", "--out", "{out}"], 2, "not a valid torch.export"),
    ("pt2-truncated", ["build", "{truncated.pt2}", "--out", "{out}"], 2, "not a valid torch.export"),
    # weights
    ("weights-pickled-object", ["build", M, *X, "--weights", "{pickled_object_weights.pt}", "--out", "{out}"], 2,
     "not a plain state dict"),
    ("weights-truncated-safetensors", ["build", M, *X, "--weights", "{truncated.safetensors}", "--out", "{out}"], 2,
     "not a valid safetensors file"),
    ("weights-a-tensor", ["build", M, *X, "--weights", "{tensor_not_dict.pt}", "--out", "{out}"], 2,
     "not a state dict"),
    # npz files (case 8 and 10)
    ("eval-data-truncated", ["build", M, *X, "--eval-data", "{truncated_eval.npz}", "--out", "{out}"], 2,
     "truncated_eval.npz"),
    ("eval-data-pickled", ["build", M, *X, "--eval-data", "{pickled_eval.npz}", "--out", "{out}"], 2,
     "pickled_eval.npz"),
    ("eval-data-garbage", ["build", M, *X, "--eval-data", "{garbage.npz}", "--out", "{out}"], 2, "garbage.npz"),
    ("calib-data-truncated", ["build", M, *X, "--precision", "int8", "--calib-data", "{truncated_calib.npz}",
                              "--no-benchmark", "--out", "{out}"], 2, "truncated_calib.npz"),
    # config files (case 8)
    ("config-not-utf8", ["build", "-c", "{not_utf8.toml}"], 2, "not UTF-8"),
    ("config-not-toml", ["build", "-c", "{not_toml.toml}"], 2, "not valid TOML"),
    ("config-no-model", ["build", "-c", "{no_model.toml}"], 2, "no [[model]] table"),
    ("config-empty-model-list", ["build", "-c", "{empty_model_list.toml}"], 2, "no [[model]] table"),
    ("config-model-not-table", ["build", "-c", "{model_not_table.toml}"], 2, "array of tables"),
    # command-line arguments (cases 6, 8, 10)
    ("out-is-root", ["build", M, *X, "--out", "/", "--overwrite"], 2, "filesystem root"),
    ("duplicate-output-names", ["build", M, *X, "--output-names", "a,a", "--out", "{out}"], 2, "more than once"),
    ("tolerance-negative", ["build", M, *X, "--tolerance", "*:atol=-1", "--out", "{out}"], 2, "must be a number >= 0"),
    ("tolerance-above-1", ["build", M, *X, "--tolerance", "*:min_cosine=1.5", "--out", "{out}"], 2,
     "must be a fraction in [0, 1]"),
    ("tolerance-nan", ["build", M, *X, "--tolerance", "*:rtol=nan", "--out", "{out}"], 2, "finite"),
    ("absurd-input-size", ["build", M, "--input", "x:2147483648", "--out", "{out}"], 2, "an example only needs"),
    ("absurd-input-total", ["build", M, "--input", "x:65536x65536", "--out", "{out}"], 2, "an example only needs"),
    ("unknown-option", ["build", M, "--bogus", "--out", "{out}"], 2, "No such option '--bogus'"),
    ("missing-out", ["build", M, *X], 2, "Missing option '--out'"),
    ("bad-choice", ["build", M, *X, "--target", "gpu", "--out", "{out}"], 2, "'gpu' is not one of"),
    ("unknown-command", ["frobnicate"], 2, "No such command"),
    ("bad-int", ["build", M, *X, "--threads", "zero", "--out", "{out}"], 2, "'zero' is not a valid integer"),
    # models that exit (case 7)
    ("model-exits-in-init", ["build", f"{MODELS}:ExitsInInit", *X, "--out", "{out}"], 2, "SystemExit: 7"),
    ("model-exits-during-export", ["build", f"{MODELS}:ExitsDuringExport", *X, "--no-benchmark", "--out", "{out}"],
     2, "sys.exit(7)"),
    # a dynamic axis the model cannot vary (case 5)
    ("dynamic-axis-cannot-vary", ["build", f"{MODELS}:FlattenCnn", "--input", "x:1x3x8x8", "--dynamic",
                                  "hw=4:8:16@x.2", "--no-benchmark", "--out", "{out}"], 2,
     "the PyTorch model fails on the 'hw4' inputs"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _expand(args: list[str], corpus: dict[str, Path], out: Path) -> list[str]:
    names = {name: str(path) for name, path in corpus.items()}
    names["out"] = str(out)
    return [re.sub(r"\{([^{}]+)\}", lambda m: names.get(m.group(1), m.group(0)), arg) for arg in args]


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The real CLI in-process: (exit code, output); anything but a SystemExit is a crash and fails here."""
    result = CliRunner().invoke(main, list(args), env=env)
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, result.output


def assert_one_error_line(output: str, fragment: str) -> None:
    """Exactly one ``optpipe: error:`` line holding ``fragment``, and no traceback anywhere."""
    errors = [line for line in output.splitlines() if line.startswith("optpipe: error:")]
    assert len(errors) == 1, output
    assert fragment in errors[0], output
    assert "Traceback" not in output and "Usage:" not in output, output


EXPORTS = {"model-exits-during-export"}  # the one case that gets as far as exporting: slow


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [pytest.param(*c[1:], id=c[0], marks=pytest.mark.slow if c[0] in EXPORTS else ()) for c in CASES],
)
def test_hostile_input(tmp_path: Path, corpus: dict[str, Path], args: list[str], code: int, fragment: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, _expand(args, corpus, out))
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert result.exit_code == code, result.output
    assert_one_error_line(result.output, fragment)
    assert not (corpus["good.pt2"].parent / PWNED).exists(), "code from the corpus ran"
    assert not out.exists(), "a refused build left an output directory"


@pytest.mark.slow
def test_a_good_pt2_still_builds(tmp_path: Path, corpus: dict[str, Path]) -> None:
    """The weights-only loading refuses pickles, not ordinary archives (tensors, tuples)."""
    result = CliRunner().invoke(main, ["build", str(corpus["good.pt2"]), "--out", str(tmp_path / "out"),
                                       "--no-benchmark"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_trusted_pt2_pickles_are_loaded_only_with_the_flag(tmp_path: Path, corpus: dict[str, Path]) -> None:
    """--trust-pickle is the explicit opt-in: then (and only then) the archive's pickle runs."""
    marker = corpus["good.pt2"].parent / PWNED
    result = CliRunner().invoke(main, ["build", str(corpus["pickled_sample_inputs.pt2"]), "--trust-pickle",
                                       "--out", str(tmp_path / "out"), "--no-benchmark"])
    assert marker.exists(), result.output
    marker.unlink()


@pytest.mark.slow
def test_a_real_dynamic_spatial_axis_is_kept_and_recorded(tmp_path: Path) -> None:
    import json

    import onnx

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", f"{MODELS}:PoolCnn", "--input", "x:1x3x8x8", "--dynamic",
                                       "hw=4:8:16@x.2", "--no-benchmark", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["build"]["inputs"][0]["shape"] == ["batch", 3, "hw", 8]  # axis 0: the default dynamic batch
    dims = onnx.load(str(out / report["variants"][0]["artifact"])).graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and not dims[2].HasField("dim_value")  # really dynamic in the artifact


def test_only_exact_usage_lines_for_help(tmp_path: Path) -> None:
    """--help and a bare `optpipe` still print the help (exit 0), not an error line."""
    for args in (["--help"], [], ["build", "--help"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "Usage:" in result.output and "optpipe: error" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["garbage_model_json.pt2"])  # one process: torch takes seconds to import
def test_torch_logs_no_traceback_for_a_bad_pt2(tmp_path: Path, corpus: dict[str, Path], name: str) -> None:
    """In a real process torch's logger would print its own traceback before our line (case 8)."""
    import subprocess
    import sys

    optpipe = Path(sys.executable).parent / "optpipe"
    run = subprocess.run([str(optpipe), "build", str(corpus[name]), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("optpipe: error:"), run.stderr

"""The optpipe CLI end to end: sample models build, and every bad input gets one line and its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, SAMPLES, TOY_MODELS

from optpipe.cli.main import main

DIGITS = f"{SAMPLES / 'digits_cnn.py'}:DigitsCNN"
DIGITS_WEIGHTS = str(SAMPLES / "weights" / "digits_cnn.safetensors")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def assert_one_line_error(output: str, pattern: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("optpipe: error:")]
    assert len(errors) == 1, output
    assert pattern in errors[0], output
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "weights"),
    [
        ("digits_cnn.py:DigitsCNN", "digits_cnn"),
        ("text_encoder.py:TinyTextEncoder", "text_encoder"),
        ("two_heads.py:TwoHeadNet", "two_heads"),
    ],
)
def test_sample_models_build_and_pass(tmp_path: Path, spec: str, weights: str) -> None:
    out = tmp_path / "out"
    code, output = run(
        "build", str(SAMPLES / spec), "--weights", str(SAMPLES / "weights" / f"{weights}.safetensors"),
        "--dynamic", "batch=1:8:64", "--out", str(out), "--threads", "1",
    )
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "optpipe.report/1"
    assert report["passed"] is True and report["target"] == "cpu"
    assert {"python", "torch", "onnx", "onnxruntime", "cpu"} <= set(report["environment"])
    assert [p["name"] for p in report["passes"]] == ["export", "simplify", "engine-ort", "validate", "benchmark"]
    assert report["baseline"]["p50_ms"] > 0
    (variant,) = report["variants"]
    assert variant["precision"] == "fp32" and variant["passed"]
    assert (out / variant["artifact"]).is_file()
    cases = {c["name"]: c["batch"] for c in variant["parity"]["cases"]}
    assert cases["batch1"] == 1 and cases["example"] == 2
    assert all(size <= 16 for name, size in cases.items() if name.startswith("heldout"))  # cases of <= 16 rows
    assert any(name.startswith("heldout") for name in cases)
    for stats in variant["parity"]["outputs"].values():
        assert {"max_abs", "max_rel", "mean_abs", "cosine"} <= set(stats)
    assert {"batch", "threads", "p50_ms", "p90_ms", "p99_ms", "throughput"} <= set(variant["latency"])
    assert variant["speedup_vs_torch"] > 0
    assert "result: PASSED (exit 0)" in output


@pytest.mark.slow
def test_input_flags_and_dynamic_artifact_runs_at_two_batch_sizes(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    out = tmp_path / "out"
    code, output = run(
        "build", f"{TOY_MODELS}:TinyNet", "--input", "x:4x1x8x8", "--dynamic", "batch=1:4:16",
        "--out", str(out), "--no-benchmark",
    )
    assert code == 0, output
    session = ort.InferenceSession(str(out / "fp32" / "model.ort-cpu.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        (logits,) = session.run(None, {"x": np.zeros((batch, 1, 8, 8), np.float32)})
        assert logits.shape == (batch, 5)


def test_missing_model_file(tmp_path: Path) -> None:
    code, output = run("build", str(tmp_path / "nope.py") + ":Net", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "nope.py")


def test_missing_name_lists_candidates(tmp_path: Path) -> None:
    code, output = run("build", f"{TOY_MODELS}:Nope", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "TinyNet")


def test_name_that_is_not_a_module(tmp_path: Path) -> None:
    code, output = run("build", f"{TOY_MODELS}:OUTPUT_NAMES", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "OUTPUT_NAMES")


def test_weights_with_wrong_keys_and_shapes_name_the_mismatch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"conv.weight": torch.zeros(3, 1, 3, 3), "extra.bias": torch.zeros(2)}, str(bad))
    code, output = run("build", DIGITS, "--weights", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "do not match DigitsCNN: missing keys")


@pytest.mark.parametrize(
    ("flag", "message"),
    [("x:2xAx8", "not a positive integer"), ("x:2x1x8x8:complex", "dtype"), ("x", "NAME:SHAPE")],
)
def test_malformed_input_flag(tmp_path: Path, flag: str, message: str) -> None:
    code, output = run("build", DIGITS, "--weights", DIGITS_WEIGHTS, "--input", flag, "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, message)


@pytest.mark.parametrize("flag", ["x:2x8x8", "x:2x1x8x8:int64"])
def test_input_of_wrong_rank_or_dtype(tmp_path: Path, flag: str) -> None:
    code, output = run("build", DIGITS, "--weights", DIGITS_WEIGHTS, "--input", flag, "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "the model rejected the inputs")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_model_no_exporter_can_handle(tmp_path: Path) -> None:
    code, output = run(
        "build", f"{TOY_MODELS}:IntBatch", "--input", "x:2x3", "--dynamic", "batch=1:2:8", "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert_one_line_error(output, "no exporter could export the model: dynamo:")
    assert "torchscript:" in output
    assert not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(blocker / "out"))
    assert code == 2
    assert_one_line_error(output, "cannot write the output directory")


@pytest.mark.slow
def test_existing_output_directory_needs_overwrite_and_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.onnx").write_text("from an old build")
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark")
    assert code == 2
    assert_one_line_error(output, "--overwrite")
    assert (out / "stale.onnx").exists()
    # --overwrite replaces only what optpipe built (issue 10): a directory of other files is refused, kept.
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark", "--overwrite")
    assert code == 2
    assert_one_line_error(output, "not an optpipe build directory")
    assert (out / "stale.onnx").read_text() == "from an old build"
    (out / "stale.onnx").unlink()
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark")
    assert code == 0, output
    (out / "stale.onnx").write_text("added next to a build")
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark", "--overwrite")
    assert code == 0, output
    assert not (out / "stale.onnx").exists()
    assert (out / "report.json").exists()


@pytest.mark.slow
def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path, toy: object) -> None:
    import optpipe

    class Interrupt:
        def before_pass(self, pass_: object, artifact: object, ctx: object) -> None:
            if getattr(pass_, "name", "") == "engine-ort":
                raise KeyboardInterrupt

        def after_pass(self, *args: object) -> None:
            return None

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=out, instruments=[Interrupt()], log=lambda m: None)  # type: ignore[attr-defined]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gate_failure_exits_1_and_keeps_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run(
        # A gate no INT8 model can meet (cosine 1.0 and exact values: quantization always changes something);
        # --no-guard so the guard does not keep every node in FP32 to pass it. (A min_cosine above 1 is refused
        # up front now, exit 2: see test_out_of_range_tolerances_are_refused_before_any_build.)
        "build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark", "--precision", "int8",
        "--synthetic-calib", "--no-guard", "--tolerance", "*:atol=0", "--tolerance", "*:rtol=0",
        "--tolerance", "logits:min_cosine=1.0",
    )
    assert code == 1, output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["exit_code"] == 1
    assert any("cosine" in failure for failure in report["variants"][0]["failures"])
    assert (out / report["variants"][0]["artifact"]).is_file()
    assert "FAIL" in output


def test_malformed_tolerance_flag(tmp_path: Path) -> None:
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), "--tolerance", "cosine")
    assert code == 2
    assert "OUTPUT:FIELD=VALUE" in output


@pytest.mark.slow
def test_inspect_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark")[0] == 0
    code, output = run("inspect", str(out / "model.onnx"))
    assert code == 0 and "Conv" in output and "logits" in output
    code, output = run("inspect", str(out / "report.json"))
    assert code == 2
    assert_one_line_error(output, "not a valid ONNX model")
    code, output = run("passes")
    assert code == 0 and "export" in output and "benchmark" in output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from optpipe.cli.main import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'Exit codes' in r.output; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_torch_export_program_builds(tmp_path: Path, toy: object) -> None:
    program = torch.export.export(toy.TinyNet().eval(), toy.example_inputs())  # type: ignore[attr-defined]
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    code, output = run("build", str(tmp_path / "tiny.pt2"), "--out", str(tmp_path / "out"), "--no-benchmark")
    assert code == 0, output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["variants"][0]["passed"]


@pytest.mark.parametrize("flag", ["--threads", "--batch"])
def test_non_positive_threads_or_batch_are_refused_before_any_work(tmp_path: Path, flag: str) -> None:
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), flag, "0")
    assert code == 2
    assert "0 is not in the range x>=1" in output
    assert not (tmp_path / "o").exists()


def test_nan_in_the_pytorch_reference_is_named_as_such(tmp_path: Path) -> None:
    code, output = run("build", f"{TOY_MODELS}:NanOut", "--input", "x:2x4", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(output, "the PyTorch model itself produces NaN/Inf in output 'logits'")
    assert not (tmp_path / "o").exists()


def test_junit_path_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), "--junit",
                       str(blocker / "junit.xml"))  # fmt: skip
    assert code == 2, output
    assert "is a file, not a directory" in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_junit_write_failing_after_the_build_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optpipe.report.junit

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(optpipe.report.junit, "write_junit", fail)
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), "--no-benchmark",
                       "--no-cache", "--junit", str(tmp_path / "junit.xml"))  # fmt: skip
    assert code == 2, output
    assert_one_line_error(output, "cannot write --junit")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch", "8", "--static-batch"], "--batch 8: input 'x' has a static batch of 2"),
        (["--batch", "100", "--dynamic", "batch=1:4:8"], "--batch 100 is outside the dynamic range 1..8"),
    ],
)
def test_benchmark_batch_the_artifact_cannot_take_is_refused_before_any_work(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), *extra)
    assert code == 2, output
    assert_one_line_error(output, message)
    assert not (tmp_path / "o").exists() and "export" not in output


@pytest.mark.slow
def test_batch_with_no_benchmark_is_ignored_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--batch", "8", "--no-benchmark",
                       "--no-cache")  # fmt: skip
    assert code == 0, output
    warning = "--batch 8 is ignored: --no-benchmark skips the benchmark"
    assert warning in output and warning in json.loads((out / "report.json").read_text())["warnings"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("*:bogus=1",
         "unknown tolerance field 'bogus' for output '*'; expected one of atol, max_nrmse, min_cosine, min_decision, "
         "min_logit_cosine, min_row_cosine, min_top1, min_top1_all, rtol, top1_margin"),
        ("*:atol=nan", "must be a finite number"),
        ("logits:min_cosine=inf", "must be a finite number"),
    ],
)
def test_tolerance_field_and_value_are_checked_when_parsed(tmp_path: Path, flag: str, message: str) -> None:
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), "--tolerance", flag)
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


def test_tolerance_for_an_unknown_output_is_refused_before_export(tmp_path: Path) -> None:
    code, output = run("build", f"{TOY_MODELS}:TinyNet", "--out", str(tmp_path / "o"), "--tolerance",
                       "logitz:atol=1")  # fmt: skip
    assert code == 2, output
    assert_one_line_error(output, "tolerance given for unknown output(s) logitz; the outputs are logits")
    assert "export" not in output and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_duplicate_precisions_build_and_record_one_variant(tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, output = run(
        "build", f"{TOY_MODELS}:TinyNet", "--out", str(out), "--no-benchmark", "--precision", "fp32, fp32"
    )
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert [v["precision"] for v in report["variants"]] == ["fp32"]
    assert report["build"]["precisions"] == ["fp32"]

"""Split TensorRT builds: every CPU stage here, the engine later with ``optpipe engine DIR``.

On a machine without TensorRT or a GPU (this one), ``optpipe build --target
tensorrt`` must leave a complete, resumable directory, exit 3 and say exactly
how to finish. Where TensorRT and a GPU exist, the ``gpu`` tests run the whole
chain for real: a one-machine build, and a split directory (made with the GPU
hidden through ``CUDA_VISIBLE_DEVICES``) finished by ``optpipe engine``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import trt_usable

from optpipe.builder.split_finish import read_split_build
from optpipe.cli.main import main
from optpipe.core.errors import EXIT_ENVIRONMENT, EXIT_GATE_FAILED, EXIT_OK, EXIT_USAGE, EnvironmentUnavailable

pytestmark = pytest.mark.slow  # every test here builds a model (or reads the module-scoped split build)

ROOT = Path(__file__).resolve().parents[2]
DIGITS = [
    str(ROOT / "sample_models" / "digits_cnn.py") + ":DigitsCNN",
    "--weights",
    str(ROOT / "sample_models" / "weights" / "digits_cnn.safetensors"),
    "--dynamic",
    "batch=1:8:64",
]
DET_MODEL = '''
import torch
from torch import nn


class DetNet(nn.Module):
    """torch.linalg.det exports as ONNX Det, which TensorRT's ONNX parser does not support."""

    def forward(self, x):
        return torch.linalg.det(x) * 2.0


def example_inputs():
    return (torch.randn(2, 3, 3),)
'''


HAS_TRT_GPU = trt_usable()
needs_no_trt = pytest.mark.skipif(HAS_TRT_GPU, reason="TensorRT and a GPU are usable here: builds are not split")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One split build of the digits CNN, shared by the tests that only read it (~10 s)."""
    if HAS_TRT_GPU:
        pytest.skip("TensorRT and a GPU are usable here: builds are not split")
    out = tmp_path_factory.mktemp("split") / "digits-trt"
    result = run("build", *DIGITS, "--target", "tensorrt", "--out", str(out), "--no-benchmark",
                 "--opt-level", "4", "--hardware-compat")
    return out, result


def test_split_build_exits_3_and_says_how_to_finish(split_dir: tuple[Path, Result]) -> None:
    out, result = split_dir
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    assert "pending" in result.output and "not finished here" in result.output
    assert f"optpipe engine {out}" in result.output
    assert "pip wheel --no-deps" in result.output and "optpipe[tensorrt] @ git+" in result.output


def test_split_directory_is_complete_and_resumable(split_dir: tuple[Path, Result]) -> None:
    out, _ = split_dir
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "tensorrt" and report["status"] == "split"
    assert report["exit_code"] == EXIT_ENVIRONMENT and report["passed"] is False
    assert f"optpipe engine {out}" in report["next_step"]
    assert [p["name"] for p in report["passes"]] == ["export", "simplify", "trt-lint"]
    assert all(p["status"] in ("ok", "cached") for p in report["passes"])  # cached: an earlier identical run
    (variant,) = report["variants"]
    assert variant["status"] == "pending" and variant["artifact"] is None and variant["parity"] is None
    assert (out / variant["onnx"]).is_file()
    assert variant["passes"]["trt-lint"]["errors"] == 0
    build = report["build"]
    assert build["inputs"] == [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert build["outputs"] == ["logits"]
    assert build["dynamic"] == [{"name": "batch", "min": 1, "opt": 8, "max": 64}]
    assert build["trt"] == {"builder_optimization_level": 4, "hardware_compatibility": "ampere_plus"}
    saved = sorted(p.stem for p in (out / "golden").glob("*.npz"))
    assert {"batch1", "batch3", "example"} <= set(saved)
    assert any(n.startswith("heldout") for n in saved) and any(n.startswith("calib-heldout") for n in saved)
    assert not list(out.parent.glob(".optpipe-partial-*")), "staging directory left behind"
    assert not list(out.rglob("*.plan")), "no engine may exist in a split directory"
    split = read_split_build(out)  # what `optpipe engine` reads on the GPU machine
    assert sorted(c.name for c in split.golden.cases) == saved
    assert split.build.inputs[0].shape == ("batch", 1, 8, 8)


def test_engine_on_this_machine_exits_3_and_changes_nothing(split_dir: tuple[Path, Result]) -> None:
    out, _ = split_dir
    before = (out / "report.json").read_bytes()
    result = run("engine", str(out))
    assert result.exit_code == EXIT_ENVIRONMENT
    assert f"cannot finish {out} on this machine" in result.output
    assert "TensorRT and an NVIDIA GPU" in result.output
    assert "Traceback" not in result.output
    assert (out / "report.json").read_bytes() == before


def test_engine_refuses_a_directory_with_missing_golden_data(
    split_dir: tuple[Path, Result], tmp_path: Path
) -> None:
    out, _ = split_dir
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "report.json").write_bytes((out / "report.json").read_bytes())
    (copy / "model.onnx").write_bytes((out / "model.onnx").read_bytes())
    result = run("engine", str(copy))
    assert result.exit_code == EXIT_USAGE
    assert "golden" in result.output


def test_verify_on_a_split_build_says_parity_needs_the_gpu_machine(split_dir: tuple[Path, Result]) -> None:
    out, _ = split_dir
    assert (out / "manifest.json").is_file()
    result = run("verify", str(out))
    # Files intact, but no TensorRT variant was checked: exit 3, never a plain "OK".
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    assert "NOT VERIFIED" in result.output and f"optpipe engine {out}" in result.output
    assert "PARITY NOT VERIFIED HERE" in result.output and "result: OK" not in result.output
    as_json = json.loads(run("verify", str(out), "--json").output)
    assert as_json["passed"] is False and as_json["failures"] == [] and as_json["unverified"]
    assert as_json["variants"]["fp32"]["status"].startswith("not verified")
    hashes_only = run("verify", str(out), "--no-parity")  # asked for the hash check alone
    assert hashes_only.exit_code == EXIT_OK, hashes_only.output


def test_verify_on_a_split_build_still_fails_on_a_changed_file(
    split_dir: tuple[Path, Result], tmp_path: Path
) -> None:
    out, _ = split_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = run("verify", str(copy))
    assert result.exit_code == EXIT_GATE_FAILED, result.output  # a failure outranks "not verified"
    assert "changed file: model.onnx" in result.output


def test_finished_report_keeps_cpu_stage_records_and_manifest_lists_every_file(
    split_dir: tuple[Path, Result], tmp_path: Path
) -> None:
    """The tail of ``finish_build`` (report re-read, report.html, manifest) on the real split directory.

    The engine passes in between need TensorRT (see the gpu test below); this checks what
    finish keeps from the CPU stage: pass records, and every file in the manifest.
    """
    from optpipe.report.build_report import Report
    from optpipe.report.manifest import build_files, finish_build_dir, load_manifest

    out, _ = split_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = json.loads((copy / "report.json").read_text())
    report = Report.from_dict(data)
    assert [p.name for p in report.passes] == [p["name"] for p in data["passes"]] == ["export", "simplify", "trt-lint"]
    assert report.to_dict()["passes"] == data["passes"]
    report.write(copy / "report.json")
    finish_build_dir(copy, report)
    listed = {entry["path"] for entry in load_manifest(copy)["files"]}
    on_disk = {f.relative_to(copy).as_posix() for f in build_files(copy)}
    assert listed == on_disk
    assert {"model.onnx", "report.json", "report.html", "golden/example.npz"} <= listed


@needs_no_trt
def test_build_stops_at_the_lint_on_an_op_tensorrt_lacks(tmp_path: Path) -> None:
    model = tmp_path / "det_model.py"
    model.write_text(DET_MODEL)
    out = tmp_path / "out"
    result = run("build", f"{model}:DetNet", "--target", "tensorrt", "--out", str(out), "--no-benchmark")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "pass 'trt-lint' failed" in result.output
    assert "Det is not supported by TensorRT" in result.output and "Fix:" in result.output
    assert not out.exists(), "a build stopped by the lint must not leave a directory"
    assert not list(tmp_path.glob(".optpipe-partial-*"))


def test_tensorrt_options_need_the_tensorrt_target(tmp_path: Path) -> None:
    result = run("build", *DIGITS, "--out", str(tmp_path / "o"), "--opt-level", "4")
    assert result.exit_code == EXIT_USAGE
    assert "need --target tensorrt" in result.output
    result = run("build", *DIGITS, "--target", "tensorrt", "--out", str(tmp_path / "o"), "--opt-level", "9")
    assert result.exit_code == EXIT_USAGE and "--opt-level" in result.output


# --- on a machine with TensorRT and an NVIDIA GPU ---------------------------------------------


@pytest.fixture
def trt_gpu() -> None:
    """Skip with the precise reason when TensorRT or a CUDA GPU is missing."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from optpipe.runtime.tensorrt.engine import check_trt_available

    try:
        check_trt_available()
    except EnvironmentUnavailable as exc:
        pytest.skip(f"no usable TensorRT/CUDA GPU: {exc}")


@pytest.mark.gpu
def test_one_machine_tensorrt_build_validates_and_times(trt_gpu: None, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    result = run("build", *DIGITS, "--target", "tensorrt", "--out", str(out),
                 "--timing-cache", str(tmp_path / "timing.cache"))
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["passed"] is True
    (variant,) = report["variants"]
    assert variant["artifact"] == "fp32/model.plan" and (out / "fp32" / "model.plan.json").is_file()
    assert variant["parity"]["passed"] and {c["name"] for c in variant["parity"]["cases"]} >= {"batch1", "example"}
    assert variant["latency"]["p50_ms"] > 0 and variant["gpu_memory"]["gpu_total_bytes"] > 0
    assert variant["passes"]["engine-trt"]["build_options"]["strongly_typed"] is True
    assert (tmp_path / "timing.cache").is_file()
    import torch

    # PyTorch's baseline runs where the engine runs when this torch can (else it is labelled "cpu").
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert variant["torch_latency"]["device"].startswith(expected)
    assert run("verify", str(out)).exit_code == EXIT_OK


@pytest.mark.gpu
def test_split_directory_finished_by_optpipe_engine(trt_gpu: None, tmp_path: Path) -> None:
    out = tmp_path / "split"
    # Hide the GPU from the CPU stages: a real "no GPU here" environment, not a stand-in for TensorRT.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cpu_stage = subprocess.run(
        [str(Path(sys.executable).parent / "optpipe"), "build", *DIGITS, "--target", "tensorrt", "--out", str(out),
         "--no-benchmark"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )
    if cpu_stage.returncode != EXIT_ENVIRONMENT:
        pytest.skip(f"could not hide the GPU with CUDA_VISIBLE_DEVICES (exit {cpu_stage.returncode})")
    result = run("engine", str(out))
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["next_step"] is None
    assert report["build"]["split_environment"]["cpu"]  # where the CPU stages ran is kept
    assert [p["name"] for p in report["passes"]][-4:] == ["trt-lint", "engine-trt", "validate", "benchmark"]
    (variant,) = report["variants"]
    assert variant["status"] == "built" and variant["passed"] is True
    assert (out / variant["artifact"]).is_file()
    assert report["passes"][0]["name"] == "export"  # the CPU stage's records are kept
    from optpipe.report.manifest import build_files, load_manifest

    listed = {entry["path"] for entry in load_manifest(out)["files"]}
    assert listed == {f.relative_to(out).as_posix() for f in build_files(out)}
    assert {"model.onnx", "golden/example.npz", variant["artifact"]} <= listed
    verified = run("verify", str(out))  # TensorRT parity rerun with TensorRT, here on the GPU
    assert verified.exit_code == EXIT_OK, verified.output
    assert "parity pass" in verified.output
    again = run("engine", str(out))
    assert again.exit_code == EXIT_USAGE and "--rebuild" in again.output

"""manifest.json contents and `optpipe verify`: a fresh build verifies; any changed byte is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.report.manifest import MANIFEST, reproducibility

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optpipe.builder.run import build
    from optpipe.model.prepared import prepare_model

    prepared = prepare_model(str(ROOT / "sample_models/digits_cnn.py:DigitsCNN"),
                             weights=ROOT / "sample_models/weights/digits_cnn.safetensors",
                             dynamics=["batch=1:8:64"])
    out = tmp_path_factory.mktemp("verify") / "digits"
    build(prepared.module, prepared.example_inputs, out_dir=out, input_names=prepared.input_names,
          output_names=prepared.output_names, dynamic=prepared.dynamic, benchmark=False,
          exporter="torchscript", log=lambda message: None)
    return out


@pytest.fixture
def build_dir(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "build"
    shutil.copytree(built, copy)
    return copy


def verify(directory: Path) -> Any:
    return CliRunner().invoke(main, ["verify", str(directory)])


@pytest.mark.slow
def test_manifest_lists_every_file_with_hash_and_reproducibility(build_dir: Path) -> None:
    manifest = json.loads((build_dir / MANIFEST).read_text())
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == on_disk
    assert {"report.json", "report.html", "model.onnx", "fp32/model.ort-cpu.onnx"} <= listed
    for entry in manifest["files"]:
        assert len(entry["sha256"]) == 64 and entry["size"] == (build_dir / entry["path"]).stat().st_size
        assert entry["reproducible_reason"]
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    assert by_path["report.json"]["reproducible"] is False
    assert by_path["model.onnx"]["reproducible"] is True
    assert [p["pass"] for p in manifest["config"]["pipelines"]["shared"]] == ["export", "simplify"]
    assert manifest["config"]["pipelines"]["shared"][0]["config"]["exporter"] == "torchscript"
    assert manifest["packages"]["onnxruntime"] and manifest["host"]["cpu_count"]


def test_reproducibility_table() -> None:
    assert reproducibility("fp16/model.plan")[0] is False
    assert reproducibility("golden/example.npz")[0] is True
    assert reproducibility("notes.txt") == (None, "not measured")
    # Sidecars with a build time and the plan's sha256 are not caught by the *.json rule.
    assert reproducibility("fp16/model.plan.json")[0] is False
    assert reproducibility("fp32/model.plan.json")[0] is False
    assert reproducibility("trt.timing.cache.json")[0] is False
    assert reproducibility("fp16/metadata.json")[0] is True


@pytest.mark.slow
def test_verify_passes_on_a_fresh_build(build_dir: Path) -> None:
    result = verify(build_dir)
    assert result.exit_code == 0, result.output
    assert "fp32     parity pass" in result.output


@pytest.mark.slow
def test_verify_names_a_file_with_one_flipped_byte(build_dir: Path) -> None:
    engine = build_dir / "fp32" / "model.ort-cpu.onnx"
    data = bytearray(engine.read_bytes())
    data[-10] ^= 0x01
    engine.write_bytes(bytes(data))
    result = verify(build_dir)
    assert result.exit_code == 1
    assert "changed file: fp32/model.ort-cpu.onnx" in result.output


@pytest.mark.slow
def test_verify_names_a_missing_file_and_notes_extra_ones(build_dir: Path) -> None:
    (build_dir / "golden" / "batch1.npz").unlink()
    (build_dir / "ci-log.txt").write_text("added by CI")
    result = verify(build_dir)
    assert result.exit_code == 1
    assert "missing file: golden/batch1.npz" in result.output
    assert "file not in the manifest: ci-log.txt" in result.output


@pytest.mark.slow
def test_verify_reruns_parity_with_the_saved_tolerances(build_dir: Path) -> None:
    report = json.loads((build_dir / "report.json").read_text())
    report["build"]["tolerances"] = {"*": {"atol": 1e-12, "rtol": 0.0}}
    (build_dir / "report.json").write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["verify", str(build_dir), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert any("changed file: report.json" in f for f in data["failures"])
    assert any("parity" in f and "element-wise" in f for f in data["failures"])


def test_verify_a_directory_that_is_not_a_build(tmp_path: Path) -> None:
    assert verify(tmp_path).exit_code == 2
    assert verify(tmp_path / "missing").exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize(("files", "message"), [
    ("model.onnx", "'files' must be a list, got str"),
    ([1, 2], "files[0] must be an object"),
    ([{"sha256": "0" * 64}], "files[0].path must be a non-empty string"),
    ([{"path": 3, "sha256": "0" * 64}], "files[0].path must be a non-empty string"),
    ([{"path": "model.onnx"}], "files[0].sha256 must be 64 hex digits"),
    ([{"path": "model.onnx", "sha256": 5}], "files[0].sha256 must be 64 hex digits"),
    ([{"path": "../../etc/passwd", "sha256": "0" * 64}], "is not a path inside the build directory"),
])
def test_verify_a_malformed_manifest_exits_2_with_one_line(build_dir: Path, files: Any, message: str) -> None:
    manifest = json.loads((build_dir / MANIFEST).read_text())
    manifest["files"] = files
    (build_dir / MANIFEST).write_text(json.dumps(manifest))
    result = verify(build_dir)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a one-line error, not a traceback
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_verify_of_an_auto_build_agrees_with_the_build_on_its_rejected_candidates(tmp_path: Path) -> None:
    """An auto build that exits 0 although a candidate failed its gate must verify 0 (the rejected candidate
    fails again, as recorded) — verify used to exit 1 on it (ViT-B/16's auto build, issue 20). The twin: the
    shipped variant itself failing its rerun still fails verify (the record says it passed)."""
    from optpipe.builder.run import build
    from optpipe.model.prepared import prepare_model

    prepared = prepare_model(str(ROOT / "sample_models/digits_cnn.py:DigitsCNN"),
                             weights=ROOT / "sample_models/weights/digits_cnn.safetensors",
                             dynamics=["batch=1:8:64"])
    out = tmp_path / "auto"
    report = build(prepared.module, prepared.example_inputs, out_dir=out, input_names=prepared.input_names,
                   output_names=prepared.output_names, dynamic=prepared.dynamic, precisions="auto",
                   tolerances={"*": {"min_cosine": 0.9999999}}, no_guard=True, bench_seconds=0.2,
                   exporter="torchscript", log=lambda message: None)
    rejected = [v.precision for v in report.variants if not v.required and not v.passed and v.artifact]
    assert report.passed and rejected, [(v.precision, v.passed, v.required) for v in report.variants]
    result = CliRunner().invoke(main, ["verify", str(out), "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 0, data["failures"]
    assert all(data["variants"][p]["status"] == "rejected (as in the build)" for p in rejected)

    from optpipe.builder.verify import VerifyResult, record_parity

    shipped = VerifyResult(out)
    record_parity(shipped, "fp32", {"passed": False, "failures": ["cosine 0.5 < 0.99"]}, report)
    assert shipped.exit_code == 1 and shipped.variants["fp32"]["status"] == "FAIL"

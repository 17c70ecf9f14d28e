"""builder.plan: a variant's record carries the size of its artifact and ONNX, external data included (issue 20)."""

from __future__ import annotations

from pathlib import Path

from optpipe.builder.plan import variant_result
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.records import VariantResult


def test_variant_sizes_count_the_external_data_files(tmp_path: Path) -> None:
    (tmp_path / "int4-weight").mkdir()
    (tmp_path / "int4-weight" / "model.onnx").write_bytes(b"m" * 100)
    (tmp_path / "int4-weight" / "model.onnx.data").write_bytes(b"d" * 1000)  # weights over 1.8 GB go here
    (tmp_path / "int4-weight" / "model.ort-cpu.onnx").write_bytes(b"e" * 70)
    engine = Artifact(ArtifactKind.ENGINE, tmp_path / "int4-weight" / "model.ort-cpu.onnx", "", (), (),
                      precision="int4-weight", extra={"source_onnx": str(tmp_path / "int4-weight" / "model.onnx")})
    result = variant_result("int4-weight", engine, [], tmp_path, engine_built=True)
    assert (result.size_bytes, result.onnx_size_bytes) == (70, 1100)
    again = VariantResult.from_dict(result.to_dict())  # report.json keeps them
    assert (again.size_bytes, again.onnx_size_bytes) == (70, 1100) and "size_bytes" not in again.extra

"""Pipeline: kinds are checked at construction, failures name the pass, records are kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import PassError, UserInputError
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.infra.pipeline import PassRecord, Pipeline
from optpipe.runtime.target import get_target


@dataclass(frozen=True)
class AddConfig:
    amount: int = 1


class OnnxToOnnx(Pass):
    name = "o2o"
    description = "test pass"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = AddConfig

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        return PassResult(artifact.derive(sha256=artifact.sha256 + "+"), metrics={"amount": self.config.amount})


class OnnxToEngine(OnnxToOnnx):
    name = "o2e"
    output_kind = ArtifactKind.ENGINE

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        return PassResult(artifact.derive(kind=ArtifactKind.ENGINE))


class Failing(OnnxToOnnx):
    name = "boom"

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        raise UserInputError("bad thing")


class LiesAboutKind(OnnxToOnnx):
    name = "liar"

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        return PassResult(artifact.derive(kind=ArtifactKind.ENGINE))


def _ctx(tmp_path: Path) -> BuildContext:
    return BuildContext(work_dir=tmp_path, target=get_target("cpu"), input_specs=(), output_names=())


ONNX = Artifact(ArtifactKind.ONNX, None, "h", (), ())


def test_runs_passes_in_order_and_records_them(tmp_path: Path) -> None:
    records: list[PassRecord] = []
    result = Pipeline([OnnxToOnnx(AddConfig(2)), OnnxToOnnx(), OnnxToEngine()], "v").run(
        ONNX, _ctx(tmp_path), records
    )
    assert result.kind is ArtifactKind.ENGINE
    assert result.sha256 == "h++"
    assert [(r.name, r.status, r.variant) for r in records] == [("o2o", "ok", "v")] * 2 + [("o2e", "ok", "v")]
    assert records[0].metrics == {"amount": 2}


def test_mismatched_kinds_are_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="'o2e' makes a engine artifact but 'o2o' expects onnx"):
        Pipeline([OnnxToEngine(), OnnxToOnnx()])


def test_empty_pipeline_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one pass"):
        Pipeline([])


def test_failure_names_the_pass_and_the_passes_before_it(tmp_path: Path) -> None:
    records: list[PassRecord] = []
    with pytest.raises(PassError, match=r"pass 'boom' failed: bad thing \(after: o2o\)") as info:
        Pipeline([OnnxToOnnx(), Failing()]).run(ONNX, _ctx(tmp_path), records)
    assert info.value.exit_code == 2  # the cause's exit code survives the wrapping
    assert [r.status for r in records] == ["ok", "failed"]


def test_a_pass_that_lies_about_its_output_kind_fails(tmp_path: Path) -> None:
    with pytest.raises(PassError, match="declared output kind onnx, produced engine"):
        LiesAboutKind()(ONNX, _ctx(tmp_path))


def test_wrong_input_kind_is_refused(tmp_path: Path) -> None:
    engine = ONNX.derive(kind=ArtifactKind.ENGINE)
    with pytest.raises(PassError, match="expects a onnx artifact, got engine"):
        OnnxToOnnx()(engine, _ctx(tmp_path))


def test_config_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="expects a AddConfig"):
        OnnxToOnnx(config={"amount": 3})

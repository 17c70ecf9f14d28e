"""``optpipe lint`` and ``optpipe engine``: exit codes and messages, on hand-made files (fast, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper

from optpipe.cli.main import main
from optpipe.core.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_USAGE


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def save(path: Path, op: str, shape: list[object]) -> Path:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=f"{op.lower()}_node")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def test_lint_clean_model_exits_0(tmp_path: Path) -> None:
    result = run("lint", "--target", "tensorrt", str(save(tmp_path / "m.onnx", "Relu", [2, 3])))
    assert result.exit_code == EXIT_OK, result.output
    assert "0 error(s), 0 warning(s) for tensorrt" in result.output


def test_lint_unsupported_op_exits_1_with_node_message_and_fix(tmp_path: Path) -> None:
    result = run("lint", str(save(tmp_path / "m.onnx", "Det", [2, 3, 3])))
    assert result.exit_code == EXIT_GATE_FAILED
    lines = result.output.splitlines()
    assert lines[0] == "error: unsupported-op at det_node"
    assert "Det is not supported" in lines[1]
    assert lines[2].strip().startswith("fix: ")
    assert "1 error(s)" in lines[-1]


def test_lint_dynamic_axis_needs_a_profile(tmp_path: Path) -> None:
    path = str(save(tmp_path / "m.onnx", "Relu", ["batch", 3]))
    missing = run("lint", path)
    assert missing.exit_code == EXIT_GATE_FAILED and "dynamic-dim-no-profile" in missing.output
    given = run("lint", path, "--dynamic", "batch=1:8:32")
    assert given.exit_code == EXIT_OK, given.output


@pytest.mark.parametrize(("shape", "dynamics"), [
    ([2, None], ["seq=1:8:32@x.1"]),  # an unnamed non-zero axis, covered by INPUT.AXIS
    ([2, "seq"], ["seq=1:8:32"]),  # a bare name the model uses
    (["batch", "sequence"], ["batch=1:2:4", "seq=1:8:32@x.1"]),  # the exporter named the axis differently
    ([None, None], ["batch=1:2:4", "seq=1:8:32@x.1"]),
])
def test_lint_dynamic_axes_are_covered_by_their_input_axis(
    tmp_path: Path, shape: list[object], dynamics: list[str]
) -> None:
    path = str(save(tmp_path / "m.onnx", "Relu", shape))
    assert run("lint", path).exit_code == EXIT_GATE_FAILED
    result = run("lint", path, *[arg for text in dynamics for arg in ("--dynamic", text)])
    assert result.exit_code == EXIT_OK, result.output


def test_lint_one_uncovered_axis_is_still_reported(tmp_path: Path) -> None:
    result = run("lint", str(save(tmp_path / "m.onnx", "Relu", [None, None])), "--dynamic", "seq=1:8:32@x.1")
    assert result.exit_code == EXIT_GATE_FAILED
    assert "input 'x' axis 0 is dynamic" in result.output


@pytest.mark.parametrize(("dynamic", "message"), [
    ("seq=1:8:32@y.1", "the model has no input 'y'; its inputs are: x"),
    ("seq=1:8:32@x.5", "input 'x' has rank 2; its dynamic axes are: 1"),
    ("seq=1:8:32@x.0", "axis 0 of input 'x' is static (2); its dynamic axes are: 1"),
    ("length=1:8:32", "the model has no axis named 'length' (its named dynamic axes: seq)"),
])
def test_lint_dynamic_names_are_checked_against_the_model(tmp_path: Path, dynamic: str, message: str) -> None:
    result = run("lint", str(save(tmp_path / "m.onnx", "Relu", [2, "seq"])), "--dynamic", dynamic)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output and "Traceback" not in result.output


def test_lint_json_lists_problems(tmp_path: Path) -> None:
    result = run("lint", str(save(tmp_path / "m.onnx", "Det", [2, 3, 3])), "--json")
    assert result.exit_code == EXIT_GATE_FAILED
    (problem,) = json.loads(result.output)
    assert problem["code"] == "unsupported-op" and problem["node"] == "det_node" and problem["fix"]


@pytest.mark.parametrize("content", [None, b"\x00garbage"])
def test_lint_unreadable_file_exits_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    result = run("lint", str(path))
    assert result.exit_code == EXIT_USAGE
    assert "optpipe: error:" in result.output and "Traceback" not in result.output


def test_lint_bad_dynamic_flag_exits_2(tmp_path: Path) -> None:
    result = run("lint", str(save(tmp_path / "m.onnx", "Relu", [2, 3])), "--dynamic", "batch=8:1")
    assert result.exit_code == EXIT_USAGE


def test_engine_on_missing_or_non_build_directories_exits_2(tmp_path: Path) -> None:
    missing = run("engine", str(tmp_path / "nope"))
    assert missing.exit_code == EXIT_USAGE and "does not exist" in missing.output
    empty = run("engine", str(tmp_path))
    assert empty.exit_code == EXIT_USAGE and "no report.json" in empty.output
    (tmp_path / "report.json").write_text("{not json")
    broken = run("engine", str(tmp_path))
    assert broken.exit_code == EXIT_USAGE and "cannot read" in broken.output
    (tmp_path / "report.json").write_text(json.dumps({"schema": "optpipe.report/1", "target": "cpu"}))
    cpu = run("engine", str(tmp_path))
    assert cpu.exit_code == EXIT_USAGE and "only finishes TensorRT builds" in cpu.output
    (tmp_path / "report.json").write_text(json.dumps({"schema": "optpipe.report/1", "target": "tensorrt"}))
    no_build = run("engine", str(tmp_path))
    assert no_build.exit_code == EXIT_USAGE and "no 'build' record" in no_build.output


def test_engine_refuses_a_variant_without_its_onnx(tmp_path: Path) -> None:
    report = {
        "schema": "optpipe.report/1",
        "target": "tensorrt",
        "status": "split",
        "variants": [{"precision": "fp16", "status": "pending", "onnx": "fp16/model.onnx"}],
        "build": {"inputs": [], "outputs": ["y"], "dynamic": [], "tolerances": {}, "golden": "golden"},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = run("engine", str(tmp_path))
    assert result.exit_code == EXIT_USAGE and "fp16" in result.output and "copy the whole" in result.output


def test_commands_are_listed_with_their_options() -> None:
    passes = run("passes")
    assert "trt-lint" in passes.output and "engine-trt" in passes.output
    help_text = run("engine", "--help").output
    for option in ("--timing-cache", "--opt-level", "--workspace", "--hardware-compat", "--version-compatible"):
        assert option in help_text
    assert "no errors" in run("lint", "--help").output

"""Executors and matrix records without Ray: the in-process executor, executor names, the records' outputs."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from optpipe.cli.build_many import build_many
from optpipe.cli.main import main
from optpipe.core.errors import EnvironmentUnavailable, MissingDependency, UserInputError
from optpipe.matrix.executors import InProcessExecutor, get_executor
from optpipe.matrix.ray_executor import BENCH_RESOURCE, ClusterShape, RayExecutor, import_ray, task_options
from optpipe.matrix.tasks import MatrixResult, ModelResult, ModelTask, NodeInfo, VariantOutcome, write_matrix_junit
from tests.report.test_html import sample_report

ROOT = Path(__file__).resolve().parents[2]
WINE = f"""
exporter = "torchscript"
benchmark = false
threads = 1
cache = false

[[model]]
name = "wine"
spec = "{ROOT}/sample_models/two_heads.py:TwoHeadNet"
weights = "{ROOT}/sample_models/weights/two_heads.safetensors"
out = "out/wine"

[[model]]
name = "missing"
spec = "nowhere.py:Net"
out = "out/missing"
"""


def test_executor_names() -> None:
    assert isinstance(get_executor(None), InProcessExecutor) and isinstance(get_executor("in-process"),
                                                                            InProcessExecutor)
    assert get_executor("ray") == RayExecutor(address=None)
    assert get_executor("ray:auto") == RayExecutor(address="ray:auto")
    assert get_executor("ray://head:10001") == RayExecutor(address="ray://head:10001")
    with pytest.raises(UserInputError, match="unknown executor 'spark'"):
        get_executor("spark")
    with pytest.raises(UserInputError, match="missing HOST:PORT"):
        get_executor("ray://")


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    with pytest.raises(MissingDependency, match=r"optpipe\[ray\]"):
        import_ray()
    config = tmp_path / "optpipe.toml"
    config.write_text(WINE)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--executor", "ray"])
    assert result.exit_code == 3 and "optpipe: error:" in result.output and "optpipe[ray]" in result.output
    assert not (tmp_path / "out").exists()  # nothing was built


def test_executor_needs_a_config_file_and_a_known_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", "m.py:Net", "--out", str(tmp_path / "o"), "--executor", "ray"])
    assert result.exit_code == 2 and "--executor builds the models of a config file" in result.output
    config = tmp_path / "optpipe.toml"
    config.write_text(WINE)
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--executor", "spark"])
    assert result.exit_code == 2 and "unknown executor 'spark'" in result.output
    assert "Traceback" not in result.output


def task(benchmark: bool, threads: int | None = None) -> ModelTask:
    return ModelTask("m", "f: model[0] (m)", {"out_dir": Path("/o"), "no_benchmark": not benchmark,
                                              "threads": threads})


def test_a_benchmark_takes_a_whole_benchmark_node_and_builds_spread() -> None:
    shape = ClusterShape(max_cpus=16, bench_cpus=8)
    bench = task_options(task(True), shape, max_retries=3)
    assert bench["num_cpus"] == 8 and bench["resources"] == {BENCH_RESOURCE: 1} and bench["max_retries"] == 3
    build = task_options(task(False), shape, max_retries=2)
    assert build["num_cpus"] == 1 and "resources" not in build and build["scheduling_strategy"] == "SPREAD"
    assert task_options(task(False, threads=64), shape, 1)["num_cpus"] == 16  # never more than a node has
    with pytest.raises(EnvironmentUnavailable, match="optpipe_bench"):
        task_options(task(True), ClusterShape(max_cpus=4, bench_cpus=None), 1)


def result(name: str, code: int, report: dict[str, object] | None) -> ModelResult:
    node = NodeInfo("abcdef0123", "host-a", 42)
    variants = (VariantOutcome("fp32", "built", True, 1.5, node),) if report else ()
    return ModelResult(name, Path(f"/o/{name}"), code, 2.0, node, variants,
                       error=None if report else "exit 2: UserInputError: no such file", report=report)


def test_matrix_summary_json_table_and_junit(tmp_path: Path) -> None:
    matrix = MatrixResult((result("digits", 1, sample_report()), result("broken", 2, None)), "ray (local)", 3.0)
    assert matrix.exit_code == 2
    document = json.loads(matrix.to_json())
    assert [m["name"] for m in document["builds"]] == ["digits", "broken"] and document["exit_code"] == 2
    assert document["builds"][0]["variants"][0]["measured_on"]["node_id"] == "abcdef0123"
    table = matrix.table()
    assert "digits  fp32" in table and "1.500" in table and "host-a (abcdef01)" in table and "exit 2" in table
    path = tmp_path / "junit.xml"
    write_matrix_junit(path, matrix.results)
    suites = ET.parse(path).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["optpipe: digits", "optpipe: broken"]
    assert suites[1].find("testcase/error") is not None


@pytest.mark.slow
def test_build_many_in_process_keeps_going_after_a_failed_model(tmp_path: Path) -> None:
    config = tmp_path / "optpipe.toml"
    config.write_text(WINE)
    matrix = build_many(config)
    wine, missing = matrix.results
    assert matrix.executor == "in-process" and matrix.exit_code == 2
    assert wine.exit_code == 0 and [v.precision for v in wine.variants] == ["fp32"] and wine.variants[0].passed
    assert wine.node is not None and wine.node.node_id is None and wine.variants[0].measured_on is None
    assert missing.exit_code == 2 and missing.error and "nowhere.py" in missing.error and missing.report is None


def test_only_a_ray_client_server_that_failed_to_start_is_retried() -> None:
    from optpipe.matrix.ray_executor import _server_failed_to_start

    assert _server_failed_to_start(ConnectionAbortedError("Initialization failure from server:\n"))
    assert not _server_failed_to_start(ConnectionError("ray client connection timeout"))  # nobody there

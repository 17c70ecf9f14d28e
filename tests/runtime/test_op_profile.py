"""Per-op profile: ONNX Runtime's real profiler on a real build, the CLI command, and the report."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import optpipe
from optpipe.cli.main import main
from optpipe.core.memory import RssSampler, current_rss_bytes
from optpipe.runtime.op_profile import OpProfile, node_times, summarize_profile


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory, toy: ModuleType) -> Any:
    out = tmp_path_factory.mktemp("profile") / "tiny"
    return optpipe.build(toy.TinyNet().eval(), toy.example_inputs(), out_dir=out, input_names=["x"],
                         output_names=["logits"], profile=True, log=lambda m: None)


@pytest.mark.slow
def test_build_profile_is_in_the_report(profiled: Any) -> None:
    data = json.loads((profiled.out_dir / "report.json").read_text())
    profile = data["variants"][0]["profile"]
    assert profile["runtime"] == "onnxruntime-cpu" and profile["runs"] == 20
    op_types = {o["op_type"] for o in profile["op_types"]}
    assert "Conv" in op_types and "Gemm" in op_types  # TinyNet's compute ops, as ORT ran them
    assert sum(o["percent"] for o in profile["op_types"]) == pytest.approx(100.0)
    assert sum(o["nodes"] for o in profile["op_types"]) >= 2
    modules = {n["module_path"] for n in profile["top_nodes"]}
    assert "fc" in modules  # the Gemm node traced back to TinyNet.fc through the exporter's metadata
    # Its own session, closed before the build's one benchmark run: the profiler is never timed with it.
    assert [(p["name"], p["variant"]) for p in data["passes"]][-2:] == [("profile", "fp32"), ("benchmark", "build")]


@pytest.mark.slow
def test_benchmark_reports_host_memory(profiled: Any) -> None:
    memory = profiled.variants[0]["memory"]
    assert memory["peak_rss_mb"] > 10  # a Python process with torch and ORT loaded
    assert memory["engine_load_mb"] is not None
    assert profiled.metrics()["fp32.peak_rss_mb"] == memory["peak_rss_mb"]


@pytest.mark.slow
def test_profile_command_prints_and_does_not_modify_the_build(profiled: Any) -> None:
    out: Path = profiled.out_dir
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["profile", str(out), "--runs", "3"])
    assert result.exit_code == 0, result.output
    assert "per-op profile (onnxruntime-cpu, 3 runs" in result.output and "Conv" in result.output
    as_json = CliRunner().invoke(main, ["profile", str(out), "--variant", "fp32", "--runs", "2", "--json"])
    assert json.loads(as_json.output)["profile"]["runs"] == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_profile_command_errors_are_one_line_exit_2(profiled: Any, tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["profile", str(tmp_path)])
    assert missing.exit_code == 2 and "not a build directory" in missing.output
    wrong = CliRunner().invoke(main, ["profile", str(profiled.out_dir), "--variant", "int8"])
    assert wrong.exit_code == 2 and "no variant 'int8'" in wrong.output and "fp32" in wrong.output
    assert "Traceback" not in missing.output + wrong.output


def test_warm_up_run_is_left_out_and_ort_suffixes_map_to_modules() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 90, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        {"cat": "Node", "name": "relu_nchwc_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "fc_token_3_kernel_time", "ts": 240, "dur": 10, "args": {"op_name": "Gemm"}},
    ]
    totals, runs = node_times(events)
    assert runs == 1 and totals == {"relu_nchwc": ("Conv", 30.0), "fc": ("Gemm", 10.0)}
    profile = summarize_profile(totals, runs, {"relu": "features.0", "fc": "head"}, "onnxruntime-cpu")
    assert [(n.node, n.module_path, n.percent) for n in profile.top_nodes] == [
        ("relu_nchwc", "features.0", 75.0), ("fc", "head", 25.0)]
    assert OpProfile.from_dict(profile.to_dict()) == profile
    with pytest.raises(ValueError, match="1 runs"):
        node_times(events[:2])


def test_rss_sampler_sees_a_short_allocation() -> None:
    before = current_rss_bytes()
    assert before is not None
    with RssSampler(interval_s=0.001) as sampler:
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        block.sum()
        del block
    assert sampler.peak is not None and sampler.peak >= before + (48 << 20)

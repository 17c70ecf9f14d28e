"""The batch x threads sweep: `optpipe sweep DIR` and `build --sweep` record it in report.json and report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import optpipe
from optpipe.builder.sweep import SweepPoint, choose_best, sweep_batches, sweep_threads
from optpipe.cli.main import main
from optpipe.core.tensor_spec import DynamicDim

MODEL = '''
import torch
from torch import nn

INPUT_NAMES = ("input_ids", "attention_mask")


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(50, 8)
        self.position_embeddings = nn.Embedding(32, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        hidden = self.tokens(input_ids) + self.position_embeddings(torch.arange(input_ids.shape[1]))[None]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


model = Encoder()


def example_inputs():
    ids = torch.zeros(2, 16, dtype=torch.int64)
    mask = torch.zeros(2, 16, dtype=torch.int64)
    ids[0, :5], mask[0, :5] = torch.arange(1, 6), 1
    ids[1, :9], mask[1, :9] = torch.arange(1, 10), 1
    return ids, mask
'''


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("sweep")
    model_file = root / "encoder.py"
    model_file.write_text(MODEL)
    out = root / "build"
    spec = f"{model_file}:model"
    result = CliRunner().invoke(main, ["build", spec, "--out", str(out), "--no-benchmark", "--no-cache",
                                       "--dynamic", "batch=1:2:4"])
    assert result.exit_code == 0, result.output
    return out, spec


def _points(sweep: dict, runtime: str) -> list[dict]:
    return [p for p in sweep["points"] if p["runtime"] == runtime]


@pytest.mark.slow
def test_optpipe_sweep_records_every_point_and_the_best_batch_within_the_budget(built: tuple[Path, str]) -> None:
    out, spec = built
    result = CliRunner().invoke(main, ["sweep", str(out), "--model", spec, "--sweep-seconds", "0.02",
                                       "--latency-budget", "1000"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "report.json").read_text())["sweep"]
    assert sweep["version"] == 1 and sweep["variant"] == "fp32"
    assert sweep["batches"] == [1, 2, 4] and sweep["threads"] == list(sweep_threads())
    assert sweep["seq_length"] == 7  # the median real length of the example's rows (5 and 9)
    grid = {(b, t) for b in sweep["batches"] for t in sweep["threads"]}
    for runtime in ("fp32", "torch"):  # the artifact and PyTorch eager at every point
        points = _points(sweep, runtime)
        assert {(p["batch"], p["threads"]) for p in points} == grid
        assert all(p["p50_ms"] > 0 and p["p99_ms"] >= p["p50_ms"] and p["calls"] >= 3 for p in points)
    best = sweep["best"]
    fitting = [p for p in _points(sweep, "fp32") if p["p99_ms"] <= 1000]
    assert best["p99_ms"] <= 1000 and best["throughput"] == max(p["throughput"] for p in fitting)
    assert f"batch {best['batch']}, {best['threads']} thread(s)" in result.output
    html = (out / "report.html").read_text()
    assert "id=sweep" in html and 'aria-label="p50_ms against batch size"' in html
    assert 'aria-label="throughput against batch size"' in html
    verified = CliRunner().invoke(main, ["verify", str(out), "--no-parity"])
    assert verified.exit_code == 0, verified.output  # the manifest was updated to the new report files


@pytest.mark.slow
def test_a_budget_no_point_meets_is_said_not_guessed(built: tuple[Path, str]) -> None:
    out, _spec = built
    result = CliRunner().invoke(main, ["sweep", str(out), "--sweep-seconds", "0.01", "--latency-budget", "1e-6"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "report.json").read_text())["sweep"]
    assert sweep["best"] is None and "no batch size of fp32 meets the latency budget" in result.output
    assert not _points(sweep, "torch") and "not given" in sweep["baseline_note"]


@pytest.mark.slow
def test_sweep_refuses_a_build_changed_since(built: tuple[Path, str], tmp_path: Path) -> None:
    out, _spec = built
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"x")
    result = CliRunner().invoke(main, ["sweep", str(copy), "--sweep-seconds", "0.01"])
    assert result.exit_code == 2 and "changed since it was built" in result.output


@pytest.mark.slow
def test_build_sweep_runs_after_the_build(tmp_path: Path) -> None:
    x = torch.randn(2, 6)
    report = optpipe.build(torch.nn.Linear(6, 3), (x,), out_dir=tmp_path / "b", benchmark=False, sweep=True,
                           sweep_seconds=0.02, dynamic=[DynamicDim("batch", 1, 2, 2)])
    sweep = json.loads((tmp_path / "b" / "report.json").read_text())["sweep"]
    assert report.sweep == sweep and sweep["batches"] == [1, 2] and _points(sweep, "torch")
    assert sweep["best"] is not None and sweep["best_speedup_vs_torch"] > 0


@pytest.mark.slow
def test_default_build_does_not_sweep(tmp_path: Path) -> None:
    optpipe.build(torch.nn.Linear(6, 3), (torch.randn(2, 6),), out_dir=tmp_path / "b", benchmark=False)
    assert json.loads((tmp_path / "b" / "report.json").read_text())["sweep"] is None


def test_grid_and_choice() -> None:
    assert sweep_batches([{"name": "batch", "min": 1, "opt": 2, "max": 64}], 2) == (1, 2, 4, 8, 16, 32, 64)
    assert sweep_batches([{"name": "batch", "min": 1, "opt": 8, "max": 256}], 8)[-1] == 64
    assert sweep_batches([], 2) == (2,)  # a static batch: the example's alone
    assert sweep_threads(6) == (1, 2, 4, 6)
    points = [SweepPoint("fp32", 1, 1, 1.0, 2.0, 1000.0, 5), SweepPoint("fp32", 8, 1, 5.0, 9.0, 1600.0, 5),
              SweepPoint("fp32", 16, 1, 9.0, 30.0, 1777.0, 5), SweepPoint("torch", 16, 1, 1.0, 1.0, 16000.0, 5)]
    assert choose_best(points, "fp32", 10.0) == points[1]  # batch 16 is faster but its p99 is over budget
    assert choose_best(points, "fp32", None) == points[2]
    assert choose_best(points, "fp32", 1.0) is None

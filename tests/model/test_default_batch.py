"""The default dynamic batch: on when the model can vary its batch, a warning and a static export when not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import optpipe
from optpipe.model.default_batch import batch_blocker, default_batch_dim
from optpipe.runtime.runners import TorchRunner


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class FixedBatch(nn.Module):
    """Folds the batch into a fixed size: cannot run at another batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, 6).sum(dim=1)


class BatchBranch(nn.Module):
    """Runs at any batch in PyTorch, but branches on it: no exporter gives one graph for every batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return x * 2.0
        return x * 3.0


def _artifact(out: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_default_batch_is_dynamic_and_the_artifact_runs_at_other_batches(tmp_path: Path) -> None:
    x = torch.randn(2, 6)
    report = optpipe.build(Linear(), (x,), out_dir=tmp_path / "b", benchmark=False)
    assert report.exit_code == 0
    data = json.loads((tmp_path / "b" / "report.json").read_text())
    assert data["build"]["inputs"][0]["shape"] == ["batch", 6]
    assert data["build"]["dynamic"] == [{"name": "batch", "min": 1, "opt": 2, "max": 64}]
    session = _artifact(tmp_path / "b")
    for batch in (1, 5, 64):
        (got,) = session.run(None, {"input_0": np.ones((batch, 6), np.float32)})
        assert got.shape == (batch, 3)


@pytest.mark.slow
def test_static_batch_opts_out(tmp_path: Path) -> None:
    report = optpipe.build(Linear(), (torch.randn(2, 6),), out_dir=tmp_path / "s", benchmark=False,
                           static_batch=True)
    data = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report.exit_code == 0
    assert data["build"]["inputs"][0]["shape"] == [2, 6]
    assert data["build"]["dynamic"] == []
    assert data["build"]["options"]["static_batch"] is True
    assert not data["warnings"]


@pytest.mark.slow
def test_a_declared_batch_wins_over_the_default(tmp_path: Path) -> None:
    report = optpipe.build(Linear(), (torch.randn(2, 6),), out_dir=tmp_path / "d", benchmark=False,
                           dynamic=[optpipe.DynamicDim("batch", 1, 4, 8)])
    data = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report.exit_code == 0
    assert data["build"]["dynamic"] == [{"name": "batch", "min": 1, "opt": 4, "max": 8}]


@pytest.mark.slow
def test_a_model_that_cannot_vary_its_batch_builds_static_with_one_warning(tmp_path: Path) -> None:
    report = optpipe.build(FixedBatch(), (torch.randn(2, 6),), out_dir=tmp_path / "f", benchmark=False)
    data = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report.exit_code == 0
    assert data["build"]["inputs"][0]["shape"] == [2, 6]
    assert data["build"]["dynamic"] == []
    batch_warnings = [w for w in data["warnings"] if "batch stays static" in w]
    assert len(batch_warnings) == 1 and "fails at batch 1" in batch_warnings[0]


@pytest.mark.slow
def test_an_export_that_cannot_keep_the_batch_dynamic_falls_back_to_static(tmp_path: Path) -> None:
    report = optpipe.build(BatchBranch(), (torch.randn(2, 6),), out_dir=tmp_path / "x", benchmark=False)
    data = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report.exit_code == 0, data
    assert data["build"]["inputs"][0]["shape"] == [2, 6]  # never a report claiming a batch the artifact lacks
    assert [w for w in data["warnings"] if "batch stays static" in w and "dynamic batch" in w]
    assert [p["status"] for p in data["passes"] if p["name"] == "export"] == ["ok"]


def test_blocker_names_the_output_that_does_not_follow_the_batch() -> None:
    class Pooled(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=0, keepdim=True).expand(2, -1)  # always 2 rows

    examples = {"x": np.ones((2, 3), np.float32)}
    dim, why = default_batch_dim(examples)
    assert dim is not None and why is None
    runner = TorchRunner(Pooled(), ("x",), ("y",))
    reason = batch_blocker(runner, examples, dim, runner.infer(examples))
    assert reason is not None and "output 'y'" in reason


@pytest.mark.parametrize(("examples", "fragment"), [
    ({"x": np.float32(1.0) * np.ones(())}, "scalar"),
    ({"a": np.ones((2, 3)), "b": np.ones((3, 3))}, "differ in axis 0"),
])
def test_no_default_batch_without_a_shared_axis_0(examples: dict[str, np.ndarray], fragment: str) -> None:
    dim, why = default_batch_dim(examples)
    assert dim is None and why is not None and fragment in why

"""The default dynamic sequence axis of token inputs: bounds from the data's real lengths and the position limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import optpipe
from optpipe.cli.main import main
from optpipe.compare.golden import GoldenData
from optpipe.core.tensor_spec import DynamicDim
from optpipe.model.default_seq import default_seq_dim, position_limit, real_lengths, token_axes
from optpipe.model.input_parsing import DynamicArg

VOCAB, POSITIONS, LENGTH = 50, 32, 16


class TinyEncoder(nn.Module):
    """Token + position embeddings, mean-pooled over the real tokens: runs at any length up to 32."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(VOCAB, 8)
        self.position_embeddings = nn.Embedding(POSITIONS, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.position_embeddings(positions)[None]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class FixedLength(nn.Module):
    """Flattens the sequence into a fixed-size layer: cannot run at another length."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(LENGTH * 4, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(hidden.reshape(input_ids.shape[0], -1))


def _tokens(lengths: list[int]) -> dict[str, torch.Tensor]:
    """Padded rows (pad id 0) with ``lengths`` real tokens each."""
    ids = torch.zeros(len(lengths), LENGTH, dtype=torch.int64)
    mask = torch.zeros(len(lengths), LENGTH, dtype=torch.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.arange(1, length + 1) % (VOCAB - 1) + 1
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_token_inputs_get_a_dynamic_seq_axis_from_real_lengths_and_the_position_limit(tmp_path: Path) -> None:
    out = tmp_path / "b"
    report = optpipe.build(TinyEncoder(), _tokens([5, 9]), out_dir=out, benchmark=False)
    assert report.exit_code == 0
    data = _report(out)
    assert [spec["shape"] for spec in data["build"]["inputs"]] == [["batch", "seq"], ["batch", "seq"]]
    # min = shortest real length, opt = median real length, max = the position table's size
    assert {"name": "seq", "min": 5, "opt": 7, "max": POSITIONS} in data["build"]["dynamic"]
    assert not any("sequence length stays static" in w for w in data["warnings"])
    cases = {case.name: case for case in GoldenData.load(out / "golden").cases}
    assert {"seq5", "seq7", "seq32"} <= set(cases)  # golden cases at short and long lengths
    assert cases["seq5"].inputs["input_ids"].shape[1] == 5 and cases["seq32"].inputs["input_ids"].shape[1] == 32
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for length in (3, 30):
        ids = np.ones((1, length), np.int64)
        (got,) = session.run(None, {"input_ids": ids, "attention_mask": ids})
        assert got.shape == (1, 3)


@pytest.mark.slow
def test_calibration_rows_set_the_shortest_length(tmp_path: Path) -> None:
    calib = {k: v.numpy() for k, v in _tokens([2, 3, 12, 14]).items()}
    out = tmp_path / "b"
    optpipe.build(TinyEncoder(), _tokens([5, 9]), out_dir=out, benchmark=False, calib_data=calib)
    seq = next(d for d in _report(out)["build"]["dynamic"] if d["name"] == "seq")
    assert seq["min"] == 2 and seq["max"] == POSITIONS


@pytest.mark.slow
def test_static_seq_opts_out(tmp_path: Path) -> None:
    out = tmp_path / "b"
    optpipe.build(TinyEncoder(), _tokens([5, 9]), out_dir=out, benchmark=False, static_seq=True)
    data = _report(out)
    assert [spec["shape"] for spec in data["build"]["inputs"]] == [["batch", LENGTH], ["batch", LENGTH]]
    assert data["build"]["options"]["static_seq"] is True
    assert not any("sequence" in w for w in data["warnings"])


@pytest.mark.slow
def test_a_declared_axis_wins_over_the_default(tmp_path: Path) -> None:
    out = tmp_path / "b"
    declared = DynamicArg(DynamicDim("len", 4, 8, 16), (("input_ids", 1), ("attention_mask", 1)))
    optpipe.build(TinyEncoder(), _tokens([5, 9]), out_dir=out, benchmark=False, dynamic=[declared])
    data = _report(out)
    assert [spec["shape"] for spec in data["build"]["inputs"]] == [["batch", "len"], ["batch", "len"]]
    assert not any(d["name"] == "seq" for d in data["build"]["dynamic"])


@pytest.mark.slow
def test_input_shapes_declared_on_the_command_line_stay_static(tmp_path: Path) -> None:
    model_file = tmp_path / "tok.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.e = nn.Embedding(50, 4)\n"
        "    def forward(self, input_ids):\n        return self.e(input_ids).mean(1)\n"
        "model = M()\n")
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", f"{model_file}:model", "--out", str(out), "--no-benchmark",
                                       "--no-cache", "--input", "input_ids:2x12:int64:0..50"])
    assert result.exit_code == 0, result.output
    assert _report(out)["build"]["inputs"][0]["shape"] == ["batch", 12]


@pytest.mark.slow
def test_a_model_that_cannot_vary_its_length_is_exported_static_with_one_warning(tmp_path: Path) -> None:
    out = tmp_path / "b"
    report = optpipe.build(FixedLength(), _tokens([5, 9]), out_dir=out, benchmark=False)
    assert report.exit_code == 0
    data = _report(out)
    assert [spec["shape"] for spec in data["build"]["inputs"]] == [["batch", LENGTH], ["batch", LENGTH]]
    warnings = [w for w in data["warnings"] if "sequence length stays static" in w]
    assert len(warnings) == 1 and "fails at sequence length" in warnings[0]


def test_float_inputs_are_not_token_axes() -> None:
    assert token_axes({"x": np.zeros((2, 8), np.float32)}) == ()
    assert token_axes({"ids": np.zeros((2, 8), np.int64), "mask": np.zeros((2, 8), np.int64)}) == (
        ("ids", 1), ("mask", 1))
    # integer inputs of different lengths: the tokenizer-named group is the sequence
    assert token_axes({"input_ids": np.zeros((2, 8), np.int64), "labels": np.zeros((2, 3), np.int64)}) == (
        ("input_ids", 1),)


def test_real_lengths_count_the_mask_else_non_pad_ids() -> None:
    rows = {k: v.numpy() for k, v in _tokens([3, 7]).items()}
    assert real_lengths(rows, (("input_ids", 1), ("attention_mask", 1))).tolist() == [3, 7]
    assert real_lengths({"input_ids": rows["input_ids"]}, (("input_ids", 1),)).tolist() == [3, 7]


@pytest.mark.parametrize(("lengths", "limit", "expected"), [
    ([], None, (1, 16, 16)),  # nothing known: the example's length is opt and max
    ([4, 6, 10], 512, (4, 6, 512)),
    ([20, 30], 24, (16, 24, 24)),  # the example (16) always lies within
    # every row as long as the example, no limit: min=max was refused by torch.export ("inconsistent min=16,
    # max=16"), so the build silently fell back to a static length; any shorter length is valid instead
    ([16, 16], None, (1, 16, 16)),
])
def test_bounds(lengths: list[int], limit: int | None, expected: tuple[int, int, int]) -> None:
    dim = default_seq_dim(16, np.asarray(lengths, dtype=np.int64), limit)
    assert (dim.min, dim.opt, dim.max) == expected


def test_position_limit_reads_a_config_attribute() -> None:
    module = nn.Linear(2, 2)
    module.config = type("Config", (), {"max_position_embeddings": 512})()  # type: ignore[assignment]
    assert position_limit(module) == 512
    assert position_limit(TinyEncoder()) == POSITIONS
    assert position_limit(nn.Linear(2, 2)) is None


@pytest.mark.slow
def test_benchmark_times_the_data_real_lengths_beside_eager(tmp_path: Path) -> None:
    out = tmp_path / "b"
    report = optpipe.build(TinyEncoder(), _tokens([5, 9]), out_dir=out, bench_seconds=0.05, warmup=1, iterations=3)
    assert report.exit_code == 0
    serving = _report(out)["benchmark"]["serving"]
    assert {bucket["length"] for bucket in serving} <= {5, 9} and any(b["length"] == 9 for b in serving)
    for bucket in serving:  # every engine and PyTorch eager on the same cut rows
        assert set(bucket["latency"]) == {"fp32", "torch"} and bucket["speedup_vs_torch"]["fp32"] > 0
    assert "at real length 9" in report.summary()
    assert "id=serving" in (out / "report.html").read_text()

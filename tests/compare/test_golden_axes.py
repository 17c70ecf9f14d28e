"""Every declared dynamic axis is validated at its min, opt and max, not only the batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.compare.golden import axis_cases, other_batch_sizes
from optpipe.core.tensor_spec import DynamicDim

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "sweep_models.py"


def test_axis_cases_resize_every_listed_input() -> None:
    example = {"input_ids": np.arange(32).reshape(2, 16), "attention_mask": np.ones((2, 16), np.int64),
               "pixels": np.zeros((2, 3))}  # fmt: skip
    cases = dict(axis_cases(example, [(DynamicDim("seq", 4, 16, 32), [("input_ids", 1), ("attention_mask", 1)])]))
    assert sorted(cases) == ["seq32", "seq4"]  # opt equals the example's length: already covered
    assert cases["seq4"]["input_ids"].shape == (2, 4) and cases["seq4"]["attention_mask"].shape == (2, 4)
    assert cases["seq32"]["input_ids"].shape == (2, 32)
    assert set(np.unique(cases["seq32"]["input_ids"])) <= set(np.unique(example["input_ids"]))  # valid ids only
    assert cases["seq4"]["pixels"].shape == (2, 3)


def test_batch_is_checked_away_from_one_and_the_example() -> None:
    sizes = other_batch_sizes(2, DynamicDim("batch", 1, 8, 32))
    assert any(s not in (1, 2) for s in sizes)


def _build(tmp_path: Path, model: str, *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", f"{MODELS}:{model}", "--out", str(out), *args, "--no-benchmark",
                                       "--no-cache"], catch_exceptions=False)  # fmt: skip
    return result.exit_code, result.output, out


@pytest.mark.slow
def test_sequence_axis_validated_at_min_opt_max(tmp_path: Path) -> None:
    code, output, out = _build(tmp_path, "CacheLM", "--dynamic", "batch=1:2:4",
                               "--dynamic", "seq=4:16:32@input_ids.1,attention_mask.1")  # fmt: skip
    assert code == 0, output
    cases = sorted(p.stem for p in (out / "golden").glob("*.npz"))
    assert {"seq4", "seq32"} <= set(cases)
    with np.load(out / "golden" / "seq32.npz") as data:
        assert data["input:input_ids"].shape == (2, 32) and data["output:last_hidden_state"].shape == (2, 32, 16)
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][0]["passed"] is True


@pytest.mark.slow
def test_frozen_sequence_length_is_caught(tmp_path: Path) -> None:
    code, output, _ = _build(tmp_path, "FrozenSeq", "--input", "input_ids:2x8:int64:0..1000",
                             "--dynamic", "seq=4:8:16@input_ids.1")  # fmt: skip
    assert code == 2, output
    assert "no exporter could export the model" in output and "seq" in output

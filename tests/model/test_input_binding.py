"""Inputs bind to forward() parameters by name: forward(input_ids, cache=None, attention_mask=None)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.core.errors import UserInputError
from optpipe.model.input_binding import KeywordInputs, bind_inputs, keyword_names

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "sweep_models.py"


def _cache_lm() -> torch.nn.Module:
    from conftest import load_file_module

    return load_file_module(MODELS).CacheLM().eval()


def test_keyword_names_only_when_position_would_differ() -> None:
    model = _cache_lm()
    assert keyword_names(model, ["input_ids"]) is None  # the first parameter: a positional call is the same
    assert keyword_names(model, ["input_ids", "attention_mask"]) == ("input_ids", "attention_mask")
    assert keyword_names(model, ["x", "mask"]) is None  # not parameter names: positional, as before
    with pytest.raises(UserInputError, match="input_ids have no default"):
        keyword_names(model, ["attention_mask", "cache"])


def test_wrapper_passes_mask_to_attention_mask() -> None:
    model = _cache_lm()
    bound = bind_inputs(model, ["input_ids", "attention_mask"])
    assert isinstance(bound, KeywordInputs)
    ids = torch.randint(0, 1000, (2, 6))
    mask = torch.zeros(2, 6, dtype=torch.int64)
    with torch.no_grad():
        out = bound(ids, mask)
    assert torch.count_nonzero(out["last_hidden_state"]) == 0  # the zero mask reached attention_mask


@pytest.mark.slow
@pytest.mark.parametrize("inputs", [[], ["--input", "input_ids:2x16:int64:0..1000",
                                         "--input", "attention_mask:2x16:int64:0..2"]])
def test_build_binds_by_name_and_exports_keyword_inputs(tmp_path: Path, inputs: list[str]) -> None:
    """Dict example_inputs() (no 'cache' key) and --input lists both build; the ONNX takes both inputs by name."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", f"{MODELS}:CacheLM", "--out", str(out), *inputs,
                                       "--no-benchmark", "--no-cache"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"].endswith(":CacheLM")
    assert [i["name"] for i in report["build"]["inputs"]] == ["input_ids", "attention_mask"]
    graph = onnx.load(str(out / report["build"]["onnx"])).graph
    assert sorted(i.name for i in graph.input) == ["attention_mask", "input_ids"]
    assert report["variants"][0]["passed"] is True

"""ONNX output names come from dict keys and ModelOutput-like field names unless the user names them."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path

import onnx
import pytest
import torch

import optpipe
from optpipe.runtime.runners import default_output_names, flatten_outputs

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "sweep_models.py"


@dataclasses.dataclass
class _Output:
    last_hidden_state: torch.Tensor
    attentions: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


def test_names_from_structure() -> None:
    t = torch.zeros(1)
    assert default_output_names({"out": t, "aux": t}) == ("out", "aux")
    assert default_output_names(OrderedDict(logits=t)) == ("logits",)
    assert default_output_names(_Output(t, pooler_output=t)) == ("last_hidden_state", "pooler_output")
    assert default_output_names({"hidden": (t, t)}) == ("hidden.0", "hidden.1")
    assert default_output_names((t, t)) == ("output_0", "output_1")
    assert default_output_names(t) == ("output_0",)
    assert len(flatten_outputs(_Output(t, pooler_output=t))) == 2  # unset (None) fields are no outputs


def _dict_model() -> torch.nn.Module:
    from conftest import load_file_module

    return load_file_module(MODELS).CacheLM().eval()


def _examples() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 1000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}


@pytest.mark.slow
def test_dict_output_keys_become_onnx_names(tmp_path: Path) -> None:
    report = optpipe.build(_dict_model(), _examples(), out_dir=tmp_path / "out", benchmark=False,
                           log=lambda message: None)  # fmt: skip
    assert report.passed
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["build"]["outputs"] == ["last_hidden_state", "pooled"]
    graph = onnx.load(str(tmp_path / "out" / data["build"]["onnx"])).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooled"]
    assert set(data["variants"][0]["parity"]["outputs"]) == {"last_hidden_state", "pooled"}


@pytest.mark.slow
def test_user_names_win(tmp_path: Path) -> None:
    report = optpipe.build(_dict_model(), _examples(), out_dir=tmp_path / "out", benchmark=False,
                           output_names=["h", "p"], log=lambda message: None)  # fmt: skip
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report.passed and data["build"]["outputs"] == ["h", "p"]

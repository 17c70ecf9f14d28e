"""prepare_model and build(): a model whose outputs are not all tensors is a one-line user error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from optpipe.builder.run import build
from optpipe.core.errors import UserInputError
from optpipe.model.prepared import prepare_model

MODELS = '''
import torch
from torch import nn

class IntOut(nn.Module):
    def __init__(self):
        super().__init__(); self.l = nn.Linear(4, 3)
    def forward(self, x):
        return self.l(x), 5

class NoneOut(nn.Module):
    def __init__(self):
        super().__init__(); self.l = nn.Linear(4, 3)
    def forward(self, x):
        return {"y": self.l(x), "extra": [self.l(x), None]}
'''


class IntOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.l(x), 5


@pytest.mark.parametrize(("name", "message"), [("IntOut", "output #1 of the model is an int, not a tensor"),
                                               ("NoneOut", "output #2 of the model is None, not a tensor")])
def test_prepare_model_rejects_non_tensor_outputs(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(MODELS)
    with pytest.raises(UserInputError, match=message):
        prepare_model(f"{path}:{name}", inputs=["x:2x4"])


def test_build_rejects_non_tensor_outputs_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match="output #1 of the model is an int, not a tensor"):
        build(IntOut(), (torch.randn(2, 4),), out_dir=out, log=lambda _: None)
    assert not out.exists()

"""The cache's identity of a model (optpipe.cache.model_identity): what it sees, memoised once per build."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from optpipe.cache.model_identity import model_identity, project_code
from optpipe.cache.reference import CachedReference
from optpipe.cache.store import PassCache, model_fingerprint
from optpipe.runtime.runners import TorchRunner

X = (torch.linspace(-1.0, 1.0, 12).reshape(3, 4),)


class Scaled(torch.nn.Module):
    """A real model whose behaviour is set by plain attributes and a non-persistent buffer."""

    def __init__(self, gain: float = 1.0, act: str = "relu") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 2)
        self.gain = gain
        self.act = act
        self.register_buffer("offset", torch.zeros(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * self.gain + self.offset
        return torch.tanh(y) if self.act == "tanh" else torch.relu(y)


def test_an_equal_model_has_the_same_fingerprint() -> None:
    assert model_fingerprint(Scaled(), X) == model_fingerprint(Scaled(), X)


@pytest.mark.parametrize("change", ["gain", "act", "offset"])
def test_state_outside_the_state_dict_changes_the_fingerprint(change: str) -> None:
    changed = Scaled(gain=2.0) if change == "gain" else Scaled(act="tanh") if change == "act" else Scaled()
    if change == "offset":
        changed.offset.fill_(0.5)  # a non-persistent buffer: not in state_dict()
        assert changed.state_dict().keys() == Scaled().state_dict().keys()
    assert model_fingerprint(changed) != model_fingerprint(Scaled())  # seen without running the model
    assert model_fingerprint(changed, X) != model_fingerprint(Scaled(), X)


def test_the_probe_sees_what_no_attribute_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Scaled()
    before = model_identity(model, X)
    monkeypatch.setattr(torch, "relu", lambda y: y * 2.0)  # behaviour changed outside the module and the project
    after = model_identity(model, X)
    assert after.probe_inputs == before.probe_inputs and after.probe_outputs != before.probe_outputs
    assert after.fingerprint != before.fingerprint
    assert model_identity(model).fingerprint == model_identity(Scaled()).fingerprint  # no probe: blind to it


def test_the_probe_leaves_inputs_rng_and_module_state_alone() -> None:
    class Writes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x.add_(torch.rand(x.shape))

    model, x = Writes(), X[0].clone()
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    first = model_identity(model, (x,))
    assert torch.equal(torch.rand(2), expected) and torch.equal(x, X[0])
    assert model.calls == 1  # the probe ran once, after the static parts were hashed:
    model.calls = 0
    torch.manual_seed(3)
    assert model_identity(model, (x,)) == first  # the same model, inputs and RNG state: the same identity


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A model class in one file that imports a helper from a sibling file (a project, not a package)."""
    (tmp_path / "ident_helpers.py").write_text("def far(y):\n    return y\n", encoding="utf-8")
    (tmp_path / "ident_net.py").write_text(
        "import torch\nfrom ident_helpers import far\n\n\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.where(x.abs() > 100, far(x), x)\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in ("ident_net", "ident_helpers"):
        sys.modules.pop(name, None)


def _load_net(directory: Path) -> Any:
    for name in ("ident_net", "ident_helpers"):
        sys.modules.pop(name, None)
    return importlib.import_module("ident_net").Net()


def test_a_helper_the_examples_never_reach_changes_the_fingerprint(project: Path) -> None:
    before = model_identity(_load_net(project), X)
    (project / "ident_helpers.py").write_text("def far(y):\n    return y * 0\n", encoding="utf-8")
    after = model_identity(_load_net(project), X)
    assert after.probe_outputs == before.probe_outputs  # the examples do not see it...
    assert after.fingerprint != before.fingerprint  # ...the source does
    code = project_code([vars(sys.modules["ident_net"])])
    assert set(code.sources) == {"ident_net", "ident_helpers"}  # torch, the stdlib and optpipe are not read...
    assert code.libraries == {"torch": metadata.version("torch")}
    # ...an installed package is keyed by its version instead


class Noisy(torch.nn.Module):
    """Gives other outputs on every call (a counter outside the module, so its state looks unchanged)."""

    calls: ClassVar[list[int]] = [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls[0] += 1
        return x + self.calls[0]


class _Ctx:
    threads = 1
    example_inputs = (torch.from_numpy(np.ones((2, 4), np.float32)),)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.parametrize("model", [Noisy(), Scaled()], ids=["nondeterministic", "deterministic"])
def test_a_nondeterministic_model_is_named_in_the_log(model: Any, tmp_path: Path) -> None:
    ctx = _Ctx()
    reference = CachedReference(TorchRunner(model, ("x",), ("y",)), PassCache(tmp_path), ctx)  # type: ignore[arg-type]
    reference.infer({"x": ctx.example_inputs[0].numpy()})
    noted = [line for line in ctx.lines if "nondeterministic" in line]
    assert len(noted) == (1 if isinstance(model, Noisy) else 0), ctx.lines
    again = CachedReference(TorchRunner(model, ("x",), ("y",)), PassCache(tmp_path), _Ctx())  # type: ignore[arg-type]
    again.infer({"x": ctx.example_inputs[0].numpy()})
    assert again.hits == (0 if isinstance(model, Noisy) else 1)  # never reused: safe


class FailsOnItsSecondCall(torch.nn.Module):
    """Raises on the second forward only: here the probe, so the identity cannot be computed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(1)
        if len(self.seen) == 2:
            raise RuntimeError("second call")
        return x * 2


def test_a_model_whose_probe_raises_builds_without_the_cache(tmp_path: Path) -> None:
    ctx, model = _Ctx(), FailsOnItsSecondCall()
    model(ctx.example_inputs[0])  # the build's first forward (output names)
    cache = PassCache(tmp_path)
    reference = CachedReference(TorchRunner(model, ("x",), ("y",)), cache, ctx)  # type: ignore[arg-type]
    out = reference.infer({"x": ctx.example_inputs[0].numpy()})
    assert np.array_equal(out["y"], ctx.example_inputs[0].numpy() * 2)
    assert not cache.enabled and any("second call" in line for line in ctx.lines), ctx.lines

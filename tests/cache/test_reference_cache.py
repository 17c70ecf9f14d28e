"""PyTorch reference outputs in the pass cache (optpipe.cache.reference): reused, keyed, corruption-safe."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optpipe.cache.reference import KIND, CachedReference
from optpipe.cache.store import PassCache, iter_entries
from optpipe.runtime.runners import TorchRunner

#: Forward calls per model, kept outside the model: a counter in its ``__dict__`` is part of what the cache
#: calls the model (optpipe.cache.model_identity), so counting would make each build see another model.
_CALLS: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


class Counting(torch.nn.Module):
    """A small real model that counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    @property
    def calls(self) -> int:
        return _CALLS.get(self, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _CALLS[self] = self.calls + 1
        return self.fc(x)


class _Ctx:
    """The BuildContext fields the reference cache reads (threads, log, example inputs: none, so no probe)."""

    threads = 1
    example_inputs: tuple[torch.Tensor, ...] = ()

    def log(self, message: str) -> None:
        pass


def _cached(model: Counting, cache_dir: Path) -> CachedReference:
    return CachedReference(TorchRunner(model, ("x",), ("y",)), PassCache(cache_dir), _Ctx())  # type: ignore[arg-type]


FEED = {"x": np.arange(12, dtype=np.float32).reshape(2, 6)}


def test_outputs_are_reused_across_builds_and_equal(tmp_path: Path) -> None:
    model = Counting()
    first = _cached(model, tmp_path).infer(FEED)
    again = _cached(model, tmp_path)  # a new build: a new cache object on the same directory
    second = again.infer(FEED)
    assert model.calls == 1 and again.hits == 1
    assert np.array_equal(first["y"], second["y"])
    kinds = [e for e in iter_entries(tmp_path) if (e / "files" / "outputs.npz").is_file()]
    assert len(kinds) == 1 and KIND in (kinds[0] / "record.json").read_text()


def test_other_inputs_or_weights_are_computed(tmp_path: Path) -> None:
    model = Counting()
    _cached(model, tmp_path).infer(FEED)
    _cached(model, tmp_path).infer({"x": FEED["x"] + 1})
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # trained further: another model
    changed = _cached(model, tmp_path).infer(FEED)
    assert model.calls == 3
    assert np.allclose(changed["y"], model(torch.from_numpy(FEED["x"])).detach().numpy())


def test_a_corrupt_entry_is_discarded_and_recomputed(tmp_path: Path) -> None:
    model = Counting()
    expected = _cached(model, tmp_path).infer(FEED)["y"]
    stored = next(iter_entries(tmp_path)) / "files" / "outputs.npz"
    stored.write_bytes(b"not an npz")
    reference = _cached(model, tmp_path)
    assert np.array_equal(reference.infer(FEED)["y"], expected)
    assert model.calls == 2 and reference.hits == 0
    assert _cached(model, tmp_path).infer(FEED)["y"].tolist() == expected.tolist()  # rewritten, reused
    assert model.calls == 2


def test_an_unusable_cache_directory_still_computes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    model = Counting()
    out: Any = _cached(model, blocker).infer(FEED)
    assert model.calls == 1 and out["y"].shape == (2, 3)


@pytest.mark.slow
def test_a_warm_build_does_not_run_pytorch_for_its_golden_data(tmp_path: Path) -> None:
    from optpipe.builder.run import build

    model = Counting().eval()
    example = (torch.randn(4, 6),)

    def once(out: str) -> Any:
        return build(model, example, out_dir=tmp_path / out, benchmark=False, exporter="torchscript",
                     instruments=[PassCache(tmp_path / "cache")], log=lambda message: None)  # fmt: skip

    cold = once("a")
    calls = model.calls
    warm = once("b")
    assert cold.passed and warm.passed
    assert model.calls - calls < calls  # export traces the model once more; the golden cases come from the cache
    for name in sorted(p.name for p in (tmp_path / "a" / "golden").iterdir()):
        with np.load(tmp_path / "a" / "golden" / name) as a, np.load(tmp_path / "b" / "golden" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)

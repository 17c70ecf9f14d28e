"""optpipe.model.paged_weights: a module's weights backed by a mapped file, the module unchanged otherwise."""

from __future__ import annotations

import sys

import pytest
import torch

from optpipe.model.paged_weights import page_out


def _mapped_file_of(address: int) -> str | None:
    """The file mapped at ``address`` in this process (/proc/self/maps), or None for anonymous memory."""
    with open("/proc/self/maps", encoding="ascii", errors="replace") as handle:
        for line in handle:
            parts = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in parts[0].split("-"))
            if low <= address < high:
                return parts[5].strip() if len(parts) == 6 and parts[5].strip().startswith("/") else None
    return None


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.BatchNorm1d(256), torch.nn.Linear(256, 8)).eval()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_weights_come_from_a_mapped_file_with_the_same_values_and_identity() -> None:
    model = _model()
    x = torch.randn(4, 256)
    expected = model(x)
    weight, running_mean = model[0].weight, model[1].running_mean
    assert "weights.pt" not in str(_mapped_file_of(weight.data_ptr()))
    moved = page_out(model, above=0)
    assert moved.bytes == sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert model[0].weight is weight and weight.requires_grad  # an optimizer's references stay valid
    assert "weights.pt" in str(_mapped_file_of(weight.data_ptr()))
    assert "weights.pt" in str(_mapped_file_of(running_mean.data_ptr()))
    assert torch.equal(model(x), expected)
    with torch.no_grad():  # a private mapping: a write changes this module only, and works
        weight.add_(1.0)
    assert not torch.equal(model(x), expected)


def test_small_modules_and_non_modules_are_left_alone() -> None:
    model = _model()
    weight = model[0].weight.data_ptr()
    assert page_out(model).bytes == 0 and model[0].weight.data_ptr() == weight  # under the default threshold
    assert page_out(lambda x: x).skipped == "not a torch.nn.Module"

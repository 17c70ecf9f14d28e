"""optpipe.model.paged_weights: a module's weights backed by a mapped file, the module unchanged otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_a_build_pages_the_weights_out_after_the_export_and_still_times_pytorch(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real build (threshold lowered for a small model): the export ran on resident weights, the report
    says how much was paged out, and the benchmark still ran PyTorch eager on the mapped weights."""
    import optpipe
    from optpipe.model import paged_weights

    monkeypatch.setattr(paged_weights, "PAGE_OUT_ABOVE", 0)
    model = _model()
    weight = model[0].weight
    report = optpipe.build(model, (torch.randn(2, 256),), out_dir=tmp_path / "b", precisions=("fp32",),
                           bench_seconds=0.2, warmup=1)
    memory = report.to_dict()["memory"]
    assert memory["torch_weights_paged_out_mb"] > 0
    assert "weights.pt" in str(_mapped_file_of(weight.data_ptr()))
    assert report.variants[0].passed and report.variants[0].speedup_vs_torch is not None


def test_the_pager_pages_once_after_a_run_export_only() -> None:
    """A skipped or other pass pages nothing; a second export or the after-prefix call does not page again."""
    from types import SimpleNamespace

    from optpipe.model.paged_weights import WeightsPager

    pager, ctx = WeightsPager(), SimpleNamespace(model=_model())
    pager.after_pass(SimpleNamespace(name="simplify"), None, SimpleNamespace(skipped=None), ctx)
    pager.after_pass(SimpleNamespace(name="export"), None, SimpleNamespace(skipped="no"), ctx)
    assert pager.paged is None
    pager.after_pass(SimpleNamespace(name="export"), None, SimpleNamespace(skipped=None), ctx)
    first = pager.paged
    assert first is not None and pager.page(ctx.model) is first

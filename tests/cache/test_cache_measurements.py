"""Warm rebuilds reuse validation and benchmark measurements only under exactly the same conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import optpipe
from optpipe.cache.store import PassCache
from optpipe.core.machine import host_facts


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _build(tmp_path: Path, name: str, model: nn.Module, **kwargs: object) -> dict:
    cache = PassCache(tmp_path / "cache", log=lambda _m: None)
    report = optpipe.build(model, (torch.ones(2, 8),), out_dir=tmp_path / name, instruments=[cache],
                           log=lambda _m: None, **kwargs)
    return report.to_dict()


def _status(report: dict, name: str) -> list[str]:
    return [p["status"] for p in report["passes"] if p["name"] == name]


@pytest.mark.slow
def test_unchanged_rebuild_reuses_measurements_and_says_when_and_where(tmp_path: Path) -> None:
    cold = _build(tmp_path, "cold", Net())
    assert _status(cold, "validate") == ["ok"] and _status(cold, "benchmark") == ["ok"]
    warm = _build(tmp_path, "warm", Net())
    assert _status(warm, "validate") == ["cached"] and _status(warm, "benchmark") == ["cached"]
    cached = warm["variants"][0]["cached"]
    assert set(cached) == {"validate", "benchmark"} and "cached" not in cold["variants"][0]
    for made in cached.values():
        assert made["host"] == host_facts() and made["measured_at"] and len(made["key"]) == 64
    assert warm["variants"][0]["parity"] == cold["variants"][0]["parity"]


@pytest.mark.slow
def test_rebench_measures_again(tmp_path: Path) -> None:
    _build(tmp_path, "cold", Net())
    again = _build(tmp_path, "again", Net(), rebench=True)
    assert _status(again, "validate") == ["ok"] and _status(again, "benchmark") == ["ok"]
    assert again["build"]["options"]["rebench"] is True


@pytest.mark.slow
def test_changed_weights_or_threads_measure_again(tmp_path: Path) -> None:
    _build(tmp_path, "cold", Net())
    other = Net()
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    changed = _build(tmp_path, "weights", other)
    assert _status(changed, "validate") == ["ok"] and _status(changed, "benchmark") == ["ok"]
    threads = _build(tmp_path, "threads", Net(), threads=1)
    assert _status(threads, "benchmark") == ["ok"]


@pytest.mark.slow
def test_build_benchmark_is_one_cached_record_keyed_by_what_was_timed(tmp_path: Path) -> None:
    cold = _build(tmp_path, "cold", Net(), precisions=("fp32", "fp16"))
    assert "cached" not in cold["benchmark"] and _status(cold, "benchmark") == ["ok"]
    warm = _build(tmp_path, "warm", Net(), precisions=("fp32", "fp16"))
    assert _status(warm, "benchmark") == ["cached"]  # one build-level record, reused once
    made = warm["benchmark"]["cached"]
    assert made["host"] == host_facts() and made["measured_at"] and len(made["key"]) == 64
    assert warm["benchmark"]["inputs"] == cold["benchmark"]["inputs"]
    assert warm["benchmark"]["baseline"] == cold["benchmark"]["baseline"]  # the same one baseline
    assert all(v["cached"]["benchmark"] == made for v in warm["variants"])
    # Another budget is another measurement (the key is BenchmarkPass.inputs()); validation stays reused.
    budget = _build(tmp_path, "budget", Net(), precisions=("fp32", "fp16"), bench_seconds=0.2)
    assert _status(budget, "benchmark") == ["ok"] and set(_status(budget, "validate")) == {"cached"}
    assert budget["benchmark"]["inputs"]["seconds"] == 0.2
    assert all("benchmark" not in v.get("cached", {}) for v in budget["variants"])


def test_the_builds_own_log_is_never_a_pass_output(tmp_path: Path) -> None:
    """build.log grows while a pass runs (third-party log lines): a replayed entry must not overwrite it."""
    from optpipe.cache.store import snapshot

    (tmp_path / "build.log").write_text("this build's lines\n", encoding="utf-8")
    (tmp_path / "fp16").mkdir()
    (tmp_path / "fp16" / "build.log").write_text("a pass's own file\n", encoding="utf-8")
    assert set(snapshot(tmp_path)) == {"fp16/build.log"}

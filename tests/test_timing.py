"""The benchmark's time budget and its stability warning (no latency is asserted)."""

from __future__ import annotations

import time

from optpipe.timing import budgeted_latency, stability_warning


def _sleeper(seconds: float):  # type: ignore[no-untyped-def]
    def call() -> None:
        time.sleep(seconds)

    return call


def test_budget_stops_once_every_runtime_has_its_seconds_and_calls() -> None:
    calls = {"fast": _sleeper(0.001), "slow": _sleeper(0.01)}
    times = budgeted_latency(calls, seconds=0.1, warmup=1, min_calls=5, progress=lambda *_: None)
    for name in calls:
        assert len(times[name]) >= 5
        assert sum(times[name]) >= 100.0
    # Budgeted, not counted: the fast call got many more timed calls than the slow one.
    assert len(times["fast"]) > len(times["slow"])


def test_min_calls_wins_over_a_tiny_budget() -> None:
    times = budgeted_latency({"x": _sleeper(0.005)}, seconds=0.001, warmup=0, min_calls=7, progress=lambda *_: None)
    assert len(times["x"]) >= 7


def test_stability_warning_on_a_wide_spread_only() -> None:
    steady = [10.0] * 50 + [10.5] * 50
    assert stability_warning("engine", steady) is None
    noisy = [10.0] * 80 + [30.0] * 20
    warning = stability_warning("torch", noisy)
    assert warning is not None and "torch" in warning and "p90/p50" in warning
    assert stability_warning("x", [1.0]) is None

"""The benchmark's time budget and its stability warning (no latency is asserted)."""

from __future__ import annotations

import time

import pytest

from optpipe.runtime.timing import MIN_BLOCK_CALLS, budgeted_blocks, budgeted_latency, stability_warning


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


@pytest.mark.slow
def test_stability_warning_on_a_wide_spread_only() -> None:
    steady = [10.0] * 50 + [10.5] * 50
    assert stability_warning("engine", steady) is None
    noisy = [10.0] * 80 + [30.0] * 20
    warning = stability_warning("torch", noisy)
    assert warning is not None and "torch" in warning and "p90/p50" in warning
    assert stability_warning("x", [1.0]) is None


@pytest.mark.slow
def test_blocks_stay_interleaved_to_the_end_and_are_sized_by_time() -> None:
    calls = {"fast": _sleeper(0.001), "slow": _sleeper(0.01), "baseline": _sleeper(0.003)}
    timed = budgeted_blocks(calls, seconds=0.1, warmup=2, min_calls=5, blocks=4, progress=lambda *_: None)
    rounds = {name: len(runs) for name, runs in timed.items()}
    assert len(set(rounds.values())) == 1  # every runtime ran in every round: one run, not one after another
    for runs in timed.values():
        assert all(len(block) >= MIN_BLOCK_CALLS for block in runs)
    # Blocks hold about the same time, so the fast call's blocks hold more calls than the slow one's.
    assert len(timed["fast"][-1]) > len(timed["slow"][-1])
    flat = budgeted_latency(calls, seconds=0.05, warmup=1, min_calls=5, progress=lambda *_: None)
    assert set(flat) == set(calls) and all(len(v) >= 5 for v in flat.values())


def _counted(seconds: float, log: list[float]):  # type: ignore[no-untyped-def]
    def call() -> None:
        log.append(time.perf_counter())
        time.sleep(seconds)

    return call


def test_a_slow_call_is_timed_for_about_its_budget_not_whole_extra_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: BERT-base at 300 ms per call took 26 calls per runtime and shape (5 warm-up, 3 rounds of 2 settle
    + 5 timed) for a 2 s budget; its build's benchmark took 144 s. Now: 2 warm-up calls once they last
    WARMUP_SECONDS, one settle call, blocks of 3, and the rest taken in one block when it fits in two."""
    from optpipe.runtime import timing

    monkeypatch.setattr(timing, "WARMUP_SECONDS", 0.05)
    made: list[float] = []
    timed = budgeted_blocks({"slow": _counted(0.03, made)}, seconds=0.2, warmup=5, min_calls=5,
                            progress=lambda *_: None)
    calls = sum(map(len, timed["slow"]))
    assert sum(map(sum, timed["slow"])) >= 200.0 and calls >= 5  # the budget and min_calls still hold
    assert calls <= 8  # 7 when sleeps are exact: blocks of 3 + 4 (the rest in one), not 5 + 5
    assert len(timed["slow"]) == 2  # two rounds: no third round to top up by a call
    assert len(made) - calls <= 2 + len(timed["slow"])  # untimed: 2 warm-up calls and one settle call per block


def test_a_runtime_done_early_stays_in_every_round_with_the_smallest_block() -> None:
    calls = {"slow": _sleeper(0.02), "fast": _sleeper(0.001)}
    timed = budgeted_blocks(calls, seconds=0.1, warmup=1, min_calls=20, progress=lambda *_: None)
    assert len(timed["slow"]) == len(timed["fast"])  # interleaved to the end
    assert all(len(block) >= MIN_BLOCK_CALLS for runs in timed.values() for block in runs)
    assert sum(map(len, timed["slow"])) >= 20 and sum(map(sum, timed["fast"])) >= 100.0
    # fast had its budget before slow had its 20 calls: its blocks in the rounds after that are the smallest
    assert len(timed["fast"][-1]) == MIN_BLOCK_CALLS < len(timed["fast"][0])


def test_blocks_last_as_long_as_the_slowest_runtimes_smallest_block() -> None:
    """A slow baseline beside fast engines: every block spans the baseline's 3 calls, so the budget takes two
    rounds, not one round per seconds/blocks in which the runtimes already done still take a block each."""
    calls = {"eager": _sleeper(0.04), "engine": _sleeper(0.005)}
    timed = budgeted_blocks(calls, seconds=0.24, warmup=2, min_calls=3, blocks=5, progress=lambda *_: None)
    assert len(timed["eager"]) <= 3  # about 0.12 s a block: 2 rounds (5 with 0.048 s blocks)
    assert len(timed["engine"][0]) >= 15  # the engine's block spans the same time: many more calls
    assert all(sum(map(sum, runs)) >= 240.0 for runs in timed.values())

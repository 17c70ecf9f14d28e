"""Latency measurement that survives a noisy 2-core machine.

Runtimes are measured side by side in one run, interleaved in blocks: each
round visits the runtimes in a shuffled order, makes untimed calls while the
other runtime's thread pool winds down (measured here: after a switch,
PyTorch's first 6-9 calls run about 2x slower, hence 10 untimed calls), then
times a block of calls. Statistics are medians and percentiles over all timed
calls; speedups are ratios of medians.

How long to measure is a time budget, not a count (as trtexec's
``--duration``): a fixed 620 calls cost minutes on a 100 ms model and are
needlessly few on a 0.1 ms one. :func:`budgeted_latency` sizes each block from
the warm-up's per-call time and stops once every runtime has ``seconds`` of
timed calls and at least ``min_calls`` of them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def interleaved_latency(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 10,
    rounds: int = 10,
    iters_per_round: int = 20,
    settle: int = 10,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Per-call latencies in milliseconds for each named call.

    Without ``progress``, a bar is drawn on stderr when it is a terminal.
    """
    if progress is None:
        from optpipe.core.progress import Progress

        progress = Progress("benchmark", rounds).update
    for call in calls.values():
        for _ in range(warmup):
            call()
    order = list(calls)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(rounds):
        rng.shuffle(order)
        for name in order:
            call = calls[name]
            for _ in range(settle):
                call()
            for _ in range(iters_per_round):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1e3)
        if progress is not None:
            progress(round_index + 1, rounds)
    return times


#: p90/p50 above this marks a measurement as unstable (a loaded machine, a bimodal runtime).
UNSTABLE_SPREAD = 1.5


def budgeted_latency(
    calls: Mapping[str, Callable[[], object]],
    *,
    seconds: float = 2.0,
    warmup: int = 5,
    min_calls: int = 10,
    blocks: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Per-call latencies (ms) of each call, about ``seconds`` of timed calls each, interleaved in blocks.

    :func:`budgeted_blocks` with each runtime's blocks joined in call order.
    """
    timed = budgeted_blocks(calls, seconds=seconds, warmup=warmup, min_calls=min_calls, blocks=blocks, seed=seed,
                            progress=progress)
    return {name: [t for block in runs for t in block] for name, runs in timed.items()}


#: Untimed calls after each switch last at least this long: the previous runtime's thread pool is still
#: spinning (ONNX Runtime's intra-op threads spin after a run) and slows the first calls of the next one.
SETTLE_SECONDS = 0.005
#: Fewest calls in a block, so one stalled call cannot move a block's median.
MIN_BLOCK_CALLS = 3
#: The warm-up stops after this long once it made 2 calls (the first pays one-off costs, the second is warm):
#: 5 warm-up calls of BERT-base at 300 ms cost 1.5 s per runtime and shape, for nothing a third call teaches.
WARMUP_SECONDS = 0.5


def _per_call_seconds(calls: Mapping[str, Callable[[], object]], warmup: int) -> dict[str, float]:
    """Untimed warm-up calls of each runtime (at most ``warmup``, see :data:`WARMUP_SECONDS`); the median of
    the later ones sizes its first blocks."""
    per_call: dict[str, float] = {}
    for name, call in calls.items():
        durations: list[float] = []
        while len(durations) < max(warmup, 1) and not (len(durations) >= 2 and sum(durations) >= WARMUP_SECONDS):
            start = time.perf_counter()
            call()
            durations.append(time.perf_counter() - start)
        per_call[name] = float(np.median(durations[1:] or durations))  # the first call pays one-off costs
    return per_call


def _block_sizes(per_call: Mapping[str, float], seconds: float, blocks: int) -> tuple[dict[str, int], dict[str, int]]:
    """Timed calls per block (about ``seconds / blocks`` each) and untimed settle calls after a switch.

    Every runtime's block lasts about the same time: ``seconds / blocks``, or, when the slowest runtime's
    :data:`MIN_BLOCK_CALLS` calls last longer, that (at most ``seconds``). So a 400 ms PyTorch baseline
    beside 170 ms engines takes two rounds of 1.2 s each, not six of 0.4 s in which every runtime that
    already has its budget still gets a block.
    One settle call is enough for a call longer than :data:`SETTLE_SECONDS` (a 300 ms call outlasts the
    spinning thread pool 60 times); shorter calls get as many as fill it.
    """
    slowest = max(per_call.values(), default=0.0)
    span = min(seconds, max(seconds / blocks, MIN_BLOCK_CALLS * slowest))
    block = {n: max(MIN_BLOCK_CALLS, math.ceil(span / max(c, 1e-7))) for n, c in per_call.items()}
    settle = {n: max(1, min(block[n], math.ceil(SETTLE_SECONDS / max(c, 1e-7)))) for n, c in per_call.items()}
    return block, settle


def _still_needed(runs: list[list[float]], per_call: float, seconds: float, min_calls: int) -> int:
    """Timed calls a runtime still needs for its budget and its ``min_calls`` (0: it has both)."""
    calls, spent = sum(map(len, runs)), sum(map(sum, runs)) / 1e3
    if calls >= min_calls and spent >= seconds:
        return 0
    return max(min_calls - calls, math.ceil(max(seconds - spent, 0.0) / max(per_call, 1e-7)), 1)


def _round_sizes(timed: Mapping[str, list[list[float]]], per_call: Mapping[str, float], block: Mapping[str, int],
                 seconds: float, min_calls: int) -> dict[str, int]:
    """Each runtime's block this round: its usual size, all it still needs when that fits in two blocks (no
    round of every runtime just to top one up by a call or two), and the smallest block once it is done (it
    stays in every round, so the blocks stay interleaved to the end)."""
    sizes = {}
    for name, usual in block.items():
        need = _still_needed(timed[name], per_call[name], seconds, min_calls)
        sizes[name] = MIN_BLOCK_CALLS if need == 0 else max(MIN_BLOCK_CALLS, need) if need <= 2 * usual else usual
    return sizes


def budgeted_blocks(
    calls: Mapping[str, Callable[[], object]],
    *,
    seconds: float = 2.0,
    warmup: int = 5,
    min_calls: int = 10,
    blocks: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Per-call latencies (ms) of each call, block by block, about ``seconds`` of timed calls each.

    Each runtime's block holds about ``seconds / blocks`` of calls (sized from
    its warm-up, then from its own timed calls so far; at least
    :data:`MIN_BLOCK_CALLS`), preceded by untimed settle calls
    (:data:`SETTLE_SECONDS`: the other runtime's thread pool winding down).
    Rounds go on, shuffled, until every runtime has both ``seconds`` of timed
    calls and ``min_calls`` calls; a runtime whose rest fits in two blocks
    takes it in one (:func:`_round_sizes`), so a slow model is timed for about
    its budget, not for whole extra rounds. The blocks are kept
    apart so a drift of one runtime over the run (the baseline slowing down
    while others ran) can be seen: :func:`drift`.
    """
    if progress is None:
        from optpipe.core.progress import Progress

        progress = Progress("benchmark", blocks).update
    per_call = _per_call_seconds(calls, warmup)
    order = list(calls)
    rng = random.Random(seed)
    timed: dict[str, list[list[float]]] = {name: [] for name in calls}

    rounds = 0
    while any(_still_needed(timed[name], per_call[name], seconds, min_calls) for name in calls):
        block, settle = _block_sizes(per_call, seconds, blocks)
        sizes = _round_sizes(timed, per_call, block, seconds, min_calls)
        rng.shuffle(order)
        for name in order:  # every runtime in every round, so the blocks stay interleaved to the end
            timed[name].append(_timed_block(calls[name], settle[name], sizes[name]))
        per_call = {n: float(np.median([t for b in timed[n] for t in b])) / 1e3 if timed[n] else c
                    for n, c in per_call.items()}
        rounds += 1
        if progress is not None:
            progress(min(rounds, blocks), blocks)
    return timed


def _timed_block(call: Callable[[], object], settle: int, size: int) -> list[float]:
    """``settle`` untimed calls, then ``size`` timed ones (ms)."""
    for _ in range(settle):
        call()
    times: list[float] = []
    for _ in range(size):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


#: The slowest block median over the fastest above this marks a runtime that drifted during the run.
DRIFT_LIMIT = 1.25


def drift(blocks_ms: list[list[float]]) -> float | None:
    """Slowest block median / fastest block median of one runtime (None with fewer than 2 blocks)."""
    medians = [float(np.median(block)) for block in blocks_ms if block]
    if len(medians) < 2 or min(medians) <= 0:
        return None
    return max(medians) / min(medians)


def drift_warning(name: str, blocks_ms: list[list[float]]) -> str | None:
    """A warning when ``name``'s block medians moved more than :data:`DRIFT_LIMIT` during the run."""
    ratio = drift(blocks_ms)
    if ratio is None or ratio <= DRIFT_LIMIT:
        return None
    return (
        f"{name} drifted during the benchmark: its slowest block median is {ratio:.2f}x its fastest (> "
        f"{DRIFT_LIMIT}); the machine's load changed while timing, so every speedup is uncertain: re-run with a "
        "longer --bench-seconds on a quieter machine"
    )


def stability_warning(name: str, times_ms: list[float]) -> str | None:
    """A warning when ``name``'s p90/p50 exceeds :data:`UNSTABLE_SPREAD` (its median is then shaky)."""
    values = np.asarray(times_ms, dtype=np.float64)
    if values.size < 2:
        return None
    p50, p90 = float(np.percentile(values, 50)), float(np.percentile(values, 90))
    if p50 > 0 and p90 / p50 > UNSTABLE_SPREAD:
        return (
            f"unstable timing for {name}: p90/p50 = {p90 / p50:.2f} (> {UNSTABLE_SPREAD}); the machine may be "
            "loaded, treat its speedup with care or re-run with a longer --bench-seconds"
        )
    return None


def summarize(times_ms: list[float], batch: int, threads: int | None) -> dict[str, Any]:
    """The report's latency record for one runtime."""
    values = np.asarray(times_ms, dtype=np.float64)
    p50 = float(np.percentile(values, 50))
    return {
        "batch": batch,
        "threads": threads,
        "iterations": int(values.size),
        "p50_ms": p50,
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std()),
        "throughput": batch / (p50 / 1e3) if p50 > 0 else None,
        "samples_ms": downsample(times_ms),
    }


def downsample(times_ms: list[float], keep: int = 200) -> list[float]:
    """At most ``keep`` per-call times, evenly spaced in call order, to 4 significant digits.

    Kept in the report so the HTML page can draw the distribution (a median
    hides bimodal timings and thread-pool stalls); evenly spaced picks keep
    both the shape of the distribution and any drift over the run.
    """
    values = np.asarray(times_ms, dtype=np.float64)
    if values.size > keep:
        values = values[np.linspace(0, values.size - 1, keep).round().astype(int)]
    return [float(f"{v:.4g}") for v in values]

"""Latency measurement that survives a noisy 2-core machine.

Runtimes are measured side by side in one run, interleaved in blocks: each
round visits the runtimes in a shuffled order, makes untimed calls while the
other runtime's thread pool winds down (measured here: after a switch,
PyTorch's first 6-9 calls run about 2x slower, hence 10 untimed calls), then
times a block of calls. Statistics are medians and percentiles over all timed
calls; speedups are ratios of medians.
"""

from __future__ import annotations

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
        from optpipe.progress import Progress

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

"""Measure every engine of a build against ONE PyTorch eager baseline, in one run.

The build runs this once, after every variant was built and validated
(:mod:`optpipe.builder.plan`): all engines and PyTorch eager get the same inputs,
thread count and batch, their calls are interleaved in shuffled blocks with
settle calls after each switch (see :mod:`optpipe.runtime.timing`), and each speedup is
the baseline's median over the engine's. Timed each beside its own PyTorch run,
variants got different denominators on a loaded machine (PyTorch's median moved
330-455 ms between variants of one build) and selection could pick the slower
artifact; in one run they share one baseline and compare with each other.

A GPU runner that offers ``time_inference`` (TensorRT's ``TrtEngineRunner``)
times itself instead: wall-clock around an asynchronous GPU launch would
measure the launch, not the work, so its timer synchronises the CUDA stream.
PyTorch eager is then timed on its own: on the GPU (inputs copied to it,
``torch.cuda.synchronize`` after each call) when this torch has CUDA, else on
the CPU; ``torch_latency.device`` says which. The runner's GPU memory use
(``runner.memory``) is added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from optpipe.compare.golden import resize_batch
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.core.memory import RssSampler, current_rss_bytes, mib
from optpipe.core.records import BenchmarkRecord
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.runtime.runners import TorchRunner
from optpipe.runtime.timing import (
    budgeted_blocks,
    drift,
    drift_warning,
    interleaved_latency,
    stability_warning,
    summarize,
)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Options of the benchmark pass."""

    batch: int | None = option(None, help="None = the example's batch size", flags=("benchmark_batch",))
    warmup: int = option(5, help="untimed calls per runtime first", flags=("warmup",))
    seconds: float = option(2.0, help="timed seconds per runtime (a budget, as trtexec's --duration)",
                            flags=("bench_seconds",))
    min_calls: int = option(5, help="fewest timed calls per runtime, even past the budget", flags=("iterations",))
    # A fixed count instead of the budget (both set): rounds x iters_per_round timed calls per runtime.
    rounds: int | None = None
    iters_per_round: int | None = None
    compare_torch: bool = True
    seed: int = 0  # the shuffle of the blocks
    # Also time the data's real lengths (p50/p90/max buckets) when token inputs have a dynamic length.
    serving: bool = True


GPU_TARGETS = ("tensorrt",)


def torch_baseline_device(target_name: str, torch: Any) -> str:
    """Where PyTorch eager runs as the baseline: the GPU for a GPU target when torch has CUDA, else the CPU."""
    if target_name in GPU_TARGETS and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


def _model_device(model: Any) -> Any:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def cuda_torch_call(model: Any, input_names: list[str], feed: dict[str, Any], device: str) -> Any:
    """A call running PyTorch eager on ``device`` (moves ``model`` there), timed like the TensorRT runner.

    Each call copies the inputs host-to-device and ends with ``torch.cuda.synchronize``; outputs
    stay on the GPU. That is the span ``TrtEngineRunner.time_inference`` measures, so the speedup
    compares like with like (wall clock around an unsynchronised launch would time the launch).
    """
    import numpy as np
    import torch

    model.to(device)
    host = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in input_names]

    def call() -> object:
        with torch.inference_mode():
            result = model(*(t.to(device) for t in host))
        torch.cuda.synchronize(device)
        return result

    return call


TORCH = "torch"  # the baseline's name among the timed runtimes


class BenchmarkPass(Pass):
    """engine -> engine: latency statistics and speedup over PyTorch eager.

    A build does not run it per variant: it calls :meth:`measure` once with every
    built engine. ``run`` (one engine against PyTorch) serves a pipeline of its own.
    """

    name = "benchmark"
    description = "time every engine and PyTorch eager in one interleaved run (medians); speedups over one baseline"
    input_kind = ArtifactKind.ENGINE
    output_kind = ArtifactKind.ENGINE
    Config = BenchmarkConfig

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:
        if ctx.golden is None:
            raise UserInputError("benchmarking needs golden inputs")
        if self.config.batch is not None and self.config.batch < 1:
            raise UserInputError(f"benchmark batch must be >= 1, got {self.config.batch}")

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        record, memory = self.measure({artifact.precision: artifact}, ctx)
        metrics = {**variant_metrics(record, artifact.precision, memory.get(artifact.precision)),
                   "torch_latency": record.baseline, "timer": record.timer}
        return PassResult(artifact, modified=False, metrics=metrics, warnings=list(record.warnings))

    def inputs(self, engines: Mapping[str, Artifact], ctx: BuildContext) -> dict[str, Any]:
        """Everything the measurement depends on besides the host's load: explicit, so a result can be keyed."""
        assert ctx.golden is not None
        example = ctx.golden.case("example")
        return {
            "engines": {precision: artifact.sha256 for precision, artifact in sorted(engines.items())},
            "batch": self.config.batch or example.batch, "threads": ctx.threads, "target": ctx.target.name,
            "seconds": self.config.seconds, "warmup": self.config.warmup, "min_calls": self.config.min_calls,
            "rounds": self.config.rounds, "iters_per_round": self.config.iters_per_round,
            "baseline": self.config.compare_torch and ctx.model is not None, "seed": self.config.seed,
            "serving": [[name, length] for name, length, _feed in self._serving_feeds(ctx)],
        }  # fmt: skip

    def _serving_feeds(self, ctx: BuildContext) -> list[tuple[str, int, dict[str, Any]]]:
        """The real-length feeds (:func:`~optpipe.model.default_seq.serving_feeds`) when a token axis is dynamic."""
        from optpipe.model.default_seq import serving_feeds, token_axes

        if not self.config.serving or ctx.golden is None:
            return []
        example = ctx.golden.case("example")
        dynamic = {d.axis_name: d for d in ctx.dynamic}
        shapes = {spec.name: spec.shape for spec in ctx.input_specs}
        axes = tuple((name, axis) for name, axis in token_axes(example.inputs)
                     if isinstance(shapes[name][axis], str) and str(shapes[name][axis]) in dynamic)
        if not axes:
            return []
        rows = [case.inputs for case in ctx.golden.cases if case.name == "example" or "heldout" in case.name]
        batch = self.config.batch or example.batch
        return serving_feeds(rows, axes, batch, dynamic[str(shapes[axes[0][0]][axes[0][1]])])

    def measure(self, engines: Mapping[str, Artifact], ctx: BuildContext) -> tuple[BenchmarkRecord, dict[str, Any]]:
        """Time every engine and PyTorch eager in one run; the record, and each engine's host memory."""
        import torch

        if ctx.golden is None:
            raise UserInputError("benchmarking needs golden inputs")
        inputs = self.inputs(engines, ctx)
        example = ctx.golden.case("example")
        batch = int(inputs["batch"])
        feed = dict(resize_batch(example.inputs, batch) if batch != example.batch else example.inputs)
        previous_threads = torch.get_num_threads()
        if ctx.threads:
            torch.set_num_threads(ctx.threads)
        session = _Session(ctx, feed, engines)
        try:
            torch_device = session.add_torch(ctx) if inputs["baseline"] else None
            with RssSampler() as sampler:
                blocks = self._time(session)
            serving = self._time_serving(session, ctx, batch, ctx.threads or torch.get_num_threads())
        finally:
            torch.set_num_threads(previous_threads)
            session.close(ctx)
        peak = mib(sampler.peak)
        record = _record(inputs, blocks, batch, ctx.threads or previous_threads, torch_device, session, peak)
        record = replace(record, serving=tuple(serving))
        memory = {p: {**load, "peak_rss_mb": peak, "note": "process RSS; every runtime of the build's benchmark "
                      "runs interleaved in this process"} for p, load in session.memory.items()}
        return record, memory

    def _time(self, session: _Session) -> dict[str, list[list[float]]]:
        """Interleaved blocks of the wall-clock runtimes, then each self-timed (GPU) engine on its own."""
        config = self.config
        if not session.calls:
            blocks: dict[str, list[list[float]]] = {}
        elif config.rounds is not None and config.iters_per_round is not None:  # a fixed count
            times = interleaved_latency(session.calls, warmup=config.warmup, rounds=config.rounds,
                                        iters_per_round=config.iters_per_round)
            blocks = {name: [values] for name, values in times.items()}
        else:
            blocks = budgeted_blocks(session.calls, seconds=config.seconds, warmup=config.warmup,
                                     min_calls=config.min_calls, seed=config.seed)
        for precision, runner in session.self_timed.items():
            blocks[precision] = [runner.time_inference(session.feed, warmup=config.warmup, iters=self._gpu_calls())]
        return blocks

    def _time_serving(self, session: _Session, ctx: BuildContext, batch: int, threads: int) -> list[dict[str, Any]]:
        """Each real-length bucket: every runtime on the same rows, interleaved, for half the budget each.

        Why: the example is often padded (128 tokens for sentences of 10-35), so its timing is not what a
        server sees; PyTorch eager runs the same cut rows, so each speedup compares like with like.
        """
        buckets = []
        for name, length, feed in self._serving_feeds(ctx):
            calls = session.calls_for(feed)
            timed = budgeted_blocks(calls, seconds=self.config.seconds / 2, warmup=self.config.warmup,
                                    min_calls=self.config.min_calls, seed=self.config.seed, progress=lambda *_: None)
            for precision, runner in session.self_timed.items():
                timed[precision] = [runner.time_inference(feed, warmup=self.config.warmup, iters=self._gpu_calls())]
            latency = {runtime: {k: v for k, v in summarize([t for b in runs for t in b], batch, threads).items()
                                 if k != "samples_ms"} for runtime, runs in timed.items()}
            eager = (latency.get(TORCH) or {}).get("p50_ms")
            speedups = {runtime: eager / lat["p50_ms"] for runtime, lat in latency.items()
                        if runtime != TORCH and eager and lat["p50_ms"]}
            buckets.append({"bucket": name, "length": length, "batch": batch, "latency": latency,
                            "speedup_vs_torch": speedups})
            ctx.log(f"[benchmark] real length {length} ({name}), batch {batch}: " + ", ".join(
                f"{runtime} {speedup:.2f}x eager" for runtime, speedup in speedups.items()))
        return buckets

    def _gpu_calls(self) -> int:
        """Timed calls of a self-timed (GPU) runner: the fixed count, else min_calls and at least 200."""
        if self.config.rounds is not None and self.config.iters_per_round is not None:
            return self.config.rounds * self.config.iters_per_round
        return max(self.config.min_calls, 200)


class _Session:
    """The runtimes of one benchmark run: engines loaded (their RSS cost noted) and PyTorch eager."""

    def __init__(self, ctx: BuildContext, feed: dict[str, Any], engines: Mapping[str, Artifact]) -> None:
        self.feed = feed
        self.calls: dict[str, Callable[[], object]] = {}
        self.runners: dict[str, Any] = {}  # the wall-clock runtimes' runners (TORCH: PyTorch's), for other feeds
        self.self_timed: dict[str, Any] = {}  # GPU runners with time_inference (CUDA-synchronised)
        self.memory: dict[str, dict[str, Any]] = {}
        self.gpu_memory: dict[str, dict[str, Any]] = {}
        self.restore_model: Any = None
        for precision, artifact in engines.items():
            before = current_rss_bytes()
            runner: Any = ctx.target.runner(artifact, ctx.threads)  # Any: GPU runners add time_inference
            loaded = current_rss_bytes()
            self.memory[precision] = {
                "engine_load_mb": mib(loaded - before) if loaded is not None and before else None}
            if callable(getattr(runner, "time_inference", None)):
                self.self_timed[precision] = runner
            else:
                self.runners[precision] = runner
                self.calls[precision] = _infer_call(runner, self.feed)

    def add_torch(self, ctx: BuildContext) -> str:
        """Add PyTorch eager (on the GPU for a GPU target when torch has CUDA); the device it runs on."""
        import torch

        device = torch_baseline_device(ctx.target.name, torch)
        names = [s.name for s in ctx.input_specs]
        if device.startswith("cuda"):
            self.restore_model = _model_device(ctx.model)
            self.calls[TORCH] = cuda_torch_call(ctx.model, names, dict(self.feed), device)
        else:
            reference = TorchRunner(ctx.model, tuple(names), ctx.output_names)
            self.runners[TORCH] = reference
            self.calls[TORCH] = lambda: reference.infer(self.feed)
        return device

    def calls_for(self, feed: dict[str, Any]) -> dict[str, Callable[[], object]]:
        """The wall-clock runtimes called on another feed (PyTorch on the CPU only: a GPU baseline is skipped)."""
        return {name: _infer_call(runner, feed) for name, runner in self.runners.items()}

    def close(self, ctx: BuildContext) -> None:
        """Free the GPU contexts now and put the model back where it was (later stages expect it there)."""
        if self.restore_model is not None:
            ctx.model.to(self.restore_model)
        for precision, runner in self.self_timed.items():
            self.gpu_memory[precision] = dict(getattr(runner, "memory", None) or {})
            runner.close()


def _infer_call(runner: Any, feed: dict[str, Any]) -> Callable[[], object]:
    return lambda: runner.infer(feed)


def _record(inputs: dict[str, Any], blocks: Mapping[str, list[list[float]]], batch: int, threads: int,
            torch_device: str | None, session: _Session, peak_rss_mb: float | None) -> BenchmarkRecord:
    """The typed record of one run: summaries, spreads, the baseline's drift and their warnings."""
    flat = {name: [t for block in runs for t in block] for name, runs in blocks.items()}
    latency = {name: summarize(times, batch, threads) for name, times in flat.items() if name != TORCH}
    for precision, memory in session.gpu_memory.items():
        if memory:
            latency[precision]["gpu_memory"] = memory
    baseline = summarize(flat[TORCH], batch, threads) if TORCH in flat else None
    if baseline is not None:
        baseline["device"] = torch_device
        if session.self_timed and torch_device == "cpu":
            baseline["note"] = ("PyTorch baseline ran on the CPU (this torch has no CUDA): speedup_vs_torch compares "
                                "the GPU engines with CPU eager")
    spread = {name: s["p90_ms"] / s["p50_ms"] for name, s in [*latency.items(), (TORCH, baseline)]
              if s and s["p50_ms"] > 0}
    drifts = {name: d for name, runs in blocks.items() if (d := drift(runs)) is not None}
    warnings = [w for w in (stability_warning("PyTorch eager" if n == TORCH else n, t) for n, t in sorted(flat.items()))
                if w]
    if TORCH in blocks and (moved := drift_warning("the PyTorch baseline", blocks[TORCH])):
        warnings.append(moved)
    timer = "runner (CUDA-synchronised)" if session.self_timed else "interleaved wall clock"
    return BenchmarkRecord(inputs=inputs, baseline=baseline, latency=latency, spread=spread, drift=drifts,
                           timer=timer, peak_rss_mb=peak_rss_mb, warnings=tuple(warnings))


def variant_metrics(record: BenchmarkRecord, precision: str, memory: dict[str, Any] | None) -> dict[str, Any]:
    """One variant's share of the run: its latency, the shared baseline's speedup, its memory."""
    latency = dict(record.latency.get(precision) or {})
    gpu_memory = latency.pop("gpu_memory", None)
    metrics: dict[str, Any] = {"latency": latency or None, "speedup_vs_torch": record.speedup(precision),
                               "memory": memory}
    if gpu_memory:
        metrics["gpu_memory"] = gpu_memory
    return metrics

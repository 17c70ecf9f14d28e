"""Measure the engine's latency against PyTorch eager, in the same run.

Both runtimes get the same inputs, thread count and batch; calls are
interleaved in shuffled blocks (see :mod:`optpipe.timing`), and the speedup is
the ratio of medians. Numbers from separate runs on a noisy machine would not
be comparable.

A GPU runner that offers ``time_inference`` (TensorRT's ``TrtEngineRunner``)
times itself instead: wall-clock around an asynchronous GPU launch would
measure the launch, not the work, so its timer synchronises the CUDA stream.
PyTorch eager is then timed on its own: on the GPU (inputs copied to it,
``torch.cuda.synchronize`` after each call) when this torch has CUDA, else on
the CPU; ``torch_latency.device`` says which. The runner's GPU memory use
(``runner.memory``) is added to the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optpipe.artifact import Artifact, ArtifactKind
from optpipe.errors import UserInputError
from optpipe.golden import resize_batch
from optpipe.memory import RssSampler, current_rss_bytes, mib
from optpipe.pass_base import BuildContext, Pass, PassResult
from optpipe.runtime import TorchRunner
from optpipe.timing import interleaved_latency, summarize


@dataclass(frozen=True)
class BenchmarkConfig:
    """Options of the benchmark pass."""

    batch: int | None = None  # None = the example's batch size
    warmup: int = 10
    rounds: int = 10
    iters_per_round: int = 20
    compare_torch: bool = True


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


class BenchmarkPass(Pass):
    """engine -> engine: latency statistics and speedup over PyTorch eager."""

    name = "benchmark"
    description = "time the engine and PyTorch eager side by side (interleaved, medians) and report the speedup"
    input_kind = ArtifactKind.ENGINE
    output_kind = ArtifactKind.ENGINE
    Config = BenchmarkConfig

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:
        if ctx.golden is None:
            raise UserInputError("benchmarking needs golden inputs")
        if self.config.batch is not None and self.config.batch < 1:
            raise UserInputError(f"benchmark batch must be >= 1, got {self.config.batch}")

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        import torch

        assert ctx.golden is not None
        example = ctx.golden.case("example")
        batch = self.config.batch or example.batch
        feed = resize_batch(example.inputs, batch) if batch != example.batch else example.inputs
        rss_before = current_rss_bytes()
        engine: Any = ctx.target.runner(artifact, ctx.threads)  # Any: GPU runners add time_inference/close
        rss_loaded = current_rss_bytes()
        self_timed = callable(getattr(engine, "time_inference", None))
        calls: dict[str, Any] = {} if self_timed else {"engine": lambda: engine.infer(feed)}
        use_torch = self.config.compare_torch and ctx.model is not None
        memory: dict[str, Any] = {}
        previous_threads = torch.get_num_threads()
        # A GPU engine is compared with PyTorch on the GPU when this torch has CUDA; else on the CPU (labelled).
        torch_device = torch_baseline_device(ctx.target.name, torch) if use_torch else None
        restore_model: Any = None
        if ctx.threads:
            torch.set_num_threads(ctx.threads)
        try:
            if use_torch and torch_device is not None and torch_device.startswith("cuda"):
                restore_model = _model_device(ctx.model)
                calls["torch"] = cuda_torch_call(ctx.model, [s.name for s in ctx.input_specs], feed, torch_device)
            elif use_torch:
                reference = TorchRunner(ctx.model, tuple(s.name for s in ctx.input_specs), ctx.output_names)
                calls["torch"] = lambda: reference.infer(feed)
            with RssSampler() as sampler:
                times = interleaved_latency(
                    calls,
                    warmup=self.config.warmup,
                    rounds=self.config.rounds,
                    iters_per_round=self.config.iters_per_round,
                ) if calls else {}
                if self_timed:
                    times["engine"] = engine.time_inference(
                        feed, warmup=self.config.warmup, iters=self.config.rounds * self.config.iters_per_round
                    )
        finally:
            torch.set_num_threads(previous_threads)
            if restore_model is not None:
                ctx.model.to(restore_model)  # later stages (other variants' export) expect it where it was
            if self_timed:
                memory = dict(getattr(engine, "memory", None) or {})
                if callable(getattr(engine, "close", None)):
                    engine.close()  # free the GPU context now, not whenever the garbage collector runs
        threads = ctx.threads or previous_threads
        metrics: dict[str, Any] = {"latency": summarize(times["engine"], batch, threads)}
        metrics["timer"] = "runner (CUDA-synchronised)" if self_timed else "interleaved wall clock"
        if memory:
            metrics["gpu_memory"] = memory
        metrics["memory"] = {  # host RSS: the engine session's load, and the process peak while timing
            "engine_load_mb": mib(rss_loaded - rss_before) if rss_loaded is not None and rss_before else None,
            "peak_rss_mb": mib(sampler.peak),
            "note": "process RSS; both runtimes run interleaved in this process",
        }
        if use_torch:
            metrics["torch_latency"] = summarize(times["torch"], batch, threads)
            metrics["torch_latency"]["device"] = torch_device
            if self_timed and torch_device == "cpu":
                metrics["torch_latency"]["note"] = (
                    "PyTorch baseline ran on the CPU (this torch has no CUDA): speedup_vs_torch compares "
                    "the GPU engine with CPU eager"
                )
            metrics["speedup_vs_torch"] = metrics["torch_latency"]["p50_ms"] / metrics["latency"]["p50_ms"]
        return PassResult(artifact, modified=False, metrics=metrics)

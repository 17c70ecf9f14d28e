"""Per-layer time of a TensorRT engine, through TensorRT's ``IProfiler`` (NOT RUN HERE: no GPU).

Written from TensorRT's documentation, like the rest of the TensorRT stage:

* ``tensorrt.IProfiler`` (https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Profiler.html):
  a subclass must call ``trt.IProfiler.__init__(self)`` and override
  ``report_layer_time(layer_name, ms)``; once set on an execution context
  (``context.profiler = ...``) it is called once per layer for each inference,
  after the inference completes. With profiling verbosity NONE the layer name is
  the layer's decimal index.
* ``nvinfer1::IProfiler`` (C++): called for ``executeV2()/enqueueV2()/enqueueV3()``;
  Polygraphy's ``TrtRunner.infer`` uses ``execute_async_v3`` and synchronises its
  stream before returning, so the reports have arrived when ``infer`` returns.
* Polygraphy's ``TrtRunner`` keeps the execution context as ``runner.context``
  once activated.

TensorRT's ONNX parser names layers after the ONNX nodes, and a fused layer
lists the nodes it fused (``"node_a + node_b"``): the first name is used to find
the PyTorch module path, like the ONNX Runtime profile does. The profiler
adds per-layer synchronisation, so these times say where the time goes, not
the engine's latency (the benchmark measures that without the profiler).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optpipe.runtime.op_profile import OpProfile, summarize_profile


def layer_name_node(layer: str) -> str:
    """The first ONNX node a TensorRT layer was built from (``"a + b"`` -> ``a``; ``"[...]"`` wrappers dropped)."""
    first = layer.split(" + ")[0].strip()
    return first.strip("{}[]() ") or layer


def engine_layer_timing(runner: Any, feeds: Sequence[Mapping[str, Any]], paths: Mapping[str, str],
                   runs: int = 20, top: int = 15) -> OpProfile:
    """Per-layer time of the engine behind ``runner`` (a :class:`~optpipe.runtime.tensorrt.engine.TrtEngineRunner`),
    summarised in the op profiler's record so ``--profile`` reports both runtimes alike."""
    from optpipe.runtime.tensorrt.engine import _import_tensorrt

    trt = _import_tensorrt("the TensorRT per-layer profile")
    times: dict[str, float] = {}
    counting = [False]

    class LayerTimes(trt.IProfiler):  # type: ignore[name-defined]  # trt is only known at run time
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if counting[0]:
                times[layer_name] = times.get(layer_name, 0.0) + ms * 1000.0

    polygraphy_runner = runner._active()
    polygraphy_runner.context.profiler = LayerTimes()
    runner.infer(dict(feeds[0]))  # warm-up, not counted
    counting[0] = True
    for index in range(runs):
        runner.infer(dict(feeds[index % len(feeds)]))
    totals = {layer: ("layer", us) for layer, us in times.items()}
    by_node = {layer: paths.get(layer_name_node(layer), "") for layer in totals}
    return summarize_profile(totals, runs, by_node, "tensorrt", top)

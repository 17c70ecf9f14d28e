"""The ``tensorrt`` target: strongly typed TensorRT engines on an NVIDIA GPU.

Here, not in :mod:`optpipe.runtime.target`, because it runs engines with
:mod:`optpipe.runtime.tensorrt.engine`: core modules never import the ``tensorrt``
layer; :func:`optpipe.runtime.target.get_target` finds this class by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optpipe.runtime.target import Target
from optpipe.runtime.tensorrt.engine import TrtEngineRunner, check_trt_available

if TYPE_CHECKING:
    from optpipe.core.artifact import Artifact
    from optpipe.runtime.runners import Runner


class TensorRTTarget(Target):
    name = "tensorrt"
    description = "TensorRT on an NVIDIA GPU (strongly typed engine built with Polygraphy)"
    qdq_style = "tensorrt"
    engine_pass_name = "engine-trt"
    check_pass_names = ("trt-lint",)  # the static lint runs on the CPU, so a split build stops there on a bad model

    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        assert artifact.path is not None
        return TrtEngineRunner(artifact.path)

    def check_available(self) -> None:
        check_trt_available()

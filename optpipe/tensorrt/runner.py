"""Compatibility import: the runner lives in :mod:`optpipe.tensorrt.engine` (see ``TrtEngineRunner``).

It is defined there so ``optpipe.target`` can import it next to ``check_trt_available``.
"""

from optpipe.tensorrt.engine import TrtEngineRunner

__all__ = ["TrtEngineRunner"]

"""disk_full_reason: a full disk is recognised through a pass's wrapper and a library's re-raise, and only then."""

from __future__ import annotations

import errno

import pytest

from optpipe.core.errors import PassError, disk_full_reason


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as error:
            raise outer from error
    except Exception as caught:
        return caught


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    PassError("simplify", OSError(errno.ENOSPC, "No space left on device")),
    PassError("int8", RuntimeError("[ONNXRuntimeError] : 1 : FAIL : write failed: No space left on device")),
    _chained(RuntimeError("export failed"), OSError(errno.ENOSPC, "No space left on device")),
])
def test_a_full_disk_is_recognised(error: Exception) -> None:
    reason = disk_full_reason(error)
    assert reason is not None and ("space" in reason.lower() or "quota" in reason.lower())


@pytest.mark.parametrize("error", [
    OSError(errno.EACCES, "Permission denied"),
    PassError("simplify", ValueError("the graph has a cycle")),
    _chained(RuntimeError("export failed"), KeyError("x")),
])
def test_other_errors_are_not_a_full_disk(error: Exception) -> None:
    assert disk_full_reason(error) is None


def test_a_cause_cycle_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert disk_full_reason(first) is None

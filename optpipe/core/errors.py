"""Error types that carry the CLI exit code they map to.

The CLI never prints a traceback for these: it prints ``str(error)`` on one
line and exits with ``error.exit_code``. Anything else is a bug in optpipe and
is allowed to show a traceback.

Exit codes (documented in ``optpipe --help`` and the README):

* 0 - build finished and every gate passed
* 1 - a parity / accuracy gate failed (artifacts are kept, the report says which)
* 2 - usage or input error (bad model spec, bad shapes, corrupt files, ...)
* 3 - environment error (the target needs hardware or a package that is missing, or the disk filled up)
* 4 - unjudged: no gate failed, but a gate could not judge (too few decided rows, a reference without
  spread), so nothing says the artifact is right; ``--allow-unjudged`` accepts it (then 0)
"""

from __future__ import annotations

import errno
import re
from typing import Any

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_UNJUDGED = 4


class OptpipeError(Exception):
    """Base class: an error the user can act on, with a one-line message."""

    exit_code: int = EXIT_USAGE


class UserInputError(OptpipeError):
    """The user gave something optpipe cannot use (model, weights, inputs, data, paths)."""

    exit_code = EXIT_USAGE


class EnvironmentUnavailable(OptpipeError):
    """The requested target needs hardware or a package this machine lacks."""

    exit_code = EXIT_ENVIRONMENT


class MissingDependency(EnvironmentUnavailable):
    """An optional Python package is missing; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed; "
            f"install it with: pip install 'optpipe[{extra}]'"
        )
        self.package = package
        self.extra = extra


class PassError(OptpipeError):
    """A pass failed; the message names the pass, the exit code is the cause's."""

    def __init__(self, pass_name: str, cause: BaseException) -> None:
        super().__init__(f"pass '{pass_name}' failed: {cause}")
        self.pass_name = pass_name
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", EXIT_USAGE)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(error: BaseException, *, with_type: bool = True, root_cause: bool = False, limit: int = 300) -> str:
    """One line describing ``error``, for messages that must stay on one line.

    ``root_cause`` follows ``__cause__`` to the innermost error (torch wraps
    the useful message in generic ones); terminal colour codes are removed.
    """
    while root_cause and error.__cause__ is not None:
        error = error.__cause__
    lines = _ANSI.sub("", str(error)).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if with_type:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return (text or type(error).__name__)[:limit]


def one_line(message: str) -> str:
    """``message`` with control characters (newlines from user input, NUL, escapes) written as ``\\xNN``.

    An error echoes what the user gave (``--input '...'``); the message must stay one line
    whatever that was, and must not emit terminal control sequences.
    """
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message.strip())


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


def disk_full_reason(error: BaseException) -> str | None:
    """Why ``error`` is a full disk or quota, or None: the error, a pass's cause and their chains are read.

    Why: a build that runs out of disk is an environment error (exit 3), not bad input (exit 2). The
    ``OSError`` rarely reaches the build as itself: a pass wraps it in :class:`PassError`, and ONNX Runtime,
    protobuf or torch re-raise it as a ``RuntimeError`` whose text carries the C library's message.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current.strerror or "no space left on the device"
        text = str(current).lower()
        for known in _FULL_TEXTS:
            if known in text:
                return known.capitalize()
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def full_message(error: BaseException, *, root_cause: bool = False, limit: int = 4000) -> str:
    """Every line of ``error`` (type first, colour codes removed), for report.json where nothing may be cut.

    A one-line summary loses the part that explains a failure (ONNX Runtime puts
    ``index: 0 Got: 1 Expected: 2`` on the second line); ``limit`` only guards
    against multi-megabyte traces.
    """
    if root_cause:
        error = _root(error)
    text = _ANSI.sub("", str(error)).strip()
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_line(error: BaseException | str, *, root_cause: bool = False, limit: int = 300) -> str:
    """One console line that keeps the detail lines a message indents under its first line.

    ``INVALID_ARGUMENT : Got invalid dimensions for input: x for the following
    indices\\n index: 0 Got: 1 Expected: 2\\n Please fix ...`` becomes one line
    with ``index: 0 Got: 1 Expected: 2`` in it; generic advice lines are dropped.
    """
    text = error if isinstance(error, str) else full_message(error, root_cause=root_cause)
    lines = _ANSI.sub("", text).strip().splitlines()
    if not lines:
        return ""
    parts = [lines[0].strip()]
    for raw in lines[1:]:
        detail = raw.strip()
        if not raw[:1].isspace() or not detail:
            break  # a new paragraph (a trace, a hint block) is not part of the first statement
        if detail.lower().startswith("please "):
            continue
        parts.append(detail)
    line = " ".join(parts)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class VariantSkipped(OptpipeError):
    """A precision pass found nothing to lower (e.g. no Conv/Gemm/MatMul for INT8).

    Raised instead of passing the FP32 model on under an ``int8`` label: the
    builder records the variant as ``skipped`` with ``reason`` and runs no
    engine, validation or benchmark for it. ``metrics`` keeps what the pass
    found so the report can show it. Defined here, below the passes, because the pipeline and the pass
    cache replay a cached skip (``PassResult.skipped``) by raising it again.
    """

    exit_code = EXIT_OK

    def __init__(self, reason: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics or {})

"""Every number and environment variable optpipe reads, checked where it enters, by one set of rules.

Why: click's ``FloatRange(min=0)`` lets ``nan`` and ``inf`` through (no comparison with NaN is
true), so ``--max-accuracy-drop nan`` ran a whole build and then failed writing the manifest
(JSON has no NaN); ``IntRange`` turned a config file's ``threads = 2.7`` into 2 and
``threads = inf`` into an OverflowError traceback; ``OPTPIPE_CACHE_MAX_SIZE=abc`` was read
after the build had published. The same types check the command line and config files (a config
value goes through the click parameter's own ``convert``); :func:`check_environment` checks the
environment before any build work, naming the variable in its error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import click

from optpipe.core.errors import UserInputError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``10GB``, ``500M``, ``1.5GiB``, ``2048`` (bytes) -> bytes; a UserInputError otherwise."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UserInputError(f"'{text}' is not a size: expected a number with an optional unit "
                             "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 10GB")
    return int(float(match.group(1)) * _UNITS[unit])


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (a number that is not a number)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class WholeIntRange(click.IntRange):
    """``click.IntRange`` that refuses a fractional or infinite number (a config file's ``threads = 2.7``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not (math.isfinite(value)
                                                                          and value.is_integer())):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return super().convert(value, param, ctx)


def finite_number(value: Any, what: str, *, low: float | None = 0.0, high: float | None = None) -> float:
    """``value`` as a finite float in [low, high], else a one-line UserInputError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserInputError(f"{what}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UserInputError(f"{what}: expected a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"in [{low:g}, {high:g}]" if low is not None and high is not None else f">= {low:g}"
        raise UserInputError(f"{what}: expected a number {bounds}, got {value!r}")
    return number


def _reduce_range(text: str) -> None:
    if text not in ("0", "1"):
        raise ValueError("expected 0 or 1")


def _cache_max_size(text: str) -> None:
    if text.lower() in ("0", "none", "off", "unlimited"):
        return
    try:
        parse_size(text)
    except UserInputError as error:
        raise ValueError(str(error)) from None


def _ray_cpus(text: str) -> None:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError("expected a whole number of CPUs, 1 or more")


def _directory(text: str) -> None:
    path = os.path.expanduser(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError("it exists and is not a directory")


#: The variables optpipe reads, with their check (the value is stripped; an empty value means unset).
ENVIRONMENT_CHECKS: Mapping[str, Callable[[str], None]] = {
    "OPTPIPE_INT8_REDUCE_RANGE": _reduce_range,
    "OPTPIPE_CACHE_MAX_SIZE": _cache_max_size,
    "OPTPIPE_RAY_NUM_CPUS": _ray_cpus,
    "OPTPIPE_CACHE_DIR": _directory,
}


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Every optpipe environment variable that is set, checked before any build work (exit 2, named)."""
    environ = os.environ if environ is None else environ
    for name, check in ENVIRONMENT_CHECKS.items():
        text = environ.get(name)
        if text is None or not text.strip():
            continue
        try:
            check(text.strip())
        except ValueError as error:
            raise UserInputError(f"environment variable {name}={text!r}: {error}") from None

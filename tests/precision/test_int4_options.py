"""Weight-only INT4's options (optpipe.precision.int4_options): refused in one line, and light to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from optpipe.core.errors import UserInputError
from optpipe.precision.int4_options import Int4Options


def test_bad_options_are_refused_in_one_line() -> None:
    with pytest.raises(UserInputError, match="block_size must be one of 16, 32, 64, 128, got 8"):
        Int4Options(block_size=8).check()
    with pytest.raises(UserInputError, match="accuracy_level must be one of"):
        Int4Options(accuracy_level=7).check()
    with pytest.raises(UserInputError, match="algorithm must be one of default, hqq"):
        Int4Options(algorithm="gptq").check()
    with pytest.raises(UserInputError, match="'hqq' quantizes MatMul weights only"):
        Int4Options(algorithm="hqq", embeddings=True).check()


def test_the_builder_imports_the_pass_without_onnx() -> None:
    """Option checking before a build stays light: the int4 pass's Config must not pull onnx in."""
    code = "import sys, optpipe.builder.pass_configs; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

"""The accuracy guard reports every round (nodes kept, current error) through the build's log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import optpipe

pytestmark = pytest.mark.slow  # every test here builds or exports a model

TOY = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "toy_models.py"


def test_guard_rounds_are_logged(tmp_path: Path) -> None:
    from conftest import load_file_module

    toy = load_file_module(TOY)
    lines: list[str] = []
    report = optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=tmp_path / "out", precisions=["int8"],
                           output_names=["logits"], benchmark=False, synthetic_calib=True, guard_max_keep=0.5,
                           tolerances={"*": {"min_cosine": 0.99999999}},  # unreachable: the guard runs rounds
                           log=lines.append)  # fmt: skip
    rounds = [line for line in lines if "int8 guard round" in line]
    guard = report.variants[0]["passes"]["int8"]["guard"]
    assert len(rounds) >= 2, lines
    pattern = re.compile(r"int8 guard round (\d+): (\d+) node\(s\) kept in higher precision, "
                         r"cosine [0-9.]+ \('logits'\), gate (passed|failed)")  # fmt: skip
    parsed = [pattern.search(line) for line in rounds]
    assert all(parsed), rounds
    assert [int(m.group(1)) for m in parsed if m] == list(range(1, len(rounds) + 1))
    assert int(parsed[0].group(2)) == 0 and int(parsed[-1].group(2)) >= 1  # type: ignore[union-attr]
    assert guard is not None

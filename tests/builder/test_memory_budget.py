"""optpipe.builder.memory_budget and --max-rss: the estimate from the weights, the refusal before any work,
the chunked calibration a tight limit asks for, and report.json's memory per pass and per build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from optpipe.builder.memory_budget import (
    CHUNKED_CALIB_BYTES,
    FIXED_BYTES,
    WEIGHT_COPIES,
    estimate_peak,
    plan_memory,
    weight_bytes,
)
from optpipe.builder.options import parse_build_options
from optpipe.cli.main import main
from optpipe.core.errors import UserInputError

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
DIGITS = f"{SAMPLES / 'digits_cnn.py'}:DigitsCNN"
DIGITS_WEIGHTS = str(SAMPLES / "weights" / "digits_cnn.safetensors")


class _Tied(torch.nn.Module):
    """An embedding and a head that share one weight (counted once), plus an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 16)
        self.head = torch.nn.Linear(16, 100, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.zeros(10, dtype=torch.int64))
        self.half = torch.nn.Linear(4, 4).half()  # FP16 weights count as FP32: the graph is exported in FP32


def test_weight_bytes_counts_fp32_size_shared_tensors_once() -> None:
    assert weight_bytes(_Tied()) == 100 * 16 * 4 + 10 * 8 + (16 + 4) * 4
    assert weight_bytes(object()) == 0  # not a module: nothing known


def test_estimate_is_the_issue_rule() -> None:
    weights = 440_000_000  # BERT-base
    assert estimate_peak(weights) == WEIGHT_COPIES * weights + FIXED_BYTES == 2_820_000_000
    assert estimate_peak(weights, chunked=True) < estimate_peak(weights)


def test_a_limit_below_the_estimate_is_refused_with_one_line() -> None:
    with pytest.raises(UserInputError) as caught:
        plan_memory(torch.nn.Linear(1000, 1000), 100_000_000, calibrates=True)
    message = str(caught.value)
    assert "\n" not in message and "--max-rss is 0.10 GB" in message and "nothing was built" in message


def test_a_limit_that_fits_only_chunked_chunks_calibration_and_only_when_it_calibrates() -> None:
    model = torch.nn.Linear(10, 10)
    between = (estimate_peak(0) + estimate_peak(0, chunked=True)) // 2
    plan = plan_memory(model, between, calibrates=True)
    assert plan.calib_bytes == CHUNKED_CALIB_BYTES and plan.calib_rows == 1
    assert plan.estimate == estimate_peak(weight_bytes(model), chunked=True) <= between
    with pytest.raises(UserInputError, match="--max-rss"):
        plan_memory(model, between, calibrates=False)  # nothing to chunk: the full estimate must fit
    roomy = plan_memory(model, 10**12, calibrates=True)
    assert roomy.calib_bytes is None and roomy.limit_source == "--max-rss"
    default = plan_memory(model, None, calibrates=True)  # the machine's available memory
    assert default.limit_source == "available memory" and default.limit is not None and default.limit > 0


@pytest.mark.parametrize("value, expected", [("6GB", 6_000_000_000), ("1.5GiB", 1.5 * 2**30), (10**9, 10**9),
                                             (None, None)])
def test_max_rss_parses_sizes(value: object, expected: object) -> None:
    assert parse_build_options(max_rss=value).max_rss == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["lots", "10 parsecs", "0", "512KB", True, 1.5])
def test_max_rss_refuses_what_is_not_a_size(value: object) -> None:
    with pytest.raises(UserInputError, match=r"--max-rss|not a size"):
        parse_build_options(max_rss=value)  # type: ignore[arg-type]


def test_cli_refuses_a_tiny_max_rss_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", DIGITS, "--out", str(out), "--max-rss", "50MB", "--no-benchmark"])
    assert result.exit_code == 2, result.output
    assert "--max-rss is 0.05 GB" in result.output and "Traceback" not in result.output
    assert not out.exists()  # refused before the staging directory was made


@pytest.mark.slow
def test_a_build_records_peak_rss_per_pass_and_chunks_calibration_under_a_tight_limit(tmp_path: Path) -> None:
    """A real int8 build under a limit that fits only chunked: it passes, calibrated one row per run, and
    report.json has every pass's wall time and peak RSS, the build's peak and the limit (also in report.html)."""
    out = tmp_path / "out"
    limit = str((estimate_peak(0) + estimate_peak(0, chunked=True)) // 2)  # bytes: the digits CNN weighs ~0
    result = CliRunner().invoke(main, ["build", DIGITS, "--weights", DIGITS_WEIGHTS, "--out", str(out),
                                       "--precision", "int8", "--no-benchmark", "--max-rss", limit])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    memory = report["memory"]
    assert memory["limit_source"] == "--max-rss" and memory["limit_mb"] > 0 and memory["calib_rows"] == 1
    assert 0 < memory["weights_mb"] < 5 and memory["estimate_mb"] <= memory["limit_mb"]
    assert memory["peak_rss_mb"] > 0 and memory["process_peak_rss_mb"] >= memory["peak_rss_mb"] * 0.99
    names = [p["name"] for p in report["passes"]]
    assert {"export", "simplify", "int8", "validate"} <= set(names)
    for record in report["passes"]:
        assert record["seconds"] >= 0 and 0 < record["peak_rss_mb"] <= memory["process_peak_rss_mb"] + 1
    html = (out / "report.html").read_text()
    assert "peak RSS (MiB)" in html and f"Build peak RSS {memory['peak_rss_mb']:.0f} MiB" in html

"""Unjudged is not passed (issue 17 item 5), end to end through the CLI, and the advice it prints works.

A classifier whose output keeps the exporter's default name (``output_0``) is found
to be class scores by its final Linear in the exported graph. Built with only the
example's 2 rows, its top-1 gate cannot judge: the result is UNJUDGED with exit 4 (not
0, as the old warning gave), ``--allow-unjudged`` accepts it, and following the printed
advice (``eval_data()`` in the model file) makes the gate judge and the build pass.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.core.errors import EXIT_OK, EXIT_UNJUDGED

MODEL = textwrap.dedent(
    '''
    import numpy as np
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU())
            self.head = nn.Linear(32, 10)
            with torch.no_grad():
                self.head.weight.mul_(20.0)  # confident: most rows decide

        def forward(self, x):
            return self.head(self.body(x))

    def _rows(n, seed):
        return np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32)

    def example_inputs():
        return (torch.from_numpy(_rows(2, 0)),)
    '''
)
EVAL_DATA = textwrap.dedent(
    '''
    def eval_data():
        return {"x": _rows(48, 1)}
    '''
)


def _build(tmp_path: Path, source: str, *flags: str) -> tuple[int, dict, str]:
    tmp_path.mkdir()
    model = tmp_path / "net.py"
    model.write_text(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", f"{model}:Net", "--out", str(out), "--precision", "fp16",
                                       "--no-benchmark", "--no-cache", *flags])
    return result.exit_code, json.loads((out / "report.json").read_text()), result.output


@pytest.mark.slow
def test_two_rows_are_unjudged_exit_4_allowed_with_the_flag_and_judged_when_the_advice_is_followed(
        tmp_path: Path) -> None:
    code, report, output = _build(tmp_path / "a", MODEL)
    assert report["build"]["output_kinds"] == {"output_0": "logits"}  # found by its final Linear
    assert code == EXIT_UNJUDGED, output
    assert report["result"] == "UNJUDGED" and report["exit_code"] == EXIT_UNJUDGED and not report["passed"]
    variant = report["variants"][0]
    assert variant["verdict"] == "unjudged" and not variant["failures"]
    assert any("top-1 agreement over decided rows cannot be judged" in line and "needs >= 20" in line
               for line in variant["unjudged"])
    assert "result: UNJUDGED (exit 4)" in output and "eval_data() in the model file" in output

    code, report, output = _build(tmp_path / "b", MODEL, "--allow-unjudged")
    assert code == EXIT_OK, output
    assert report["result"] == "PASSED" and report["variants"][0]["unjudged"]  # accepted, still listed
    assert "unjudged gates allowed" in output

    code, report, output = _build(tmp_path / "c", MODEL + EVAL_DATA)  # the advice, followed
    assert code == EXIT_OK, output
    record = report["variants"][0]["parity"]["outputs"]["output_0"]
    assert record["judged"] and all(gate["judged"] for gate in record["gates"])
    assert record["gates"][0]["count"] >= 20 and report["result"] == "PASSED"


def test_config_file_key_reaches_the_build_as_the_flag_does(tmp_path: Path) -> None:
    from optpipe.cli.build import build
    from optpipe.matrix.config_file import load_build_file

    config = tmp_path / "optpipe.toml"
    config.write_text('require_judged = false\n\n[[model]]\nname = "net"\nspec = "net.py:Net"\nout = "o"\n')
    ctx = build.make_context("build", ["-c", str(config)])
    (entry,) = load_build_file(config, build, ctx).models
    assert entry.params["require_judged"] is False

"""The model file's eval_data(): inputs-only and labelled results are held-out rows; anything else one warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.model.file_data import ACCEPTED_FORMS, interpret_eval_data

ONE_INPUT = '''
import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def example_inputs():
    return (torch.randn(2, 4),)


def eval_data():
    {body}
'''

TWO_INPUTS = '''
import numpy as np
import torch
from torch import nn


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return (self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def example_inputs():
    return (torch.randint(0, 10, (2, 5)), torch.ones(2, 5, dtype=torch.int64))


def eval_data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 10, size=(40, 5)), np.ones((40, 5), dtype=np.int64)
'''


def _build(tmp_path: Path, source: str, spec_name: str) -> tuple[int, str, dict]:
    model_file = tmp_path / "model.py"
    model_file.write_text(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", f"{model_file}:{spec_name}", "--out", str(out), "--no-benchmark",
                                       "--no-cache"], catch_exceptions=False)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result.exit_code, result.output, report


def _heldout_rows(report: dict) -> int:
    cases = report["variants"][0]["parity"]["cases"]
    return sum(c["batch"] for c in cases if c["name"].startswith("heldout"))


@pytest.mark.slow
def test_inputs_only_dict_is_used_as_unlabelled_rows(tmp_path: Path) -> None:
    # Before: `inputs, labels = eval_data()` on a one-key dict stopped the build (exit 2, not enough values).
    body = 'return {"x": np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)}'
    code, output, report = _build(tmp_path, ONE_INPUT.format(body=body), "Net")
    assert code == 0, output
    assert _heldout_rows(report) == 40
    assert not [w for w in report["warnings"] if "eval_data" in w]


@pytest.mark.slow
def test_inputs_only_tuple_in_forward_order_is_not_ignored(tmp_path: Path) -> None:
    # Before: (input_ids, attention_mask) was read as (inputs, labels) and silently dropped.
    code, output, report = _build(tmp_path, TWO_INPUTS, "Pair")
    assert code == 0, output
    assert _heldout_rows(report) == 40
    assert report["accuracy"] is None if "accuracy" in report else True  # unlabelled: no task accuracy


@pytest.mark.slow
@pytest.mark.parametrize("body", ['return "not data"', "raise RuntimeError('needs a dataset path')",
                                  "return np.zeros((3, 7), np.float32)"])
def test_unusable_eval_data_is_one_warning_and_the_build_goes_on(tmp_path: Path, body: str) -> None:
    code, output, report = _build(tmp_path, ONE_INPUT.format(body=body), "Net")
    assert code == 0, output
    warnings = [w for w in report["warnings"] if "eval_data" in w]
    assert len(warnings) == 1 and ACCEPTED_FORMS in warnings[0]
    assert output.count("optpipe: warning: eval_data()") == 1 and "Traceback" not in output
    assert _heldout_rows(report) == 0


EXAMPLES = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}


def test_labelled_forms() -> None:
    ids, mask, labels = np.ones((8, 5), np.int64), np.ones((8, 5), np.int64), np.arange(8)
    for value in (({"ids": ids, "mask": mask}, labels), ((ids, mask), labels)):
        data = interpret_eval_data(value, EXAMPLES)
        assert data is not None and data.labels is not None and data.inputs["ids"].shape == (8, 5)


def test_bad_labels_keep_the_rows_unlabelled() -> None:
    data = interpret_eval_data(({"ids": np.ones((8, 5), np.int64), "mask": np.ones((8, 5), np.int64)},
                                np.linspace(0, 1, 3)), EXAMPLES)
    assert data is not None and data.labels is None and data.inputs["mask"].shape == (8, 5)


@pytest.mark.parametrize("value", [
    {"ids": np.ones((8, 5), np.int64)},  # a missing input
    (np.ones((8, 5), np.int64), np.ones((7, 5), np.int64)),  # different row counts
    (np.ones((8, 6), np.int64), np.ones((8, 6), np.int64), np.arange(8)),  # three items for two inputs
    (np.ones((8, 5), np.float32), np.ones((8, 5), np.int64)),  # floats for integer ids
])
def test_unusable_forms(value: object) -> None:
    assert interpret_eval_data(value, EXAMPLES) is None

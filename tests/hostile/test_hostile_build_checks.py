"""Issue 21: the reference cache never fails a build, eval_data() NaN rows are a hint problem, `profile`
holds the line `verify` holds, verify judges report.json's tolerances by the flag's rules, and an MLflow
tracking URI that cannot work fails before the build, in one line and seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import MODELS
from test_hostile_inputs import assert_one_error_line, run_cli

M = f"{MODELS}:Mlp"
BUILD = ["build", M, "--input", "x:2x4", "--no-benchmark", "--threads", "1"]
OPTPIPE = str(Path(sys.executable).parent / "optpipe")


@pytest.mark.slow
@pytest.mark.parametrize("record", ["[]", "null"])
def test_a_corrupt_reference_cache_record_is_discarded_not_fatal(tmp_path: Path, record: str) -> None:
    """Two real processes: a model loaded twice in one process is not the same module for the cache key."""
    cache = tmp_path / "cache"

    def build(out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OPTPIPE, *BUILD, "--out", str(tmp_path / out), "--cache-dir", str(cache)],
                              capture_output=True, text=True, timeout=300)

    assert build("a").returncode == 0
    records = [p for p in cache.rglob("record.json") if '"torch-reference"' in p.read_text()]
    assert records, "the build stored no reference outputs"
    for path in records:
        path.write_text(record)
    run = build("b")
    assert run.returncode == 0, run.stderr  # before: exit 2, "the PyTorch model fails on the 'example' inputs"
    assert run.stderr.count("reference cache entry") == len(records) and "Traceback" not in run.stderr, run.stderr


NAN_MODEL = f'''
import sys

import numpy as np

sys.path.insert(0, {str(MODELS.parent)!r})
from hostile_models import Mlp as Net  # noqa: E402,F401


def eval_data():
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    return {{FORM}}
'''


@pytest.mark.slow
@pytest.mark.parametrize("form", ["(x, np.arange(40) % 3)", "x"], ids=["labelled", "inputs-only"])
def test_nan_rows_in_eval_data_are_dropped_with_one_warning(tmp_path: Path, form: str) -> None:
    model = tmp_path / "nan_eval.py"
    model.write_text(NAN_MODEL.replace("{FORM}", form))
    out = tmp_path / "out"
    code, output = run_cli("build", f"{model}:Net", "--input", "x:2x4", "--no-benchmark", "--out", str(out))
    assert code == 0, output  # before: exit 2 (inputs only: "the PyTorch model itself produces NaN/Inf")
    warnings = [line for line in output.splitlines() if line.startswith("optpipe: warning:") and "NaN" in line]
    assert len(warnings) == 1 and "eval_data()" in warnings[0] and "2 of 40 rows" in warnings[0], output
    assert json.loads((out / "report.json").read_text())["warnings"] == [warnings[0].split(": ", 2)[2]]


@pytest.mark.slow
def test_an_unreachable_mlflow_server_fails_before_the_build(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    out = tmp_path / "out"
    run = subprocess.run([OPTPIPE, *BUILD, "--out", str(out),
                          "--mlflow", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=90)
    assert run.returncode == 3, run.stderr  # before: the build, then 250 s of silent retries
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be reached" in lines[0], lines
    assert not out.exists()


@pytest.mark.slow
def test_an_sqlite_tracking_uri_at_a_directory_fails_at_once(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    out = tmp_path / "out"
    code, output = run_cli(*BUILD, "--out", str(out), "--mlflow", f"sqlite:///{tmp_path}")
    assert code == 2, output  # before: the build, then 106 s of silent retries
    assert_one_error_line(output, "is a directory")
    assert not out.exists()


def test_mlflow_local_store_inside_out_is_refused_before_work(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    out = tmp_path / "out"
    code, output = run_cli(*BUILD, "--out", str(out), "--mlflow", f"sqlite:///{out}/mlflow.db")
    assert code == 2, output  # before: the build, then MLflow wrote into (or failed on) the published --out
    assert_one_error_line(output, "inside the output directory")
    assert not out.exists()


@pytest.mark.slow
def test_a_large_eval_set_is_a_few_reference_cache_entries_with_progress(tmp_path: Path) -> None:
    import numpy as np

    rows = 60000
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((rows, 4)).astype(np.float32),
             labels=rng.integers(0, 3, rows))
    cache = tmp_path / "cache"
    code, output = run_cli(*BUILD, "--eval-data", str(tmp_path / "eval.npz"), "--out", str(tmp_path / "out"),
                        "--cache-dir", str(cache))
    assert code == 0, output
    entries = [p for p in cache.rglob("record.json") if '"torch-reference"' in p.read_text()]
    assert len(entries) <= 12, len(entries)  # before: one per 64 rows, 938 entries
    assert output.count("torch reference on the eval data:") == 3, output  # 3 full groups of 16384 rows

"""Provenance in report.json and manifest.json: files and their hashes, the call, times, git commit."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import optpipe
from optpipe.cli.main import main
from optpipe.report.provenance import git_record

TOY = Path(__file__).parents[1] / "fixtures" / "models" / "toy_models.py"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_cli_build_records_files_command_times_and_commit(
        tmp_path: Path, toy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    repo = tmp_path / "repo"
    repo.mkdir()
    model_file = repo / "net.py"
    shutil.copy(TOY, model_file)
    weights = repo / "net.pt"
    torch.save(toy.TinyNet().state_dict(), weights)
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "net.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "model")
    out = tmp_path / "out"
    args = ["build", f"{model_file}:TinyNet", "--weights", str(weights), "--out", str(out), "--no-benchmark",
            "--no-cache"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/optpipe", *args])  # what the console script sees
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "report.json").read_text())["provenance"]
    assert provenance["invocation"].startswith("optpipe build ") and "--weights" in provenance["invocation"]
    assert provenance["weights"] == {"path": str(weights.resolve()), "sha256": _sha(weights)}
    assert provenance["model_source"] == {"path": str(model_file.resolve()), "sha256": _sha(model_file)}
    assert provenance["git"]["commit"] == _git(repo, "rev-parse", "HEAD") and provenance["git"]["dirty"] is False
    assert provenance["started_utc"] <= provenance["finished_utc"] and provenance["started_utc"].endswith("Z")
    assert provenance["optpipe_version"] == optpipe.__version__
    assert json.loads((out / "manifest.json").read_text())["provenance"] == provenance
    model_file.write_text(model_file.read_text() + "\n# edited\n")
    assert git_record(model_file).dirty is True  # an uncommitted edit is visible


@pytest.mark.slow
def test_api_build_records_the_call(tmp_path: Path, toy: ModuleType) -> None:
    report = optpipe.build(toy.TinyNet().eval(), toy.example_inputs(), out_dir=tmp_path / "api",
                           output_names=["logits"], benchmark=False, log=lambda m: None)
    provenance = report.provenance
    assert provenance is not None
    assert provenance["invocation"].startswith("optpipe.build(<TinyNet>, <example inputs>, out_dir=")
    assert "output_names=('logits',)" in provenance["invocation"] and "log=" not in provenance["invocation"]
    assert provenance["weights"] is None  # weights came with the module object
    assert provenance["model_source"]["path"] == str(TOY.resolve())


def test_no_git_repository_is_none(tmp_path: Path) -> None:
    lonely = tmp_path / "m.py"
    lonely.write_text("x = 1\n")
    assert git_record(lonely) is None

"""Every user-named output path (issue 21): written through symlinks and into devices and FIFOs, never
replacing them; refused before any work when it is an input of the build or inside --out or the cache;
a log that cannot be written is one warning; a FIFO at either end is a bounded wait, never a hang.

System devices are never at risk here: they are reached through symlinks in tmp (the old code replaced
the *link*), and each test asserts they are still character devices afterwards.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from corpus import MODELS
from test_hostile_inputs import assert_one_error_line, run_cli

M = f"{MODELS}:Mlp"
BUILD = ["build", M, "--input", "x:2x4", "--no-benchmark", "--threads", "1"]
OPTPIPE = str(Path(sys.executable).parent / "optpipe")


def _is_char_device(path: str) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


@pytest.mark.slow
def test_junit_through_a_symlink_to_dev_null_keeps_link_and_device(tmp_path: Path) -> None:
    link = tmp_path / "junit.xml"
    link.symlink_to("/dev/null")
    code, output = run_cli(*BUILD, "--out", str(tmp_path / "out"), "--junit", str(link))
    assert code == 0, output
    assert link.is_symlink() and os.readlink(link) == "/dev/null"  # before: replaced by a regular file
    assert _is_char_device("/dev/null")


@pytest.mark.slow
def test_junit_into_a_fifo_is_written_to_its_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "junit.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, output = run_cli(*BUILD, "--out", str(tmp_path / "out"), "--junit", str(fifo))
    assert code == 0, output
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # before: renamed over, the reader waited forever
    assert received and b"<testsuites" in received[0]


@pytest.mark.slow
def test_a_log_file_on_a_full_device_is_one_warning(tmp_path: Path) -> None:
    full = tmp_path / "build.log"
    full.symlink_to("/dev/full")
    code, output = run_cli("--log-file", str(full), *BUILD, "--out", str(tmp_path / "out"))
    assert code == 0, output
    assert "Traceback" not in output and "Logging error" not in output, output  # before: one per record
    assert output.count("cannot write --log-file") == 1, output
    assert full.is_symlink() and _is_char_device("/dev/full")


@pytest.mark.slow
def test_a_log_file_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "deep" / "build.log"
    code, output = run_cli("--log-file", str(log), *BUILD, "--out", str(tmp_path / "out"))
    assert code == 0, output  # before: FileNotFoundError traceback
    assert "optpipe: building" in log.read_text()


@pytest.mark.slow
def test_a_log_fifo_nobody_reads_does_not_hang(tmp_path: Path) -> None:
    """A real process (a hang must end the test, not the suite): one warning after the bounded wait."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    run = subprocess.run([OPTPIPE, "--log-file", str(fifo), *BUILD, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("cannot write --log-file") == 1 and "Traceback" not in run.stderr, run.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.slow
def test_a_config_fifo_nobody_writes_is_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "optpipe.toml"
    os.mkfifo(fifo)
    run = subprocess.run([OPTPIPE, "build", "-c", str(fifo)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr  # before: blocked in open() forever
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no process writes to this FIFO" in lines[0], lines


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A private copy of the model file (the refused writes must not be able to touch the real one)."""
    copy = tmp_path / "models.py"
    copy.write_bytes(MODELS.read_bytes())
    return copy


REFUSED = [
    # (id, extra arguments, fragment of the error); {out}, {cache}, {model}, {weights} are filled in
    ("junit-is-the-report", ["--junit", "{out}/report.json"], "inside the output directory"),
    ("log-file-is-the-model", ["--log-file", "{model}"], "input of this build"),
    ("log-file-inside-out", ["--log-file", "{out}/build-notes.log"], "inside the output directory"),
    ("calib-cache-is-the-weights", ["--weights", "{weights}", "--precision", "int8", "--calib-cache", "{weights}"],
     "input of this build"),
    ("junit-inside-the-cache", ["--cache-dir", "{cache}", "--junit", "{cache}/junit.xml"], "inside the cache"),
    ("out-is-the-cache", ["--cache-dir", "{cache}", "--out", "{cache}/../cache"], "overlap"),
]


@pytest.mark.parametrize(("extra", "fragment"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_an_output_that_is_an_input_or_inside_out_or_cache_is_refused_before_work(
        tmp_path: Path, model_copy: Path, extra: list[str], fragment: str) -> None:
    import torch

    weights = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), weights)
    names = {"out": str(tmp_path / "out"), "cache": str(tmp_path / "cache"), "model": str(model_copy),
             "weights": str(weights)}
    before = {p: p.read_bytes() for p in (model_copy, weights)}
    args = [a.format(**names) for a in extra]
    log = [args.pop(0), args.pop(0)] if args[0] == "--log-file" else []
    out = [] if "--out" in args else ["--out", names["out"]]
    code, output = run_cli(*log, "build", f"{model_copy}:Mlp", "--input", "x:2x4", "--no-benchmark", *out, *args)
    assert code == 2, output
    assert_one_error_line(output, fragment)
    assert not (tmp_path / "out").exists()  # refused before any work
    assert all(p.read_bytes() == data for p, data in before.items())  # the inputs are untouched


@pytest.mark.slow
def test_a_config_junit_under_a_regular_file_fails_before_building(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    config = tmp_path / "optpipe.toml"
    config.write_text(f'junit = "afile/junit.xml"\n[[model]]\nspec = "{MODELS}:Mlp"\ninput = ["x:2x4"]\n'
                      'benchmark = false\nout = "out"\n')
    code, output = run_cli("build", "-c", str(config))
    assert code == 2, output  # before: FileExistsError traceback after publishing
    assert_one_error_line(output, "afile")
    assert not (tmp_path / "out").exists()


def test_a_config_error_is_not_hidden_by_an_unwritable_junit(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    config = tmp_path / "optpipe.toml"
    config.write_text(f'junit = "afile/junit.xml"\n[[model]]\nspec = "{MODELS}:Mlp"\nbogus = 1\nout = "out"\n')
    code, output = run_cli("build", "-c", str(config))
    assert code == 2, output
    assert_one_error_line(output, "unknown key 'bogus'")


def test_two_outs_spelled_differently_are_one_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = tmp_path / "optpipe.toml"
    model = f'spec = "{MODELS}:Mlp"\ninput = ["x:2x4"]\nbenchmark = false\n'
    config.write_text(f'[[model]]\nname = "a"\n{model}out = "outd"\n[[model]]\nname = "b"\n{model}'
                      'out = "./sub/../outd"\n')
    code, output = run_cli("build", "-c", str(config))
    assert code == 2, output  # before: both built, then "another optpipe build" was blamed
    assert_one_error_line(output, "is also the output of a")
    assert not (tmp_path / "outd").exists()


@pytest.mark.slow
def test_an_unknown_model_among_20000_is_one_short_line(tmp_path: Path) -> None:
    config = tmp_path / "optpipe.toml"
    config.write_text("".join(f'[[model]]\nname = "m{i}"\nspec = "m.py:M"\nout = "o{i}"\n' for i in range(20000)))
    code, output = run_cli("build", "-c", str(config), "nosuchmodel")
    assert code == 2, output
    assert_one_error_line(output, "no model named 'nosuchmodel'")
    assert len(output) < 1000 and "and 19980 more" in output  # before: a 149,000-character line


@pytest.mark.slow
def test_a_junit_on_a_full_device_is_one_error_after_the_summary(tmp_path: Path) -> None:
    """The artifact side of a full disk: the published build's summary, then ONE clear error (exit 2)."""
    full = tmp_path / "junit.xml"
    full.symlink_to("/dev/full")
    code, output = run_cli(*BUILD, "--out", str(tmp_path / "out"), "--junit", str(full))
    assert code == 2, output  # before: exit 0, the link replaced by a regular file
    assert "result: PASSED (exit 0)" in output, output  # the published build's summary is printed
    assert_one_error_line(output, "No space left on device")
    assert full.is_symlink() and _is_char_device("/dev/full")

"""SIGKILL a real ``optpipe build`` at several points, publishing included; then --out must be
absent, the old build intact, or the complete new build, and a rebuild and ``optpipe verify`` pass.

The build is paused at a point with the ``OPTPIPE_TEST_PAUSE=POINT:DIR`` hook of
:mod:`optpipe.builder.out_dir` (it creates ``DIR/POINT.reached`` and waits), then killed. Two racing
builds to one --out use the same hook: exactly one is published, the other exits 2 saying why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import MODELS

from optpipe.builder.out_dir import LOCK_PREFIX, PAUSE_ENV, STAGING_PREFIX
from optpipe.cli.main import main

pytestmark = pytest.mark.slow  # every test here builds or exports a model

BUILD = ["build", f"{MODELS}:Mlp", "--input", "x:2x4", "--no-benchmark", "--threads", "1"]


def _start(out: Path, flags: Path, point: str | None, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if point:
        env[PAUSE_ENV] = f"{point}:{flags}"
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "optpipe"), *BUILD, "--out", str(out), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _wait_for(flag: Path, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the build ended (exit {process.returncode}) before {flag.name}:\n{output}")
        assert time.monotonic() < deadline, f"{flag.name} never reached"
        time.sleep(0.05)


def _verify(out: Path) -> int:
    return CliRunner().invoke(main, ["verify", str(out)]).exit_code


@pytest.fixture(scope="module")
def old_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("old") / "out"
    result = CliRunner().invoke(main, [*BUILD, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("point", "with_old", "expected", "rebuild"),
    [
        ("staged", False, "absent", False),  # mid-build, no earlier build
        ("before-publish", True, "old", False),  # staging complete, not yet published
        ("publish-locked", True, "old", True),  # holding the publishing lock: a stale lock is left behind
        ("publish-swapped", True, "new", True),  # new build in place, the old one not yet deleted
    ],
)
def test_sigkill_leaves_absent_old_or_new_and_a_rebuild_verifies(
    tmp_path: Path, old_build: Path, point: str, with_old: bool, expected: str, rebuild: bool
) -> None:
    """(The rebuild runs after the two publishing kills only, to keep the suite fast.)"""
    import shutil

    out = tmp_path / "out"
    if with_old:
        shutil.copytree(old_build, out)
    old_manifest = (out / "manifest.json").read_bytes() if with_old else None
    flags = tmp_path / "flags"
    flags.mkdir()
    process = _start(out, flags, point, "--overwrite")
    _wait_for(flags / f"{point}.reached", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    if expected == "absent":
        assert not out.exists()
    elif expected == "old":
        assert (out / "manifest.json").read_bytes() == old_manifest
        assert _verify(out) == 0
    else:
        assert (out / "manifest.json").read_bytes() != old_manifest
        assert _verify(out) == 0  # the complete new build

    if not rebuild:
        return
    # The killed build's leftovers do not block the next one (a dead process's lock is taken over).
    rebuilt = CliRunner().invoke(main, [*BUILD, "--out", str(out), "--overwrite"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert _verify(out) == 0
    assert not (tmp_path / f"{LOCK_PREFIX}out").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(leftovers) <= 1  # the killed build's staging, cleaned by a build a day later


def test_two_builds_racing_for_one_out_exactly_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = tmp_path / "flags"
    flags.mkdir()
    first = _start(out, flags, "before-publish", "--output-names", "first")
    _wait_for(flags / "before-publish.reached", first)  # A is done building and about to publish
    second = CliRunner().invoke(main, [*BUILD, "--out", str(out), "--output-names", "second"])
    assert second.exit_code == 0, second.output  # B started later and published first
    (flags / "before-publish.release").write_text("")
    output = first.communicate(timeout=120)[0].decode()
    assert first.returncode == 2, output
    assert "changed while this build ran" in output and "Traceback" not in output
    assert '"second"' in (out / "report.json").read_text()  # B's build, untouched by A
    assert _verify(out) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((STAGING_PREFIX, LOCK_PREFIX))]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full (every write: ENOSPC)")
@pytest.mark.parametrize("raised", ["oserror", "runtime-text"])
def test_a_full_disk_in_a_pass_exits_3_names_the_pass_and_keeps_the_old_build(
    tmp_path: Path, old_build: Path, monkeypatch: pytest.MonkeyPatch, raised: str
) -> None:
    """The pass's write fails with the kernel's real ENOSPC (``/dev/full``), as itself or re-raised as text by a
    library (ONNX Runtime and protobuf do that); the build said exit 2 (bad input) before."""
    import shutil

    from optpipe.passes.simplify import SimplifyOnnx

    def full_disk(self: SimplifyOnnx, *args: object) -> None:
        try:
            with open("/dev/full", "wb") as sink:
                sink.write(b"x" * 8192)
                sink.flush()
        except OSError as error:
            if raised == "oserror":
                raise
            raise RuntimeError(f"SaveModel failed: {error.strerror}") from None

    monkeypatch.setattr(SimplifyOnnx, "run", full_disk)
    out = tmp_path / "out"
    shutil.copytree(old_build, out)
    old_manifest = (out / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, [*BUILD, "--out", str(out), "--overwrite", "--no-cache"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("optpipe: error:")]
    assert len(errors) == 1 and "in pass 'simplify'" in errors[0], result.output
    assert "no space left on device" in errors[0].lower() and "Traceback" not in result.output
    assert (out / "manifest.json").read_bytes() == old_manifest
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_an_ordinary_pass_failure_is_not_called_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin: a pass that fails for another reason keeps its own exit code and message (no 'free some space')."""
    from optpipe.passes.simplify import SimplifyOnnx

    def broken(self: SimplifyOnnx, *args: object) -> None:
        raise ValueError("the graph has a cycle")

    monkeypatch.setattr(SimplifyOnnx, "run", broken)
    result = CliRunner().invoke(main, [*BUILD, "--out", str(tmp_path / "out"), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert "the graph has a cycle" in result.output and "free some space" not in result.output

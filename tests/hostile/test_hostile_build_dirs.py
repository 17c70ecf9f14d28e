"""Tampered build directories, --overwrite targets, a poisoned cache, stale staging and file modes.

Everything runs through the real CLI (``optpipe build`` / ``optpipe verify``) or the real
module functions; each test names the issue-10 case it holds to.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import MODELS
from test_hostile_inputs import assert_one_error_line

from optpipe.builder.out_dir import (
    LOCK_PREFIX,
    STAGING_MARKER,
    STAGING_PREFIX,
    check_out_dir,
    clean_stale_staging,
    make_staging,
    publish,
    publish_lock,
)
from optpipe.cli.main import main
from optpipe.core.errors import UserInputError

M = f"{MODELS}:Mlp"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real fp32 build, copied by each test that tampers with it."""
    out = tmp_path_factory.mktemp("built") / "out"
    code, output = _cli("build", M, "--input", "x:2x4", "--dynamic", "batch=1:4:8", "--out", str(out),
                        "--no-benchmark")
    assert code == 0, output
    return out


@pytest.fixture
def build_copy(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "build"
    shutil.copytree(built, copy, symlinks=True)
    return copy


@pytest.mark.slow
def test_an_untouched_build_verifies(build_copy: Path) -> None:
    code, output = _cli("verify", str(build_copy))
    assert code == 0, output


# --- case 9: the manifest protects itself ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("edit", ["dtype", "version", "hash-removed"])
def test_an_edited_manifest_fails_verify(build_copy: Path, edit: str) -> None:
    path = build_copy / "manifest.json"
    if edit == "dtype":
        path.write_text(path.read_text().replace('"float32"', '"float22"'))
    elif edit == "version":
        data = json.loads(path.read_text())
        data["packages"]["torch"] = "1.0.0"
        path.write_text(json.dumps(data, indent=2))
    else:
        data = json.loads(path.read_text())
        del data["manifest_sha256"]
        path.write_text(json.dumps(data))
    code, output = _cli("verify", str(build_copy), "--no-parity")
    assert code == 1, output
    assert "manifest.json" in output and ("was edited" in output or "no manifest_sha256" in output), output


# --- case 8: golden data that numpy cannot read is named ---------------------------------------

@pytest.mark.slow
def test_a_flipped_byte_in_golden_data_names_the_file(build_copy: Path) -> None:
    golden = build_copy / "golden" / "example.npz"
    data = bytearray(golden.read_bytes())
    data[len(data) // 2] ^= 0xFF
    golden.write_bytes(bytes(data))
    code, output = _cli("verify", str(build_copy))
    assert code == 1, output
    assert "changed file: golden/example.npz" in output and "Traceback" not in output


@pytest.mark.slow
def test_an_extra_garbage_golden_file_is_named(build_copy: Path) -> None:
    (build_copy / "golden" / "zzz.npz").write_bytes(b"not an npz")
    code, output = _cli("verify", str(build_copy))
    assert code == 1, output
    assert "zzz.npz" in output and "cannot be read" in output and "Traceback" not in output


@pytest.mark.slow
def test_a_truncated_golden_file_is_named(build_copy: Path) -> None:
    golden = build_copy / "golden" / "example.npz"
    golden.write_bytes(golden.read_bytes()[:100])
    code, output = _cli("verify", str(build_copy))
    assert code == 1 and "golden/example.npz" in output and "Traceback" not in output, output


# --- case 10: verify rejects artifacts that are symlinks ---------------------------------------

@pytest.mark.slow
def test_an_artifact_symlinked_to_a_copy_outside_fails(build_copy: Path, tmp_path: Path) -> None:
    artifact = next(build_copy.glob("fp32/*.onnx"))
    outside = tmp_path / "outside.onnx"
    shutil.copy(artifact, outside)  # identical bytes: only the link gives it away
    artifact.unlink()
    artifact.symlink_to(outside)
    code, output = _cli("verify", str(build_copy), "--no-parity")
    assert code == 1, output
    assert "symbolic link" in output


# --- case 2: --overwrite replaces only optpipe builds -------------------------------------------

def test_overwrite_refuses_a_project_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(MODELS, project / "model.py")
    (project / "README.md").write_text("my project")
    monkeypatch.chdir(project)
    code, output = _cli("build", "model.py:Mlp", "--input", "x:2x4", "--out", ".", "--overwrite", "--no-benchmark")
    assert code == 2, output
    assert "not an optpipe build directory" in output
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "model.py"]


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_build(build_copy: Path) -> None:
    before = (build_copy / "manifest.json").read_bytes()
    code, output = _cli("build", M, "--input", "x:2x4", "--out", str(build_copy), "--overwrite", "--no-benchmark")
    assert code == 0, output
    assert (build_copy / "manifest.json").read_bytes() != before
    assert not [p for p in build_copy.parent.iterdir() if p.name.startswith((STAGING_PREFIX, LOCK_PREFIX))]
    assert _cli("verify", str(build_copy))[0] == 0


@pytest.mark.slow
def test_a_symlinked_out_is_judged_and_replaced_as_its_target(build_copy: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(build_copy)
    code, output = _cli("build", M, "--input", "x:2x4", "--out", str(link), "--overwrite", "--no-benchmark")
    assert code == 0, output
    assert link.is_symlink() and link.resolve() == build_copy.resolve()
    assert _cli("verify", str(link))[0] == 0
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("mine")
    link2 = tmp_path / "link2"
    link2.symlink_to(project)
    with pytest.raises(UserInputError, match="not an optpipe build directory"):
        check_out_dir(link2, overwrite=True)


# --- case 4: two publishers, exactly one wins ---------------------------------------------------

def test_a_build_that_finds_out_changed_is_not_published(tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen = check_out_dir(out, overwrite=False)  # absent when "build A" started
    staging_a = make_staging(out)
    (staging_a / "manifest.json").write_text(json.dumps({"schema": "optpipe.manifest/1", "by": "A"}))
    staging_b = make_staging(out)
    (staging_b / "manifest.json").write_text(json.dumps({"schema": "optpipe.manifest/1", "by": "B"}))
    publish(staging_b, out, check_out_dir(out, overwrite=False))  # "build B" finishes first
    with pytest.raises(UserInputError, match="changed while this build ran"):
        publish(staging_a, out, seen)
    assert json.loads((out / "manifest.json").read_text())["by"] == "B"


def test_a_publisher_holding_the_lock_wins(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"{LOCK_PREFIX}out").write_text(f"{holder.pid}\n")
        with pytest.raises(UserInputError, match=f"pid {holder.pid}\\) is publishing"), publish_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with publish_lock(out):  # its process is gone: a stale lock is taken over
        assert (tmp_path / f"{LOCK_PREFIX}out").read_text().strip() == str(os.getpid())
    assert not (tmp_path / f"{LOCK_PREFIX}out").exists()


# --- case 10: stale staging directories, only optpipe's ----------------------------------------

def test_stale_staging_is_cleaned_only_when_optpipe_made_it(tmp_path: Path) -> None:
    day_ago = time.time() - 2 * 24 * 3600

    def staging(name: str, marker: bool, old: bool) -> Path:
        path = tmp_path / f"{STAGING_PREFIX}{name}"
        path.mkdir()
        (path / "model.onnx").write_text("x")
        if marker:
            (path / STAGING_MARKER).write_text("1")
        if old:
            os.utime(path, (day_ago, day_ago))
        return path

    killed = staging("out-killed", marker=True, old=True)
    fresh = staging("out-running", marker=True, old=False)
    foreign = staging("somebody-elses", marker=False, old=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.utime(target, (day_ago, day_ago))
    link = tmp_path / f"{STAGING_PREFIX}link"
    link.symlink_to(target)
    make_staging(tmp_path / "out")  # cleans as it starts
    assert not killed.exists()
    assert fresh.exists() and foreign.exists() and link.is_symlink() and target.exists()
    assert clean_stale_staging(tmp_path) == []


# --- case 10: INT8 files honour the umask --------------------------------------------------------

def test_int8_model_and_calibration_cache_files_honour_the_umask(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from optpipe.precision.calib_cache import CacheKey, save_ranges
    from optpipe.precision.onnx_graph import save_atomic

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    old = os.umask(0o022)
    try:
        save_atomic(helper.make_model(graph), tmp_path / "model.onnx")
        save_ranges(tmp_path / "calib.json", CacheKey("m", "d", "minmax"), {"x": (0.0, 1.0)})
    finally:
        os.umask(old)
    assert onnx.load(str(tmp_path / "model.onnx")).graph.node[0].op_type == "Relu"
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "calib.json").stat().st_mode & 0o777 == 0o644


# --- case 3: the cache never follows a symlink out of itself -------------------------------------

@pytest.mark.slow
def test_a_symlinked_cache_tmp_is_not_cleaned_through(tmp_path: Path) -> None:
    from optpipe.cache.store import CACHE_FORMAT

    victim = tmp_path / "victim"
    victim.mkdir()
    precious = victim / "precious.txt"
    precious.write_text("not optpipe's")
    old = time.time() - 3 * 24 * 3600
    os.utime(precious, (old, old))
    cache = tmp_path / "cache"
    base = cache / f"v{CACHE_FORMAT}"
    base.mkdir(parents=True)
    (base / "tmp").symlink_to(victim)
    code, output = _cli("build", M, "--input", "x:2x4", "--out", str(tmp_path / "out"), "--no-benchmark",
                        "--cache-dir", str(cache))
    assert code == 0, output
    assert precious.read_text() == "not optpipe's"
    assert "symbolic link" in output  # the cache says why it was not used


@pytest.mark.slow
def test_a_symlinked_cache_entry_is_corrupt_and_its_target_untouched(tmp_path: Path) -> None:
    from optpipe.cache.store import iter_entries

    cache = tmp_path / "cache"
    args = ["build", M, "--input", "x:2x4", "--no-benchmark", "--cache-dir", str(cache)]
    assert _cli(*args, "--out", str(tmp_path / "a"))[0] == 0
    entries = list(iter_entries(cache))
    assert entries
    outside = tmp_path / "outside-entries"
    outside.mkdir()
    for entry in entries:
        copy = outside / entry.name
        shutil.copytree(entry, copy)
        shutil.rmtree(entry)
        entry.symlink_to(copy)
    code, output = _cli(*args, "--out", str(tmp_path / "b"))
    assert code == 0, output
    assert "symbolic link" in output and "discarded it and rebuilt" in output
    assert sorted(p.name for p in outside.iterdir()) == sorted(e.name for e in entries)  # never deleted
    assert _cli("verify", str(tmp_path / "b"))[0] == 0


# --- issue 21: profile holds verify's line; verify judges report.json's tolerances like --tolerance ---

@pytest.mark.slow
def test_profile_of_a_build_whose_engine_was_deleted_is_one_line(build_copy: Path) -> None:
    report = json.loads((build_copy / "report.json").read_text())
    (build_copy / report["variants"][0]["artifact"]).unlink()
    code, output = _cli("profile", str(build_copy))
    assert code == 2, output  # before: an ONNX Runtime traceback, exit 1
    assert_one_error_line(output, "does not match its manifest")


@pytest.mark.slow
def test_profile_does_not_follow_a_symlinked_golden_outside_the_build(build_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(str(build_copy / "golden"), outside)
    (build_copy / "golden").symlink_to(outside, target_is_directory=True)
    code, output = _cli("profile", str(build_copy))
    assert code == 2, output  # before: profiled the files outside DIR, exit 0
    assert_one_error_line(output, "does not match its manifest")


@pytest.mark.slow
def test_verify_judges_report_tolerances_by_the_flag_rules(build_copy: Path) -> None:
    path = build_copy / "report.json"
    report = json.loads(path.read_text())
    output_name = report["build"]["outputs"][0]
    report["build"]["tolerances"] = {output_name: {"atol": -1.0}}
    path.write_text(json.dumps(report))
    code, output = _cli("verify", str(build_copy))
    assert code == 1, output
    assert "tolerance" in output and "must be a number >= 0" in output, output
    assert "cannot run" not in output, output  # before: blamed the engine

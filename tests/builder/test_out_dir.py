"""Output directories are staged and swapped in whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optpipe.builder.out_dir import STAGING_PREFIX, check_out_dir, discard, make_staging, publish
from optpipe.core.errors import UserInputError


def test_existing_directory_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    check_out_dir(out, overwrite=False)  # empty is fine
    _fake_build(out)
    with pytest.raises(UserInputError, match="already exists; pass --overwrite"):
        check_out_dir(out, overwrite=False)
    check_out_dir(out, overwrite=True)


def _fake_build(directory: Path) -> None:
    """What check_out_dir takes for an earlier optpipe build: a manifest.json with optpipe's schema."""
    directory.mkdir(exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps({"schema": "optpipe.manifest/1", "files": []}))


def test_a_file_is_not_an_output_directory(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserInputError, match="is not a directory"):
        check_out_dir(target, overwrite=True)


def test_unwritable_location_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(UserInputError, match="cannot write the output directory"):
        make_staging(blocker / "out")


def test_publish_replaces_old_contents_entirely(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-artifact.onnx").write_text("old")
    _fake_build(out)
    staging = make_staging(out)
    assert staging.name.startswith(STAGING_PREFIX)
    (staging / "new-artifact.onnx").write_text("new")
    publish(staging, out, check_out_dir(out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["new-artifact.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old copy left behind


def test_discard_removes_staging(tmp_path: Path) -> None:
    staging = make_staging(tmp_path / "out")
    (staging / "half.onnx").write_text("partial")
    discard(staging)
    assert list(tmp_path.iterdir()) == []


def test_publish_into_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)
    check_out_dir(Path("."), overwrite=False)  # empty: allowed
    staging = make_staging(Path("."))
    (staging / "report.json").write_text("{}")
    inode = out.stat().st_ino
    publish(staging, Path("."))
    assert (out / "report.json").is_file()
    assert out.stat().st_ino == inode  # the directory itself is kept (a mount point, someone's cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]

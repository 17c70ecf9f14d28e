"""Cache care: info, prune by age and size, the per-build cap, and never evicting an entry in use."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from optpipe.cache.admin import cache_info, format_size, prune
from optpipe.cache.store import PassCache
from optpipe.cli.main import main
from optpipe.core.errors import UserInputError
from optpipe.core.value_checks import parse_size


def _build(toy: ModuleType, out: Path, cache: Path) -> Any:
    from optpipe.builder.run import build

    return build(toy.TinyNet().eval(), toy.example_inputs(), out_dir=out, overwrite=True, input_names=["x"],
                 output_names=["logits"], benchmark=False, exporter="torchscript",
                 instruments=[PassCache(cache)], log=lambda m: None)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, toy: ModuleType) -> Path:
    """A cache filled by one real build (export, simplify, engine-ort and validate entries); tests work on copies."""
    root = tmp_path_factory.mktemp("cache-admin")
    _build(toy, root / "out", root / "cache")
    for entry in cache_info(root / "cache").entries:  # PyTorch reference outputs: their own test below
        if entry.pass_name == "torch-reference":
            shutil.rmtree(entry.path)
    return root / "cache"


@pytest.mark.slow
def test_reference_outputs_are_listed_and_pruned_like_pass_entries(toy: ModuleType, tmp_path: Path) -> None:
    _build(toy, tmp_path / "out", tmp_path / "cache")
    names = [e.pass_name for e in cache_info(tmp_path / "cache").entries]
    assert names.count("torch-reference") >= 2  # the example and the other batch sizes
    text = CliRunner().invoke(main, ["cache", "info", "--cache-dir", str(tmp_path / "cache")]).output
    assert "torch-reference" in text
    prune(tmp_path / "cache", max_size=0)
    assert cache_info(tmp_path / "cache").entries == ()


@pytest.fixture
def cache(filled: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(filled, copy)
    return copy


def _age(cache: Path, pass_name: str, days: float) -> None:
    entry = next(e for e in cache_info(cache).entries if e.pass_name == pass_name)
    stamp = time.time() - days * 86400
    os.utime(entry.path, (stamp, stamp))


@pytest.mark.slow
def test_info_lists_entries_size_and_use(cache: Path) -> None:
    info = cache_info(cache)
    assert sorted(e.pass_name for e in info.entries) == ["engine-ort", "export", "simplify", "validate"]
    assert info.size == sum(e.size for e in info.entries) > 1000
    _age(cache, "export", 3)
    text = CliRunner().invoke(main, ["cache", "info", "--cache-dir", str(cache)]).output
    assert "entries: 4" in text and "least recently used" in text and "(export)" in text


@pytest.mark.slow
def test_prune_older_than_removes_only_old_entries(cache: Path) -> None:
    _age(cache, "export", 10)
    _age(cache, "simplify", 2)
    result = CliRunner().invoke(main, ["cache", "prune", "--older-than", "5", "--cache-dir", str(cache)])
    assert result.exit_code == 0 and "removed 1 entries" in result.output
    assert sorted(e.pass_name for e in cache_info(cache).entries) == ["engine-ort", "simplify", "validate"]


@pytest.mark.slow
def test_prune_max_size_evicts_least_recently_used_first(cache: Path) -> None:
    _age(cache, "simplify", 3)
    _age(cache, "engine-ort", 2)
    _age(cache, "export", 1)
    sizes = {e.pass_name: e.size for e in cache_info(cache).entries}
    result = prune(cache, max_size=sizes["export"] + sizes["engine-ort"] + sizes["validate"])  # validate: newest
    assert [e.pass_name for e in result.removed] == ["simplify"]
    assert sorted(e.pass_name for e in cache_info(cache).entries) == ["engine-ort", "export", "validate"]


@pytest.mark.slow
def test_an_entry_locked_by_a_build_is_never_evicted(cache: Path) -> None:
    entry = next(e for e in cache_info(cache).entries if e.pass_name == "export")
    lock = cache / "v1" / "locks" / f"{entry.key}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a build holds while it reads or writes the entry
    try:
        result = prune(cache, max_size=0)
    finally:
        os.close(fd)
    assert [e.pass_name for e in result.in_use] == ["export"] and len(result.removed) == 3
    assert [e.pass_name for e in cache_info(cache).entries] == ["export"]
    assert "1 in use by a running build were left alone" in result.summary()


@pytest.mark.slow
def test_a_hit_marks_the_entry_used_and_pruned_entries_are_rebuilt(
        cache: Path, toy: ModuleType, tmp_path: Path) -> None:
    for name, days in (("export", 30), ("simplify", 29), ("engine-ort", 31)):
        _age(cache, name, days)
    prune(cache, max_size=sum(e.size for e in cache_info(cache).entries if e.pass_name != "engine-ort"))
    report = _build(toy, tmp_path / "again", cache)
    statuses = {r.name: r.status for r in report.passes}
    assert statuses["export"] == statuses["simplify"] == "cached"  # kept and reused
    assert statuses["engine-ort"] == "ok"  # evicted, so rebuilt and stored again
    assert all(time.time() - e.last_used < 3600 for e in cache_info(cache).entries)  # hits refreshed


@pytest.mark.slow
def test_build_keeps_the_cache_under_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Path(__file__).parents[1] / "fixtures" / "models" / "toy_models.py"
    args = ["build", f"{model}:TinyNet", "--no-benchmark", "--cache-dir", str(tmp_path / "cache")]
    monkeypatch.setenv("OPTPIPE_CACHE_MAX_SIZE", "none")
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    stored = cache_info(tmp_path / "cache")
    passes = sorted(e.pass_name for e in stored.entries if e.pass_name != "torch-reference")
    assert passes == ["engine-ort", "export", "simplify", "validate"]  # and PyTorch's reference outputs
    keep = max(e.size for e in stored.entries)
    monkeypatch.setenv("OPTPIPE_CACHE_MAX_SIZE", str(keep))
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert re.search(r"cache over [\d.]+ k?B \(\$OPTPIPE_CACHE_MAX_SIZE\): removed \d+ entries", result.output)
    assert cache_info(tmp_path / "cache").size <= keep


def test_sizes_parse_and_bad_values_are_usage_errors(tmp_path: Path) -> None:
    assert parse_size("10GB") == 10 * 1000**3 and parse_size("1.5GiB") == 3 << 29 and parse_size("2048") == 2048
    assert format_size(1500) == "1.5 kB"
    with pytest.raises(UserInputError, match="not a size"):
        parse_size("ten gigs")
    result = CliRunner().invoke(main, ["cache", "prune", "--max-size", "lots", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not a size" in result.output

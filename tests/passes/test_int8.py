"""Int8Pass options: refused without data, checked before any export runs, style from the target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from optpipe.passes.int8 import Int8Config

from optpipe.builder.options import parse_build_options as opts
from optpipe.builder.pass_configs import int8_pass
from optpipe.core.errors import UserInputError
from optpipe.runtime.target import get_target


def test_style_follows_target() -> None:
    assert int8_pass(opts(calib_data=__file__), get_target("cpu")).config.style == "cpu"
    assert int8_pass(opts(synthetic_calib=True), get_target("tensorrt")).config.style == "tensorrt"


def test_refused_without_data() -> None:
    with pytest.raises(UserInputError, match="--synthetic-calib"):
        int8_pass(opts(), get_target("cpu"))


def test_bad_options() -> None:
    with pytest.raises(UserInputError, match="calibration method"):
        int8_pass(opts(synthetic_calib=True, calib_method="kl"), get_target("cpu"))
    with pytest.raises(UserInputError, match="does not exist"):
        int8_pass(opts(calib_data="/no/such.npz"), get_target("cpu"))
    with pytest.raises(UserInputError, match="guard-max-keep"):
        int8_pass(opts(synthetic_calib=True, guard_max_keep=2), get_target("cpu"))


def test_in_memory_data_and_no_guard() -> None:
    config = int8_pass(opts(calib_data={"x": []}, no_guard=True), get_target("cpu")).config
    assert config == Int8Config(calib_data="<in-memory>", guard=False)


# --- --calib-cache: checked before any work, written back atomically once the build is published ---------------


def _build_int8(tmp_path: Path, out: Path, **options: Any) -> Any:
    import torch
    from conftest import TOY_MODELS, load_file_module

    from optpipe.builder.run import build

    toy = load_file_module(TOY_MODELS)
    return build(toy.TinyNet(), {"x": torch.randn(2, 1, 8, 8)}, out_dir=out, precisions=("int8",),
                 output_names=("logits",), benchmark=False, synthetic_calib=True, log=lambda _: None,
                 **options)  # fmt: skip


def test_corrupt_calib_cache_names_the_users_file_before_any_work(tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    cache.write_text('{"format": "optpipe-calib-cache/1",\n oops')
    out = tmp_path / "out"
    message = f"--calib-cache: calibration cache '{cache}' is not valid JSON"
    with pytest.raises(UserInputError, match=re.escape(message)):
        _build_int8(tmp_path, out, calib_cache=str(cache))
    assert not out.exists() and not list(tmp_path.glob(".optpipe-partial-*"))
    assert "oops" in cache.read_text()


def test_calib_cache_in_an_unwritable_place_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(UserInputError, match=r"--calib-cache .* cannot be written: .* is a file, not a directory"):
        _build_int8(tmp_path, tmp_path / "out", calib_cache=str(blocker / "ranges.json"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_calib_cache_is_written_only_after_the_build_is_published(tmp_path: Path) -> None:
    root = tmp_path
    cache, out = root / "ranges.json", root / "out"
    seen: dict[str, bool] = {}

    class Watch:
        def before_pass(self, pass_: object, artifact: object, ctx: object) -> None:
            return None

        def after_pass(self, pass_: object, artifact: object, result: object, ctx: object) -> None:
            seen[getattr(pass_, "name", "")] = cache.exists()

    _build_int8(tmp_path, out, calib_cache=str(cache), instruments=[Watch()])
    assert seen.get("int8") is False and not any(seen.values())  # untouched while the build ran
    assert cache.read_bytes() == (out / "int8" / "calibration.json").read_bytes()
    assert not list(root.glob(".tmp-*"))


@pytest.mark.slow
def test_corrupt_ranges_of_the_previous_build_are_recalibrated_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build_int8(tmp_path, out)
    (out / "int8" / "calibration.json").write_text("{broken")
    report = _build_int8(tmp_path, out, overwrite=True)
    assert any("is not valid JSON" in w and "recalibrated" in w for w in report.warnings), report.warnings

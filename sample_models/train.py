"""Train the three sample models deterministically and write their weights and data files.

Run from the repository root with either ``python -m sample_models.train`` or
``python sample_models/train.py``. It needs scikit-learn (the ``test`` extra) for
the digits and wine data sets; the model modules themselves do not.

Outputs (all committed, so users never have to train):

* ``sample_models/weights/<name>.safetensors`` — the state dict;
* ``sample_models/data/<name>_calib.npz`` — training-split inputs for calibration;
* ``sample_models/data/<name>_eval.npz`` — held-out inputs plus ``labels``;
* ``sample_models/metrics.json`` — the held-out metrics printed at the end.

Every random choice is seeded (splits, initialisation, shuffling, dropout) and
training runs single-threaded on the CPU, so reruns reproduce the same metrics on
the same torch build. The whole run takes well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "sample_models"
METRICS_PATH = PACKAGE_DIR / "metrics.json"
CALIB_SAMPLES = 200
SPLIT_SEED = 0


def _import_models() -> tuple[ModuleType, ModuleType, ModuleType]:
    """Import the model modules whether run as ``-m sample_models.train`` or as a script path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sample_models import digits_cnn, text_encoder, two_heads

    return digits_cnn, text_encoder, two_heads


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed npz, creating the data directory on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub wants positional arrays


def _save_weights(model: nn.Module, path: Path) -> None:
    """Save the state dict as safetensors (contiguous copies: safetensors rejects views)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _fit(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: Callable[[tuple[torch.Tensor, ...] | torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> None:
    """Minibatch AdamW with cosine decay and a seeded shuffle; the loops are tiny, so keep it generic."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(targets) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=gen)
        for start in range(0, len(targets), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(*(t[idx] for t in inputs)), targets[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits against integer labels."""
    return float((logits.argmax(dim=1).numpy() == labels).mean())


def train_digits(mod: ModuleType) -> dict[str, float]:
    """Digits: stratified 75/25 split of sklearn's 1797 images, pixels scaled /16 to [0,1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SPLIT_SEED)
    _save_npz(mod.CALIB_PATH, {"x": x_tr[:CALIB_SAMPLES]})
    _save_npz(mod.EVAL_PATH, {"x": x_te, "labels": y_te})

    torch.manual_seed(1)
    model = mod.DigitsCNN()
    _fit(
        model,
        (torch.from_numpy(x_tr),),
        nn.CrossEntropyLoss(),
        torch.from_numpy(y_tr),
        epochs=15,
        batch_size=64,
        lr=2e-3,
        weight_decay=1e-4,
        seed=1,
    )
    with torch.no_grad():
        acc = _accuracy(model(torch.from_numpy(x_te)), y_te)
    _save_weights(model, mod.WEIGHTS_PATH)
    return {"test_accuracy": acc, "train_samples": len(y_tr), "test_samples": len(y_te)}


def train_text(mod: ModuleType) -> dict[str, float]:
    """Synthetic keyword-frequency task: 6000 training and 1000 held-out sequences from different seeds."""
    ids_tr, mask_tr, y_tr = mod.make_dataset(6000, seed=1)
    ids_te, mask_te, y_te = mod.make_dataset(1000, seed=2)
    calib = {"input_ids": ids_tr[:CALIB_SAMPLES], "attention_mask": mask_tr[:CALIB_SAMPLES]}
    _save_npz(mod.CALIB_PATH, calib)
    _save_npz(mod.EVAL_PATH, {"input_ids": ids_te, "attention_mask": mask_te, "labels": y_te})

    torch.manual_seed(2)
    model = mod.TinyTextEncoder()
    _fit(
        model,
        (torch.from_numpy(ids_tr), torch.from_numpy(mask_tr)),
        nn.CrossEntropyLoss(),
        torch.from_numpy(y_tr),
        epochs=25,
        batch_size=64,
        lr=3e-3,
        weight_decay=1e-2,
        seed=2,
    )
    with torch.no_grad():
        acc = _accuracy(model(torch.from_numpy(ids_te), torch.from_numpy(mask_te)), y_te)
    _save_weights(model, mod.WEIGHTS_PATH)
    return {"test_accuracy": acc, "train_samples": len(y_tr), "test_samples": len(y_te)}


def train_wine(mod: ModuleType) -> dict[str, float]:
    """Wine: stratified 70/30 split, standardised with training statistics; alcohol is the regressand."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    x = wine.data.astype(np.float64)
    y = wine.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=SPLIT_SEED)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    z_tr = ((x_tr - mean) / std).astype(np.float32)
    z_te = ((x_te - mean) / std).astype(np.float32)

    def split(z: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "chem": np.ascontiguousarray(z[:, list(mod.CHEM_FEATURES)]),
            "color": np.ascontiguousarray(z[:, list(mod.COLOR_FEATURES)]),
            "alcohol": np.ascontiguousarray(z[:, [mod.TARGET_FEATURE]]),
        }

    tr, te = split(z_tr), split(z_te)
    # The training split has only 124 wines: calibrate on all of them.
    _save_npz(mod.CALIB_PATH, {"chem": tr["chem"], "color": tr["color"]})
    _save_npz(
        mod.EVAL_PATH,
        {
            **te,
            "labels": y_te,
            "alcohol_mean": np.array(mean[mod.TARGET_FEATURE], dtype=np.float32),
            "alcohol_std": np.array(std[mod.TARGET_FEATURE], dtype=np.float32),
        },
    )

    torch.manual_seed(3)
    model = mod.TwoHeadNet()
    targets = torch.cat([torch.from_numpy(y_tr).float()[:, None], torch.from_numpy(tr["alcohol"])], dim=1)
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()

    def loss_fn(out: tuple[torch.Tensor, ...] | torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        logits, reg = out
        return ce(logits, tgt[:, 0].long()) + mse(reg, tgt[:, 1:])

    _fit(
        model,
        (torch.from_numpy(tr["chem"]), torch.from_numpy(tr["color"])),
        loss_fn,
        targets,
        epochs=200,
        batch_size=32,
        lr=5e-3,
        weight_decay=1e-3,
        seed=3,
    )
    with torch.no_grad():
        logits, reg = model(torch.from_numpy(te["chem"]), torch.from_numpy(te["color"]))
    target = te["alcohol"]
    residual = float(((reg.numpy() - target) ** 2).sum())
    r2 = 1.0 - residual / float(((target - target.mean()) ** 2).sum())
    _save_weights(model, mod.WEIGHTS_PATH)
    return {
        "test_accuracy": _accuracy(logits, y_te),
        "alcohol_r2": r2,
        "alcohol_rmse_pct_vol": float(np.sqrt(residual / len(target)) * std[mod.TARGET_FEATURE]),
        "train_samples": len(y_tr),
        "test_samples": len(y_te),
    }


def main() -> int:
    """Train all three models, print and save their held-out metrics."""
    torch.set_num_threads(1)  # one thread: reproducible reductions, and fast enough for these sizes
    torch.use_deterministic_algorithms(True)
    digits_cnn, text_encoder, two_heads = _import_models()
    metrics: dict[str, dict[str, float]] = {}
    for mod, train in (
        (digits_cnn, train_digits),
        (text_encoder, train_text),
        (two_heads, train_wine),
    ):
        start = time.perf_counter()
        metrics[mod.NAME] = train(mod)
        # Time is printed, not saved, so that a rerun leaves metrics.json unchanged.
        seconds = time.perf_counter() - start
        print(f"{mod.NAME} ({seconds:.0f} s): {json.dumps(metrics[mod.NAME])}", flush=True)
    METRICS_PATH.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cold vs warm wall time of an unchanged rebuild, benchmark ON (issue 9: warm <= 15% of cold).

Each model is built twice with ``optpipe build ... --precision auto`` into the same output
directory and a fresh cache directory: cold (empty cache), then warm (nothing changed: every
pass output and every measurement, validate and benchmark, is reused from the cache). Both are
subprocesses, so wall time includes Python, torch and onnx start-up (about 3 s here), which no
cache can remove; that floor dominates the small samples. ``MediumCNN`` below (about 5 M
parameters, real convolution work) shows the ratio for a build whose passes take real time.

Usage: python benchmarks/warm_rebuild.py [--models digits_cnn,text_encoder,medium_cnn]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
MODELS = {
    "digits_cnn": ["sample_models/digits_cnn.py:DigitsCNN", "--weights",
                   "sample_models/weights/digits_cnn.safetensors"],
    "text_encoder": ["sample_models/text_encoder.py:TinyTextEncoder", "--weights",
                     "sample_models/weights/text_encoder.safetensors"],
    "medium_cnn": [f"{HERE}:MediumCNN"],
}


class MediumCNN(nn.Module):
    """A VGG-like CNN, about 5 M parameters, on 3x96x96 images (random but fixed weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        channels = 3
        for width in (64, 128, 256, 384):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def example_inputs() -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)),)


def calibration_data() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((96, 3, 96, 96)).astype(np.float32)}


def _build(args: list[str], out: Path, cache: Path) -> tuple[float, int]:
    optpipe = Path(sys.executable).parent / "optpipe"
    command = [str(optpipe), "build", *args, "--precision", "auto", "--out", str(out), "--overwrite",
               "--cache-dir", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    with open(out.parent / "builds.log", "a", encoding="utf-8") as log:  # what each build printed
        log.write(done.stdout + done.stderr)
    return elapsed, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--keep", type=Path, help="keep the build directories and logs here")
    options = parser.parse_args()
    rows = []
    for name in options.models.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            base = options.keep / name if options.keep else Path(scratch)
            out, cache = base / "out", base / "cache"
            base.mkdir(parents=True, exist_ok=True)
            cold, cold_rc = _build(MODELS[name], out, cache)
            warm, warm_rc = _build(MODELS[name], out, cache)
            statuses = [p["status"] for p in json.loads((out / "report.json").read_text())["passes"]]
        rows.append({"model": name, "cold_s": round(cold, 2), "warm_s": round(warm, 2),
                     "warm_over_cold": round(warm / cold, 3), "exit_codes": [cold_rc, warm_rc],
                     "warm_passes_cached": f"{statuses.count('cached')}/{len(statuses)}"})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The hostile-input corpus: bad model files, weights, .pt2 archives, npz and config files.

Binary files are generated (from a real, small model) rather than committed, so each is
exactly the defect it names. ``make_corpus(directory)`` writes every file and returns their
paths by name; the tests feed them to the real CLI.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MODELS = HERE / "hostile_models.py"
#: The file the pickle payloads try to create: its existence means code from the corpus ran.
PWNED = "PWNED"


class _RunsCode:
    """Unpickling this runs ``touch <marker>`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _mlp_program(path: Path) -> None:
    from hostile_models import Mlp

    program = torch.export.export(Mlp(), (torch.zeros(2, 4),))
    torch.export.save(program, path)


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """Copy a zip archive, replacing members whose name ends with a key of ``replace``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            out.writestr(info, data)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def make_corpus(directory: Path) -> dict[str, Path]:
    """Write every corpus file into ``directory``; return name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = directory / name
        files[name].write_bytes(data)

    good = directory / "good.pt2"
    _mlp_program(good)
    files["good.pt2"] = good
    payload = pickle.dumps((_RunsCode(directory / PWNED),))
    _rewrite_zip(good, directory / "pickled_sample_inputs.pt2", {"sample_inputs/model.pt": payload})
    files["pickled_sample_inputs.pt2"] = directory / "pickled_sample_inputs.pt2"
    _rewrite_zip(good, directory / "garbage_model_json.pt2", {"models/model.json": b"\x00garbage{"})
    files["garbage_model_json.pt2"] = directory / "garbage_model_json.pt2"
    put("not_a_zip.pt2", b"PK\x03\x04 this is not a zip archive" * 4)
    put("truncated.pt2", _truncated(good.read_bytes()))

    # Weights: a pickled object that runs code, a truncated safetensors, a tensor instead of a dict.
    with io.BytesIO() as buffer:
        torch.save({"fc.weight": _RunsCode(directory / PWNED)}, buffer)
        put("pickled_object_weights.pt", buffer.getvalue())
    from safetensors.torch import save as save_safetensors

    put("truncated.safetensors", _truncated(save_safetensors({"fc.weight": torch.zeros(3, 4)})))
    with io.BytesIO() as buffer:
        torch.save(torch.zeros(3), buffer)
        put("tensor_not_dict.pt", buffer.getvalue())

    # npz files: truncated eval data / calibration data, a pickled object array, garbage golden data.
    rng = np.random.default_rng(0)
    eval_npz = _npz_bytes(x=rng.standard_normal((8, 4)).astype(np.float32), labels=np.zeros(8, np.int64))
    put("truncated_eval.npz", _truncated(eval_npz))
    put("truncated_calib.npz", _truncated(_npz_bytes(x=rng.standard_normal((16, 4)).astype(np.float32))))
    put("pickled_eval.npz", _npz_bytes(x=np.array([_RunsCode(directory / PWNED)], dtype=object),
                                       labels=np.zeros(1, np.int64)))
    put("garbage.npz", b"not an npz at all")

    # Config files.
    put("not_utf8.toml", b'[[model]]\nspec = "\xff\xfe"\n')
    put("not_toml.toml", b"[[model]\nspec = ")
    put("no_model.toml", b'out = "x"\n')
    put("model_not_table.toml", b'model = 3\n')
    put("empty_model_list.toml", b'model = []\n')  # builds nothing: must not exit 0
    return files

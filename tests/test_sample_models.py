"""Tests for sample_models/: committed weights load, outputs have the documented shapes,
held-out accuracy matches what train.py measured (minus a margin), and the text
encoder exports to ONNX with a batch dimension that is really dynamic.

The modules are loaded by file path, the way ``optpipe build
sample_models/digits_cnn.py:DigitsCNN`` loads a user's model, which also checks
that each module is self-contained.
"""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"


def _load_module(name: str) -> ModuleType:
    """Import ``sample_models/<name>.py`` by path (no package or sys.path set-up needed)."""
    spec = importlib.util.spec_from_file_location(f"_sample_models_{name}", SAMPLE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (module name, class name, expected output shapes for a batch of 2)
MODELS = [
    ("digits_cnn", "DigitsCNN", [(2, 10)]),
    ("text_encoder", "TinyTextEncoder", [(2, 4)]),
    ("two_heads", "TwoHeadNet", [(2, 3), (2, 1)]),
]
# Held-out top-1 accuracy measured by train.py (see sample_models/metrics.json) minus a margin
# that absorbs numeric differences between torch builds, not a real regression.
ACCURACY_FLOOR = {"digits_cnn": 0.97, "text_encoder": 0.93, "two_heads": 0.92}


def _trained(name: str, cls: str) -> tuple[ModuleType, torch.nn.Module]:
    """Build the model and load its committed weights strictly, in eval mode."""
    from safetensors.torch import load_file

    mod = _load_module(name)
    model = getattr(mod, cls)()
    model.load_state_dict(load_file(str(mod.WEIGHTS_PATH)), strict=True)
    return mod, model.eval()


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize(("name", "cls", "shapes"), MODELS, ids=[m[0] for m in MODELS])
def test_example_inputs_and_output_shapes(name: str, cls: str, shapes: list[tuple[int, ...]]) -> None:
    mod, model = _trained(name, cls)
    inputs = mod.example_inputs()
    assert len(inputs) == len(mod.INPUT_NAMES)
    assert all(t.shape[0] == 2 for t in inputs), "example batch must be 2 (batch 1 can freeze on export)"
    # INPUT_NAMES must follow forward()'s parameter order: export uses them positionally.
    assert tuple(inspect.signature(model.forward).parameters) == mod.INPUT_NAMES
    with torch.no_grad():
        outputs = _as_tuple(model(*inputs))
    assert len(outputs) == len(mod.OUTPUT_NAMES)
    assert [tuple(o.shape) for o in outputs] == shapes
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize(("name", "cls", "shapes"), MODELS, ids=[m[0] for m in MODELS])
def test_heldout_accuracy(name: str, cls: str, shapes: list[tuple[int, ...]]) -> None:
    mod, model = _trained(name, cls)
    inputs, labels = mod.eval_data()
    assert set(inputs) == set(mod.INPUT_NAMES)
    with torch.no_grad():
        logits = _as_tuple(model(*(torch.from_numpy(inputs[n]) for n in mod.INPUT_NAMES)))[0]
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    assert accuracy >= ACCURACY_FLOOR[name], f"{name} held-out accuracy {accuracy:.3f}"


def test_two_heads_regression_beats_mean_predictor() -> None:
    mod, model = _trained("two_heads", "TwoHeadNet")
    inputs, _ = mod.eval_data()
    target = mod.eval_regression_targets()
    with torch.no_grad():
        _, pred = model(torch.from_numpy(inputs["chem"]), torch.from_numpy(inputs["color"]))
    r2 = 1.0 - float(((pred.numpy() - target) ** 2).sum()) / float(((target - target.mean()) ** 2).sum())
    assert r2 >= 0.3, f"alcohol R^2 {r2:.3f} (train.py measured 0.45)"


@pytest.mark.parametrize("name", [m[0] for m in MODELS])
def test_calibration_data_matches_inputs(name: str) -> None:
    mod = _load_module(name)
    calib = mod.calibration_data()
    assert tuple(calib) == mod.INPUT_NAMES
    examples = dict(zip(mod.INPUT_NAMES, mod.example_inputs(), strict=True))
    sizes = {arr.shape[0] for arr in calib.values()}
    assert len(sizes) == 1 and 100 <= sizes.pop() <= 200
    for input_name, arr in calib.items():
        assert arr.dtype == examples[input_name].numpy().dtype
        assert arr.shape[1:] == tuple(examples[input_name].shape[1:])
        assert np.isfinite(arr).all()


@pytest.mark.slow
def test_model_modules_do_not_import_sklearn() -> None:
    # scikit-learn is a test/training dependency only: building a sample model must not need it.
    code = (
        "import importlib.util, sys\n"
        f"for n in ('digits_cnn', 'text_encoder', 'two_heads'):\n"
        f"    s = importlib.util.spec_from_file_location(n, {str(SAMPLE_DIR)!r} + '/' + n + '.py')\n"
        "    m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.example_inputs()\n"
        "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_text_encoder_onnx_export_has_dynamic_batch(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    mod, model = _trained("text_encoder", "TinyTextEncoder")
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        mod.example_inputs(),
        input_names=list(mod.INPUT_NAMES),
        output_names=list(mod.OUTPUT_NAMES),
        dynamo=True,
        dynamic_shapes={name: {0: batch} for name in mod.INPUT_NAMES},
    )
    assert program is not None
    path = tmp_path / "text_encoder.onnx"
    program.save(str(path))  # one file; export(f=...) would write external data
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(mod.INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(mod.OUTPUT_NAMES)

    inputs, _ = mod.eval_data()
    # Batch sizes other than the example's 2: a frozen batch fails at 1 and 5 alike.
    for n in (1, 5):
        feed = {k: v[:n] for k, v in inputs.items()}
        (onnx_logits,) = session.run(None, feed)
        with torch.no_grad():
            torch_logits = model(*(torch.from_numpy(feed[k]) for k in mod.INPUT_NAMES)).numpy()
        assert onnx_logits.shape == (n, 4)
        np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)

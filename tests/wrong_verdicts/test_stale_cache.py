"""No stale artifact, ever (issue 17, item 1): a model whose behaviour changed is built afresh.

A small project (a model file, the class in another file, a JSON config read in ``__init__``, a
settings module, a helpers module) is built once through the real CLI with the pass cache on.
Then its behaviour is changed in one way per case and built again into a new ``--out`` with the
same cache: the published engine, run in ONNX Runtime, must compute the *new* PyTorch model. The
twin: the unchanged project, rebuilt, is a cache hit for every pass. Each build is a fresh
``optpipe build`` process, as CI runs it (a fresh process also re-reads every file).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

#: Module names of the project below; unusual, so the test process never has others by these names.
MODULES = ("stale_net", "stale_helpers", "stale_settings")
PROJECT = {
    "config.json": '{"activation": "relu"}\n',
    "stale_settings.py": "SHIFT = 0.25\n",
    "stale_helpers.py": (
        "import torch\n\n\n"
        "def squash(h: torch.Tensor) -> torch.Tensor:\n"
        "    return h * 0.5\n\n\n"
        "def clip_far(h: torch.Tensor) -> torch.Tensor:\n"
        "    return h  # only inputs far from the examples reach this\n"
    ),
    "stale_net.py": (
        "import json\nfrom pathlib import Path\n\nimport torch\nfrom torch import nn\n\n"
        "import stale_settings\nfrom stale_helpers import clip_far, squash\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, gain: float = 1.0) -> None:\n"
        "        super().__init__()\n"
        "        config = json.loads((Path(__file__).parent / 'config.json').read_text())\n"
        "        torch.manual_seed(0)\n"
        "        self.fc1 = nn.Linear(4, 8)\n"
        "        self.fc2 = nn.Linear(8, 3)\n"
        "        self.act = nn.Tanh() if config['activation'] == 'tanh' else nn.ReLU()\n"
        "        self.gain = gain\n"
        "        self.register_buffer('offset', torch.zeros(8), persistent=False)\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        h = self.fc1(x) * self.gain + self.offset + stale_settings.SHIFT\n"
        "        h = torch.where(h.abs() > 1000.0, clip_far(h), h)\n"
        "        return self.fc2(squash(self.act(h)))\n"
    ),
    "model.py": (
        "import torch\n\nfrom stale_net import Net\n\n"
        "GAIN = 1.0\n"
        "OFFSET = 0.0\n\n\n"
        "def make_model() -> Net:\n"
        "    net = Net(gain=GAIN)\n"
        "    net.offset.fill_(OFFSET)\n"
        "    return net\n\n\n"
        "def example_inputs() -> tuple[torch.Tensor]:\n"
        "    return (torch.linspace(-2.0, 2.0, 32).reshape(8, 4),)\n"
    ),
}


@dataclass(frozen=True)
class Change:
    """One way to change what the model computes: replace ``old`` by ``new`` in ``file``."""

    name: str
    file: str
    old: str
    new: str
    visible: bool = True  # the example inputs see the change (False: only inputs far from them do)


CHANGES = [
    Change("json-config-read-in-init", "config.json", '"relu"', '"tanh"'),
    Change("constructor-argument", "model.py", "GAIN = 1.0", "GAIN = 1.5"),
    Change("module-level-constant-in-another-file", "stale_settings.py", "SHIFT = 0.25", "SHIFT = -0.5"),
    Change("helper-function-in-another-file", "stale_helpers.py", "return h * 0.5", "return h * 0.5 + 0.1"),
    Change("non-persistent-buffer", "model.py", "OFFSET = 0.0", "OFFSET = 0.3"),
    Change("helper-the-examples-do-not-reach", "stale_helpers.py", "return h  # only", "return h * 0  # only",
           visible=False),
]
CACHEABLE = ("export", "simplify", "engine-ort")


def write_project(directory: Path, change: Change | None = None) -> Path:
    directory.mkdir(parents=True)
    for name, text in PROJECT.items():
        if change is not None and name == change.file:
            assert change.old in text, change
            text = text.replace(change.old, change.new)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def build(project: Path, out: Path, cache: Path) -> dict[str, Any]:
    """``optpipe build`` in a fresh process with the default (enabled) pass cache; its report.json."""
    command = [str(Path(sys.executable).parent / "optpipe"), "build", f"{project / 'model.py'}:make_model",
               "--out", str(out), "--cache-dir", str(cache), "--no-benchmark", "--threads", "1",
               "--dynamic", "batch=1:8:16", "--exporter", "torchscript"]  # the faster exporter: same keys
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report


def torch_outputs(project: Path, x: np.ndarray) -> np.ndarray:
    """What the project's model computes on ``x``, imported afresh from ``project``."""
    for name in (*MODULES, "model"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module("model")
        model = module.make_model().eval()
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    finally:
        sys.path.remove(str(project))
        for name in (*MODULES, "model"):
            sys.modules.pop(name, None)


def published_outputs(out: Path, x: np.ndarray) -> np.ndarray:
    """What the published engine computes on ``x`` in ONNX Runtime."""
    session = ort.InferenceSession(str(out / "fp32" / "model.ort-cpu.onnx"), providers=["CPUExecutionProvider"])
    result = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(result[0])


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {record["name"]: record["status"] for record in report["passes"]}


#: The example inputs, and rows unlike them (another batch size, other values).
EXAMPLES = np.linspace(-2.0, 2.0, 32, dtype=np.float32).reshape(8, 4)
OTHER_ROWS = np.random.default_rng(7).normal(0.0, 3.0, (5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The unchanged project, built once cold: the cache every case then rebuilds against."""
    root = tmp_path_factory.mktemp("stale")
    project = write_project(root / "project")
    report = build(project, root / "out", root / "cache")
    assert report["passed"] and all(status == "ok" for status in statuses(report).values()), statuses(report)
    for x in (EXAMPLES, OTHER_ROWS):
        np.testing.assert_allclose(published_outputs(root / "out", x), torch_outputs(project, x), atol=1e-5)
    return project, root / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_a_changed_model_gets_a_fresh_artifact(change: Change, warm_cache: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    base, cache = warm_cache
    project = write_project(tmp_path / "project", change)
    before, after = torch_outputs(base, EXAMPLES), torch_outputs(project, EXAMPLES)
    assert np.abs(after - before).max() > 1e-2 if change.visible else np.array_equal(after, before)

    report = build(project, tmp_path / "out", cache)

    assert report["passed"]
    for x in (EXAMPLES, OTHER_ROWS):  # the published engine computes the changed model
        np.testing.assert_allclose(published_outputs(tmp_path / "out", x), torch_outputs(project, x), atol=1e-5)
    assert all(statuses(report)[name] == "ok" for name in CACHEABLE), statuses(report)  # rebuilt, not reused


@pytest.mark.slow
def test_an_unchanged_model_is_a_cache_hit(warm_cache: tuple[Path, Path], tmp_path: Path) -> None:
    base, cache = warm_cache
    project = shutil.copytree(base, tmp_path / "project")  # another directory, same files: the same model

    report = build(project, tmp_path / "out", cache)

    assert report["passed"]
    assert statuses(report) == {**{name: "cached" for name in CACHEABLE}, "validate": "cached"}
    for x in (EXAMPLES, OTHER_ROWS):
        np.testing.assert_allclose(published_outputs(tmp_path / "out", x), torch_outputs(project, x), atol=1e-5)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _published_outputs(report: Any, x: np.ndarray) -> np.ndarray:
    fp32 = next(v for v in report.to_dict()["variants"] if v["precision"] == "fp32")
    session = ort.InferenceSession(str(report.out_dir / fp32["artifact"]), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _api_build(model: torch.nn.Module, out: Path, cache: Any) -> Any:
    import optpipe

    # A fresh example tuple per build, as a pipeline would make it: after the first build's tuple is freed,
    # the next one of the same size often gets its address (CPython's tuple free list).
    return optpipe.build(model, (torch.ones(2, 4),), out_dir=out, precisions=("fp32",), benchmark=False,
                         instruments=[cache], log=lambda _line: None)


@pytest.mark.slow
@pytest.mark.parametrize("mutate", [True, False], ids=["weights-changed-in-place", "unchanged-twin"])
def test_a_cache_reused_across_in_process_builds_sees_a_model_changed_in_place(tmp_path: Path, mutate: bool) -> None:
    """One PassCache object serves two ``optpipe.build()`` calls on one model object (a long-lived pipeline).

    Before: the model's identity was memoised by ``id(model), id(example_inputs)``; the second build's new
    example tuple could reuse the first's id, so a model whose weights were loaded in place kept its old
    identity, every pass hit, and the old artifact was published as PASSED. The twin (nothing changed) hits.
    """
    from optpipe.cache.store import PassCache

    cache = PassCache(tmp_path / "cache")
    model = _Tiny().eval()
    first = _api_build(model, tmp_path / "a", cache)
    if mutate:
        with torch.no_grad():
            model.fc.weight.mul_(-1.0)  # new weights, same object (load_state_dict does this)
    second = _api_build(model, tmp_path / "b", cache)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_published_outputs(second, x), expected, atol=1e-5)
    statuses = {p["status"] for p in second.to_dict()["passes"] if p["name"] == "export"}
    assert statuses == ({"ok"} if mutate else {"cached"})
    assert first.passed and second.passed


def _golden_facts_after_swap(same_references: bool = False) -> tuple[Any, Any]:
    """The cache key's golden fact before and after the build's golden data is replaced by other data.

    The new GoldenData is allocated right after the old one is freed, so it gets the old one's address
    (CPython reuses the freed block at once; measured 100 of 100 times): what a build does when its
    export falls back and golden data is made again for the new shapes.
    """
    from optpipe.passes.simplify import SimplifyOnnx

    from optpipe.cache.store import _Keyer
    from optpipe.compare.golden import GoldenCase, GoldenData
    from optpipe.core.artifact import Artifact, ArtifactKind
    from optpipe.core.tensor_spec import TensorSpec
    from optpipe.infra.pass_base import BuildContext
    from optpipe.runtime.target import get_target

    specs = (TensorSpec("x", (2, 4), "float32"),)
    ctx = BuildContext(Path("."), get_target("cpu"), specs, ("y",))
    artifact = Artifact(ArtifactKind.ONNX, None, "0" * 64, specs, (TensorSpec("y", (2, 3), "float32"),))
    keyer, simplify = _Keyer(), SimplifyOnnx()
    x = np.ones((2, 4), np.float32)
    ctx.golden = GoldenData([GoldenCase("example", {"x": x}, {"y": np.zeros((2, 3), np.float32)})])
    before = keyer.facts(simplify, artifact, ctx)["golden"]
    fill = np.zeros if same_references else np.ones
    other_cases = [GoldenCase("example", {"x": x}, {"y": fill((2, 3), np.float32)})]
    ctx.golden = None  # the old golden data is freed here ...
    ctx.golden = GoldenData(other_cases)  # ... and the new one takes its place in memory
    return before, keyer.facts(simplify, artifact, ctx)["golden"]


def test_golden_data_replaced_within_a_build_is_fingerprinted_again() -> None:
    # Before: the golden memo compared id(ctx.golden); the new data at the old address kept the old
    # fingerprint, so every later pass key matched entries made for other reference outputs.
    before, after = _golden_facts_after_swap()
    assert before != after


def test_golden_data_made_again_with_the_same_rows_keeps_its_key() -> None:
    # The twin: equal golden data in a new object is fingerprinted by content, so the cache still hits.
    before, after = _golden_facts_after_swap(same_references=True)
    assert before == after

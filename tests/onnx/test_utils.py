"""save_onnx: one file or ``<name>.data`` beside it, written atomically; model_sha256 covers the data file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx.utils import model_sha256, onnx_bytes, onnx_files, rename_outputs, save_onnx


def _matmul(weight: np.ndarray) -> onnx.ModelProto:
    """x [1, n] @ W [n, n] -> y: one initializer big enough (> 1 KiB) to go external."""
    n = weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _weight(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((32, 32)).astype(np.float32)


def _run(path: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": np.ones((1, 32), np.float32)})[0])


def test_above_the_threshold_the_weights_go_to_one_data_file_and_the_model_keeps_them(tmp_path: Path) -> None:
    model = _matmul(_weight(0))
    path = tmp_path / "model.onnx"
    files = save_onnx(model, path, external_above=0)
    assert files == [path, tmp_path / "model.onnx.data"]
    assert onnx_files(path) == files
    assert np.allclose(_run(path), np.ones((1, 32)) @ _weight(0), atol=1e-4)
    weight = model.graph.initializer[0]  # the caller's object still holds its weights
    assert weight.data_location == TensorProto.DEFAULT and len(weight.raw_data) == 32 * 32 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # no temp folder left


def test_below_the_threshold_one_file_and_a_stale_data_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx(_matmul(_weight(0)), path, external_above=0)
    assert save_onnx(_matmul(_weight(1)), path) == [path]
    assert not (tmp_path / "model.onnx.data").exists()
    assert np.allclose(_run(path), np.ones((1, 32)) @ _weight(1), atol=1e-4)


def test_a_graph_loaded_without_its_weights_is_rewritten_and_the_data_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx(_matmul(_weight(0)), path, external_above=0)
    data = (tmp_path / "model.onnx.data").read_bytes()
    graph = onnx.load(str(path), load_external_data=False)
    rename_outputs(graph, ["logits"])
    assert save_onnx(graph, path) == [path, tmp_path / "model.onnx.data"]
    assert (tmp_path / "model.onnx.data").read_bytes() == data
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]


def test_a_graph_whose_weights_live_elsewhere_is_refused_not_broken(tmp_path: Path) -> None:
    source = tmp_path / "a" / "model.onnx"
    save_onnx(_matmul(_weight(0)), source, external_above=0)
    graph = onnx.load(str(source), load_external_data=False)
    with pytest.raises(ValueError, match="load it with load_external_data=True"):
        save_onnx(graph, tmp_path / "b" / "other.onnx")
    assert not (tmp_path / "b" / "other.onnx").exists()


def test_model_sha256_covers_the_data_file(tmp_path: Path) -> None:
    """Same graph, other weights: the .onnx files are byte-identical, so a key on them alone would collide."""
    first, second = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    save_onnx(_matmul(_weight(0)), first, external_above=0)
    save_onnx(_matmul(_weight(1)), second, external_above=0)
    assert first.read_bytes() == second.read_bytes()
    assert model_sha256(first) != model_sha256(second)
    single = tmp_path / "c" / "model.onnx"
    save_onnx(_matmul(_weight(0)), single)
    from optpipe.core.artifact import sha256_file

    assert model_sha256(single) == sha256_file(single)  # one file: the file's own hash, as before
    assert onnx_bytes(first) == first.stat().st_size + (first.parent / "model.onnx.data").stat().st_size


def test_onnx_files_reads_a_file_once_and_a_rewritten_file_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing a model's data files reads the graph (BERT-base: 0.4 s when it parsed the whole model, asked 31
    times a build): once per file identity."""
    from optpipe.onnx import utils

    parsed: list[Path] = []
    real = utils.load_graph_only
    monkeypatch.setattr(utils, "load_graph_only", lambda path: parsed.append(path) or real(path))
    path = tmp_path / "model.onnx"
    save_onnx(_matmul(_weight(0)), path)
    assert onnx_files(path) == onnx_files(path) == [path] and len(parsed) == 1
    save_onnx(_matmul(_weight(1)), path, external_above=0)  # replaced (renamed into place): read again
    assert onnx_files(path) == [path, tmp_path / "model.onnx.data"] and len(parsed) == 2


def test_a_graph_adopts_its_inputs_data_file_without_reading_it(tmp_path: Path) -> None:
    """A rewritten graph whose weights stayed in the input's data file is saved as a graph beside a copy of
    that file (no weight read or written); the result runs as the input does."""
    from optpipe.onnx.utils import adopt_data_file

    source = tmp_path / "in" / "model.export.onnx"
    save_onnx(_matmul(_weight(0)), source, external_above=0)
    model = onnx.load(str(source), load_external_data=False)
    out = tmp_path / "out" / "model.onnx"
    assert adopt_data_file(model, source.parent, out)
    files = save_onnx(model, out)
    assert files == [out, tmp_path / "out" / "model.onnx.data"]
    assert files[1].read_bytes() == (tmp_path / "in" / "model.export.onnx.data").read_bytes()
    np.testing.assert_array_equal(_run(out), _run(source))


def test_weights_in_several_files_are_not_adopted(tmp_path: Path) -> None:
    from optpipe.onnx.utils import adopt_data_file

    model = _matmul(_weight(0))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    loaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    extra = numpy_helper.from_array(_weight(1), "V")
    onnx.external_data_helper.set_external_data(extra, "other.data")
    loaded.graph.initializer.append(extra)
    assert not adopt_data_file(loaded, tmp_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx.data").exists()

"""The attention-mask rewrite: exact on padded rows, proven before it is applied, refused for other masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx.attention_mask import rewrite_attention_masks

LOW = np.finfo(np.float32).min


def _scores_model(condition: str) -> onnx.ModelProto:
    """softmax(scores + Where(cond, 0, min)) with ``cond`` built from ``mask`` [B, S] the way ``condition`` says.

    ``padding``: transformers 5's chain in small (GatherND of the mask at (batch, key) indices, And with a
    key >= 0 test). ``causal``: the same And-ed with key <= query (a decoder's mask, not a padding mask).
    """
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("zero", 0), ("one", 1), ("ax0", [0]), ("ax1", [1]), ("ax2", [2]), ("ax3", [3]), ("ax_last", [-1]))]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "f0"), numpy_helper.from_array(LOW, "low")]
    nodes = [
        helper.make_node("Shape", ["mask"], ["shape"], start=0, end=1),
        helper.make_node("Shape", ["mask"], ["seq1"], start=1, end=2),
        helper.make_node("Squeeze", ["shape", "ax0"], ["b"]),
        helper.make_node("Squeeze", ["seq1", "ax0"], ["s"]),
        helper.make_node("Range", ["zero", "b", "one"], ["bi"]),
        helper.make_node("Range", ["zero", "s", "one"], ["ki"]),
        helper.make_node("Unsqueeze", ["bi", "ax1"], ["bi2"]),  # [B, 1]
        helper.make_node("Unsqueeze", ["ki", "ax0"], ["ki2"]),  # [1, S]
        helper.make_node("Add", ["bi2", "ki2"], ["grid"]),  # [B, S] (only its shape is used)
        helper.make_node("Shape", ["grid"], ["grid_shape"]),
        helper.make_node("Expand", ["bi2", "grid_shape"], ["bb"]),
        helper.make_node("Expand", ["ki2", "grid_shape"], ["kk"]),
        helper.make_node("Unsqueeze", ["bb", "ax_last"], ["bb3"]),
        helper.make_node("Unsqueeze", ["kk", "ax_last"], ["kk3"]),
        helper.make_node("Concat", ["bb3", "kk3"], ["index"], axis=-1),
        helper.make_node("Cast", ["mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("GatherND", ["mask_bool", "index"], ["picked"]),  # [B, S]
        helper.make_node("Unsqueeze", ["picked", "ax1"], ["p3"]),
        helper.make_node("Unsqueeze", ["p3", "ax2"], ["p4"]),  # [B, 1, 1, S]
        helper.make_node("Unsqueeze", ["ki", "ax0"], ["kq"]),
        helper.make_node("GreaterOrEqual", ["kq", "zero"], ["k_ok"]),  # [1, S], all True
        helper.make_node("And", ["p4", "k_ok"], ["cond_pad"]),
    ]
    cond = "cond_pad"
    if condition == "causal":
        nodes += [
            helper.make_node("Unsqueeze", ["ki", "ax1"], ["qcol"]),  # [S, 1]
            helper.make_node("LessOrEqual", ["kq", "qcol"], ["tri"]),  # [S, S]: key <= query
            helper.make_node("And", ["cond_pad", "tri"], ["cond_causal"]),
        ]
        cond = "cond_causal"
    nodes += [
        helper.make_node("Where", [cond, "f0", "low"], ["bias"], name="mask_where"),
        helper.make_node("Add", ["scores", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "scores",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 2, "s", "s"]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 2, "s", "s"])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def padded_masks() -> list[np.ndarray]:
    rows = []
    for length in (3, 8):
        mask = np.ones((3, length), np.int64)
        mask[1, length // 2 :] = 0  # right padding
        mask[2, :2] = 0  # left padding
        rows.append(mask)
    return rows


def _run(model: onnx.ModelProto, mask: np.ndarray) -> np.ndarray:
    scores = np.random.default_rng(mask.size).standard_normal((mask.shape[0], 2, mask.shape[1], mask.shape[1]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"scores": scores.astype(np.float32), "mask": mask})[0])


def test_an_index_built_padding_mask_is_rewritten_exactly() -> None:
    original = _scores_model("padding")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    done = rewrite_attention_masks(model)
    assert done.rewritten == ("mask_where",) and done.mask_input == "mask"
    ops = [n.op_type for n in model.graph.node]
    assert "GatherND" not in ops and "And" not in ops  # the index chain is gone
    assert ops.count("Unsqueeze") == 2 and "Expand" in ops and "Sub" in ops  # the chain ORT's FusionAttention knows
    for mask in padded_masks():
        np.testing.assert_array_equal(_run(model, mask), _run(original, mask))


def test_a_causal_mask_is_not_mistaken_for_a_padding_mask() -> None:
    """The wrong rewrite: a causal mask reads the same input, but is not mask != 0; it must stay."""
    original = _scores_model("causal")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    done = rewrite_attention_masks(model)
    assert done.rewritten == () and done.mask_input is None
    assert len(done.skipped) == 1 and "not mask != 0" in done.skipped[0]
    assert model == original


def test_a_static_length_mask_is_proven_at_its_own_length() -> None:
    """A ``--static-seq`` graph takes only its own length: the proof runs there (before: every mask was refused
    with "does not run on its own", so a static 128-token export never fused its attention)."""
    original = _scores_model("padding")
    for value in (*original.graph.input, *original.graph.output):
        value.type.tensor_type.shape.dim[-1].dim_value = 6
    original.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 6
    original.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 6
    model = onnx.ModelProto()
    model.CopyFrom(original)
    done = rewrite_attention_masks(model)
    assert done.rewritten == ("mask_where",), done.skipped
    for length in (3, 6):  # the padded rows at the graph's one length
        mask = np.ones((3, 6), np.int64)
        mask[1, length:] = 0
        mask[2, :2] = 0
        np.testing.assert_array_equal(_run(model, mask), _run(original, mask))


def _graph_without_its_data(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """``model`` with the condition's index constants in ``folder``'s data file, read back without it.

    As the fusion pass reads a static 128-token export: the index tables (here tiny, there over 1 KB) are
    external, the Where's fill scalars stay inline.
    """
    from onnx.external_data_helper import set_external_data, write_external_data_tensors

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.data_type == TensorProto.INT64:
            set_external_data(init, "scores.onnx.data")
    path = folder / "scores.onnx"
    onnx.save_model(write_external_data_tensors(copy, str(folder)), str(path))
    loaded = onnx.load(str(path), load_external_data=False)
    assert any(i.data_location == TensorProto.EXTERNAL for i in loaded.graph.initializer)
    return loaded


def test_mask_constants_in_external_data_are_read_from_their_folder(tmp_path: Path, monkeypatch) -> None:
    """A static-length export keeps mask constants over 1 KB in the data file; the check must read them there.

    Before: the condition's small model was run from bytes, ONNX Runtime looked for the data file beside
    the working directory, and the fusion pass failed ("External data path ... escapes working directory").
    """
    original = _scores_model("padding")
    model = _graph_without_its_data(original, tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # not the data's folder
    done = rewrite_attention_masks(model, tmp_path)
    assert done.rewritten == ("mask_where",), done.skipped
    onnx.load_external_data_for_model(model, str(tmp_path))
    for mask in padded_masks():
        np.testing.assert_array_equal(_run(model, mask), _run(original, mask))


def test_external_mask_constants_without_their_folder_leave_the_mask_alone(tmp_path: Path) -> None:
    """The twin: with the folder unknown nothing is rewritten, and the reason is recorded (no exception)."""
    model = _graph_without_its_data(_scores_model("padding"), tmp_path)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    done = rewrite_attention_masks(model)
    assert done.rewritten == () and "external data" in done.skipped[0]
    assert model == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_a_transformers_bert_mask_is_found_and_rewritten_exactly(tmp_path: Path) -> None:
    """A real transformers BertModel (tiny, random) exported by dynamo: its mask chain is found and rewritten."""
    pytest.importorskip("transformers")
    model_path = export_tiny_bert(tmp_path / "bert.onnx")
    original = onnx.load(str(model_path))
    model = onnx.ModelProto()
    model.CopyFrom(original)
    done = rewrite_attention_masks(model)
    assert len(done.rewritten) == 1 and done.mask_input == "attention_mask", done.skipped
    rewritten, unfused = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                          for m in (model, original))  # fmt: skip
    for mask in padded_masks():
        ids = np.random.default_rng(mask.size).integers(1, 99, mask.shape).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        np.testing.assert_array_equal(rewritten.run(None, feeds)[0], unfused.run(None, feeds)[0])


def export_tiny_bert(path: Path) -> Path:
    """A 2-layer random BertModel (eager attention, non-zero biases) exported by dynamo, batch and sequence dynamic."""
    import torch as t
    from transformers import BertConfig, BertModel

    t.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")  # fmt: skip

    class Encoder(t.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False).eval()

        def forward(self, input_ids: t.Tensor, attention_mask: t.Tensor) -> t.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    module = Encoder().eval()
    with t.no_grad():
        for parameter in module.parameters():
            parameter.add_(t.randn_like(parameter) * 0.05)  # non-zero biases, as trained weights have
    ids = t.randint(1, 100, (2, 16))
    mask = t.ones(2, 16, dtype=t.int64)
    mask[1, 10:] = 0
    batch, seq = t.export.Dim("batch", min=1, max=64), t.export.Dim("seq", min=1, max=64)
    program = t.onnx.export(module, (ids, mask), dynamo=True, input_names=["input_ids", "attention_mask"],
                            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    assert program is not None
    program.save(str(path))
    return path

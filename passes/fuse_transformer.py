"""Transformer graph fusions for the ``cpu`` target (ONNX Runtime's transformer optimizer).

ONNX Runtime's ``onnxruntime.transformers.optimizer.optimize_model`` rewrites
the attention block, residual + LayerNorm, bias + Gelu and the embedding sum
into its contrib kernels (``Attention``/``MultiHeadAttention``,
``SkipLayerNormalization``, ``BiasGelu``/``FastGelu``,
``EmbedLayerNormalization``), the fusions Olive and Optimum apply before
quantizing. Its output holds ``com.microsoft`` ops, which only ONNX Runtime's
CPU provider runs, so this pass belongs to the ``cpu`` target's fused variants
(``fp32+fused``, ``int8-dynamic+fused``); the portable ONNX (and so TensorRT)
stays unfused.

Only the optimizer's own fusions run (``opt_level=0``): ONNX Runtime's generic
graph optimisations are the engine pass's job. What fuses depends on the
exporter's graph (the mask subgraph decides whether ``Attention`` fuses), so
the pass records the op counts before and after instead of assuming; a graph
with nothing to fuse is returned unchanged (``modified`` False), and in a fused
variant that variant is skipped (it would duplicate the unfused one).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import UserInputError, VariantSkipped
from optpipe.core.memory import release_free_heap
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE

#: The contrib ops the optimizer writes when it fuses (counted to decide whether anything fused).
FUSED_OPS: tuple[str, ...] = (
    "Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasSplitGelu", "BiasAdd",
    "RotaryEmbedding", "GroupQueryAttention",
)  # fmt: skip
MS_DOMAIN = "com.microsoft"
#: ``--fuse``: detect the model type (default), no fused variants, or ONNX Runtime's optimizer model type.
FUSE_AUTO = "auto"
FUSE_OFF = "off"
FUSE_MODEL_TYPES = ("bert", "bart", "gpt2", "t5", "vit", "clip", "swin", "unet", "phi", "conformer")
#: Every ``--fuse`` value.
FUSE_CHOICES = (FUSE_AUTO, FUSE_OFF, *FUSE_MODEL_TYPES)


@dataclass(frozen=True)
class FuseTransformerConfig:
    """Options of the transformer fusion pass (``--fuse``)."""

    # The optimizer's model type: "auto" detects a BERT-like encoder (attention scores: a Softmax fed by a
    # MatMul of two activations) and fuses it as "bert"; any other value of FUSE_MODEL_TYPES is used as given.
    model_type: str = FUSE_AUTO
    # Attention heads and hidden size for the optimizer; 0 = read them from the graph.
    num_heads: int = 0
    hidden_size: int = 0
    # In a fused variant, a graph with nothing to fuse skips the variant (it would be the unfused one again).
    skip_when_unchanged: bool = False
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE

    def __post_init__(self) -> None:
        if self.model_type not in (FUSE_AUTO, *FUSE_MODEL_TYPES):
            raise UserInputError(f"unknown fusion model type '{self.model_type}'; choose one of: "
                                 f"{', '.join(FUSE_CHOICES)}")
        if self.num_heads < 0 or self.hidden_size < 0:
            raise UserInputError("fuse-transformer: num_heads and hidden_size must be >= 0 (0 = from the graph)")


def op_counts(model: Any) -> dict[str, int]:
    """Op type -> count (contrib ops as ``com.microsoft.Op``), for the report's before/after."""
    return dict(Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                        for n in model.graph.node))  # fmt: skip


def fused_counts(model: Any) -> dict[str, int]:
    """Contrib fused ops in ``model`` (``FUSED_OPS`` in the ``com.microsoft`` domain), by op type."""
    return dict(Counter(n.op_type for n in model.graph.node if n.domain == MS_DOMAIN and n.op_type in FUSED_OPS))


def detect_model_type(model: Any) -> str | None:
    """``"bert"`` when the graph has attention scores (Softmax fed, maybe through Mul/Div/Add, by a MatMul of two
    activations: Q x K^T), else None. Decoder-style graphs fuse as well with ``bert`` for the parts it knows."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        tensor, hops = node.input[0], 0
        while tensor in producer and hops < 4:
            upstream = producer[tensor]
            if upstream.op_type == "MatMul":
                if all(i not in constants for i in upstream.input):
                    return "bert"
                break
            if upstream.op_type not in ("Add", "Mul", "Div", "Where", "Cast"):
                break
            tensor, hops = upstream.input[0], hops + 1
    return None


def attention_geometry(model: Any) -> tuple[int, int]:
    """(num_heads, hidden_size) of the first attention block, (0, 0) when the graph does not say.

    Why: ONNX Runtime reads them from the Q Reshape's shape ``(0, 0, heads, head_dim)``; transformers 5
    reshapes to ``(*input_shape, -1, head_dim)``, which the dynamo exporter writes as a Concat ending in
    ``-1, head_dim``, so the optimizer gives up on Attention ("Failed to detect num_heads"). The heads are
    then the Q projection's output width (its weight's second dimension) over ``head_dim``.
    """
    from optpipe.onnx.attention_mask import constant_values

    values = constant_values(model)
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def parent(node: Any, index: int, *types: str) -> Any:
        found = producer.get(node.input[index]) if index < len(node.input) else None
        return found if found is not None and found.op_type in types else None

    for reshape in (n for n in model.graph.node if n.op_type == "Reshape"):
        concat = parent(reshape, 1, "Concat")
        found = [values.get(i) for i in concat.input[-2:]] if concat is not None and len(concat.input) == 4 else []
        tail = [t for t in found if t is not None and t.size == 1]
        if len(tail) != 2 or int(tail[1].item()) <= 0:
            continue
        heads, head_dim = int(tail[0].item()), int(tail[1].item())
        add = parent(reshape, 0, "Add")
        matmul = (parent(add, 0, "MatMul") or parent(add, 1, "MatMul")) if add is not None else None
        weight = dims.get(matmul.input[1]) if matmul is not None else None  # its shape only: weights may be external
        if weight is None or len(weight) != 2:
            continue
        hidden = int(weight[1])
        if heads <= 0 and hidden % head_dim == 0:
            heads = hidden // head_dim
        if heads > 0 and heads * head_dim == hidden:
            return heads, hidden
    return 0, 0


def shape_inference_works(model: Any) -> bool:
    """Whether ONNX Runtime's symbolic shape inference (the optimizer's) gets through ``model``.

    Why: without it the optimizer skips every SkipLayerNormalization ("symbolic shape inference failed").
    On all-MiniLM-L6-v2's dynamo graph it fails in the pooling head (a Clip after an opset-18 ReduceL2),
    far from the encoder, and 12 residual + LayerNorm pairs stayed unfused.
    """
    from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return bool(SymbolicShapeInferenceHelper(model).infer({"batch_size": 4, "seq_len": 7}))
    except Exception:  # the inference raises whatever its op handlers raise (TypeError, KeyError, AssertionError...)
        return False


@contextlib.contextmanager
def _shape_inference_on_skeletons() -> Iterator[None]:
    """While the optimizer runs, its symbolic shape inference copies the graph without the large weights.

    Why: each fusion that checks shapes (SkipLayerNormalization, the useless Cast/Reshape removal) makes a
    ``SymbolicShapeInferenceHelper``, whose ``_preprocess`` copies the whole model, weights included, and
    the fusions keep their helpers until the optimizer returns: BERT-base-wide 4 layers (209 MB) peaked at
    1.34 GB in the optimizer, 0.52 GB with this. Shapes depend on the initializers' shapes and on small
    constants, which :func:`~optpipe.precision.onnx_graph.skeleton` keeps; the fused model is the same
    bytes (tests/passes/test_fuse_transformer.py). The optimizer imports the helper by its top-level module
    name (``shape_infer_helper``) when it makes one, so that name is what is swapped, and put back after.
    """
    import importlib

    import onnxruntime.transformers  # noqa: F401  # puts the optimizer's folder, and its top-level modules, on the path

    from optpipe.precision.onnx_graph import skeleton

    module = importlib.import_module("shape_infer_helper")
    original: Any = getattr(module, "SymbolicShapeInferenceHelper")  # noqa: B009  # an untyped module

    class SkeletonShapeInference(original):
        def _preprocess(self, in_mp: Any) -> None:
            super()._preprocess(skeleton(in_mp))

    setattr(module, "SymbolicShapeInferenceHelper", SkeletonShapeInference)  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "SymbolicShapeInferenceHelper", original)  # noqa: B010


def run_optimizer(src: Any, model_type: str, num_heads: int, hidden_size: int, *, shape_inference: bool = True) -> Any:
    """ONNX Runtime's transformer optimizer on ``src`` (a path or a ModelProto; its fusions only), quietly.

    The attention mask stays the raw 2-D mask (``use_raw_attention_mask``): the optimizer's BERT default
    turns it into one "valid length" per row, which assumes right padding and would attend to the padding
    of a left-padded row. ``shape_inference`` False: fuse residual + LayerNorm without the optimizer's
    shape check (for a graph its inference fails on; the fused variant's gates judge the result).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.use_raw_attention_mask(True)
    options.enable_shape_inference = shape_inference

    sink = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("onnxruntime.transformers", "")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)  # "symbolic shape inference failed" is expected on dynamo graphs
        with contextlib.redirect_stdout(sink), _shape_inference_on_skeletons():
            optimizer = optimize_model(src if not isinstance(src, Path) else str(src), model_type=model_type,
                                       num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False,
                                       optimization_options=options)  # fmt: skip
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return optimizer.model


def _rewrite_masks(model: Any, base_dir: Path) -> dict[str, Any]:
    """Rewrite ``model``'s index-built attention masks in place (:mod:`optpipe.onnx.attention_mask`); its record.

    ``base_dir``: where the graph's external data lies (it was read without it).
    """
    from optpipe.onnx.attention_mask import rewrite_attention_masks

    done = rewrite_attention_masks(model, base_dir)
    return {"rewritten": len(done.rewritten), "mask_input": done.mask_input, "skipped": list(done.skipped)}


@dataclass(frozen=True)
class _Fused:
    """One fusion of this build: the variant that ran it and what it made (a fused file, nothing, or a skip)."""

    variant: str
    path: Path | None  # the fused model; None when nothing fused
    sha256: str
    skipped: str  # the skip's reason when the variant was skipped, else ""
    metrics: dict[str, Any]


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no second copy of the weights on disk), else a copy; always a copy for
    an external data file, which onnx refuses to read with several links ("a potential hardlink attack")."""
    if dst.exists():
        dst.unlink()
    if src.suffix == ".onnx":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or no hard links here
            pass
    shutil.copyfile(src, dst)


class FuseTransformerPass(Pass):
    """ONNX -> ONNX with ONNX Runtime's transformer fusions (``<variant>/fused.onnx``); cpu target only."""

    name = "fuse-transformer"
    description = "fuse attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm with ONNX Runtime's transformer optimizer"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = FuseTransformerConfig
    uses = ("onnx", "onnxruntime")
    cacheable = True  # deterministic given the input graph and the config

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The mask rewrite decides which attention blocks fuse (part of the cache key)."""
        from optpipe.onnx import attention_mask

        return (attention_mask,)

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        """Fuse ``artifact``, or hand back this build's earlier fusion of the same input and config.

        Why: ``fp32+fused`` and ``int8-dynamic+fused`` both fuse the simplified FP32 graph; on BERT-base
        the second fusion cost another 9 s and a second peak of the optimizer's memory for the same bytes.
        """
        key = ("fuse-transformer", artifact.sha256, json.dumps(self.config_dict(), sort_keys=True, default=str))
        earlier: _Fused | None = ctx.shared.get(key)
        if earlier is None:
            try:
                result = self._fuse(artifact, ctx)
            except VariantSkipped as skipped:
                ctx.shared[key] = _Fused(artifact.precision, None, "", skipped.reason, dict(skipped.metrics))
                raise
            fused = result.artifact.path if result.modified else None
            ctx.shared[key] = _Fused(artifact.precision, fused, result.artifact.sha256, "", dict(result.metrics))
            return result
        return self._reuse(earlier, artifact, ctx)

    def _reuse(self, earlier: _Fused, artifact: Artifact, ctx: BuildContext) -> PassResult:
        """The earlier fusion's files linked (else copied) into this variant's folder, its metrics noted as shared."""
        from optpipe.onnx.utils import onnx_files

        metrics = {**earlier.metrics, "shared_with": earlier.variant}
        if earlier.skipped:
            raise VariantSkipped(earlier.skipped.replace(earlier.variant, artifact.precision, 1), metrics)
        if earlier.path is None:
            return PassResult(artifact, modified=False, metrics=metrics, warnings=[])
        dst = ctx.path(artifact.precision, earlier.path.name)
        for file in onnx_files(earlier.path):
            _link_or_copy(file, dst.parent / file.name)
        ctx.log(f"     fuse-transformer: the graph {earlier.variant} fused, reused (same input and options)")
        out = artifact.derive(path=dst, sha256=earlier.sha256, producer="fuse-transformer/ort")
        return PassResult(out, modified=True, metrics=metrics)

    def _fuse(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        import onnx

        from optpipe.precision import onnx_graph

        assert artifact.path is not None
        src = Path(artifact.path)
        with tempfile.TemporaryDirectory(prefix="optpipe-fuse-") as tmp:
            # One read of the model: a copy whose weights are external data. Its graph (read without them) serves
            # detection, the mask rewrite and the geometry (small constants stay inline), and the optimizer,
            # which reads its input twice, reads the graph twice, not the model (the weights are loaded after).
            light = onnx_graph.externalized_copy(src, Path(tmp))
            graph = onnx.load(str(light), load_external_data=False)
            model_type = self.config.model_type
            if model_type == FUSE_AUTO:
                model_type = detect_model_type(graph) or ""
            metrics: dict[str, Any] = {"model_type": model_type or None, "ops_before": op_counts(graph)}
            if not model_type:
                return self._unchanged(artifact, metrics,
                                       "no attention (Softmax over a MatMul of two activations) found")
            nodes_before = len(graph.graph.node)
            metrics["mask_rewrite"] = _rewrite_masks(graph, Path(tmp))
            heads, hidden = self.config.num_heads, self.config.hidden_size
            if not heads or not hidden:
                heads, hidden = attention_geometry(graph)
            metrics["shape_inference"] = shape_inference_works(graph)
            onnx.save(graph, str(light))  # the rewritten graph; its weights stay in the copy's data file
            del graph
            fused_model = run_optimizer(light, model_type, heads, hidden, shape_inference=metrics["shape_inference"])
            release_free_heap()  # the optimizer's own graphs (in reference cycles), before the weights come in
            onnx.load_external_data_for_model(fused_model, tmp)  # before the temporary folder goes
        fused = fused_counts(fused_model)
        metrics.update(ops_after=op_counts(fused_model), fused=fused)
        if not fused:
            return self._unchanged(artifact, metrics, f"ONNX Runtime's '{model_type}' optimizer fused nothing")
        dst = ctx.path(artifact.precision, "fused.onnx")
        files = onnx_graph.save_atomic(fused_model, dst, self.config.external_data_above)
        metrics["nodes"] = {"before": nodes_before, "after": len(fused_model.graph.node)}
        out = artifact.derive(path=dst, sha256=sha256_files(files), producer="fuse-transformer/ort")
        return PassResult(out, modified=True, metrics=metrics)

    def _unchanged(self, artifact: Artifact, metrics: dict[str, Any], why: str) -> PassResult:
        """The input unchanged; in a fused variant, the variant skipped with ``why``."""
        metrics["status"] = "nothing_fused"
        if self.config.skip_when_unchanged:
            raise VariantSkipped(f"{artifact.precision} skipped: nothing to fuse ({why}); the unfused variant is "
                                 "the same model", metrics)  # fmt: skip
        return PassResult(artifact, modified=False, metrics=metrics, warnings=[])

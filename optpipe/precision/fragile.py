"""Nodes known to break ONNX Runtime's CPU-style static INT8, excluded before the guard starts.

On real transformers the attention-mask Add (scores + mask, the mask holding
values near -3.4e38 or -1e4) and the Softmax it feeds wreck an INT8 activation
range: one quantization step then spans the whole useful range, and a guard
that starts from there needs many rebuilds to find them (measured: cosine 0.28
at the start on all-MiniLM-L6-v2, see DESIGN.md). Keeping them in FP32 from
the start costs little time (they are element-wise) and saves those rounds.
"""

from __future__ import annotations

import onnx


def mask_softmax_nodes(model: onnx.ModelProto) -> list[str]:
    """Each Softmax fed directly by an Add, and that Add (the attention-mask pattern), by node name."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or not node.input:
            continue
        source = producer.get(node.input[0])
        if source is not None and source.op_type == "Add" and source.name and node.name:
            names.extend(n for n in (source.name, node.name) if n not in names)
    return names

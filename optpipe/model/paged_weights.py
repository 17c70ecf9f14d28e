"""A PyTorch module's weights moved to a file mapped from disk, once the build no longer reads them for a while.

Why: after the export (and the golden reference outputs), the ONNX passes never touch the PyTorch model
until the benchmark times it, yet its weights stayed resident all build long: one whole copy of the
weights under every pass's peak (BERT-base 0.42 GB, the 2.4 GB model 2.4 GB), when issue 20's rule is
one copy per process beyond what a step needs. Here the parameters and buffers are written once to a
scratch file and reloaded with ``torch.load(mmap=True)``: the same values, backed by the file's pages,
which the kernel brings in when the benchmark runs the model and which count in no pass's resident set
before that. Each tensor keeps its identity (``tensor.data`` is swapped), so a caller's references to its
parameters (an optimizer) stay valid, and the mapping is private: a write to a weight changes memory only.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from optpipe.core.memory import release_free_heap

#: Modules with fewer bytes of weights keep them in memory (writing and mapping a file costs more than they do).
PAGE_OUT_ABOVE = 64 << 20


@dataclass(frozen=True)
class PagedOut:
    """What :func:`page_out` did: the bytes now mapped from disk (0: nothing moved) and why not, if so."""

    bytes: int
    skipped: str | None = None


def _cpu_tensors(module: Any) -> dict[str, Any]:
    """The module's dense CPU parameters and buffers by name, each tensor once."""
    import torch

    found: dict[str, Any] = {}
    seen: set[int] = set()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if (tensor is None or id(tensor) in seen or tensor.device.type != "cpu" or tensor.layout != torch.strided
                or tensor.is_quantized):
            continue
        seen.add(id(tensor))
        found[name] = tensor
    return found


def page_out(module: Any, *, above: int | None = None) -> PagedOut:
    """Back ``module``'s weights by a file mapped from disk (see the module docstring); what was moved.

    A module without ``named_parameters`` (not an ``nn.Module``) or with under ``above`` bytes of weights
    (default :data:`PAGE_OUT_ABOVE`) is left as it is. The scratch file is removed at once: the mapping keeps
    its pages (POSIX), and where the system refuses to remove a mapped file it goes with the temporary files.
    """
    import torch

    if not callable(getattr(module, "named_parameters", None)):
        return PagedOut(0, "not a torch.nn.Module")
    tensors = _cpu_tensors(module)
    total = sum(t.untyped_storage().nbytes() for t in tensors.values())
    above = PAGE_OUT_ABOVE if above is None else above
    if total < above:
        return PagedOut(0, f"{total} bytes of weights, under {above}")
    with tempfile.TemporaryDirectory(prefix="optpipe-weights-", ignore_cleanup_errors=True) as folder:
        path = f"{folder}/weights.pt"
        torch.save({name: t.detach() for name, t in tensors.items()}, path)
        mapped = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.data = mapped[name]
    release_free_heap()  # what the old storages' pages were, when the allocator kept them
    return PagedOut(total)


class WeightsPager:
    """A pipeline instrument that pages the PyTorch weights out (:func:`page_out`) as soon as the export pass ran.

    Why not after the whole prefix: the simplify pass that follows the export holds the ONNX weights and
    two ONNX Runtime sessions' worth of them, and the PyTorch copy sat under that too (the 2.4 GB model).
    A cached export does not run: :meth:`page` after the prefix then does it, once.
    """

    def __init__(self) -> None:
        self.paged: PagedOut | None = None

    def before_pass(self, pass_: Any, artifact: Any, ctx: Any) -> None:
        return None

    def after_pass(self, pass_: Any, artifact: Any, result: Any, ctx: Any) -> None:
        if pass_.name == "export" and getattr(result, "skipped", None) is None:
            self.page(ctx.model)

    def page(self, module: Any) -> PagedOut:
        """Page ``module`` out unless this pager already did; what it moved."""
        if self.paged is None:
            self.paged = page_out(module)
        return self.paged

"""The precision names, in one place: every layer that names a variant reads them here."""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int4-weight")
AUTO = "auto"
#: A variant name's suffix for the cpu target's transformer-fused variants (``int8-dynamic+fused``).
FUSED_SUFFIX = "+fused"
#: The precisions that have a fused variant (fusion before precision; the fused ops are FP32 ORT contrib ops).
FUSED_PRECISIONS = ("fp32" + FUSED_SUFFIX, "int8-dynamic" + FUSED_SUFFIX)


def base_precision(variant: str) -> str:
    """The precision of a variant name: ``int8-dynamic+fused`` -> ``int8-dynamic`` (gates and tolerances are its)."""
    return variant.removesuffix(FUSED_SUFFIX)

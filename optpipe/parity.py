"""Numerical parity between a compiled artifact and the PyTorch reference.

Per output we report max abs / max rel / mean abs error (as Polygraphy's
comparator does), the mean and minimum per-sample cosine similarity, and for
classifier-like outputs (``[N, C]`` with ``C >= 2``) the top-1 agreement.
Gates are per precision with per-output overrides: FP32 must match
element-wise; reduced precisions are judged by cosine and top-1, because
element-wise tolerances either reject every INT8 model or accept broken ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from optpipe.build_options import base_precision
from optpipe.errors import UserInputError, first_line

if TYPE_CHECKING:
    from optpipe.pass_base import BuildContext


@dataclass(frozen=True)
class Tolerance:
    """Thresholds one output must meet; ``None`` disables a check."""

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    min_row_cosine: float | None = None  # embeddings only: the worst row's cosine (optpipe.output_kinds)
    # logits only: top-1 is gated over rows whose reference top class leads the runner-up by at least this
    # much probability; closer rows are near ties, reported but not gated (optpipe.output_kinds)
    top1_margin: float | None = None

    def with_overrides(self, overrides: Mapping[str, float]) -> Tolerance:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise UserInputError(
                f"unknown tolerance field(s) {', '.join(sorted(unknown))}; expected one of {', '.join(sorted(known))}"
            )
        return replace(self, **overrides)


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.99, min_row_cosine=0.995, top1_margin=0.05),
    # INT8: 95% top-1 agreement over decided rows (issue 9's bar for INT8 on real photos), with cosine 0.99.
    "int8": Tolerance(min_cosine=0.99, min_top1=0.95, min_row_cosine=0.98, top1_margin=0.05),
    "int8-dynamic": Tolerance(min_cosine=0.99, min_top1=0.95, min_row_cosine=0.98, top1_margin=0.05),
}


def tolerance_for(
    precision: str, output: str, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> Tolerance:
    """Default tolerance of a precision, with ``overrides[output]`` then ``overrides['*']`` applied."""
    base = DEFAULT_TOLERANCES.get(base_precision(precision), DEFAULT_TOLERANCES["int8"])
    overrides = overrides or {}
    for key in ("*", output):
        if key in overrides:
            base = base.with_overrides(overrides[key])
    return base


@dataclass
class OutputParity:
    """Error statistics of one output over all golden cases."""

    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    cosine_min: float
    top1_agreement: float | None
    samples: int
    passed: bool = True
    failures: tuple[str, ...] = ()
    tolerance: dict[str, float | None] | None = None
    # |error| histogram over every element (log10 bins), for the HTML report.
    error_histogram: dict[str, Any] | None = None
    # Why top-1 agreement is missing or covers fewer rows: rows whose reference scores tie (all zero...)
    # have no top-1 class, so agreement on them means nothing and is neither reported nor gated.
    top1_note: str | None = None
    # Rows of real held-out data (eval data, rows held out of the calibration data) among ``samples``:
    # the rest are the example's rows, repeated at other batch sizes.
    heldout_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        return data


def _per_sample_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each sample's output vector with the reference's.

    An output with one value per sample (a regression head, ``[N]`` or
    ``[N, 1]``) has no direction per sample: its "cosine" would only be the
    sign agreement (+1/-1), which flips for values near zero however small the
    error. Such outputs are compared as one vector over the batch instead.
    """
    if ref.ndim == 0:
        ref, got = ref.reshape(1, 1), got.reshape(1, 1)
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = got.reshape(got.shape[0], -1).astype(np.float64)
    if a.shape[1] == 1:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def _decided_rows(scores: np.ndarray) -> np.ndarray:
    """Rows of ``[N, C]`` reference scores with a unique top class (no tie within float noise)."""
    ordered = np.sort(scores, axis=1)
    top, second = ordered[:, -1], ordered[:, -2]
    return (top - second) > 1e-6 * np.maximum(np.abs(top), 1.0)


def is_classifier_like(shape: Sequence[int]) -> bool:
    """Logits-shaped: ``[N, C]`` with at least two classes."""
    return len(shape) == 2 and shape[1] >= 2


def error_histogram(errors: np.ndarray, max_bins: int = 24) -> dict[str, Any]:
    """A small histogram of absolute errors with log10-spaced bins.

    Errors span many decades (1e-9 for FP32 to 1e-1 for INT8), so linear bins
    would put everything in one bar. Exact zeros and non-finite values, which a
    log axis cannot place, are counted separately.
    """
    values = np.asarray(errors, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    edges: list[float] = []
    counts: list[int] = []
    if positive.size:
        low = int(np.floor(np.log10(positive.min())))
        high = max(int(np.ceil(np.log10(positive.max()))), low + 1)
        bins = min(max_bins, 4 * (high - low))
        edge_array = 10.0 ** np.linspace(low, high, bins + 1)
        counts = [int(c) for c in np.histogram(positive, bins=edge_array)[0]]
        edges = [float(f"{e:.4g}") for e in edge_array]
    return {
        "scale": "log10",
        "edges": edges,
        "counts": counts,
        "zeros": int(finite.size - positive.size),
        "nonfinite": int(values.size - finite.size),
        "total": int(values.size),
    }


def compare_output(
    references: Sequence[np.ndarray], results: Sequence[np.ndarray], tolerance: Tolerance
) -> OutputParity:
    """Compare one output across cases and judge it against ``tolerance``."""
    abs_errors, rel_errors, cosines, agreements = [], [], [], []
    tied_rows = classifier_rows = 0
    elementwise_ok = True
    total = 0
    for ref, got in zip(references, results, strict=True):
        if ref.shape != got.shape:
            raise ValueError(f"shape {tuple(got.shape)} differs from the reference {tuple(ref.shape)}")
        r = ref.astype(np.float64)
        g = got.astype(np.float64)
        if not np.all(np.isfinite(g)):
            abs_errors.append(np.array([np.inf]))
            rel_errors.append(np.array([np.inf]))
            cosines.append(np.zeros(max(1, r.shape[0] if r.ndim else 1)))
            elementwise_ok = False
            continue
        diff = np.abs(r - g)
        abs_errors.append(diff.ravel())
        rel_errors.append((diff / np.maximum(np.abs(r), 1e-12)).ravel())
        cosines.append(_per_sample_cosine(r, g))
        if tolerance.atol is not None or tolerance.rtol is not None:
            allowed = (tolerance.atol or 0.0) + (tolerance.rtol or 0.0) * np.abs(r)
            elementwise_ok &= bool(np.all(diff <= allowed))
        if is_classifier_like(ref.shape):
            decided = _decided_rows(r)
            tied_rows += int(np.count_nonzero(~decided))
            classifier_rows += int(decided.size)
            agreements.append((np.argmax(r, axis=1) == np.argmax(g, axis=1))[decided])
        total += r.shape[0] if r.ndim else 1
    abs_all = np.concatenate(abs_errors) if abs_errors else np.zeros(1)
    rel_all = np.concatenate(rel_errors) if rel_errors else np.zeros(1)
    cos_all = np.concatenate(cosines) if cosines else np.ones(1)
    decided_all = np.concatenate(agreements) if agreements else np.zeros(0, dtype=bool)
    top1 = float(np.mean(decided_all)) if decided_all.size else None
    top1_note = None
    if tied_rows and top1 is None:
        top1_note = f"not meaningful: the reference scores tie in all {tied_rows} rows (e.g. all zero)"
    elif tied_rows:
        top1_note = f"{tied_rows} of {classifier_rows} rows left out: their reference scores tie"
    histogram = error_histogram(abs_all)
    parity = OutputParity(
        max_abs=float(abs_all.max()) if abs_all.size else 0.0,
        max_rel=float(rel_all.max()) if rel_all.size else 0.0,
        mean_abs=float(abs_all.mean()) if abs_all.size else 0.0,
        cosine=float(cos_all.mean()),
        cosine_min=float(cos_all.min()),
        top1_agreement=top1,
        samples=total,
        tolerance=asdict(tolerance),
        error_histogram=histogram,
        top1_note=top1_note,
    )
    failures = []
    if not elementwise_ok:
        failures.append(f"element-wise error above atol={tolerance.atol} rtol={tolerance.rtol}")
    if tolerance.min_cosine is not None and not parity.cosine >= tolerance.min_cosine:
        failures.append(f"cosine {parity.cosine:.6f} < {tolerance.min_cosine}")
    if tolerance.min_top1 is not None and top1 is not None and top1 < tolerance.min_top1:
        failures.append(f"top-1 agreement {top1:.4f} < {tolerance.min_top1}")
    parity.failures = tuple(failures)
    parity.passed = not failures
    return parity


def judge_output(
    name: str,
    references: Sequence[np.ndarray],
    results: Sequence[np.ndarray],
    tolerance: Tolerance,
    kinds: Mapping[str, str],
    keys: Sequence[Sequence[bytes]] | None = None,
) -> dict[str, Any]:
    """Parity record of one output: statistics plus the gates that fit its kind (optpipe.output_kinds).

    Top-1 is left to the kind's judgement (gated for ``logits`` over enough
    distinct rows only), so it is taken out of the statistics' own verdict.
    """
    from optpipe.output_kinds import infer_kind, judge

    kind = kinds.get(name) or infer_kind(name, np.asarray(references[0]))
    parity = compare_output(references, results, replace(tolerance, min_top1=None, min_row_cosine=None))
    verdict = judge(kind, references, results, min_top1=tolerance.min_top1,
                    min_row_cosine=tolerance.min_row_cosine, row_keys=keys, top1_margin=tolerance.top1_margin)
    if parity.top1_agreement is None and verdict.top1_agreement is not None:  # tied reference scores: no top-1
        verdict = replace(verdict, top1_agreement=None, top1_gated=False,
                          failures=tuple(f for f in verdict.failures if not f.startswith("top-1")),
                          warnings=tuple(w for w in verdict.warnings if not w.startswith("top-1")))  # fmt: skip
    record = parity.to_dict()
    record.update(
        kind=kind, rows=verdict.rows, top1_gated=verdict.top1_gated, top1_agreement=verdict.top1_agreement,
        row_cosine_mean=verdict.row_cosine_mean, row_cosine_min=verdict.row_cosine_min,
        neighbour_agreement=verdict.neighbour_agreement, tolerance=asdict(tolerance),
        top1_decided_agreement=verdict.top1_decided_agreement, top1_decided_rows=verdict.top1_decided_rows,
        failures=[*record["failures"], *verdict.failures], warnings=list(verdict.warnings),
    )
    record["passed"] = not record["failures"]
    return record


#: Golden cases of real held-out rows (:func:`optpipe.golden.heldout_feeds`).
HELDOUT_CASES = ("heldout", "calib-heldout")


def validate_outputs(
    runner: Any, ctx: BuildContext, precision: str, tolerances: dict[str, dict[str, float]],
    output_kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Parity record of one engine: per-output statistics, verdict and failures.

    Shared by the validate pass, the precision passes' accuracy gate and
    ``optpipe verify``, so a candidate, a built engine and a re-check are judged
    by one rule. Lives here, not in the validate pass, so library code never
    imports ``optpipe.passes``. ``output_kinds`` are the kinds the user set; the
    others are inferred from the golden outputs (:func:`optpipe.golden.output_kinds_of`),
    so every caller judges an output as the same kind.
    """
    from optpipe.golden import output_kinds_of
    from optpipe.output_kinds import row_keys
    from optpipe.progress import Progress

    assert ctx.golden is not None
    kinds = output_kinds_of(ctx.golden, output_kinds)
    references: dict[str, list[np.ndarray]] = {name: [] for name in ctx.output_names}
    results: dict[str, list[np.ndarray]] = {name: [] for name in ctx.output_names}
    heldout_rows = dict.fromkeys(ctx.output_names, 0)
    failures: list[str] = []
    warnings: list[str] = []
    keys: dict[str, list[list[bytes]]] = {name: [] for name in ctx.output_names}
    progress = Progress("validate", len(ctx.golden.cases))
    for index, case in enumerate(ctx.golden.cases):
        progress.update(index)
        try:
            got = runner.infer(case.inputs)
        except Exception as error:
            first = first_line(error, with_type=False)
            failures.append(f"inference failed on case '{case.name}' (batch {case.batch}): {first}")
            continue
        for name in ctx.output_names:
            if got[name].shape != case.outputs[name].shape:
                failures.append(
                    f"output '{name}' shape {tuple(got[name].shape)} != reference "
                    f"{tuple(case.outputs[name].shape)} on case '{case.name}'"
                )
                continue
            references[name].append(case.outputs[name])
            results[name].append(got[name])
            keys[name].append(row_keys(case.inputs))
            heldout_rows[name] += case.batch if case.name.startswith(HELDOUT_CASES) else 0
    progress.close()
    outputs = {}
    for name in ctx.output_names:
        if not references[name]:
            continue
        record = judge_output(name, references[name], results[name], tolerance_for(precision, name, tolerances),
                              kinds, keys[name])
        record["heldout_rows"] = heldout_rows[name]
        outputs[name] = record
        failures.extend(f"output '{name}': {failure}" for failure in record["failures"])
        warnings.extend(f"output '{name}': {warning}" for warning in record["warnings"])
    return {
        "cases": [{"name": c.name, "batch": c.batch} for c in ctx.golden.cases],
        "outputs": outputs,
        "passed": not failures,
        "failures": failures,
        "warnings": warnings,
    }


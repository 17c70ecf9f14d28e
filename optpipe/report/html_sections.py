"""report.html sections added after the first page: deployment facts, timing stability, per-op profile.

Kept apart from :mod:`optpipe.report.html` (the page layout and the charts it
started with) so each file stays readable; both render from the report dict
only. The facts table answers what a deploy review asks besides parity:
task accuracy, artifact size, throughput, host memory, and over how many rows
each gate judged. Timings from a shared machine can be noisy: a variant whose
p90 is far above its p50 gets a visible warning rather than a quiet number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optpipe.report.html_svg import Scale
from optpipe.report.html_svg import axis as _axis
from optpipe.report.html_svg import color as _color
from optpipe.report.html_svg import esc as _e
from optpipe.report.html_svg import fmt as _fmt
from optpipe.report.html_svg import svg as _svg
from optpipe.report.metrics import artifact_size

# p90 more than this much above p50 means a run whose median deserves caution
UNSTABLE_P90_OVER_P50 = 1.5


def _size(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _rows_judged(variant: Mapping[str, Any]) -> str:
    """Rows each output's gate compared (all golden cases together), e.g. ``logits: 70``."""
    outputs = (variant.get("parity") or {}).get("outputs") or {}
    parts = [f"{name}: {values.get('samples')}" for name, values in outputs.items() if values.get("samples")]
    return ", ".join(parts) or "–"


def facts_table(report: Mapping[str, Any], out_dir: Path | None = None) -> str:
    """Per variant: accuracy (and drop), artifact size, throughput, peak host RSS, rows each gate judged."""
    head = ("<tr><th>variant</th><th class=num>accuracy</th><th class=num>artifact size</th>"
            "<th class=num>throughput</th><th class=num>peak RSS</th><th>rows judged per gate</th></tr>")
    rows = []
    for variant in report.get("variants") or []:
        accuracy = variant.get("accuracy") or {}
        acc = (f"{accuracy['accuracy']:.2f}% ({accuracy.get('drop_points', 0):+.2f})"
               if accuracy.get("accuracy") is not None else "–")
        size = variant.get("size_bytes")
        if size is None and out_dir is not None:
            size = artifact_size(out_dir, variant.get("artifact"))
        throughput = (variant.get("latency") or {}).get("throughput")
        peak = (variant.get("memory") or {}).get("peak_rss_mb")
        rows.append(
            f"<tr><td><b>{_e(variant.get('precision'))}</b></td><td class=num>{_e(acc)}</td>"
            f"<td class=num>{_size(size)}</td>"
            f"<td class=num>{f'{throughput:,.0f}/s' if throughput else '–'}</td>"
            f"<td class=num>{f'{peak:.0f} MB' if peak else '–'}</td><td>{_e(_rows_judged(variant))}</td></tr>"
        )
    reference = (report.get("accuracy") or {}).get("torch_fp32") or {}
    note = (f"<p class='muted small'>PyTorch FP32 accuracy {reference['accuracy']:.2f}% on "
            f"{reference.get('samples')} labelled rows; drop in points.</p>" if reference.get("accuracy") else "")
    return f"<table>{head}{''.join(rows)}</table>{note}"


def unstable_timings(report: Mapping[str, Any]) -> list[str]:
    """One line per runtime whose p90/p50 exceeds :data:`UNSTABLE_P90_OVER_P50`."""
    timed = [(str(v.get("precision")), v.get("latency") or {}) for v in report.get("variants") or []]
    timed.append(("PyTorch eager", report.get("baseline") or {}))
    lines = []
    for name, latency in timed:
        p50, p90 = latency.get("p50_ms"), latency.get("p90_ms")
        if p50 and p90 and p90 / p50 > UNSTABLE_P90_OVER_P50:
            lines.append(f"{name}: p90 {p90:.3g} ms is {p90 / p50:.1f}× its p50 {p50:.3g} ms (other load on "
                         "the machine?): speedups from this run are uncertain; rerun on a quiet machine")
    from optpipe.runtime.timing import DRIFT_LIMIT

    moved = ((report.get("benchmark") or {}).get("drift") or {}).get("torch")
    if moved and moved > DRIFT_LIMIT:  # the one baseline changed speed during the run
        lines.append(f"PyTorch eager (the baseline): its slowest block median is {moved:.2f}× its fastest: the "
                     "load changed while timing, so every speedup is uncertain; rerun on a quiet machine")
    return lines


def stability_banner(report: Mapping[str, Any]) -> str:
    lines = unstable_timings(report)
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f"<div class=unstable role=alert><b>Unstable timings</b><ul>{items}</ul></div>"


def profile_chart(profile: Mapping[str, Any], color: str, limit: int = 12) -> str:
    """Horizontal bars: share of node time per op type."""
    ops: Sequence[Mapping[str, Any]] = list(profile.get("op_types") or [])[:limit]
    if not ops:
        return '<p class="muted">No op recorded.</p>'
    width, left, right, row_h = 1080, 190, 150, 26
    height = 16 + row_h * len(ops) + 36
    scale = Scale(0.0, max(float(o["percent"]) for o in ops) * 1.1 or 1.0, left, width - right)
    body = [_axis(scale, height - 30, height - 36, "% of node time")]
    for index, op in enumerate(ops):
        y = 12 + index * row_h
        body.append(f'<text x="{left - 10}" y="{y + row_h / 2 + 3:.1f}" font-size="12" text-anchor="end">'
                    f'{_e(op["op_type"])} ×{int(op["nodes"])}</text>')
        body.append(f'<rect class=opbar x="{left}" y="{y + 4:.1f}" width="{scale(float(op["percent"])) - left:.1f}" '
                    f'height="{row_h - 9:.1f}" rx="3" fill="{color}"/>')
        body.append(f'<text x="{scale(float(op["percent"])) + 6:.1f}" y="{y + row_h / 2 + 3:.1f}" font-size="12">'
                    f'{float(op["percent"]):.1f}% · {float(op["total_ms"]):.3g} ms</text>')
    return _svg(width, height, body, "time per op type")


def profile_section(report: Mapping[str, Any]) -> str:
    """The per-op profile of each variant built with ``--profile``: bar chart and slowest nodes."""
    blocks = []
    for index, variant in enumerate(report.get("variants") or []):
        profile = variant.get("profile")
        if not profile:
            continue
        rows = "".join(
            f"<tr><td><code>{_e(n['node'])}</code></td><td>{_e(n['op_type'])}</td>"
            f"<td>{_e(n.get('module_path') or '')}</td><td class=num>{_fmt(n['mean_us'], 4)}</td>"
            f"<td class=num>{float(n['percent']):.1f}%</td></tr>"
            for n in profile.get("top_nodes") or []
        )
        blocks.append(
            f"<h3>{_e(variant['precision'])} · {_e(profile.get('runtime'))} · {_e(profile.get('runs'))} runs</h3>"
            f"{profile_chart(profile, _color(index))}<table><tr><th>node</th><th>op</th><th>module</th>"
            f"<th class=num>µs per run</th><th class=num>share</th></tr>{rows}</table>"
        )
    if not blocks:
        return ""
    return ("<section id=profile><h2>Where the time goes (per-op profile)</h2><p class='muted small'>Profiler "
            "time per node over the golden inputs; the profiler adds overhead per node, so read shares, not "
            "latency.</p>" + "".join(blocks) + "</section>")


def _mb(value: Any) -> str:
    """A size in MiB without decimals, or a dash when it was not measured."""
    return f"{float(value):.0f}" if isinstance(value, int | float) else "–"


def _memory_line(memory: Mapping[str, Any]) -> str:
    """The build's peak RSS, the estimate it was checked with before any work, and the limit."""
    if memory.get("peak_rss_mb") is None:
        return ""
    calib = f"; calibration {memory['calib_rows']} row per run" if memory.get("calib_rows") else ""
    text = (f"Build peak RSS {_mb(memory['peak_rss_mb'])} MiB (process {_mb(memory.get('process_peak_rss_mb'))} "
            f"MiB); estimated before the build: {_mb(memory.get('estimate_mb'))} MiB from "
            f"{_mb(memory.get('weights_mb'))} MiB of FP32 weights, limit {_mb(memory.get('limit_mb'))} MiB "
            f"({memory.get('limit_source') or 'none'}){calib}.")
    return f"<p class='muted small'>{_e(text)}</p>"


def pass_table(report: Mapping[str, Any]) -> str:
    """Every pass with its wall time and the process's peak RSS while it ran, after the build's memory line.

    Why a table beside the timeline: which step costs what memory is what a user of a large model needs
    to see first (issue 20); the peak is process-wide, so the highest row (bold) is the step to look at.
    """
    passes = report.get("passes") or []
    line = _memory_line(report.get("memory") or {})
    if not passes:
        return line
    peak = max((float(p.get("peak_rss_mb") or 0) for p in passes), default=0.0)
    rows = []
    for record in passes:
        rss = _mb(record.get("peak_rss_mb"))
        if peak and record.get("peak_rss_mb") == peak:
            rss = f"<b>{rss}</b>"
        rows.append(f"<tr><td>{_e(record.get('name'))}</td><td>{_e(record.get('variant'))}</td>"
                    f"<td>{_e(record.get('status'))}</td><td class=num>{float(record.get('seconds') or 0):.2f}</td>"
                    f"<td class=num>{rss}</td></tr>")
    return (f"{line}<table><thead><tr><th>pass</th><th>variant</th><th>status</th><th>seconds</th>"
            f"<th>peak RSS (MiB)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")

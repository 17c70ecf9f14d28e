"""report.html: serving shapes (latency at the data's real lengths) and the batch x threads sweep.

Two line charts against batch size, one line per runtime and thread count: p50 latency (p99
dashed) and throughput. Log scales on both axes: the batch doubles from point to point and
latency grows with it, so a linear axis would squeeze the small batches a server cares about
into one corner. The recommended point (the best throughput within the latency budget) is
ringed and named in words above the charts; every figure is also in a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optpipe.report.html_svg import Scale, axis, color, esc, svg

TORCH_COLOR = "#6c757d"


def _series(points: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    """Points grouped by (runtime, threads), each group sorted by batch."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for point in points:
        groups.setdefault((str(point["runtime"]), int(point["threads"])), []).append(point)
    return {key: sorted(group, key=lambda p: int(p["batch"])) for key, group in sorted(groups.items())}


def sweep_chart(sweep: Mapping[str, Any], field: str, unit: str, dashed: str | None = None) -> str:
    """``field`` (and ``dashed``, e.g. p99 beside p50) against batch, one line per runtime and thread count."""
    points = list(sweep.get("points") or [])
    values = [float(p[f]) for p in points for f in (field, dashed) if f and float(p[f]) > 0]
    if not values:
        return '<p class="muted">No sweep point was measured.</p>'
    batches = [int(p["batch"]) for p in points]
    width, height, left, right, top, bottom = 1080, 300, 70, 230, 16, 44
    x = Scale(min(batches), max(batches) * 1.05 if len(set(batches)) > 1 else min(batches) + 1, left,
              width - right, log=len(set(batches)) > 1)
    y = Scale(min(values) / 1.2, max(values) * 1.2, height - bottom, top, log=max(values) / min(values) > 10)
    body = [axis(x, height - bottom, height - bottom - top, "batch size")]
    for value, label in y.ticks():
        body.append(f'<text x="{left - 8}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end" '
                    f'fill="#59636e">{esc(label)}</text>')
    body.append(f'<text x="{left - 8}" y="{top - 4}" font-size="11" text-anchor="end" '
                f'fill="#59636e">{esc(unit)}</text>')
    best = sweep.get("best") or {}
    for index, ((runtime, threads), group) in enumerate(_series(points).items()):
        stroke = TORCH_COLOR if runtime == "torch" else color(index)
        width_px = 1.5 if runtime == "torch" else 2.5
        for key, dash in ((field, ""), (dashed, ' stroke-dasharray="5 4"')):
            if key is None:
                continue
            path = " ".join(f"{x(int(p['batch'])):.1f},{y(float(p[key])):.1f}" for p in group)
            body.append(f'<polyline points="{path}" fill="none" stroke="{stroke}" stroke-width="{width_px}"{dash}/>')
        for p in group:
            ringed = best and runtime == sweep.get("variant") and (p["batch"], p["threads"]) == (
                best.get("batch"), best.get("threads"))
            radius, ring = (7, ' fill-opacity="0.25" stroke-width="2"') if ringed else (3, "")
            body.append(f'<circle cx="{x(int(p["batch"])):.1f}" cy="{y(float(p[field])):.1f}" r="{radius}" '
                        f'fill="{stroke}" stroke="{stroke}"{ring}><title>{esc(runtime)} batch {p["batch"]}, '
                        f'{threads} thread(s): {float(p[field]):.4g} {esc(unit)}</title></circle>')
        label_y = top + 14 + index * 16
        body.append(f'<text x="{width - right + 12}" y="{label_y}" font-size="12" fill="{stroke}">'
                    f'{esc("PyTorch eager" if runtime == "torch" else runtime)}, {threads} thread(s)</text>')
    return svg(width, height, body, f"{field} against batch size")


def _sweep_table(sweep: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{esc(p['runtime'])}</td><td class=num>{esc(p['batch'])}</td><td class=num>{esc(p['threads'])}</td>"
        f"<td class=num>{float(p['p50_ms']):.3f}</td><td class=num>{float(p['p99_ms']):.3f}</td>"
        f"<td class=num>{float(p['throughput']):.1f}</td><td class=num>{esc(p['calls'])}</td></tr>"
        for p in sorted(sweep.get("points") or [], key=lambda p: (p["runtime"], p["threads"], p["batch"])))
    return ("<table><tr><th>runtime</th><th class=num>batch</th><th class=num>threads</th><th class=num>p50 ms</th>"
            f"<th class=num>p99 ms</th><th class=num>rows/s</th><th class=num>calls</th></tr>{rows}</table>")


def sweep_section(report: Mapping[str, Any]) -> str:
    """The sweep of ``optpipe sweep`` / ``build --sweep``, or nothing when the report has none."""
    sweep = report.get("sweep")
    if not sweep:
        return ""
    best, budget = sweep.get("best"), sweep.get("latency_budget_ms")
    within = f"within a p99 latency of {budget:g} ms" if budget is not None else "(no latency budget given)"
    if best:
        verdict = (f"Best throughput {within}: <b>batch {esc(best['batch'])}, {esc(best['threads'])} thread(s)</b>, "
                   f"{float(best['throughput']):.1f} rows/s (p99 {float(best['p99_ms']):.2f} ms).")
    else:
        verdict = f"No batch size meets the latency budget {within}."
    seq = sweep.get("seq_length")
    shape = f" Token inputs at {int(seq)} tokens (the data's median real length)." if seq else ""
    note = f" {esc(sweep['baseline_note'])}." if sweep.get("baseline_note") else ""
    return (f"<section id=sweep><h2>Batch and threads sweep ({esc(sweep.get('variant'))})</h2>"
            f"<p>{verdict}</p><p class='muted small'>{esc(sweep.get('seconds_per_point'))} s of timed calls per "
            f"runtime and point, artifact and PyTorch eager interleaved.{esc(shape)}{note}</p>"
            f"<h3>Latency (p50; p99 dashed)</h3>{sweep_chart(sweep, 'p50_ms', 'ms per call', 'p99_ms')}"
            f"<h3>Throughput</h3>{sweep_chart(sweep, 'throughput', 'rows/s')}{_sweep_table(sweep)}</section>")


def serving_section(report: Mapping[str, Any]) -> str:
    """Latency at the data's real lengths (p50/p90/max buckets), each variant beside PyTorch eager there."""
    serving = ((report.get("benchmark") or {}).get("serving")) or []
    if not serving:
        return ""
    runtimes = sorted({name for bucket in serving for name in bucket.get("latency") or {}} - {"torch"})
    head = "".join(f"<th class=num>{esc(name)} p50 ms</th><th class=num>vs eager</th>" for name in runtimes)
    rows = []
    for bucket in serving:
        latency = bucket.get("latency") or {}
        torch_p50 = (latency.get("torch") or {}).get("p50_ms")
        cells = []
        for name in runtimes:
            p50 = (latency.get(name) or {}).get("p50_ms")
            cells.append(f"<td class=num>{p50:.3f}</td>" if p50 else "<td class=num>–</td>")
            cells.append(f"<td class=num>{torch_p50 / p50:.2f}×</td>" if p50 and torch_p50 else "<td class=num>–</td>")
        eager = f"{torch_p50:.3f}" if torch_p50 else "–"
        rows.append(f"<tr><td>{esc(bucket['bucket'])}</td><td class=num>{esc(bucket['length'])}</td>"
                    f"<td class=num>{esc(bucket['batch'])}</td><td class=num>{eager}</td>{''.join(cells)}</tr>")
    return ("<section id=serving><h2>At the data's real lengths</h2><p class='muted small'>Token inputs cut to the "
            "real (unpadded) lengths of the example, eval and held-out rows: what a server feeds. Every runtime "
            "and PyTorch eager on the same shapes, interleaved.</p><table><tr><th>bucket</th><th class=num>tokens"
            f"</th><th class=num>batch</th><th class=num>eager p50 ms</th>{head}</tr>{''.join(rows)}</table>"
            "</section>")

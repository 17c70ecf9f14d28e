"""``report.html``: the build report as a page a person reads.

``report.json`` is for machines; this page answers the questions a reviewer
asks of a build: did every variant pass, how much faster is it than PyTorch
eager, how noisy were the timings, how large are the errors, and where did
the build spend its time. It is one self-contained file (inline CSS, SVG
drawn here, no scripts, no fonts or images fetched), so it can be attached to
a CI run, opened offline, and archived with the build.

Everything is rendered from the report *dict* (``Report.to_dict()`` or a
loaded ``report.json``), never from live objects, so an old build directory
can be re-rendered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optpipe.core.artifact import write_bytes_atomic
from optpipe.report.html_sections import facts_table, pass_table, profile_section, stability_banner
from optpipe.report.html_svg import Scale
from optpipe.report.html_svg import axis as _axis
from optpipe.report.html_svg import color as _color
from optpipe.report.html_svg import esc as _e
from optpipe.report.html_svg import fmt as _fmt
from optpipe.report.html_svg import svg as _svg
from optpipe.report.html_sweep import serving_section, sweep_section

TORCH_COLOR = "#8d99ae"
FAIL_COLOR = "#cf222e"

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2328;margin:0;
background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0}
.muted{color:#59636e} .small{font-size:12px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:13px;
vertical-align:middle}
.pass{background:#1a7f37} .fail{background:#cf222e} .pending{background:#9a6700}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #eaeef2;border-radius:6px;padding:8px 10px}
.card h3{font-size:13px;margin:0 0 4px}
svg text{font-family:inherit}
ul.warn li{color:#9a6700} ul.failures li{color:#cf222e}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;padding:1px 4px;border-radius:4px}
.barcell{background:#eaeef2;border-radius:3px;height:8px;min-width:80px}
.barcell div{background:#d9822b;height:8px;border-radius:3px}
.diverge{display:flex;min-width:160px;height:8px} .diverge>div{flex:1;display:flex;background:#eaeef2}
.diverge>.neg{justify-content:flex-end;border-right:1px solid #59636e} .diverge .bar{height:8px}
.diverge>.neg .bar{background:#2f6fde} .diverge>.pos .bar{background:#d9822b}
.unstable{border:2px solid #9a6700;background:#fff8c5;border-radius:8px;padding:10px 16px;margin:16px 0}
.unstable ul{margin:4px 0 0}
"""


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


# --------------------------------------------------------------------------- scales


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


# --------------------------------------------------------------------------- charts


def latency_chart(rows: Sequence[tuple[str, str, Mapping[str, Any]]]) -> str:
    """Box and strip plot of per-call latency: one row per (label, color, latency record)."""
    rows = [r for r in rows if r[2]]
    if not rows:
        return '<p class="muted">No latency was measured (built with --no-benchmark).</p>'
    samples = {label: [v for v in (lat.get("samples_ms") or []) if v > 0] for label, _c, lat in rows}
    every = [v for values in samples.values() for v in values] or [
        lat[k] for _l, _c, lat in rows for k in ("p50_ms", "p90_ms", "p99_ms") if lat.get(k)
    ]
    low, high = min(every), max(every)
    log = high / max(low, 1e-9) > 20
    width, left, right, row_h = 1080, 150, 170, 46
    height = 30 + row_h * len(rows) + 36
    scale = Scale(low / 1.15 if log else 0.0, high * 1.1, left, width - right, log=log)
    body = [_axis(scale, height - 30, height - 40, "ms per call" + (" (log scale)" if log else ""))]
    for index, (label, color, latency) in enumerate(rows):
        cy = 24 + index * row_h + row_h / 2
        body.append(f'<text x="{left - 10}" y="{cy + 4:.1f}" font-size="12" text-anchor="end">{_e(label)}</text>')
        values = samples[label]
        if values:
            for position, value in enumerate(values):
                jitter = ((position * 7919) % 23 - 11) / 11 * (row_h * 0.28)
                body.append(f'<circle cx="{scale(value):.1f}" cy="{cy + jitter:.1f}" r="2" fill="{color}" '
                            'fill-opacity="0.35"/>')
            q1, q2, q3 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
            w1, w2 = _quantile(values, 0.05), _quantile(values, 0.95)
            box_h = row_h * 0.5
            body.append(f'<line x1="{scale(w1):.1f}" y1="{cy:.1f}" x2="{scale(w2):.1f}" y2="{cy:.1f}" '
                        f'stroke="{color}" stroke-width="1.5"/>')
            body.append(f'<rect x="{scale(q1):.1f}" y="{cy - box_h / 2:.1f}" '
                        f'width="{max(scale(q3) - scale(q1), 1.5):.1f}" height="{box_h:.1f}" fill="{color}" '
                        f'fill-opacity="0.18" stroke="{color}" stroke-width="1.5"/>')
            body.append(f'<line x1="{scale(q2):.1f}" y1="{cy - box_h / 2:.1f}" x2="{scale(q2):.1f}" '
                        f'y2="{cy + box_h / 2:.1f}" stroke="{color}" stroke-width="3"/>')
        elif latency.get("p50_ms"):
            body.append(f'<circle cx="{scale(latency["p50_ms"]):.1f}" cy="{cy:.1f}" r="5" fill="{color}"/>')
        p50, p90 = latency.get("p50_ms"), latency.get("p90_ms")
        text = f"p50 {_ms(p50)} ms" + (f" · p90 {_ms(p90)}" if p90 else "") if p50 else ""
        body.append(f'<text x="{width - right + 12}" y="{cy + 4:.1f}" font-size="12" fill="#1f2328">'
                    f'{_e(text)}</text>')
    return _svg(width, height, body, "latency distribution per variant")


def speedup_chart(variants: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars of speedup over PyTorch eager (ratio of medians), with the 1x line."""
    rows: list[tuple[str, float, int]] = [
        (str(v["precision"]), float(v["speedup_vs_torch"]), i)
        for i, v in enumerate(variants)
        if v.get("speedup_vs_torch")
    ]
    if not rows:
        return '<p class="muted">No speedup measured (no benchmark, or no PyTorch comparison).</p>'
    width, left, right, row_h = 1080, 150, 120, 34
    height = 20 + row_h * len(rows) + 36
    top = max(max(r[1] for r in rows), 1.0) * 1.12
    scale = Scale(0.0, top, left, width - right)
    body = [_axis(scale, height - 30, height - 36, "× faster than PyTorch eager (p50 ratio)")]
    for index, (label, speedup, color_index) in enumerate(rows):
        y = 16 + index * row_h
        color = _color(color_index) if speedup >= 1 else "#d9822b"
        body.append(f'<text x="{left - 10}" y="{y + row_h / 2 + 2:.1f}" font-size="12" '
                    f'text-anchor="end">{_e(label)}</text>')
        body.append(f'<rect x="{left}" y="{y + 6:.1f}" width="{scale(speedup) - left:.1f}" '
                    f'height="{row_h - 14:.1f}" rx="3" fill="{color}"/>')
        body.append(f'<text x="{scale(speedup) + 6:.1f}" y="{y + row_h / 2 + 2:.1f}" font-size="12" '
                    f'font-weight="600">{speedup:.2f}×</text>')
    one = scale(1.0)
    body.append(f'<line x1="{one:.1f}" y1="8" x2="{one:.1f}" y2="{height - 30}" stroke="#1f2328" '
                'stroke-dasharray="4 3"/>')
    body.append(f'<text x="{one + 4:.1f}" y="12" font-size="11" fill="#59636e">PyTorch eager = 1×</text>')
    return _svg(width, height, body, "speedup over PyTorch eager")


def histogram_chart(histogram: Mapping[str, Any], color: str, atol: float | None = None) -> str:
    """Bars of an ``error_histogram`` (log10 bins), with the element-wise ``atol`` marked."""
    edges, counts = list(histogram.get("edges") or []), list(histogram.get("counts") or [])
    width, height, left, bottom = 340, 150, 40, 34
    if not edges or not counts:
        zeros = histogram.get("zeros", 0)
        return f'<p class="muted small">All {zeros} errors are exactly 0.</p>'
    low, high = edges[0], edges[-1]
    if atol:
        low, high = min(low, atol / 2), max(high, atol * 2)
    x = Scale(low, high, left, width - 10, log=True)
    peak = max(counts) or 1
    y = Scale(0, peak, height - bottom, 12)
    body = [_axis(x, height - bottom, height - bottom - 12, "|error|")]
    for index, count in enumerate(counts):
        if not count:
            continue
        x0, x1 = x(edges[index]), x(edges[index + 1])
        body.append(f'<rect x="{x0 + 0.5:.1f}" y="{y(count):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                    f'height="{height - bottom - y(count):.1f}" fill="{color}" fill-opacity="0.8">'
                    f'<title>{_fmt(edges[index], 3)}–{_fmt(edges[index + 1], 3)}: {count}</title></rect>')
    body.append(f'<text x="{left - 4}" y="{y(peak) + 4:.1f}" font-size="10" text-anchor="end" '
                f'fill="#59636e">{peak}</text>')
    body.append(f'<text x="{left - 4}" y="{height - bottom:.1f}" font-size="10" text-anchor="end" '
                'fill="#59636e">0</text>')
    if atol:
        ax = x(atol)
        body.append(f'<line x1="{ax:.1f}" y1="10" x2="{ax:.1f}" y2="{height - bottom}" stroke="{FAIL_COLOR}" '
                    'stroke-dasharray="4 3"/>')
        body.append(f'<text x="{ax - 3:.1f}" y="20" font-size="10" text-anchor="end" fill="{FAIL_COLOR}">'
                    f'atol {_fmt(atol, 2)}</text>')
    return _svg(width, height, body, "absolute error histogram")


def timeline_chart(passes: Sequence[Mapping[str, Any]]) -> str:
    """Gantt bars of the passes in the order they ran; cached passes drawn hatched."""
    if not passes:
        return '<p class="muted">No passes ran.</p>'
    width, left, right, row_h = 1080, 190, 110, 22
    height = 16 + row_h * len(passes) + 40
    total = sum(float(p.get("seconds") or 0) for p in passes) or 1.0
    scale = Scale(0.0, total * 1.02, left, width - right)
    body = [
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#d8f3dc"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#2a9d8f" stroke-width="2"/></pattern></defs>',
        _axis(scale, height - 30, height - 36, "seconds since the first pass"),
    ]
    variants = list(dict.fromkeys(p.get("variant", "") for p in passes))
    start = 0.0
    for index, record in enumerate(passes):
        seconds = float(record.get("seconds") or 0)
        y = 10 + index * row_h
        status = record.get("status", "ok")
        color = _color(variants.index(record.get("variant", "")))
        fill = "url(#hatch)" if status == "cached" else (FAIL_COLOR if status == "failed" else color)
        label = f"{record.get('variant', '')} · {record.get('name', '')}"
        body.append(f'<text x="{left - 10}" y="{y + row_h / 2 + 4:.1f}" font-size="12" '
                    f'text-anchor="end">{_e(label)}</text>')
        x0, x1 = scale(start), scale(start + seconds)
        body.append(f'<rect x="{x0:.1f}" y="{y + 3:.1f}" width="{max(x1 - x0, 2):.1f}" height="{row_h - 6}" '
                    f'rx="2" fill="{fill}"><title>{_e(label)}: {seconds:.3f}s ({_e(status)})</title></rect>')
        note = f"{seconds:.2f}s" + (" cached" if status == "cached" else "") + (" FAILED" if status == "failed" else "")
        body.append(f'<text x="{max(x1, x0 + 2) + 5:.1f}" y="{y + row_h / 2 + 4:.1f}" font-size="11" '
                    f'fill="#59636e">{_e(note)}</text>')
        start += seconds
    return _svg(width, height, body, "pass timeline")


# --------------------------------------------------------------------------- sections


def find_layer_errors(report: Mapping[str, Any], variant: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A variant's per-layer error table, wherever a pass put it (variant, its passes, or pass records)."""
    if variant.get("layer_errors"):
        return list(variant["layer_errors"])
    for metrics in (variant.get("passes") or {}).values():
        if isinstance(metrics, Mapping) and metrics.get("layer_errors"):
            return list(metrics["layer_errors"])
    for record in report.get("passes") or []:
        if record.get("variant") == variant.get("precision") and (record.get("metrics") or {}).get("layer_errors"):
            return list(record["metrics"]["layer_errors"])
    return []


def _verdict(variant: Mapping[str, Any]) -> str:
    if variant.get("status") in ("pending", "skipped"):
        return f'<span class="badge pending">{_e(variant["status"])}</span>'
    if variant.get("verdict") == "unjudged":
        return '<span class="badge fail">UNJUDGED</span>'  # no gate failed, one could not judge: not a pass
    if not variant.get("passed") and not variant.get("required", True):
        return '<span class="badge pending">rejected</span>'  # a failed candidate of --precision auto
    return '<span class="badge pass">pass</span>' if variant.get("passed") else '<span class="badge fail">FAIL</span>'


def _summary_table(report: Mapping[str, Any]) -> str:
    head = ("<tr><th>variant</th><th>parity</th><th class=num>worst cosine</th><th class=num>max abs error</th>"
            "<th class=num>top-1 agreement</th><th class=num>p50 ms</th><th class=num>speedup</th>"
            "<th>artifact</th></tr>")
    rows = []
    for variant in report.get("variants") or []:
        outputs = ((variant.get("parity") or {}).get("outputs") or {}).values()
        cosine = min((o["cosine"] for o in outputs), default=None)
        max_abs = max((o["max_abs"] for o in outputs), default=None)
        top1s = [o["top1_agreement"] for o in outputs if o.get("top1_agreement") is not None]
        latency = variant.get("latency") or {}
        speedup = variant.get("speedup_vs_torch")
        rows.append(
            f"<tr><td><b>{_e(variant['precision'])}</b></td><td>{_verdict(variant)}</td>"
            f"<td class=num>{_fmt(cosine, 7)}</td><td class=num>{_fmt(max_abs, 3)}</td>"
            f"<td class=num>{_fmt(min(top1s), 4) if top1s else '–'}</td>"
            f"<td class=num>{_ms(latency['p50_ms']) if latency.get('p50_ms') else '–'}</td>"
            f"<td class=num>{f'{speedup:.2f}×' if speedup else '–'}</td>"
            f"<td><code>{_e(variant.get('artifact') or variant.get('onnx') or '–')}</code></td></tr>"
        )
        failures = list(variant.get("failures") or [])
        if variant.get("status") == "skipped" and variant.get("reason"):
            failures.append(str(variant["reason"]))
        if failures:
            items = "".join(f"<li>{_e(f)}</li>" for f in failures)
            rows.append(f'<tr><td></td><td colspan="7"><ul class="failures">{items}</ul></td></tr>')
    selected = report.get("selected") or {}
    chosen = ""
    if selected.get("precision"):
        chosen = (f"<p><b>Selected: {_e(selected['precision'])}</b> "
                  f"(<code>{_e(selected.get('artifact') or '')}</code>): {_e(selected.get('reason') or '')}</p>")
    elif selected:
        chosen = f"<p><b>No variant selected:</b> {_e(selected.get('reason') or '')}</p>"
    return f"<table>{head}{''.join(rows)}</table>{chosen}"


def _latency_section(report: Mapping[str, Any]) -> str:
    rows: list[tuple[str, str, Mapping[str, Any]]] = []
    for index, variant in enumerate(report.get("variants") or []):
        if variant.get("latency"):
            rows.append((variant["precision"], _color(index), variant["latency"]))
    baseline = report.get("baseline")
    if baseline:
        rows.append(("PyTorch eager", TORCH_COLOR, baseline))
    first = rows[0][2] if rows else {}
    caption = (f"batch {first.get('batch')}, {first.get('threads')} threads, {first.get('iterations')} timed calls "
               "per runtime, interleaved in shuffled blocks. Box: quartiles, line: median, whiskers: 5th–95th "
               "percentile, dots: individual calls (up to 200 evenly spaced).") if first else ""
    return (f"<section id=latency><h2>Latency distribution</h2><p class='muted small'>{_e(caption)}</p>"
            f"{latency_chart(rows)}</section>")


def _errors_section(report: Mapping[str, Any]) -> str:
    cards = []
    for index, variant in enumerate(report.get("variants") or []):
        outputs = (variant.get("parity") or {}).get("outputs") or {}
        for name, parity in outputs.items():
            histogram = parity.get("error_histogram")
            tolerance = parity.get("tolerance") or {}
            verdict = "pass" if parity.get("passed") else "FAIL"
            stats = (f"max {_fmt(parity.get('max_abs'), 3)} · mean {_fmt(parity.get('mean_abs'), 3)} · "
                     f"cosine {_fmt(parity.get('cosine'), 7)}")
            chart = (histogram_chart(histogram, _color(index), tolerance.get("atol")) if histogram
                     else '<p class="muted small">No histogram recorded.</p>')
            extra = ""
            if histogram and (histogram.get("zeros") or histogram.get("nonfinite")):
                extra = (f"<div class='muted small'>{histogram.get('zeros', 0)} exact zeros, "
                         f"{histogram.get('nonfinite', 0)} non-finite of {histogram.get('total', 0)}</div>")
            cards.append(f"<div class=card><h3>{_e(variant['precision'])} · <code>{_e(name)}</code> · "
                         f"<span class='{'muted' if verdict == 'pass' else 'fail'}'>{verdict}</span></h3>"
                         f"<div class='muted small'>{stats}</div>{chart}{extra}</div>")
    body = "".join(cards) or '<p class="muted">No parity was measured (no engine built).</p>'
    return ("<section id=errors><h2>Errors against PyTorch, per output</h2><p class='muted small'>Histogram of "
            "|engine − PyTorch| over every output element of every golden case (log-spaced bins).</p>"
            f"<div class=grid>{body}</div></section>")


def _layer_section(report: Mapping[str, Any]) -> str:
    blocks = []
    for variant in report.get("variants") or []:
        layers = find_layer_errors(report, variant)
        if not layers:
            continue
        layers = sorted(layers, key=lambda r: -(r.get("contribution") or 0))[:40]
        peak = max((abs(r.get("contribution") or 0) for r in layers), default=0) or 1
        rows = "".join(
            f"<tr><td><code>{_e(r.get('node', ''))}</code></td><td>{_e(r.get('op_type', ''))}</td>"
            f"<td>{_e(r.get('module') or '')}</td><td class=num>{_fmt(r.get('rel_error'), 3)}</td>"
            f"<td class=num>{_fmt(r.get('cosine'), 6)}</td><td class=num>{_fmt(r.get('contribution'), 3)}</td>"
            f"<td>{_diverging_bar(r.get('contribution') or 0, peak)}</td></tr>"
            for r in layers
        )
        blocks.append(f"<h3>{_e(variant['precision'])}</h3><p class='muted small'>Bars: contribution to the "
                      "output error; left of the line (blue) = negative, the node reduced the error.</p>"
                      "<table><tr><th>node</th><th>op</th><th>module</th>"
                      "<th class=num>rel. error</th><th class=num>cosine</th><th class=num>contribution</th>"
                      f"<th></th></tr>{rows}</table>")
    if not blocks:
        return ""
    return "<section id=layers><h2>Per-layer error</h2>" + "".join(blocks) + "</section>"


def _diverging_bar(value: float, peak: float) -> str:
    """A bar from a centre line: right for a positive contribution, left (another colour) for a negative one."""
    width = f"{100 * abs(value) / peak:.0f}%"
    neg = f"<div class=bar style='width:{width}'></div>" if value < 0 else ""
    pos = f"<div class=bar style='width:{width}'></div>" if value > 0 else ""
    sign = "negative" if value < 0 else "positive"
    return f"<div class=diverge title='{sign} {value:.3g}'><div class=neg>{neg}</div><div class=pos>{pos}</div></div>"


def _warnings_section(report: Mapping[str, Any]) -> str:
    items = list(dict.fromkeys(report.get("warnings") or []))
    if report.get("next_step"):
        items.append(f"not finished here: {report['next_step']}")
    if not items:
        return ""
    return ("<section id=warnings><h2>Warnings</h2><ul class=warn>"
            + "".join(f"<li>{_e(w)}</li>" for w in items) + "</ul></section>")


def _environment_section(report: Mapping[str, Any]) -> str:
    env = report.get("environment") or {}
    build = report.get("build") or {}
    rows = [(k, v) for k, v in env.items() if v is not None and k != "executable"]
    inputs = ", ".join(f"{i['name']} {list(i['shape'])} {i['dtype']}" for i in build.get("inputs") or [])
    dynamic = ", ".join(f"{d['name']}={d['min']}:{d['opt']}:{d['max']}" for d in build.get("dynamic") or [])
    rows += [("inputs", inputs), ("outputs", ", ".join(build.get("outputs") or [])), ("dynamic", dynamic or "–"),
             ("tolerance overrides", build.get("tolerances") or "–")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<section id=environment><h2>Build and environment</h2><table>{body}</table></section>"


def render_html(report: Mapping[str, Any], out_dir: Path | None = None) -> str:
    """The whole page for one report dict (``out_dir``: the build directory, to measure artifact sizes)."""

    status = report.get("status")
    if status == "split":
        badge = '<span class="badge pending">SPLIT: finish on the target machine</span>'
    elif report.get("passed"):
        badge = '<span class="badge pass">PASSED</span>'
    elif report.get("result") == "UNJUDGED":
        badge = '<span class="badge fail">UNJUDGED: a gate could not judge</span>'
    else:
        badge = '<span class="badge fail">FAILED</span>'
    env = report.get("environment") or {}
    subtitle = (f"target <b>{_e(report.get('target'))}</b> · exit code {_e(report.get('exit_code'))} · "
                f"{_e(env.get('cpu') or '')} ({_e(env.get('cpu_count'))} cores) · torch {_e(env.get('torch'))} · "
                f"onnxruntime {_e(env.get('onnxruntime'))}")
    passes = report.get("passes") or []
    total = sum(float(p.get("seconds") or 0) for p in passes)
    cached = sum(1 for p in passes if p.get("status") == "cached")
    timeline_note = f"{len(passes)} passes, {total:.2f}s in total" + (f", {cached} reused from the cache" if cached
                                                                       else "")
    return "".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>optpipe report: {_e(report.get('model'))}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(report.get('model'))} {badge}</h1><div class=muted>{subtitle}</div>",
        stability_banner(report),
        f"<section id=summary><h2>Variants</h2>{_summary_table(report)}{facts_table(report, out_dir)}</section>",
        f"<section id=speedup><h2>Speedup over PyTorch eager</h2>{speedup_chart(report.get('variants') or [])}"
        "</section>",
        _latency_section(report),
        serving_section(report),
        sweep_section(report),
        _errors_section(report),
        _layer_section(report),
        profile_section(report),
        f"<section id=timeline><h2>Pass timeline</h2><p class='muted small'>{_e(timeline_note)}; hatched = "
        f"reused from the cache.</p>{timeline_chart(passes)}{pass_table(report)}</section>",
        _warnings_section(report),
        _environment_section(report),
        "<p class='muted small'>Generated by optpipe from report.json (schema "
        f"{_e(report.get('schema'))}).</p></main></body></html>\n",
    ])


def write_html_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report.html`` atomically."""
    write_bytes_atomic(path, render_html(report, path.parent).encode("utf-8"))

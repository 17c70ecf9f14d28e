"""report.html additions: facts per variant, unstable-timing warning, per-op profile chart, negative contributions.

The layout checks run the page in headless Chromium (skipped with the reason where it is not
installed; Debian: apt-get install chromium): a small script appended to a copy of the page measures
where the bars were drawn and writes it into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from optpipe.report.html import render_html
from optpipe.report.html_sections import unstable_timings
from tests.report.test_html import sample_report

PROFILE = {
    "runtime": "onnxruntime-cpu", "runs": 20, "total_ms": 10.0,
    "op_types": [{"op_type": "Conv", "nodes": 3, "total_ms": 8.0, "percent": 80.0},
                 {"op_type": "Gemm", "nodes": 1, "total_ms": 2.0, "percent": 20.0}],
    "top_nodes": [{"node": "node_conv", "op_type": "Conv", "module_path": "features.0", "mean_us": 400.0,
                   "percent": 80.0}],
}


def _report() -> dict[str, Any]:
    data = sample_report()
    fp32, int8 = data["variants"]
    fp32["accuracy"] = {"accuracy": 97.5, "drop_points": 0.0}
    int8["accuracy"] = {"accuracy": 96.25, "drop_points": -1.25}
    fp32["latency"]["throughput"] = 6666.0
    fp32["memory"] = {"peak_rss_mb": 812.0}
    fp32["profile"] = PROFILE
    int8["passes"] = {}
    layers = data["passes"][-1]["metrics"]["layer_errors"]
    layers.append({"node": "/fix/Add", "op_type": "Add", "module": "fix", "rel_error": 0.0, "cosine": 1.0,
                   "contribution": -0.2})
    return data


def test_facts_table_shows_accuracy_size_throughput_memory_and_rows(tmp_path: Path) -> None:
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.ort-cpu.onnx").write_bytes(b"0" * 3 * 1024)
    page = render_html(_report(), tmp_path)
    assert "97.50% (+0.00)" in page and "96.25% (-1.25)" in page
    assert "3.0 KB" in page  # measured from the build directory
    assert "6,666/s" in page and "812 MB" in page
    assert "logits: 2" in page  # rows the gate compared


def test_unstable_timings_warn_visibly() -> None:
    data = _report()
    assert unstable_timings(data) == [] and "Unstable timings" not in render_html(data)
    data["baseline"]["p90_ms"] = data["baseline"]["p50_ms"] * 40
    (line,) = unstable_timings(data)
    assert line.startswith("PyTorch eager: p90") and "40.0×" in line
    assert "<div class=unstable role=alert><b>Unstable timings</b>" in render_html(data)


def test_a_drifting_baseline_warns_visibly() -> None:
    data = _report()
    data["benchmark"] = {"drift": {"torch": 1.1, "fp32": 3.0}}  # an engine's drift alone: its spread says it
    assert unstable_timings(data) == []
    data["benchmark"]["drift"]["torch"] = 1.6
    (line,) = unstable_timings(data)
    assert line.startswith("PyTorch eager (the baseline)") and "1.60×" in line
    assert "Unstable timings" in render_html(data)


def test_profile_section_has_a_bar_per_op_type() -> None:
    page = render_html(_report())
    section = page[page.index("<section id=profile>"):]
    section = section[: section.index("</section>")]
    assert section.count("class=opbar") == 2 and "Conv ×3" in section and "features.0" in section


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


MEASURE = """<script>
const box = e => e.getBoundingClientRect();
const out = {bars: [...document.querySelectorAll('.diverge')].map(d => {
  const neg = d.querySelector('.neg .bar'), pos = d.querySelector('.pos .bar');
  const centre = box(d.querySelector('.neg')).right;
  return {title: d.title, neg: neg ? [box(neg).left - centre, box(neg).right - centre, box(neg).width] : null,
          pos: pos ? [box(pos).left - centre, box(pos).right - centre, box(pos).width] : null};
}), opbars: [...document.querySelectorAll('rect.opbar')].map(r => r.getBBox().width),
   banner: (document.querySelector('.unstable') || {}).offsetHeight || 0};
document.body.setAttribute('data-measure', JSON.stringify(out));
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_page_layout_in_headless_chromium(tmp_path: Path) -> None:
    data = _report()
    data["baseline"]["p90_ms"] = data["baseline"]["p50_ms"] * 40
    page = render_html(data).replace("</body>", MEASURE + "</body>")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    chromium = _chromium()
    assert chromium is not None
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,4000",
                             "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r"data-measure=\"([^\"]*)\"", result.stdout)
    assert found, result.stdout[-2000:]
    measure = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    bars = {b["title"]: b for b in measure["bars"]}
    negative = bars["negative -0.2"]
    assert negative["pos"] is None and negative["neg"][2] > 0
    assert negative["neg"][1] <= 0.5  # drawn to the LEFT of the centre line
    positive = bars["positive 0.3"]
    assert positive["neg"] is None and positive["pos"][0] >= -0.5 and positive["pos"][2] > negative["neg"][2]
    conv, gemm = measure["opbars"]
    assert conv > 3.5 * gemm > 0  # 80% vs 20% of node time
    assert measure["banner"] > 20  # the unstable-timing warning is on the page, not hidden

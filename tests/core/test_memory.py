"""optpipe.core.memory: the peak a sampler reports includes spikes no sample saw."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter (its high-water mark is its own, small): a sampler that never gets to sample (interval
# 60 s) around one C call that holds the GIL while it fills 300 MB and frees it again.
_SPIKE = """
from optpipe.core.memory import RssSampler, current_rss_bytes, high_water_bytes
before = current_rss_bytes()
with RssSampler(interval_s=60) as sampler:
    block = b"\\x01" * (300 << 20)
    del block
print((sampler.peak - before) >> 20, (high_water_bytes() - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sampler_peak_includes_a_spike_between_samples() -> None:
    done = subprocess.run([sys.executable, "-c", _SPIKE], capture_output=True, text=True, check=True)
    spike_mib, high_water_mib = (int(v) for v in done.stdout.split())
    assert high_water_mib >= 290  # the spike happened
    assert spike_mib >= 290  # and the sampler reports it, though no sample ran during it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sampler_after_a_higher_peak_reports_its_own_samples() -> None:
    """A block below an earlier peak keeps its sampled peak (the process's mark is not the block's)."""
    code = _SPIKE.replace("before = current_rss_bytes()",
                          "big = b'\\x01' * (600 << 20); del big\nbefore = current_rss_bytes()")
    code = code.replace("(300 << 20)", "(10 << 20)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    spike_mib, high_water_mib = (int(v) for v in done.stdout.split())
    assert high_water_mib >= 550
    assert spike_mib < 100

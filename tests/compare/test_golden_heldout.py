"""Held-out golden rows of any count are re-batched to what the artifact's batch allows."""

from __future__ import annotations

import numpy as np

from optpipe.compare.golden import heldout_feeds


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}


def test_static_batch_splits_rows_into_full_batches() -> None:
    feeds = heldout_feeds(_rows(9), limit=64, chunk=2, static=True)
    assert [name for name, _ in feeds] == ["heldout-1", "heldout-2", "heldout-3", "heldout-4"]
    assert all(feed["x"].shape == (2, 3) for _, feed in feeds)
    np.testing.assert_array_equal(np.concatenate([f["x"] for _, f in feeds]), _rows(8)["x"])


def test_dynamic_batch_chunks_by_the_maximum() -> None:
    feeds = heldout_feeds(_rows(40), limit=64, chunk=16, static=False)
    assert [f["x"].shape[0] for _, f in feeds] == [16, 16, 8]


def test_limit_and_single_case_name() -> None:
    feeds = heldout_feeds(_rows(100), limit=64, chunk=64, static=False)
    assert [(name, f["x"].shape[0]) for name, f in feeds] == [("heldout", 64)]


def test_fewer_rows_than_a_static_batch_are_tiled() -> None:
    ((name, feed),) = heldout_feeds(_rows(1), limit=64, chunk=4, static=True)
    assert name == "heldout" and feed["x"].shape == (4, 3)

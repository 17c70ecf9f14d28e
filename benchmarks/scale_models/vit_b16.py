"""ViT-B/16 at 224x224 (86 M parameters, 0.34 GB FP32), CLS token, random seeded weights.

No data: build with ``--synthetic-calib``, as the issue's user did:
``optpipe build benchmarks/scale_models/vit_b16.py:model --precision auto --synthetic-calib``.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "vit_b16"
OUTPUT_NAMES: tuple[str, ...] = ("cls",)


class VitCls(nn.Module):
    """ViT encoder -> the CLS token's final hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(0)
        config = ViTConfig(image_size=224, patch_size=16, attn_implementation="eager")
        self.vit = ViTModel(config, add_pooling_layer=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixel_values).last_hidden_state[:, 0]


model = VitCls().eval()


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two normalised 224x224 RGB images (batch 2)."""
    return (torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)),)

"""Small modules for compression tests: a CNN with BatchNorm and a residual, an MLP, and a
two-layer BERT built from a config (random weights, no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from inferopt.data import Dataset


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.wide = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        x = torch.relu(x + self.block(x))  # a residual: both sides must shrink together
        out: torch.Tensor = self.head(self.wide(x).mean((2, 3)))
        return out


class SmallMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(features)
        return out


def tiny_bert(layers: int = 2) -> nn.Module:
    from transformers import BertConfig, BertModel

    from inferopt.huggingface import MeanPooledEncoder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return MeanPooledEncoder(BertModel(config).eval(), normalize=True).eval()


def bert_inputs(batch: int = 2, seq: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 120, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
    }


def bert_dataset(count: int = 60) -> Dataset:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(count):
        seq = int(rng.integers(4, 12))
        samples.append(
            {
                "input_ids": rng.integers(1, 120, (1, seq)).astype(np.int64),
                "attention_mask": np.ones((1, seq), dtype=np.int64),
                "token_type_ids": np.zeros((1, seq), dtype=np.int64),
            }
        )
    return Dataset(tuple(samples), None, seq_axis=1)


def blobs(count: int = 240, seed: int = 0) -> Dataset:
    """8x8 images of four textures (horizontal stripes, vertical stripes, checkerboard, flat)
    in noise: local patterns a small CNN learns in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    rows, cols = np.indices((8, 8))
    textures = [rows % 2, cols % 2, (rows + cols) % 2, np.full((8, 8), 0.5)]
    images = rng.normal(0, 0.2, (count, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, 0] += textures[int(label)]
    return Dataset.from_arrays({"image": images}, labels.astype(np.int64))

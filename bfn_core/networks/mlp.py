"""An MLP for vector data: flatten, add time (and class-label) features, residual SiLU blocks, unflatten."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bfn_core.networks.embeddings import TimeEmbedding, add_label, label_embedding


class MLP(nn.Module):
    """num_classes > 0 makes it conditional: a class embedding added to the time embedding (index num_classes = null)."""

    def __init__(self, data_shape: tuple[int, ...], in_channels: int, out_channels: int,
                 hidden: int = 256, depth: int = 3, time_dim: int = 64, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        self.data_shape, self.out_channels = tuple(data_shape), out_channels
        d = math.prod(self.data_shape)
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Linear(d * in_channels + self.time.out_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, d * out_channels))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # Built last: the other layers draw the same initial weights as the unconditional network's.
        self.label = label_embedding(num_classes, self.time.out_dim)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        h = self.inp(torch.cat([x.reshape(b, -1), add_label(self.label, self.time(t), y)], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(b, *self.data_shape, self.out_channels)

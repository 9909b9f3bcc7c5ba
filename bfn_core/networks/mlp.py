"""An MLP for vector data: flatten, add time features, residual SiLU blocks, unflatten."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bfn_core.networks.embeddings import TimeEmbedding


class MLP(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], in_channels: int, out_channels: int,
                 hidden: int = 256, depth: int = 3, time_dim: int = 64, dropout: float = 0.0):
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

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        h = self.inp(torch.cat([x.reshape(b, -1), self.time(t)], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(b, *self.data_shape, self.out_channels)

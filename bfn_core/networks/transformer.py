"""A non-causal transformer for sequences (text8-style): every token attends to every other."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, h: Tensor) -> Tensor:
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


class Transformer(nn.Module):
    """Input (B, L, C_in), t (B,) -> (B, L, C_out). Time enters as 2t - 1 through a linear map, as in the reference."""

    def __init__(self, seq_len: int, in_channels: int, out_channels: int, width: int = 128,
                 depth: int = 2, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(in_channels, width)
        self.pos = nn.Parameter(torch.randn(1, seq_len, width) * 0.02)
        self.time = nn.Linear(1, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        h = self.inp(x) + self.pos[:, : x.shape[1]] + self.time((2.0 * t - 1.0).reshape(-1, 1, 1))
        for block in self.blocks:
            h = block(h)
        return self.out(self.ln(h))

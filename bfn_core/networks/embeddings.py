"""Time and input feature embeddings shared by the networks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Transformer-style sinusoidal features of scale * t (U-Nets see t as 1000 t, as in the reference)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (scale * t.float()).unsqueeze(-1) * freqs
    emb = torch.cat([args.sin(), args.cos()], -1)
    return nn.functional.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP."""

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, 4 * dim))
        self.out_dim = 4 * dim

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim, self.scale))


def fourier_features(x: Tensor, exponents: tuple[int, ...], dim: int = 1) -> Tensor:
    """sin and cos of 2^e pi x for each exponent e, concatenated with x along `dim` (VDM-style input features).

    High frequencies let the network resolve the fine, bin-level structure of the input mean.
    """
    if not exponents:
        return x
    feats = [x]
    for e in exponents:
        arg = (2.0**e) * math.pi * x
        feats += [arg.sin(), arg.cos()]
    return torch.cat(feats, dim)

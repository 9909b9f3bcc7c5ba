"""Time, position and input feature embeddings shared by the networks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bfn_core._checks import check_label_classes, check_label_dtype
from bfn_core.errors import BfnError


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, endpoint: bool = False) -> Tensor:
    """Transformer-style sinusoidal features (sin, cos) of scale * t.

    U-Nets see t as 1000 t (VDM) or 4000 t (the reference's improved-diffusion U-Net for MNIST).
    Periods run geometrically from 1 towards 10^4; with endpoint=True the last period is exactly 10^4,
    as in VDM's embedding (improved-diffusion's stops one step short of it).
    """
    half = dim // 2
    steps = max(half - 1, 1) if endpoint else half
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / steps)
    args = (scale * t.float()).unsqueeze(-1) * freqs
    emb = torch.cat([args.sin(), args.cos()], -1)
    return nn.functional.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP (width dim -> 4 dim)."""

    def __init__(self, dim: int, scale: float = 1000.0, endpoint: bool = False):
        super().__init__()
        self.dim, self.scale, self.endpoint = dim, scale, endpoint
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, 4 * dim))
        self.out_dim = 4 * dim

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim, self.scale, self.endpoint))


def sinusoidal_positions(seq_len: int, dim: int, base: float = 1000.0) -> Tensor:
    """Fixed positional encoding (seq_len, dim): channel j is sin (j even) or cos (j odd) of pos / base^(j / dim).

    The reference's text8 model uses base 1000 and the odd exponent (j / dim) for the cosine channels;
    Vaswani et al. use base 10000 and share one exponent per sin/cos pair.
    """
    pos = torch.arange(seq_len, dtype=torch.float32).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float32)
    angle = pos / base ** (j / dim)
    return torch.where(j.long() % 2 == 0, angle.sin(), angle.cos())


def fourier_features(x: Tensor, exponents: tuple[int, ...], dim: int = 1) -> Tensor:
    """x followed by sin(2 pi 2^e x) for every exponent e, then the matching cosines, along `dim` (VDM's input features).

    The reference's CIFAR-10 U-Net applies them to the input mean mu itself with e = 5, 6: periods of
    4 and 2 bins of a 256-bin image, so the network can resolve the fine, bin-level structure of mu.
    """
    if not exponents:
        return x
    args = torch.cat([(2.0 * math.pi * 2.0**e) * x for e in exponents], dim)
    return torch.cat([x, args.sin(), args.cos()], dim)


class LabelEmbedding(nn.Module):
    """Class-label embedding e(y) for conditional networks: num_classes classes and a learned null class.

    Index num_classes is the null class (y = None means it for every example): classifier-free guidance
    (Ho & Salimans, 2022) trains it by label dropout and reads the unconditional output through it.
    Zero-initialised, so a fresh conditional network computes what the unconditional one does.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, y: Tensor | None, batch: int, device) -> Tensor:
        """e(y), shape (B, dim); the null class's embedding where y is None."""
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        check_label_dtype(y, batch)
        return self.table(y.to(device=device, dtype=torch.long))


def label_embedding(num_classes: int, dim: int) -> LabelEmbedding | None:
    """A LabelEmbedding for num_classes > 0; None (no parameters, no state_dict keys) for an unconditional network."""
    n = check_label_classes(num_classes)
    return LabelEmbedding(n, dim) if n else None


def add_label(label: LabelEmbedding | None, emb: Tensor, y: Tensor | None) -> Tensor:
    """emb + e(y), e(y) broadcast over emb's middle dimensions (tokens); emb itself for an unconditional network."""
    if label is None:
        if y is not None:
            raise BfnError("this network is unconditional (num_classes=0): build it with num_classes > 0 to pass labels y")
        return emb
    e = label(y, emb.shape[0], emb.device).to(emb.dtype)
    return emb + e.reshape(emb.shape[0], *([1] * (emb.dim() - 2)), e.shape[-1])

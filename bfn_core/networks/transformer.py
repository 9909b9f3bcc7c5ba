"""A non-causal GPT-style transformer for sequences (text8): every token attends to every other.

Input (B, L, C_in) with t (B,) -> output (B, L, C_out).

The reference's text8 network (nanoGPT's GPT with the BFN text input adapter) is
Transformer(width=768, depth=24, heads=12, dropout=0.0, bias=True, skip=True, positions="sinusoidal").
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bfn_core._checks import check_choice
from bfn_core.errors import BfnError
from bfn_core.networks.embeddings import add_label, label_embedding, sinusoidal_positions

POSITIONS = ("learned", "sinusoidal")


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions, no causal mask."""

    def __init__(self, width: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        if width % heads:
            raise BfnError(f"width {width} cannot be split into {heads} heads: pick a width that heads divides")
        self.heads, self.p = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        b, n, c = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class FeedForward(nn.Module):
    """Two-layer MLP, 4x wide, tanh-approximated GELU (as GPT-2)."""

    def __init__(self, width: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.proj = nn.Linear(4 * width, width, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(h), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then the MLP, each residual."""

    def __init__(self, width: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width, bias=bias), nn.LayerNorm(width, bias=bias)
        self.attn = SelfAttention(width, heads, dropout, bias)
        self.mlp = FeedForward(width, dropout, bias)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class Transformer(nn.Module):
    """Embedding of the input, positions and time (2t - 1 through a linear map), blocks, final norm, linear head.

    `bias` switches the biases of the blocks, the final norm and the head (the input, position and
    time embeddings keep theirs, as in the reference). With skip the head also sees the input
    embedding. positions is "learned" or "sinusoidal" (fixed, the reference's text8 setting).

    num_classes > 0 makes it conditional: a class embedding (index num_classes = the null class) is added to
    every token, as the time embedding is. A bias rather than an extra token: the sequence keeps its length
    L, so positions, attention and the output (one row per data position) are those of the unconditional
    network, and the label reaches every position from the first layer on, as t does.
    """

    def __init__(self, seq_len: int, in_channels: int, out_channels: int, width: int = 128, depth: int = 2,
                 heads: int = 4, dropout: float = 0.0, bias: bool = True, skip: bool = False,
                 positions: str = "learned", num_classes: int = 0):
        super().__init__()
        self.skip = skip
        self.inp = nn.Linear(in_channels, width)
        if check_choice(positions, POSITIONS, "positions") == "learned":
            self.pos = nn.Parameter(torch.zeros(1, seq_len, width))
        else:
            self.register_buffer("pos", sinusoidal_positions(seq_len, width).unsqueeze(0), persistent=False)
        self.time = nn.Linear(1, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout, bias) for _ in range(depth))
        self.ln = nn.LayerNorm(width, bias=bias)
        self.out = nn.Linear((2 if skip else 1) * width, out_channels, bias=bias)
        self._init_weights(depth)
        # Built after the GPT-2 initialisation, which would redraw it; zero, as LabelEmbedding starts.
        self.label = label_embedding(num_classes, width)
        self.num_classes = int(num_classes)

    @torch.no_grad()
    def _init_weights(self, depth: int) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1 / sqrt(2 depth)."""
        for name, p in self.named_parameters():
            if name.startswith("ln") or ".ln" in name:
                continue  # LayerNorm keeps weight 1, bias 0
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b, n = x.shape[:2]
        x = x.reshape(b, n, -1)
        e = self.inp(x) + self.pos[:, :n] + self.time((2.0 * t - 1.0).to(x.dtype).reshape(b, 1, 1))
        e = add_label(self.label, e, y)
        h = self.drop(e)
        for block in self.blocks:
            h = block(h)
        h = self.ln(h)
        return self.out(torch.cat([h, e], -1) if self.skip else h)

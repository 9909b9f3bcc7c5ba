"""A U-Net for channel-last images (DDPM/VDM-style): residual blocks with time conditioning,
self-attention at chosen resolutions, dropout, and Fourier features of the input as in the paper.

Input (B, H, W, C, C_in) with t (B,) -> output (B, H, W, C, C_out).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bfn_core.networks.embeddings import TimeEmbedding, fourier_features


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, 2 * cout)  # scale and shift
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.temb(nn.functional.silu(temb))[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(nn.functional.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        a = self.norm(x).flatten(2).transpose(1, 2)
        a = self.attn(a, a, a, need_weights=False)[0]
        return x + a.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        in_channels: int,
        out_channels: int,
        width: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        blocks_per_level: int = 1,
        attention_resolutions: tuple[int, ...] = (8,),
        dropout: float = 0.0,
        fourier_exponents: tuple[int, ...] = (7, 8),
    ):
        super().__init__()
        h, w, c = image_shape
        self.image_shape, self.out_channels = (h, w, c), out_channels
        self.fourier_exponents = tuple(fourier_exponents)
        cin = c * in_channels * (1 + 2 * len(self.fourier_exponents))
        self.time = TimeEmbedding(width)
        tdim = self.time.out_dim
        self.stem = nn.Conv2d(cin, width, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, res = [width], width, h
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_level):
                self.down.append(nn.ModuleList([ResBlock(ch, width * mult, tdim, dropout),
                                                Attention(width * mult) if res in attention_resolutions else nn.Identity()]))
                ch = width * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, tdim, dropout), Attention(ch), ResBlock(ch, ch, tdim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(blocks_per_level + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), width * mult, tdim, dropout),
                                              Attention(width * mult) if res in attention_resolutions else nn.Identity()]))
                ch = width * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.head = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, c * out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b, (h, w, c) = x.shape[0], self.image_shape
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        x = fourier_features(x, self.fourier_exponents, dim=1)
        temb = self.time(t)
        hs = [self.stem(x)]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                hs.append(layer[1](layer[0](hs[-1], temb)))
            else:
                hs.append(layer(hs[-1]))
        z = hs[-1]
        z = self.mid[2](self.mid[1](self.mid[0](z, temb)), temb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                z = layer[1](layer[0](torch.cat([z, hs.pop()], 1), temb))
            else:
                z = layer(z)
        out = self.head(z)  # (B, C * C_out, H, W)
        return out.permute(0, 2, 3, 1).reshape(b, h, w, c, self.out_channels)

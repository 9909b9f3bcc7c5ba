"""Building blocks of the U-Nets: group norm, time-conditioned residual block, spatial self-attention."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from bfn_core.errors import BfnError


def group_norm(ch: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm over ch channels: `groups` groups, or min(32, ch // 4) (1 for tiny widths) by default."""
    if groups is None:
        groups = min(32, ch // 4) if ch >= 8 else 1
    return nn.GroupNorm(groups, ch)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter of a module; a residual branch ending in it starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, time embedding added (or as scale and shift), norm-SiLU-dropout-conv."""

    def __init__(self, cin: int, cout: int, tdim: int, dropout: float = 0.0, *, scale_shift: bool = False,
                 time_bias: bool = True, zero_time: bool = False, groups: int | None = None):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1, self.conv1 = group_norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, (2 if scale_shift else 1) * cout, bias=time_bias)
        if zero_time:  # VDM: time enters each block only once training moves it off zero
            zero_init(self.temb)
        self.norm2, self.drop = group_norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.temb(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, 1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (B, C, H, W), with a residual connection."""

    def __init__(self, ch: int, heads: int = 1, groups: int | None = None):
        super().__init__()
        if ch % heads:
            raise BfnError(f"attention over {ch} channels cannot be split into {heads} heads: "
                           "pick a channel count that heads divides")
        self.heads = heads
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C / heads)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


class ResAttnBlock(nn.Module):
    """A residual block, then self-attention where the architecture puts it."""

    def __init__(self, res: ResBlock, attn: SpatialAttention | None = None):
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        return self.attn(self.res(x, temb))


def is_timed(layer: nn.Module) -> bool:
    """Whether a U-Net layer takes the time embedding as a second argument."""
    return isinstance(layer, (ResBlock, ResAttnBlock))


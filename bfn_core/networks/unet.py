"""A multi-resolution U-Net for channel-last images (DDPM / improved-diffusion layout): residual blocks
with time conditioning, multi-head self-attention at chosen resolutions, dropout, optional Fourier
features of the input, and the reference's input projection and input-output skip.

Input (B, H, W, C, C_in) with t (B,) -> output (B, H, W, C, C_out).

The reference's binarised-MNIST network (improved-diffusion's UNetModel inside the BFN code) is
UNet(width=128, channel_mults=(1, 2, 2), blocks_per_level=2, attention_resolutions=(), heads=4,
dropout=0.5, fourier_exponents=(), scale_shift=False, time_scale=4000, time_channel=True,
project_input=True, skip=True, head_channels=128).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bfn_core.networks.blocks import ResAttnBlock, ResBlock, SpatialAttention, group_norm, is_timed, zero_init
from bfn_core.networks.embeddings import TimeEmbedding, add_label, fourier_features, label_embedding


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv (learned) or 2x2 average pooling."""

    def __init__(self, ch: int, conv: bool):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 conv if learned."""

    def __init__(self, ch: int, conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if conv else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """U-Net over channel_mults levels, blocks_per_level residual blocks down and one more up per level.

    attention_resolutions are feature-map sizes in pixels (the middle always has attention); the
    reference's improved-diffusion code names downsampling rates instead, and its MNIST setting
    [8, 16] never occurs on a 28 -> 14 -> 7 network, so it has attention in the middle only.
    time_channel appends 2t - 1 as an input channel (the reference's MNIST input adapter does);
    project_input maps each pixel's input features linearly to `width` channels before the stem;
    with head_channels the conv head outputs that many channels and a per-pixel linear layer makes the
    output, seeing the (projected) input as well when skip is set. num_classes > 0 makes it conditional:
    a class embedding added to the time embedding (index num_classes = the null class).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        in_channels: int,
        out_channels: int,
        width: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        blocks_per_level: int = 1,
        attention_resolutions: tuple[int, ...] = (8,),
        heads: int = 1,
        dropout: float = 0.0,
        fourier_exponents: tuple[int, ...] = (6, 7),
        conv_resample: bool = True,
        scale_shift: bool = True,
        time_scale: float = 1000.0,
        time_channel: bool = False,
        project_input: bool = False,
        skip: bool = False,
        head_channels: int | None = None,
        num_classes: int = 0,
    ):
        super().__init__()
        h, w, c = image_shape
        self.image_shape, self.out_channels = (h, w, c), out_channels
        self.fourier_exponents, self.time_channel, self.skip = tuple(fourier_exponents), time_channel, skip
        raw = c * in_channels + int(time_channel)
        feats = c * in_channels * (1 + 2 * len(self.fourier_exponents)) + int(time_channel)
        self.project = nn.Linear(feats, width) if project_input else None
        self.time = TimeEmbedding(width, scale=time_scale)
        tdim = self.time.out_dim
        self.stem = nn.Conv2d(width if project_input else feats, width, 3, padding=1)

        def block(cin: int, cout: int, res: int) -> ResAttnBlock:
            attn = SpatialAttention(cout, heads) if res in attention_resolutions else None
            return ResAttnBlock(ResBlock(cin, cout, tdim, dropout, scale_shift=scale_shift), attn)

        self.down = nn.ModuleList()
        skips, ch, res = [width], width, h
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_level):
                self.down.append(block(ch, width * mult, res))
                ch = width * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch, conv_resample))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, tdim, dropout, scale_shift=scale_shift),
                                  SpatialAttention(ch, heads),
                                  ResBlock(ch, ch, tdim, dropout, scale_shift=scale_shift)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(blocks_per_level + 1):
                self.up.append(block(ch + skips.pop(), width * mult, res))
                ch = width * mult
            if level > 0:
                self.up.append(Upsample(ch, conv_resample))
                res *= 2

        if skip and head_channels is None:
            head_channels = width
        head_out = c * out_channels if head_channels is None else head_channels
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, head_out, 3, padding=1)))
        # The reference's output adapter: a per-pixel linear map (default init) from the head's features.
        skip_ch = (width if project_input else raw) if skip else 0
        self.out = None if head_channels is None else nn.Linear(head_channels + skip_ch, c * out_channels)
        # Built last: the other layers draw the same initial weights as the unconditional network's.
        self.label = label_embedding(num_classes, tdim)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b, (h, w, c) = x.shape[0], self.image_shape
        x = x.reshape(b, h, w, -1)  # channel-last (B, H, W, C * C_in)
        feats = fourier_features(x, self.fourier_exponents, dim=-1)
        if self.time_channel:
            tmap = (2.0 * t - 1.0).to(x.dtype).reshape(b, 1, 1, 1).expand(b, h, w, 1)
            x, feats = torch.cat([x, tmap], -1), torch.cat([feats, tmap], -1)
        if self.project is not None:
            x = feats = self.project(feats)
        temb = add_label(self.label, self.time(t), y)
        hs = [self.stem(feats.permute(0, 3, 1, 2))]
        for layer in self.down:
            hs.append(layer(hs[-1], temb) if is_timed(layer) else layer(hs[-1]))
        z = hs[-1]
        z = self.mid[2](self.mid[1](self.mid[0](z, temb)), temb)
        for layer in self.up:
            z = layer(torch.cat([z, hs.pop()], 1), temb) if is_timed(layer) else layer(z)
        out = self.head(z).permute(0, 2, 3, 1)  # (B, H, W, head channels)
        if self.out is not None:
            out = self.out(torch.cat([x, out], -1) if self.skip else out)
        return out.reshape(b, h, w, c, self.out_channels)

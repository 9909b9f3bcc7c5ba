"""The resolution-preserving U-Net of Variational Diffusion Models (Kingma et al., 2021), as the BFN
reference code uses it for CIFAR-10: no down- or upsampling, n_blocks residual blocks on the way down,
a middle with self-attention, n_blocks + 1 on the way up, each fed the matching skip activation.

Input (B, H, W, C, C_in) with t (B,) -> output (B, H, W, C, C_out).

The reference's CIFAR-10 network (UNetVDM with its input and output adapters) is
VDMUNet(width=128, n_blocks=32, heads=1, dropout=0.1, norm_groups=32, fourier_exponents=(5, 6)).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bfn_core.networks.blocks import ResAttnBlock, ResBlock, SpatialAttention, group_norm, zero_init
from bfn_core.networks.embeddings import TimeEmbedding, add_label, fourier_features, label_embedding


class VDMUNet(nn.Module):
    """VDM U-Net at full resolution; Fourier features of the input mean in, a per-pixel linear head out.

    num_classes > 0 makes it conditional: a class embedding added to the time embedding (index num_classes = null).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        in_channels: int,
        out_channels: int,
        width: int = 128,
        n_blocks: int = 32,
        heads: int = 1,
        dropout: float = 0.1,
        norm_groups: int | None = 32,
        fourier_exponents: tuple[int, ...] = (5, 6),
        attention_everywhere: bool = False,
        num_classes: int = 0,
    ):
        super().__init__()
        h, w, c = image_shape
        self.image_shape, self.out_channels = (h, w, c), out_channels
        self.fourier_exponents = tuple(fourier_exponents)
        raw = c * in_channels
        self.time = TimeEmbedding(width, scale=1000.0, endpoint=True)
        tdim = self.time.out_dim
        self.stem = nn.Conv2d(raw * (1 + 2 * len(self.fourier_exponents)), width, 3, padding=1)

        def res(cin: int) -> ResBlock:
            # VDM's blocks add the time embedding through a bias-free, zero-initialised projection.
            return ResBlock(cin, width, tdim, dropout, time_bias=False, zero_time=True, groups=norm_groups)

        def block(cin: int) -> ResAttnBlock:
            return ResAttnBlock(res(cin), SpatialAttention(width, heads, norm_groups) if attention_everywhere else None)

        self.down = nn.ModuleList(block(width) for _ in range(n_blocks))
        self.mid = nn.ModuleList([res(width), SpatialAttention(width, heads, norm_groups), res(width)])
        self.up = nn.ModuleList(block(2 * width) for _ in range(n_blocks + 1))
        self.head = nn.Sequential(group_norm(width, norm_groups), nn.SiLU(), zero_init(nn.Conv2d(width, width, 3, padding=1)))
        # The reference's output adapter: a per-pixel linear map of [input mean, head features] (default init).
        self.out = nn.Linear(raw + width, c * out_channels)
        # Built last: the other layers draw the same initial weights as the unconditional network's.
        self.label = label_embedding(num_classes, tdim)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        b, (h, w, c) = x.shape[0], self.image_shape
        x = x.reshape(b, h, w, -1)  # channel-last (B, H, W, C * C_in)
        # The reference offsets t by 1/1000 (t * 1000 >= 1 in the embedding).
        temb = add_label(self.label, self.time(t + 1e-3), y)
        z = self.stem(fourier_features(x, self.fourier_exponents, dim=-1).permute(0, 3, 1, 2))
        hs = [z]
        for layer in self.down:
            z = layer(z, temb)
            hs.append(z)
        z = self.mid[2](self.mid[1](self.mid[0](z, temb)), temb)
        for layer in self.up:
            z = layer(torch.cat([z, hs.pop()], 1), temb)
        out = self.head(z).permute(0, 2, 3, 1)  # (B, H, W, width)
        return self.out(torch.cat([x, out], -1)).reshape(b, h, w, c, self.out_channels)

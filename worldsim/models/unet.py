"""A U-Net whose residual blocks are conditioned by adaptive group norm (DIAMOND-style).

The full-resolution level dominates the cost on a CPU, so the network can start with a
pixel-unshuffle stem: a 64x64 input is folded into 32x32 with 4x the channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Size of the U-Net."""

    channels: tuple[int, ...] = (64, 96, 96)
    """Channels per level; each further level halves the resolution."""
    blocks: int = 1
    """Residual blocks per level (down path; the up path has one more)."""
    attention: tuple[bool, ...] = (False, False, True)
    """Self-attention after each block of a level (use it only at low resolution)."""
    stem: int = 2
    """Pixel-unshuffle factor of the input (1 = work at full resolution)."""
    cond_dim: int = 128
    """Width of the conditioning vector (noise levels and actions)."""

    def __post_init__(self):
        if len(self.attention) != len(self.channels):
            raise ValueError(
                f"model.unet.attention needs one flag per level ({len(self.channels)}), "
                f"got {list(self.attention)}"
            )
        if self.stem not in (1, 2, 4):
            raise ValueError(f"model.unet.stem must be 1, 2 or 4, got {self.stem}")
        if not 1 <= len(self.channels) <= 8 or not all(1 <= c <= 4096 for c in self.channels):
            raise ValueError(
                "model.unet.channels must be 1 to 8 levels of 1 to 4096, got "
                f"{list(self.channels)[:10]}"
            )
        if not 1 <= self.blocks <= 16:
            raise ValueError(f"model.unet.blocks must be in [1, 16], got {self.blocks}")
        if not 8 <= self.cond_dim <= 4096 or self.cond_dim % 4:
            raise ValueError(
                f"model.unet.cond_dim must be a multiple of 4 in [8, 4096], got {self.cond_dim}"
            )

    @property
    def downsampling(self) -> int:
        """Total resolution reduction: frame sides must be a multiple of this."""
        return self.stem * 2 ** (len(self.channels) - 1)


def pack(x: torch.Tensor, r: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Frames (B, C, H, W) -> (B, C*r*r, H/r, W/r), pixel-unshuffled by r (channel c*r*r +
    i*r + j holds pixel (i, j) of each r x r cell), channels-last, in `dtype`: the layout a
    U-Net with `stem=r` convolves first, so a context kept in it is not re-laid-out on every
    step, and frames drawn stay packed until they are shown (`UNet.forward(packed=True)`).

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> pack(x, 2)[0, :, 0, 0].tolist(), torch.equal(unpack(pack(x, 2), 2), x)
    ([0.0, 1.0, 4.0, 5.0], True)
    """
    if r > 1:
        x = F.pixel_unshuffle(x, r)
    return x.to(dtype or x.dtype, memory_format=torch.channels_last)


def unpack(x: torch.Tensor, r: int) -> torch.Tensor:
    """The inverse of `pack` (in x's dtype and a contiguous layout)."""
    return (F.pixel_shuffle(x, r) if r > 1 else x).contiguous()


def _groups(c: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and c // g >= 4) if c >= 4 else 1


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that sidesteps a slow CPU kernel: for feature maps of fewer than 1024
    pixels, PyTorch's channels-last group norm reduces each group on its own, and in
    bfloat16 it does so 2.5-5x slower than fp32 when a group has fewer than 16 channels (the
    6 of 96 or 192 channels in 16 or 32 groups here, at 16x16 and 8x8; the 8 of the reward
    model's 64 in 8 groups; timings in BENCHMARKS.md, "group norm routed by the kernel's
    real slow case"). Such inputs are normalised in fp32 and cast back: the same parameters,
    the same result up to bfloat16 rounding."""

    def slow(self, x: torch.Tensor) -> bool:
        """Whether x would hit the slow bfloat16 channels-last kernel."""
        return (
            x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and self.num_channels // self.num_groups < 16
            and x.dim() == 4
            and x.shape[-2] * x.shape[-1] < 1024
            and x.is_contiguous(memory_format=torch.channels_last)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slow(x):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class AdaGroupNorm(nn.Module):
    """GroupNorm whose scale and shift are predicted from the conditioning vector."""

    def __init__(self, c: int, cond_dim: int):
        super().__init__()
        self.norm = GroupNorm(_groups(c), c, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * c)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """SiLU(norm(x) * (1 + scale) + shift), scale and shift projected from cond."""
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.norm(x) * (1 + scale) + shift)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, attention: bool):
        super().__init__()
        self.norm1, self.norm2 = AdaGroupNorm(c_in, cond_dim), AdaGroupNorm(c_out, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out) if attention else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.norm2(self.conv1(self.norm1(x, cond)), cond))
        x = self.skip(x) + h
        return self.attn(x) if self.attn is not None else x


class SelfAttention(nn.Module):
    def __init__(self, c: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, c // head_dim)
        self.norm = GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        y = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """(B, c_in, H, W), (B, cond_dim) -> (B, c_out, H, W). The plain (training) forward;
    `worldsim.models.prepare` builds its inference form.

    >>> net = UNet(UNetConfig(channels=(8, 16), attention=(False, True), cond_dim=8), 15, 3)
    >>> net(torch.zeros(2, 15, 16, 16), torch.zeros(2, 8)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, cfg: UNetConfig, c_in: int, c_out: int):
        super().__init__()
        self.cfg, ch, d = cfg, cfg.channels, cfg.cond_dim
        self.stem = nn.Conv2d(c_in * cfg.stem**2, ch[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        self.downsample = nn.ModuleList(
            nn.Conv2d(ch[i], ch[i + 1], 3, 2, 1) for i in range(len(ch) - 1)
        )
        self.upsample = nn.ModuleList(
            nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(len(ch) - 1)
        )
        for c, att in zip(ch, cfg.attention, strict=True):
            self.down.append(nn.ModuleList(ResBlock(c, c, d, att) for _ in range(cfg.blocks)))
            self.up.append(nn.ModuleList(ResBlock(2 * c, c, d, att) for _ in range(cfg.blocks + 1)))
        self.mid = nn.ModuleList(
            [ResBlock(ch[-1], ch[-1], d, True), ResBlock(ch[-1], ch[-1], d, False)]
        )
        self.out_norm = GroupNorm(_groups(ch[0]), ch[0])
        self.out = nn.Conv2d(ch[0], c_out * cfg.stem**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:  # always: the conv is built with a bias
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """`packed`: x comes `pack`ed by `cfg.stem`, and the output is left packed."""
        r = self.cfg.stem
        h = self.stem(x if packed or r == 1 else F.pixel_unshuffle(x, r))
        h = self.trunk(h, cond)
        return h if packed else unpack(h, self.cfg.stem)

    def trunk(self, h: torch.Tensor, cond: Any) -> torch.Tensor:
        """Down, middle and up stages and the output head, from the stem's features; `cond`
        goes to every block as it is (the plain blocks take the conditioning vector, the
        prepared ones their precomputed projections)."""
        skips = [h]
        for i, blocks in enumerate(self.down):
            for block in cast(nn.ModuleList, blocks):
                h = block(h, cond)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, cond)
        for i in reversed(range(len(self.up))):
            for block in cast(nn.ModuleList, self.up[i]):
                h = block(torch.cat([h, skips.pop()], dim=1), cond)
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))

"""A U-Net whose residual blocks are conditioned by adaptive group norm (DIAMOND-style).

The full-resolution level dominates the cost on a CPU, so the network can start with a
pixel-unshuffle stem: a 64x64 input is folded into 32x32 with 4x the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

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
                f"model.unet.channels must be 1 to 8 levels of 1 to 4096, got {list(self.channels)[:10]}"
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
    model's 64 in 8 groups), measured with torch 2.13 on the 2-core dev CPU: e.g. 2.3 ms
    against 0.64 ms at (32, 96, 16, 16), 0.16 against 0.06 ms at (1, 192, 16, 16). Such inputs are normalised in fp32. Where a scale
    and shift follow without autograd (`AdaGroupNorm`), large ones (`fuse`) are normalised
    as `x * a + b` with per-channel coefficients from fp32 sums (`coefficients`): one pass
    instead of a cast, two, a cast back and the scale and shift. Same parameters, same
    result up to bfloat16 rounding."""

    FUSE_MIN = 2**19
    """Fewest elements for the fused form: below it its dozen small ops cost more than the
    passes they save (per-call timings on the 2-core dev CPU: it wins from batch ~16 at
    16x16, loses at every batch up to 32 at 8x8)."""

    def slow(self, x: torch.Tensor) -> bool:
        """Whether x would hit the slow bfloat16 channels-last kernel."""
        return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and self.num_channels // self.num_groups < 16
                and x.dim() == 4 and x.shape[-2] * x.shape[-1] < 1024
                and x.is_contiguous(memory_format=torch.channels_last))  # fmt: skip

    def fuse(self, x: torch.Tensor) -> bool:
        """Whether to normalise x as `x * a + b` (see the class docstring)."""
        return self.slow(x) and not torch.is_grad_enabled() and x.numel() >= self.FUSE_MIN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slow(x):  # (the fused form only pays where it also takes a scale and shift)
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)

    def coefficients(
        self, x: torch.Tensor, scale=None, shift=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b), each (N, C, 1, 1) in x's dtype, such that x * a + b is the group norm of x
        times `scale` plus `shift` ((C,) or (N, C, 1, 1), or None). The group statistics come
        from per-channel sums and sums of squares accumulated in fp32, as PyTorch's own
        channels-last kernel computes them."""
        N, C, G = x.shape[0], self.num_channels, self.num_groups
        n = x[0, 0].numel() * (C // G)
        s1 = torch.sum(x, dim=(2, 3), dtype=torch.float32).view(N, G, -1).sum(-1, keepdim=True)
        s2 = (
            torch.sum(x.square(), dim=(2, 3), dtype=torch.float32)
            .view(N, G, -1)
            .sum(-1, keepdim=True)
        )
        mean = s1 / n
        rstd = ((s2 / n - mean.square()).clamp_min(0) + self.eps).rsqrt()
        a = rstd.expand(N, G, C // G).reshape(N, C)
        if scale is not None:
            a = a * scale.float().reshape(-1, C)
        b = -mean.expand(N, G, C // G).reshape(N, C) * a
        if shift is not None:
            b = b + shift.float().reshape(-1, C)
        return a.to(x.dtype)[:, :, None, None], b.to(x.dtype)[:, :, None, None]


def _fused_conv_add():
    try:
        return (
            torch.ops.mkldnn._convolution_pointwise.binary
            if torch.backends.mkldnn.is_available()
            else None
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN's fused convolutions
        return None


_CONV_ADD = _fused_conv_add()
_CONV_ADD_UNSUPPORTED: set[torch.dtype] = set()
"""Dtypes the fused op refused on this CPU (it needs AVX-512 or AVX-NE-CONVERT for bf16):
they take the plain convolution and add from then on."""


CONV_ADD_MIN = 2**17
"""Fewest output elements for `conv_add`'s fused form: below it the fused op's per-call
cost outweighs the pass it saves (per-call timings on the 2-core dev CPU, bf16: it wins
from ~100k elements, e.g. 0.336 against 0.376 ms at (8, 64, 32, 32), 1.06 against 1.36
ms at (32, 64, 32, 32), and loses by 3-6 us at batch 1)."""


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """conv(x) + other, without autograd. On the CPU, for large channels-last inputs in the
    weights' dtype, oneDNN adds `other` as the convolution writes its output (the fused op
    PyTorch's own compiler emits), instead of in another pass over the sum: the same values
    up to rounding (one rounding to bfloat16 instead of two)."""
    fused = (
        _CONV_ADD is not None and other.numel() >= CONV_ADD_MIN and x.device.type == "cpu"
        and x.dtype == other.dtype == conv.weight.dtype
        and x.is_contiguous(memory_format=torch.channels_last)
        and other.is_contiguous(memory_format=torch.channels_last)
        and isinstance(conv.padding, tuple)
    )  # fmt: skip
    if fused and x.dtype not in _CONV_ADD_UNSUPPORTED:
        try:
            return _CONV_ADD(x, other, conv.weight, conv.bias, conv.padding, conv.stride,
                             conv.dilation, conv.groups, "add", None, None, [], None)  # fmt: skip
        except RuntimeError as e:  # bf16 on a CPU without AVX-512: the op checks the ISA
            if "cpu support" not in str(e):
                raise
            _CONV_ADD_UNSUPPORTED.add(x.dtype)
    return conv(x).add_(other)


def _scale_ones(c: int, device) -> torch.Tensor:
    """(2c,): 1 for a projection's scale half, 0 for its shift half."""
    return torch.cat([torch.ones(c, device=device), torch.zeros(c, device=device)])


class AdaGroupNorm(nn.Module):
    """GroupNorm whose scale and shift are predicted from the conditioning vector."""

    def __init__(self, c: int, cond_dim: int):
        super().__init__()
        self.norm = GroupNorm(_groups(c), c, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * c)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, silu: bool = False, proj=None
    ) -> torch.Tensor:
        """Normalise, scale and shift x (then SiLU, with `silu`); `proj`, if given, is
        (1 + scale, shift), each (N, C, 1, 1) in x's dtype, computed beforehand
        (`UNet.projections`). Without autograd the scale, shift and SiLU are one fused
        multiply-add and an in-place SiLU (or, where `GroupNorm.fuse`, the norm too joins
        the multiply-add): the same values up to rounding, with less memory traffic at large
        batches."""
        if proj is None:
            scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
            scale = 1 + scale
        else:
            scale, shift = proj
        if torch.is_grad_enabled():
            y = self.norm(x) * scale + shift
            return F.silu(y) if silu else y
        if self.norm.fuse(x):
            a, b = self.norm.coefficients(x, scale, shift)
            y = torch.addcmul(b, x, a)
        else:
            y = self.norm(x)
            y = torch.addcmul(shift, y, scale, out=y)
        return F.silu(y, inplace=True) if silu else y


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, attention: bool):
        super().__init__()
        self.norm1, self.norm2 = AdaGroupNorm(c_in, cond_dim), AdaGroupNorm(c_out, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out) if attention else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor, proj=None) -> torch.Tensor:
        """`proj`: this block's two adaptive-norm projections of `cond`, if precomputed."""
        p1, p2 = proj if proj is not None else (None, None)
        h = self.conv1(self.norm1(x, cond, silu=True, proj=p1))
        h = self.norm2(h, cond, silu=True, proj=p2)
        if torch.is_grad_enabled():
            x = self.skip(x) + self.conv2(h)
        else:
            x = conv_add(self.conv2, h, self.skip(x))
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
    """(B, c_in, H, W), (B, cond_dim) -> (B, c_out, H, W).

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
        nn.init.zeros_(self.out.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-unshuffle by `stem`, then the stem convolution. Without autograd both run as
        one convolution of the full-resolution input (kernel 3r, stride r, weights rearranged),
        fed in the layout and precision the network runs in: the same result, without the
        unshuffle's strided copy, the cast and an NCHW convolution (together ~4 ms of a
        bf16 batch-32 forward on the 2-core CPU, ~2.3 ms after)."""
        r = self.cfg.stem
        if r == 1:
            return self.stem(x)
        if torch.is_grad_enabled():
            return self.stem(F.pixel_unshuffle(x, r))
        w = self.stem.weight  # (O, C*r*r, 3, 3), input channel c*r*r + i*r + j
        o, c = w.shape[0], x.shape[1]
        w = w.reshape(o, c, r, r, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(o, c, 3 * r, 3 * r)
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.to(dtype, memory_format=torch.channels_last)
            w = w.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, self.stem.bias, stride=r, padding=r)

    def projections(self, cond: torch.Tensor, dtype: torch.dtype | None = None) -> dict:
        """Every adaptive norm's (1 + scale, shift) of `cond`, by block (a pair of pairs, each
        (N, C, 1, 1) in `dtype`), from one fp32 matrix product (the layers' weights joined
        once, again whenever they change; the 1 folded into the joined bias) and one cast.
        Two dozen small products each cost 15-140 us on the CPU, most of it overhead paid
        after each large operation (1.7 ms of a 12 ms bf16 step at batch 1, 2.9 ms of 76 at
        batch 32, on the 2-core dev CPU), and two dozen casts, slices and adds another
        ~0.5 ms; fp32 is also exact where bf16 rounded."""
        if "_layers" not in self.__dict__:  # the architecture is fixed: walk it once
            blocks = [m for m in self.modules() if isinstance(m, ResBlock)]
            self._layers = blocks, [n.proj for b in blocks for n in (b.norm1, b.norm2)]
        blocks, layers = self._layers
        key = tuple((p.data_ptr(), p._version) for m in layers for p in m._parameters.values())
        if getattr(self, "_joined", (None,))[0] != key:
            w_t = torch.cat([m.weight.float() for m in layers]).t().contiguous()
            b = torch.cat([m.bias.float() + _scale_ones(m.out_features // 2, m.bias.device)
                           for m in layers])  # fmt: skip
            sizes = [m.out_features // 2 for m in layers for _ in (0, 1)]
            self._joined = (key, w_t, b, sizes)
        _, w_t, b, sizes = self._joined
        with torch.autocast(cond.device.type, enabled=False):
            out = torch.addmm(b, cond.float(), w_t)
        p = out.to(dtype or out.dtype)[:, :, None, None].split(sizes, dim=1)
        return {blk: ((p[4 * i], p[4 * i + 1]), (p[4 * i + 2], p[4 * i + 3]))
                for i, blk in enumerate(blocks)}  # fmt: skip

    def forward(self, x: torch.Tensor, cond: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """`packed`: x comes `pack`ed by `cfg.stem`, and the output is left packed."""
        h = self.stem(x) if packed else self._stem(x)
        proj = {} if torch.is_grad_enabled() else self.projections(cond, h.dtype)
        skips = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, cond, proj.get(block))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, cond, proj.get(block))
        for i in reversed(range(len(self.up))):
            for block in self.up[i]:
                h = block(torch.cat([h, skips.pop()], dim=1), cond, proj.get(block))
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out(F.silu(self.out_norm(h)))
        return h if packed else unpack(h, self.cfg.stem)

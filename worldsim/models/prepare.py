"""Prepared inference: `prepare(network, precision)` builds, once, the frozen module that
runs a trained network for drawing frames, beside the network's plain (training) forward.

A prepared network computes the plain network's function (tested equal on random weights,
tests/test_models.py), with what only pays without autograd done once or fused:
- pixel-unshuffle and the stem convolution as one strided convolution of the full-resolution
  frame, its weights rearranged once (`fold_stem`);
- every adaptive norm's scale and shift from one fp32 matrix product of the conditioning,
  the norms' linear layers joined once (`Projections`);
- scale, shift and SiLU as one multiply-add and an in-place SiLU, the norm joining it for
  large bfloat16 inputs (`ada_norm`), and each residual add done by the convolution before
  it (`fused.conv_add`);
- the reward model's first convolution re-folded once to read the packed context
  (`reward.refold`);
- with precision "bf16": convolution weights stored in bfloat16 (what autocast would cast
  them to on every call, cast once) and the network run under bfloat16 autocast; the
  conditioning stays fp32 (as fast as bf16 for such small products, and exact).

A prepared module is a snapshot of the weights it was given: after they change (training, an
EMA update, loading), prepare the network again.
"""

from __future__ import annotations

import copy
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.models.denoiser import Denoiser
from worldsim.models.fused import conv_add, fuses, norm_coefficients
from worldsim.models.reward import RewardEndModel, conv_packed, refold
from worldsim.models.unet import GroupNorm, ResBlock, UNet, unpack

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
M = TypeVar("M", bound=nn.Module)


def prepare(network: nn.Module, precision: str = "fp32") -> nn.Module:
    """The frozen inference module of a `Denoiser`, `RewardEndModel` or `UNet` (eval mode, no
    gradients), called as the network is, in `precision` ("fp32" or "bf16") whatever the
    caller's autocast. The network itself is left as it was.

    >>> from worldsim.models.denoiser import DenoiserConfig
    >>> from worldsim.models.unet import UNetConfig
    >>> unet = UNetConfig(channels=(8, 8), attention=(False, False), cond_dim=16)
    >>> D = Denoiser(DenoiserConfig(context=2, unet=unet), num_actions=3)
    >>> args = (torch.randn(2, 3, 16, 16), torch.ones(2), torch.randn(2, 2, 3, 16, 16),
    ...         torch.zeros(2, 2, dtype=torch.long), torch.zeros(2))
    >>> fast = prepare(D)
    >>> torch.allclose(fast(*args), D(*args), atol=1e-5), fast(*args).requires_grad
    (True, False)
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    kinds = {Denoiser: PreparedDenoiser, RewardEndModel: PreparedReward, UNet: PreparedUNet}
    if type(network) not in kinds:
        raise TypeError(
            f"prepare takes a Denoiser, RewardEndModel or UNet, got {type(network).__name__}"
        )
    return kinds[type(network)](network, precision).eval().requires_grad_(False)


def _frozen_copy(net: M, precision: str) -> M:
    """A copy of net without gradients, its convolutions in `precision` (linear layers stay
    fp32: the conditioning runs in fp32)."""
    net = copy.deepcopy(net).eval().requires_grad_(False)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.to(DTYPES[precision])
    return net


def _resblocks(level: nn.Module) -> list[ResBlock]:
    """The blocks of one level (an `nn.ModuleList` of `ResBlock`s) of a `UNet`."""
    return [cast(ResBlock, b) for b in cast(nn.ModuleList, level)]


def fold_stem(w: torch.Tensor, r: int) -> torch.Tensor:
    """The weights (O, C, 3r, 3r) of one stride-r, padding-r convolution of full-resolution
    frames that computes the 3x3 convolution w (O, C*r*r, 3, 3) of the frames
    pixel-unshuffled by r (input channel c*r*r + i*r + j holds pixel (i, j) of each cell)."""
    o, c = w.shape[0], w.shape[1] // r**2
    folded = w.reshape(o, c, r, r, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(o, c, 3 * r, 3 * r)
    if w.is_contiguous(memory_format=torch.channels_last):
        folded = folded.contiguous(memory_format=torch.channels_last)
    return folded


def ada_norm(norm: GroupNorm, x: torch.Tensor, scale, shift) -> torch.Tensor:
    """`AdaGroupNorm`'s SiLU(norm(x) * scale + shift), scale and shift (N, C, 1, 1) with the 1
    already added: one multiply-add and an in-place SiLU, or where `fused.fuses`, the norm
    too folded into the multiply-add."""
    if fuses(norm, x):
        a, b = norm_coefficients(norm, x, scale, shift)
        y = torch.addcmul(b, x, a)
    else:
        y = norm(x)
        y = torch.addcmul(shift, y, scale, out=y)
    return F.silu(y, inplace=True)


class Projections(nn.Module):
    """Every adaptive norm's (1 + scale, shift) of the conditioning, from one fp32 matrix
    product: two dozen small products cost more in per-call overhead than the one, and fp32
    is exact where bf16 rounds. (B, cond_dim) -> a tuple of (B, C, 1, 1), 4 per block."""

    w_t: torch.Tensor
    b: torch.Tensor

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        w = torch.cat([m.weight.float() for m in layers])  # (sum of 2C, cond_dim)
        b = torch.cat([m.bias.float() for m in layers])
        # 1 on each layer's scale half, 0 on its shift half: the 1 of 1 + scale
        one = torch.cat([torch.arange(m.out_features) < m.out_features // 2 for m in layers])
        self.register_buffer("w_t", w.t().contiguous())
        self.register_buffer("b", b + one.to(b))
        self.sizes = [m.out_features // 2 for m in layers for _ in (0, 1)]

    def forward(self, cond: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        with torch.autocast(cond.device.type, enabled=False):
            out = torch.addmm(self.b, cond.float(), self.w_t)
        return out.to(dtype)[:, :, None, None].split(self.sizes, dim=1)


class PreparedBlock(nn.Module):
    """A `ResBlock` prepared (`ada_norm`, `conv_add`), given its norms' projections."""

    def __init__(self, block: ResBlock, index: int):
        super().__init__()
        self.index = index  # its projections are p[4 * index : 4 * index + 4]
        self.norm1, self.norm2 = block.norm1.norm, block.norm2.norm
        self.conv1, self.conv2 = block.conv1, block.conv2
        self.skip, self.attn = block.skip, block.attn

    def forward(self, x: torch.Tensor, p: tuple[torch.Tensor, ...]) -> torch.Tensor:
        scale1, shift1, scale2, shift2 = p[4 * self.index : 4 * self.index + 4]
        h = self.conv1(ada_norm(self.norm1, x, scale1, shift1))
        x = conv_add(self.conv2, ada_norm(self.norm2, h, scale2, shift2), self.skip(x))
        return self.attn(x) if self.attn is not None else x


class PreparedUNet(nn.Module):
    """A `UNet` prepared: `UNet.forward`'s function and signature."""

    stem_w: torch.Tensor | None  # the stem folded for full-resolution input (None: stem 1)

    def __init__(self, net: UNet, precision: str):
        super().__init__()
        net = _frozen_copy(net, precision)
        self.cfg, self.dtype = net.cfg, DTYPES[precision]
        self.stem, self.downsample, self.upsample = net.stem, net.downsample, net.upsample
        self.out_norm, self.out = net.out_norm, net.out
        blocks = [b for part in (*net.down, net.mid, *net.up) for b in _resblocks(part)]
        index = {b: i for i, b in enumerate(blocks)}
        self.down = nn.ModuleList(
            nn.ModuleList(PreparedBlock(b, index[b]) for b in _resblocks(level))
            for level in net.down
        )
        self.mid = nn.ModuleList(PreparedBlock(b, index[b]) for b in _resblocks(net.mid))
        self.up = nn.ModuleList(
            nn.ModuleList(PreparedBlock(b, index[b]) for b in _resblocks(level)) for level in net.up
        )
        self.projections = Projections([n.proj for b in blocks for n in (b.norm1, b.norm2)])
        r = self.cfg.stem
        self.register_buffer("stem_w", fold_stem(net.stem.weight, r) if r > 1 else None)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-unshuffle and the stem convolution as one convolution of the full-resolution
        input, fed in the layout and precision the network runs in: the same result, without
        the unshuffle's strided copy, the cast and an NCHW convolution."""
        r = self.cfg.stem
        if r == 1:
            return self.stem(x)
        if self.stem_w is None:
            raise RuntimeError("stem > 1 but no folded stem weights (stem_w)")
        if self.stem_w.is_contiguous(memory_format=torch.channels_last):
            x = x.to(self.dtype, memory_format=torch.channels_last)
        return F.conv2d(x, self.stem_w, self.stem.bias, stride=r, padding=r)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, packed: bool = False) -> torch.Tensor:
        bf16 = self.dtype == torch.bfloat16
        with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            h = self.stem(x) if packed else self._stem(x)
            p = self.projections(cond, h.dtype)
            h = UNet.trunk(cast(UNet, self), h, p)
        return h if packed else unpack(h, self.cfg.stem)


class PreparedDenoiser(nn.Module):
    """A `Denoiser` prepared: its own preconditioning and conditioning (`Denoiser.forward`
    and `raw`, the same code, run in fp32) around its U-Net prepared."""

    scalings, raw = Denoiser.scalings, Denoiser.raw

    def __init__(self, denoiser: Denoiser, precision: str):
        super().__init__()
        self.cfg, self.num_actions = denoiser.cfg, denoiser.num_actions
        self.parameterization = denoiser.parameterization
        self.act_emb = _frozen_copy(denoiser.act_emb, "fp32")
        self.cond_mlp = _frozen_copy(denoiser.cond_mlp, "fp32")
        self.net = PreparedUNet(denoiser.net, precision)

    def forward(self, x, sigma, obs, act, sigma_ctx, packed: bool = False) -> torch.Tensor:
        """x0, as `Denoiser.forward`."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            # Denoiser's own code, run on this module (it has the attributes that reads)
            return Denoiser.forward(cast(Denoiser, self), x, sigma, obs, act, sigma_ctx, packed)


class PreparedReward(nn.Module):
    """A `RewardEndModel` prepared: its first convolution re-folded once for the packed
    context its stride allows (`reward.refold`); its own head (`head_outputs`)."""

    first_w: torch.Tensor | None  # the first convolution re-folded (None: no such form)

    head_outputs = RewardEndModel.head_outputs

    def __init__(self, model: RewardEndModel, precision: str):
        super().__init__()
        model = _frozen_copy(model, precision)
        self.convs, self.act_emb, self.head = model.convs, model.act_emb, model.head
        self.life_head, self.num_rewards = model.life_head, model.num_rewards
        self.bf16 = precision == "bf16"
        # the packing the first convolution folds for, if any: its stride r (0: none)
        first = cast(nn.Conv2d, self.convs[0])
        folded = refold(first, first.stride[0])
        self.r, self.first_pad = (first.stride[0], folded[1]) if folded else (0, 0)
        self.register_buffer("first_w", folded[0] if folded else None)

    def forward(
        self, obs, action, nxt, packed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `RewardEndModel.forward`."""
        B, dev = obs.shape[0], obs.device.type
        with torch.no_grad(), torch.autocast(dev, torch.bfloat16, enabled=self.bf16):
            if packed:
                folded = (self.first_w, self.first_pad) if packed == self.r else None
                x = torch.cat([obs, nxt], dim=1)
                first = cast(nn.Conv2d, self.convs[0])
                h = self.convs[1:](conv_packed(first, x, packed, folded))
            else:
                h = self.convs(torch.cat([obs.reshape(B, -1, *obs.shape[-2:]), nxt], dim=1))
            # RewardEndModel's own head, run on this module (it has the layers that reads)
            return RewardEndModel.head_outputs(cast(RewardEndModel, self), h, action)

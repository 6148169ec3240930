"""Fused CPU kernels for prepared inference (`worldsim.models.prepare`), without autograd:
a convolution that adds the residual as it writes its output, and a group norm folded into
the adaptive scale and shift. Each gives its plain counterpart's values up to rounding, and
is taken only where it pays (timings in BENCHMARKS.md, sessions 6-8)."""

from __future__ import annotations

import torch
from torch import nn

from worldsim.models.unet import GroupNorm

FUSE_MIN = 2**19
"""Fewest elements for the fused norm: below it its dozen small ops cost more than the passes
they save (it wins from batch ~16 at 16x16, loses at every batch up to 32 at 8x8)."""


def fuses(norm: GroupNorm, x: torch.Tensor) -> bool:
    """Whether to normalise x as `x * a + b` (`norm_coefficients`): large inputs that would
    hit the slow bfloat16 kernel (`GroupNorm.slow`), where one pass replaces a cast, two
    passes, a cast back and the scale and shift."""
    return norm.slow(x) and x.numel() >= FUSE_MIN


def norm_coefficients(
    norm: GroupNorm, x: torch.Tensor, scale=None, shift=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (N, C, 1, 1) in x's dtype, such that x * a + b is the group norm of x
    times `scale` plus `shift` ((C,) or (N, C, 1, 1), or None). The group statistics come
    from per-channel sums and sums of squares accumulated in fp32, as PyTorch's own
    channels-last kernel computes them.

    >>> norm = GroupNorm(2, 4, affine=False)
    >>> x = torch.randn(3, 4, 5, 5)
    >>> a, b = norm_coefficients(norm, x)
    >>> torch.allclose(x * a + b, norm(x), atol=1e-5)
    True
    """
    N, C, G = x.shape[0], norm.num_channels, norm.num_groups
    n = x[0, 0].numel() * (C // G)
    s1 = torch.sum(x, dim=(2, 3), dtype=torch.float32).view(N, G, -1).sum(-1, keepdim=True)
    s2 = torch.sum(x.square(), dim=(2, 3), dtype=torch.float32).view(N, G, -1)
    s2 = s2.sum(-1, keepdim=True)
    mean = s1 / n
    rstd = ((s2 / n - mean.square()).clamp_min(0) + norm.eps).rsqrt()
    a = rstd.expand(N, G, C // G).reshape(N, C)
    if scale is not None:
        a = a * scale.float().reshape(-1, C)
    b = -mean.expand(N, G, C // G).reshape(N, C) * a
    if shift is not None:
        b = b + shift.float().reshape(-1, C)
    return a.to(x.dtype)[:, :, None, None], b.to(x.dtype)[:, :, None, None]


def _fused_conv_add():
    try:
        mkldnn = torch.backends.mkldnn.is_available()
        return torch.ops.mkldnn._convolution_pointwise.binary if mkldnn else None
    except (AttributeError, RuntimeError):  # a build without oneDNN's fused convolutions
        return None


_CONV_ADD = _fused_conv_add()
_CONV_ADD_UNSUPPORTED: set[torch.dtype] = set()
"""Dtypes the fused op refused on this CPU (it needs AVX-512 or AVX-NE-CONVERT for bf16):
they take the plain convolution and add from then on."""

CONV_ADD_MIN = 2**17
"""Fewest output elements for `conv_add`'s fused form: below it the fused op's per-call
cost outweighs the pass it saves (it wins from ~100k elements, loses by a few
microseconds at batch 1)."""


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """conv(x) + other, without autograd. On the CPU, for large channels-last inputs in the
    weights' dtype, oneDNN adds `other` as the convolution writes its output (the fused op
    PyTorch's own compiler emits), instead of in another pass over the sum: the same values
    up to rounding (one rounding to bfloat16 instead of two)."""
    cl = torch.channels_last
    fused = (
        _CONV_ADD is not None
        and other.numel() >= CONV_ADD_MIN
        and x.device.type == "cpu"
        and x.dtype == other.dtype == conv.weight.dtype
        and x.is_contiguous(memory_format=cl)
        and other.is_contiguous(memory_format=cl)
        and isinstance(conv.padding, tuple)
    )
    if fused and x.dtype not in _CONV_ADD_UNSUPPORTED:
        c = conv
        args: tuple[object, ...]  # the op's remaining arguments, of mixed types
        args = (c.padding, c.stride, c.dilation, c.groups, "add", None, None, [], None)
        try:
            return _CONV_ADD(x, other, c.weight, c.bias, *args)
        except RuntimeError as e:  # bf16 on a CPU without AVX-512: the op checks the ISA
            if "cpu support" not in str(e):
                raise
            _CONV_ADD_UNSUPPORTED.add(x.dtype)
    return conv(x).add_(other)

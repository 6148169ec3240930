"""Frame-fidelity measures: PSNR over the whole frame and over the moving pixels."""

from __future__ import annotations

import torch


def psnr(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR in dB of uint8-range frames (B, 3, H, W); `mask` (B, H, W) restricts
    it to some pixels (samples with an empty mask give NaN). Capped at 60 dB, so a frame
    that matches exactly does not dominate a mean over samples.

    >>> a = torch.zeros(1, 3, 2, 2); b = a.clone(); b[0, :, 0, 0] = 255
    >>> round(psnr(a, b).item(), 2)  # MSE = 255^2 / 4
    6.02
    >>> psnr(a, a).item()
    60.0
    """
    err = (pred.float() - real.float()).pow(2).mean(dim=1)  # (B, H, W)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float()
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(255.0**2 / 1e6))


def moving_mask(last: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixels (B, H, W) that differ between the last context frame and the target."""
    return (last.float() - target.float()).abs().amax(dim=1) > 0


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004) of uint8-range (B, 3, H, W) frames, 7x7 Gaussian window.

    >>> x = torch.rand(2, 3, 16, 16) * 255
    >>> [round(v, 4) for v in ssim(x, x).tolist()]
    [1.0, 1.0]
    """
    import torch.nn.functional as F

    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = pred.float(), real.float()
    c = x.shape[1]
    w = _gaussian_window().to(x.device).expand(c, 1, -1, -1)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    return s.flatten(1).mean(1)


def sharpness(frames: torch.Tensor) -> torch.Tensor:
    """Per-sample variance of the Laplacian of the grey image (B, 3, H, W): blur lowers it."""
    import torch.nn.functional as F

    grey = frames.float().mean(dim=1, keepdim=True)
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], device=grey.device)[None, None]
    return F.conv2d(grey, k).flatten(1).var(dim=1)

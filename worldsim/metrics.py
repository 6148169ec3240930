"""Frame-fidelity measures: PSNR over the whole frame and over the moving pixels."""

from __future__ import annotations

import torch


def psnr(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR in dB of uint8-range frames (B, 3, H, W); `mask` (B, H, W) restricts
    it to some pixels (samples with an empty mask give NaN).

    >>> a = torch.zeros(1, 3, 2, 2); b = a.clone(); b[0, :, 0, 0] = 255
    >>> round(psnr(a, b).item(), 2)  # MSE = 255^2 / 4
    6.02
    """
    err = (pred.float() - real.float()).pow(2).mean(dim=1)  # (B, H, W)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float()
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def moving_mask(last: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixels (B, H, W) that differ between the last context frame and the target."""
    return (last.float() - target.float()).abs().amax(dim=1) > 0

"""Preconditioning coefficients of the denoiser D(x, s) = c_skip x + c_out F(c_in x, c_noise)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Scalings(NamedTuple):
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> Scalings:
    """EDM preconditioning (Karras et al. 2022, Table 1).

    >>> s = edm_scalings(torch.tensor(0.5), sigma_data=0.5)
    >>> round(s.c_skip.item(), 4), round(s.c_out.item(), 4), round(s.c_in.item(), 4)
    (0.5, 0.3536, 1.4142)
    """
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return Scalings(c_skip, c_out, c_in, c_noise)


def consistency_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float) -> Scalings:
    """Consistency-model parameterisation (Song et al. 2023, Appendix C): at sigma_min,
    c_skip = 1 and c_out = 0 exactly, so f(x, sigma_min) = x (the boundary condition).

    >>> s = consistency_scalings(torch.tensor(0.002), sigma_data=0.5, sigma_min=0.002)
    >>> s.c_skip.item(), s.c_out.item()
    (1.0, 0.0)
    """
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return Scalings(c_skip, c_out, c_in, c_noise)

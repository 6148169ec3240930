"""Drawing next frames with a trained denoiser: the shared core of eval, the env and play."""

from __future__ import annotations

import torch

from worldsim.models.denoiser import Denoiser
from worldsim.models.samplers import SamplerConfig, sample


@torch.no_grad()
def next_frame(denoiser: Denoiser, obs: torch.Tensor, act: torch.Tensor, sampler: SamplerConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Draw the next frame (B, 3, H, W) in [-1, 1] from obs (B, K, 3, H, W) in [-1, 1] and
    act (B, K), where act[:, -1] is the action being taken now."""
    B, _, C, H, W = obs.shape
    sigma_ctx = torch.zeros(B, device=obs.device)
    noise = torch.randn(B, C, H, W, generator=generator, device=obs.device)

    def denoise(x, sigma):
        return denoiser(x, sigma, obs, act, sigma_ctx)

    return sample(denoise, noise, sampler, generator).clamp(-1, 1)

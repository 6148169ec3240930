"""The EDM denoiser D(x, sigma | past frames, actions) -> x0 of the next frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from worldsim.models.precond import Scalings, consistency_scalings, edm_scalings
from worldsim.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class DenoiserConfig:
    """The next-frame diffusion model."""

    context: int = 4
    """K: past frames (and actions) the model sees."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """Network size."""
    sigma_data: float = 0.5
    """EDM: standard deviation of the data (frames scaled to [-1, 1])."""
    P_mean: float = -0.4
    """EDM: mean of log-sigma in training (DIAMOND's Atari value)."""
    P_std: float = 1.2
    """EDM: standard deviation of log-sigma in training."""
    ctx_noise_max: float = 0.3
    """Context frames get Gaussian noise of a level drawn in [0, ctx_noise_max] in training
    (GameNGen); the network is told the level. Keeps autoregressive rollouts from drifting."""
    ctx_noise_p: float = 0.7
    """Share of training samples whose context is noised."""
    sigma_min: float = 0.002
    """Smallest noise level: the consistency boundary condition holds here."""
    residual: bool = False
    """Diffuse the change from the last context frame instead of the frame itself (the
    contract D(x, sigma) -> x0 is unchanged). Sharper static pixels one step ahead, but any
    bias in the change accumulates over autoregressive rollouts (BENCHMARKS.md, "Residual or
    not"), so it is off by default."""
    motion_weight: float = 0.0
    """Extra training-loss weight on the pixels that change from the last context frame:
    they weigh 1 + motion_weight, the still ones 1 (the loss is then divided by the batch's
    mean weight). In Bricks the ball and paddle are ~1% of the frame, so under the plain
    loss the still 99% decide what the network learns first."""

    def weights_meaning(self) -> DenoiserConfig:
        """This config without the settings that only shape training (`motion_weight`): two
        configs with the same meaning load each other's weights."""
        return replace(self, motion_weight=0.0)

    def __post_init__(self):
        if not 1 <= self.context <= 64:
            raise ValueError(f"model.denoiser.context must be in [1, 64], got {self.context}")
        for key in ("sigma_data", "P_std", "sigma_min"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"model.denoiser.{key} must be a finite number > 0, got {v}")
        if not math.isfinite(self.P_mean) or not (0 <= self.ctx_noise_max < 100):
            raise ValueError(
                f"model.denoiser.P_mean must be finite and ctx_noise_max in [0, 100), "
                f"got {self.P_mean}, {self.ctx_noise_max}"
            )
        if not (math.isfinite(self.motion_weight) and self.motion_weight >= 0):
            raise ValueError(
                f"model.denoiser.motion_weight must be a finite number >= 0, "
                f"got {self.motion_weight}"
            )
        if not 0 <= self.ctx_noise_p <= 1:
            raise ValueError(
                f"model.denoiser.ctx_noise_p must be in [0, 1], got {self.ctx_noise_p}"
            )


def fourier(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed random-frequency Fourier features of a (B,) tensor -> (B, dim)."""
    g = torch.Generator().manual_seed(0)
    freqs = torch.randn(dim // 2, generator=g).to(x.device) * 2 * math.pi
    angles = x[:, None].float() * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class Denoiser(nn.Module):
    """D(x, sigma, obs, act, sigma_ctx) -> x0 (Karras et al. 2022, eq. 7).

    x (B, 3, H, W) noisy next frame · sigma (B,) · obs (B, K, 3, H, W) past frames in
    [-1, 1] · act (B, K) actions (act[:, -1] is the one being taken) · sigma_ctx (B,) the
    noise level of obs. `parameterization` "consistency" gives the student of the one-step
    head: the same network with c_skip(sigma_min) = 1, c_out(sigma_min) = 0. The plain
    (training) forward; `worldsim.models.prepare` builds its inference form, and
    `worldsim.models.loss.denoising_loss` trains it.

    >>> from worldsim.models.unet import UNetConfig
    >>> unet = UNetConfig(channels=(8, 8), attention=(False, False), cond_dim=16)
    >>> cfg = DenoiserConfig(unet=unet)
    >>> D = Denoiser(cfg, num_actions=4)
    >>> x0 = D(torch.zeros(2, 3, 16, 16), torch.ones(2), torch.zeros(2, 4, 3, 16, 16),
    ...        torch.zeros(2, 4, dtype=torch.long), torch.zeros(2))
    >>> x0.shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        cfg: DenoiserConfig,
        num_actions: int,
        parameterization: Literal["edm", "consistency"] = "edm",
    ):
        super().__init__()
        self.cfg, self.num_actions, self.parameterization = cfg, num_actions, parameterization
        d = cfg.unet.cond_dim
        self.act_emb = nn.Embedding(num_actions, d // 4)
        self.cond_mlp = nn.Sequential(
            nn.Linear(2 * (d // 2) + cfg.context * (d // 4), d), nn.SiLU(), nn.Linear(d, d)
        )
        self.net = UNet(cfg.unet, c_in=3 * (cfg.context + 1), c_out=3)

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        if self.parameterization == "consistency":
            return consistency_scalings(sigma, self.cfg.sigma_data, self.cfg.sigma_min)
        return edm_scalings(sigma, self.cfg.sigma_data)

    def raw(
        self, x, sigma, obs, act, sigma_ctx, packed: bool = False
    ) -> tuple[torch.Tensor, Scalings]:
        """The network output F and the scalings, before the skip connection. `packed`: x
        (B, 3*r*r, H/r, W/r), obs (B, K*3*r*r, H/r, W/r), and F come `pack`ed by the U-Net's
        stem r, obs in the dtype the network runs in (how `World` keeps its state)."""
        s = self.scalings(sigma)
        B = x.shape[0]
        d = self.cfg.unet.cond_dim
        noise_feats = torch.cat(
            [fourier(s.c_noise, d // 2), fourier((sigma_ctx + 1e-3).log() / 4, d // 2)], dim=1
        )
        feats = torch.cat([noise_feats, self.act_emb(act).reshape(B, -1)], dim=1)
        cond = self.cond_mlp(feats)
        c_in = s.c_in.view(B, 1, 1, 1)
        if packed:
            inp = torch.cat([(x * c_in).to(obs.dtype), obs], dim=1)
        else:
            inp = torch.cat([x * c_in, obs.reshape(B, -1, *obs.shape[-2:])], dim=1)
        return self.net(inp, cond, packed=packed), s

    def forward(self, x, sigma, obs, act, sigma_ctx, packed: bool = False) -> torch.Tensor:
        """x0 (B, 3, H, W), or packed as x with `packed` (as in `raw`)."""
        if not self.cfg.residual:
            F_x, s = self.raw(x, sigma, obs, act, sigma_ctx, packed)
            return s.c_skip.view(-1, 1, 1, 1) * x + s.c_out.view(-1, 1, 1, 1) * F_x
        base = obs[:, -x.shape[1] :].to(x.dtype) if packed else obs[:, -1]
        F_y, s = self.raw(x - base, sigma, obs, act, sigma_ctx, packed)
        c_skip, c_out = s.c_skip.view(-1, 1, 1, 1), s.c_out.view(-1, 1, 1, 1)
        # = base + c_skip (x - base) + c_out F, written so c_skip = 1, c_out = 0 gives x exactly
        return c_skip * x + (1 - c_skip) * base + c_out * F_y

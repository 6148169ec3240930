"""The world model: the next-frame denoiser and the reward/end model, trained together."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from worldsim.models.denoiser import Denoiser, DenoiserConfig
from worldsim.models.loss import denoising_loss, reward_loss
from worldsim.models.reward import RewardConfig, RewardEndModel


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the world model's networks."""

    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    """The next-frame diffusion model."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward/end model."""


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [-1, 1]."""
    return frames.float().div(127.5).sub(1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Frames in [-1, 1] -> uint8 (values outside are clipped)."""
    return x.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class WorldModel(nn.Module):
    """Denoiser + reward/end model, trained together. `forward` is the training loss of a
    batch, `loss.denoising_loss` plus `loss.reward_loss`: the networks' own forwards are
    their plain ones, and this one is where DistributedDataParallel, which synchronises
    gradients through the forward of the module it wraps, enters the pair."""

    reward_values: torch.Tensor  # (num_rewards,) the known reward values, a buffer

    def __init__(self, cfg: ModelConfig, num_actions: int, reward_values: list[float]):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("reward_values", torch.tensor(reward_values, dtype=torch.float32))
        self.denoiser = Denoiser(cfg.denoiser, num_actions)
        self.reward = RewardEndModel(
            cfg.reward, cfg.denoiser.context, num_actions, len(reward_values)
        )
        # positive-class weights of the end and lost-life losses; with end_weight=0 the
        # trainer sets them from its data (`balanced_weight`)
        self.end_weight = self.life_weight = cfg.reward.end_weight or 1.0
        # weights of the reward classes in their loss (rare rewards, such as a maze's exit,
        # are otherwise never predicted); the trainer sets them from its data
        self.reward_weight: torch.Tensor | None
        self.register_buffer("reward_weight", None, persistent=False)

    def reward_index(self, rewards: torch.Tensor) -> torch.Tensor:
        """Class of each reward: the nearest of the known reward values."""
        return (rewards[:, None] - self.reward_values[None]).abs().argmin(dim=1)

    def forward(
        self,
        obs,
        act,
        rew,
        end,
        generator=None,
        life=None,
        denoiser: bool = True,
        denoise_rows: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """obs (B, K+1, 3, H, W) uint8, act (B, K), rew (B,), end (B,), life (B,) -> loss,
        metrics. `denoiser=False` leaves the denoiser out (training the reward model alone);
        the metric `loss` is then the reward model's. The denoiser learns from the first
        `denoise_rows` rows (None: all); the rest are rare events drawn for the reward model."""
        K = self.cfg.denoiser.context
        frames = to_unit(obs)
        ctx, x0 = frames[:, :K], frames[:, K]
        life = torch.zeros_like(end) if life is None else life
        idx = self.reward_index(rew)
        loss_r = reward_loss(
            self.reward,
            ctx,
            act[:, -1],
            x0,
            idx,
            end,
            self.end_weight,
            life,
            self.life_weight,
            self.reward_weight,
        )
        if not denoiser:
            return loss_r, {"loss": loss_r.item(), "reward_loss": loss_r.item()}
        n = denoise_rows
        loss_d = denoising_loss(self.denoiser, x0[:n], ctx[:n], act[:n], generator)
        return loss_d + loss_r, {"loss": loss_d.item(), "reward_loss": loss_r.item()}

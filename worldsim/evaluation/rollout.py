"""Autoregressive rollouts on held-out real episodes, scored against the real frames."""

from __future__ import annotations

from collections.abc import Callable

import torch

from worldsim.evaluation.metrics import moving_mask, psnr
from worldsim.models.world_model import to_uint8, to_unit

# (context (B, K, 3, H, W) in [-1, 1], actions (B, K)) -> next frame (B, 3, H, W) in [-1, 1]
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def rollout(
    predict: Predictor,
    obs: torch.Tensor,
    act: torch.Tensor,
    K: int,
    horizon: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Replay the real actions from K real frames: obs (B, K+h, 3, H, W) uint8, act (B, K+h-1)
    -> generated frames (B, horizon, 3, H, W) uint8, each step fed the model's own frames."""
    outs = []
    for i in range(0, len(obs), batch_size):
        ctx = to_unit(obs[i : i + batch_size, :K])
        a = act[i : i + batch_size]
        frames = []
        for t in range(horizon):
            nxt = predict(ctx, a[:, t : t + K])
            frames.append(to_uint8(nxt))
            ctx = torch.cat([ctx[:, 1:], to_unit(frames[-1])[:, None]], dim=1)
        outs.append(torch.stack(frames, dim=1))
    return torch.cat(outs)


def score(generated: torch.Tensor, obs: torch.Tensor, K: int) -> dict[str, list[float]]:
    """Mean PSNR per horizon over the whole frame and over the moving pixels (those that
    differ between the last context frame and the real target)."""
    last = obs[:, K - 1]
    whole, moving = [], []
    for t in range(generated.shape[1]):
        real = obs[:, K + t]
        whole.append(psnr(generated[:, t], real).mean().item())
        m = moving_mask(last, real)
        moving.append(psnr(generated[:, t], real, m).nanmean().item())
    return {"whole": whole, "moving": moving}


def copy_last(obs: torch.Tensor, K: int, horizon: int) -> torch.Tensor:
    """The baseline that repeats the last context frame."""
    return obs[:, K - 1 : K].expand(-1, horizon, -1, -1, -1)

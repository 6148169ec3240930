"""Reward and episode-end prediction from (past frames, action, next frame)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RewardConfig:
    """The reward/end model: a small CNN."""

    channels: tuple[int, ...] = (32, 64, 64)
    """Channels of its stride-2 convolutions."""
    end_weight: float = 5.0
    """Weight of the (rare) positive class in the episode-end loss."""


class RewardEndModel(nn.Module):
    """(obs (B, K, 3, H, W), action (B,), next (B, 3, H, W)) in [-1, 1] -> (reward logits
    (B, n_rewards), end logit (B,)). Reward classes are the distinct rewards seen in training.

    >>> m = RewardEndModel(RewardConfig((8, 8)), context=2, num_actions=3, num_rewards=4)
    >>> r, e = m(torch.zeros(5, 2, 3, 16, 16), torch.zeros(5, dtype=torch.long), torch.zeros(5, 3, 16, 16))
    >>> r.shape, e.shape
    (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(self, cfg: RewardConfig, context: int, num_actions: int, num_rewards: int):
        super().__init__()
        layers, c = [], 3 * (context + 1)
        for c_out in cfg.channels:
            layers += [
                nn.Conv2d(c, c_out, 4, 2, 1),
                nn.GroupNorm(8 if c_out % 8 == 0 else 1, c_out),
                nn.SiLU(),
            ]
            c = c_out
        self.convs = nn.Sequential(*layers)
        self.act_emb = nn.Embedding(num_actions, c)
        self.head = nn.Sequential(nn.Linear(2 * c, 128), nn.SiLU(), nn.Linear(128, num_rewards + 1))

    def forward(self, obs, action, nxt) -> tuple[torch.Tensor, torch.Tensor]:
        B = obs.shape[0]
        h = self.convs(torch.cat([obs.reshape(B, -1, *obs.shape[-2:]), nxt], dim=1))
        h = torch.cat([h.amax(dim=(2, 3)), self.act_emb(action)], dim=1)
        out = self.head(h)
        return out[:, :-1], out[:, -1]

    def loss(self, obs, action, nxt, reward_idx, end, end_weight: float) -> torch.Tensor:
        r_logits, e_logit = self(obs, action, nxt)
        pos_weight = torch.tensor(end_weight, device=obs.device)
        return F.cross_entropy(r_logits, reward_idx) + F.binary_cross_entropy_with_logits(
            e_logit, end.float(), pos_weight=pos_weight
        )

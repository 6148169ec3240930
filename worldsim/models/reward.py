"""Reward and episode-end prediction from (past frames, action, next frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.models.unet import GroupNorm, unpack


@dataclass(frozen=True)
class RewardConfig:
    """The reward/end model: a small CNN."""

    channels: tuple[int, ...] = (32, 64, 64)
    """Channels of its stride-2 convolutions."""
    end_weight: float = 0.0
    """Weight of the (rare) positive class in the episode-end and lost-life losses; 0 = from
    the training data: the square root of the ratio of negatives to positives, in [1, 100]
    (Pong ends once in ~800 steps: ~28). The decision threshold is then chosen on data
    (`best_threshold`), so the weight only has to make the rare class learnable."""
    life_head: bool = False
    """Also predict whether the step lost a life, for games that report lives (their data
    records it); RL in the world can then end episodes there (`worldsim rl life_loss=...`)."""

    def __post_init__(self):
        if not 1 <= len(self.channels) <= 8 or not all(1 <= c <= 4096 for c in self.channels):
            raise ValueError(
                f"model.reward.channels must be 1 to 8 layers of 1 to 4096, got {list(self.channels)[:10]}"
            )
        if not (math.isfinite(self.end_weight) and 0 <= self.end_weight <= 1e6):
            raise ValueError(f"model.reward.end_weight must be in [0, 1e6], got {self.end_weight}")


def _refold(w: torch.Tensor, r: int, p: int, lo: int) -> torch.Tensor:
    """The weights (O, C*r*r, 2*lo+1, 2*lo+1) of a stride-1 convolution of `pack`ed frames
    that computes the stride-r, padding-p convolution w (O, C, k, k) of the frames."""
    out_c, in_c, k = w.shape[0], w.shape[1], w.shape[-1]
    big = w.new_zeros(out_c, in_c, r * (2 * lo + 1), r * (2 * lo + 1))
    big[:, :, r * lo - p : r * lo - p + k, r * lo - p : r * lo - p + k] = w
    big = big.view(out_c, in_c, 2 * lo + 1, r, 2 * lo + 1, r).permute(0, 1, 3, 5, 2, 4)
    big = big.reshape(out_c, in_c * r * r, 2 * lo + 1, 2 * lo + 1)
    if w.is_contiguous(memory_format=torch.channels_last):
        big = big.contiguous(memory_format=torch.channels_last)
    return big


class RewardEndModel(nn.Module):
    """(obs (B, K, 3, H, W), action (B,), next (B, 3, H, W)) in [-1, 1] -> (reward logits
    (B, n_rewards), end logit (B,), lost-life logit (B,)). Reward classes are the distinct
    rewards seen in training. Without `life_head` the lost-life logit is -inf (never).

    >>> m = RewardEndModel(RewardConfig((8, 8)), context=2, num_actions=3, num_rewards=4)
    >>> r, e, l = m(torch.zeros(5, 2, 3, 16, 16), torch.zeros(5, dtype=torch.long), torch.zeros(5, 3, 16, 16))
    >>> r.shape, e.shape, l.shape, bool((l > 0).any())
    (torch.Size([5, 4]), torch.Size([5]), torch.Size([5]), False)
    """

    def __init__(self, cfg: RewardConfig, context: int, num_actions: int, num_rewards: int):
        super().__init__()
        layers, c = [], 3 * (context + 1)
        for c_out in cfg.channels:
            layers += [
                nn.Conv2d(c, c_out, 4, 2, 1),
                GroupNorm(8 if c_out % 8 == 0 else 1, c_out),
                nn.SiLU(),
            ]
            c = c_out
        self.convs = nn.Sequential(*layers)
        self.act_emb = nn.Embedding(num_actions, c)
        self.life_head = cfg.life_head
        n_out = num_rewards + 1 + int(cfg.life_head)
        self.head = nn.Sequential(nn.Linear(2 * c, 128), nn.SiLU(), nn.Linear(128, n_out))
        self.num_rewards = num_rewards

    def forward(
        self, obs, action, nxt, packed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`packed` = r > 0: obs (B, K*3*r*r, H/r, W/r) and nxt (B, 3*r*r, H/r, W/r) come
        `pack`ed by r (as `World` keeps its context), in the dtype the model runs in."""
        B, n = obs.shape[0], self.num_rewards
        if packed:
            h = self.convs[1:](self._first_conv_packed(torch.cat([obs, nxt], dim=1), packed))
        else:
            h = self.convs(torch.cat([obs.reshape(B, -1, *obs.shape[-2:]), nxt], dim=1))
        h = torch.cat([h.amax(dim=(2, 3)), self.act_emb(action)], dim=1)
        out = self.head(h)
        life = out[:, n + 1] if self.life_head else out.new_full((B,), float("-inf"))
        return out[:, :n], out[:, n], life

    def _first_conv_packed(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """The first convolution of unpack(x, r), run on the packed x itself: a stride-r
        convolution of the full-resolution frames is a stride-1 one of the pixel-unshuffled
        frames, with its weights rearranged (computed once, again when they change). Here,
        a 3x3 convolution of 60 channels instead of a 4x4 stride-2 one of 15: the same sums,
        in the layout oneDNN runs fastest (a quarter of the reward model's time at batch 32
        on the 2-core dev CPU, with the casts and copies the plain input needs)."""
        conv = self.convs[0]
        (k, k2), p = conv.kernel_size, conv.padding
        plain = (not isinstance(p, tuple) or p[0] != p[1] or k != k2 or conv.stride != (r, r)
                 or conv.dilation != (1, 1) or conv.groups != 1)  # fmt: skip
        lo, hi = (0, 1) if plain else (-(-p[0] // r), (k - 1 - p[0]) // r)  # reach in cells
        if plain or lo != hi:
            return conv(unpack(x, r))
        p = p[0]
        w = conv.weight
        if torch.is_grad_enabled():  # (a cached weight would keep a stale graph)
            return F.conv2d(x, _refold(w, r, p, lo), conv.bias, padding=lo)
        key = (w.data_ptr(), w._version, r)
        if getattr(self, "_packed_w", (None,))[0] != key:
            self._packed_w = (key, _refold(w, r, p, lo))
        return F.conv2d(x, self._packed_w[1], conv.bias, padding=lo)


def balanced_weight(positives: int, total: int) -> float:
    """Positive-class weight for a rare event: sqrt(negatives / positives), in [1, 100].

    >>> balanced_weight(1, 801), balanced_weight(0, 100), balanced_weight(50, 100)
    (28.284271247461902, 1.0, 1.0)
    """
    if positives == 0:
        return 1.0
    return min(100.0, max(1.0, ((total - positives) / positives) ** 0.5))


def best_threshold(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> float:
    """The logit threshold (predict positive where logit > it) with the best F1 on these
    examples, each counted `weights` times (a subsample of negatives standing for all of
    them counts more than once). Without positives: 0.0 (probability one half).

    >>> best_threshold(torch.tensor([-3.0, -1.0, 2.0, 4.0]), torch.tensor([False, False, True, True]))
    0.5
    >>> w = torch.tensor([0.1, 0.1, 1.0, 1.0])
    >>> best_threshold(torch.tensor([-3.0, 5.0, 2.0, 4.0]), torch.tensor([False, False, True, True]), w)
    -0.5
    """
    logits, labels = logits.float().flatten(), labels.bool().flatten()
    if not labels.any():
        return 0.0
    weights = torch.ones_like(logits) if weights is None else weights.float().flatten()
    order = logits.argsort(descending=True)
    z, y, w = logits[order], labels[order].float(), weights[order]
    tp = (y * w).cumsum(0)  # predicting the first i+1 positive: threshold just below z[i]
    fp = ((1 - y) * w).cumsum(0)
    f1 = 2 * tp / (tp + fp + (y * w).sum())
    i = int(f1.argmax())
    # halfway to the next lower logit, so that z[i] itself is above the threshold
    below = z[i + 1] if i + 1 < len(z) else z[i] - 1.0
    return float((z[i] + below) / 2)

"""Reward and episode-end prediction from (past frames, action, next frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import cast

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
    """Weight of the (rare) positive class in the episode-end and lost-life losses; 0 = 1
    where training draws rare events beside each batch (`worldsim train events=`, on by
    default: they balance the classes), else from the training data: the square root of the
    ratio of negatives to positives, in [1, 100] (Pong ends once in ~800 steps: ~28), rare
    non-zero rewards (a maze's exit) weighed up the same way. The decision threshold is then
    chosen on data (`best_threshold`), so the weight only has to make the rare class
    learnable."""
    life_head: bool = False
    """Also predict whether the step lost a life, for games that report lives (their data
    records it); RL in the world can then end episodes there (`worldsim rl life_loss=...`)."""

    def weights_meaning(self) -> RewardConfig:
        """This config without what a fine-tune may change and still start from these
        weights: `end_weight` only shapes training, and a lost-life output is one row of the
        last layer, added fresh or dropped (`RewardEndModel.adopt`)."""
        return replace(self, end_weight=0.0, life_head=False)

    def __post_init__(self):
        if not 1 <= len(self.channels) <= 8 or not all(1 <= c <= 4096 for c in self.channels):
            raise ValueError(
                "model.reward.channels must be 1 to 8 layers of 1 to 4096, got "
                f"{list(self.channels)[:10]}"
            )
        if not (math.isfinite(self.end_weight) and 0 <= self.end_weight <= 1e6):
            raise ValueError(f"model.reward.end_weight must be in [0, 1e6], got {self.end_weight}")


def refold(conv: nn.Conv2d, r: int) -> tuple[torch.Tensor, int] | None:
    """(weights, padding) of a stride-1 convolution of frames `pack`ed by r that computes the
    stride-r convolution `conv` of the frames themselves, or None where `conv` has no such
    form (another stride, uneven reach): a 4x4 stride-2 convolution of 15 channels becomes
    a 3x3 one of 60, the same sums, read straight from the packed context.

    >>> conv = nn.Conv2d(3, 4, 4, 2, 1)
    >>> w, p = refold(conv, 2)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> y = F.conv2d(F.pixel_unshuffle(x, 2), w, conv.bias, padding=p)
    >>> torch.allclose(y, conv(x), atol=1e-5)
    True
    """
    (k, k2), p = conv.kernel_size, conv.padding
    if (
        not isinstance(p, tuple)
        or p[0] != p[1]
        or k != k2
        or conv.stride != (r, r)
        or conv.dilation != (1, 1)
        or conv.groups != 1
    ):
        return None
    pad = p[0]
    lo, hi = -(-pad // r), (k - 1 - pad) // r  # reach in cells
    if lo != hi:
        return None
    w = conv.weight  # (O, C, k, k)
    out_c, in_c = w.shape[0], w.shape[1]
    big = w.new_zeros(out_c, in_c, r * (2 * lo + 1), r * (2 * lo + 1))
    big[:, :, r * lo - pad : r * lo - pad + k, r * lo - pad : r * lo - pad + k] = w
    big = big.view(out_c, in_c, 2 * lo + 1, r, 2 * lo + 1, r).permute(0, 1, 3, 5, 2, 4)
    big = big.reshape(out_c, in_c * r * r, 2 * lo + 1, 2 * lo + 1)
    if w.is_contiguous(memory_format=torch.channels_last):
        big = big.contiguous(memory_format=torch.channels_last)
    return big, lo


def conv_packed(conv: nn.Conv2d, x: torch.Tensor, r: int, folded) -> torch.Tensor:
    """conv(unpack(x, r)) of frames x `pack`ed by r, given `folded` = refold(conv, r): run on
    x itself where the convolution has a folded form."""
    if folded is None:
        return conv(unpack(x, r))
    return F.conv2d(x, folded[0], conv.bias, padding=folded[1])


class RewardEndModel(nn.Module):
    """(obs (B, K, 3, H, W), action (B,), next (B, 3, H, W)) in [-1, 1] -> (reward logits
    (B, n_rewards), end logit (B,), lost-life logit (B,)). Reward classes are the distinct
    rewards seen in training. Without `life_head` the lost-life logit is -inf (never).

    >>> m = RewardEndModel(RewardConfig((8, 8)), context=2, num_actions=3, num_rewards=4)
    >>> z = torch.zeros
    >>> r, e, l = m(z(5, 2, 3, 16, 16), z(5, dtype=torch.long), z(5, 3, 16, 16))
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

    def adopt(self, tensors: dict[str, torch.Tensor], life_head: bool) -> dict[str, torch.Tensor]:
        """The weights of a model of the same `weights_meaning`, with (`life_head`) or without
        a lost-life output, made to fit this one: that output's row of the last layer is
        dropped, or taken from this model's own fresh weights."""
        if life_head == self.life_head:
            return tensors
        out, n = dict(tensors), self.num_rewards + 1
        own = self.state_dict()
        for k in ("head.2.weight", "head.2.bias"):
            out[k] = tensors[k][:n] if life_head else torch.cat([tensors[k], own[k][n:]])
        return out

    def forward(
        self, obs, action, nxt, packed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`packed` = r > 0: obs (B, K*3*r*r, H/r, W/r) and nxt (B, 3*r*r, H/r, W/r) come
        `pack`ed by r (as `World` keeps its context); the first convolution reads them as
        they are where it can (`refold`, here on every call; `prepare` folds it once)."""
        B = obs.shape[0]
        if packed:
            x, first = torch.cat([obs, nxt], dim=1), cast(nn.Conv2d, self.convs[0])
            h = self.convs[1:](conv_packed(first, x, packed, refold(first, packed)))
        else:
            h = self.convs(torch.cat([obs.reshape(B, -1, *obs.shape[-2:]), nxt], dim=1))
        return self.head_outputs(h, action)

    def head_outputs(self, h: torch.Tensor, action: torch.Tensor):
        """The convolutions' features h (B, C, h, w) and the action -> the three outputs."""
        B, n = h.shape[0], self.num_rewards
        out = self.head(torch.cat([h.amax(dim=(2, 3)), self.act_emb(action)], dim=1))
        life = out[:, n + 1] if self.life_head else out.new_full((B,), float("-inf"))
        return out[:, :n], out[:, n], life


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

    >>> y = torch.tensor([False, False, True, True])
    >>> best_threshold(torch.tensor([-3.0, -1.0, 2.0, 4.0]), y)
    0.5
    >>> w = torch.tensor([0.1, 0.1, 1.0, 1.0])
    >>> best_threshold(torch.tensor([-3.0, 5.0, 2.0, 4.0]), y, w)
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

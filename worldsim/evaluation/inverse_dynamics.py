"""Does the world answer the keys as the game does? An action check for any game.

An inverse-dynamics model (IDM) learns, from the real game's recorded transitions, which
action was taken given the frame before and the frame after. It is then asked the same of
the world's frames: given real context, the world draws its next frame under an action
chosen at random, and the IDM tries to recover that action. A world that follows the keys
as the game does lets the IDM recover them about as often as it does on held-out real
play; a world that ignores the keys leaves it at chance. No copy of the game's state is
needed, so this works for any game (the exact branch check in `evaluate.action_following`
needs a built-in one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldsim.data.segments import SegmentSampler
from worldsim.models.world_model import to_uint8, to_unit


class InverseDynamics(nn.Module):
    """(two frames before (B, 2, 3, H, W), frame after (B, 3, H, W)) in [-1, 1] -> action
    logits (B, A). Two frames before, so that motion the action changed can be told from
    motion that was already under way.

    >>> idm = InverseDynamics(num_actions=4)
    >>> idm(torch.zeros(2, 2, 3, 32, 32), torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 4])
    """

    def __init__(self, num_actions: int, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, c = [], 15  # the three frames and their two differences
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 4, 2, 1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c = c_out
        # an 8x8 map, flattened: where something moved matters (which paddle is the player's)
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(8), nn.Flatten())
        self.head = nn.Linear(c * 64, num_actions)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        a, b = before[:, 0], before[:, 1]
        return self.head(self.convs(torch.cat([a, b, after, b - a, after - b], dim=1)))


def _transitions(data: SegmentSampler, n: int, rng: np.random.Generator):
    """n random real transitions: context (n, K, 3, H, W) uint8, actions (n, K), next frame."""
    b = data.sample(n, rng)
    K = data.K
    return b.obs[:, :K], b.act[:, :K], b.obs[:, K]


def train_idm(
    data: SegmentSampler,
    num_actions: int,
    steps: int = 600,
    batch: int = 64,
    seed: int = 0,
    device="cpu",
) -> InverseDynamics:
    """Fit an IDM to real transitions; classes are weighted by inverse frequency, so that a
    behaviour policy's favourite action is not simply guessed."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = np.bincount(data.flat[0], minlength=num_actions).astype(np.float64)
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / num_actions, dtype=torch.float32)
    idm = InverseDynamics(num_actions).to(device)
    opt = torch.optim.Adam(idm.parameters(), lr=1e-3)
    for _ in range(steps):
        ctx, act, nxt = _transitions(data, batch, rng)
        logits = idm(to_unit(ctx[:, -2:].to(device)), to_unit(nxt.to(device)))
        loss = F.cross_entropy(logits, act[:, -1].to(device), weight=weight.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return idm.eval()


def balanced_accuracy(pred: torch.Tensor, real: torch.Tensor, num_actions: int) -> float:
    """Mean over the actions present of the share of their steps recognised.

    >>> round(balanced_accuracy(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2), 4)
    0.8333
    """
    recalls = [
        (pred[real == a] == a).float().mean().item()
        for a in range(num_actions)
        if (real == a).any()
    ]
    return float(np.mean(recalls))


@torch.no_grad()
def action_recovery(
    idm: InverseDynamics,
    draw,
    test: SegmentSampler,
    num_actions: int,
    n: int = 512,
    seed: int = 0,
    device="cpu",
) -> dict[str, float]:
    """The IDM's balanced accuracy on held-out real transitions (their recorded actions),
    and on the world's: `draw(ctx in [-1, 1], actions) -> next frame in [-1, 1]` from the
    same real contexts under uniformly random actions. Also chance (1 / actions)."""
    rng = np.random.default_rng(seed)
    ctx, act, nxt = _transitions(test, n, rng)
    ctx, act, nxt = ctx.to(device), act.to(device), nxt.to(device)
    real_pred = idm(to_unit(ctx[:, -2:]), to_unit(nxt)).argmax(1)
    chosen = torch.from_numpy(rng.integers(0, num_actions, n)).to(device)
    dream_act = torch.cat([act[:, :-1], chosen[:, None]], dim=1)
    dream = torch.cat(
        [
            to_uint8(draw(to_unit(ctx[i : i + 128]), dream_act[i : i + 128]))
            for i in range(0, n, 128)
        ]
    )
    dream_pred = idm(to_unit(ctx[:, -2:]), to_unit(dream)).argmax(1)
    return {
        "real": balanced_accuracy(real_pred, act[:, -1], num_actions),
        "world": balanced_accuracy(dream_pred, chosen, num_actions),
        "chance": 1 / num_actions,
    }

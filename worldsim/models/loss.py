"""Training losses, apart from the networks (as EDM's `EDMLoss(net, images, labels)`): each
takes the network it trains and a batch, and calls the network's plain forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldsim.models.denoiser import Denoiser
from worldsim.models.reward import RewardEndModel


def denoising_loss(
    D: Denoiser, x0, obs, act, generator: torch.Generator | None = None
) -> torch.Tensor:
    """EDM training loss (Karras et al. 2022, eq. 2 with the F-target of eq. 8), on
    noise-augmented context (GameNGen). x0 (B, 3, H, W) and obs (B, K, 3, H, W) in [-1, 1],
    act (B, K).

    >>> from worldsim.models.denoiser import DenoiserConfig
    >>> from worldsim.models.unet import UNetConfig
    >>> unet = UNetConfig(channels=(8, 8), attention=(False, False), cond_dim=16)
    >>> D = Denoiser(DenoiserConfig(context=2, unet=unet), num_actions=3)
    >>> x0, obs = torch.zeros(2, 3, 16, 16), torch.zeros(2, 2, 3, 16, 16)
    >>> denoising_loss(D, x0, obs, torch.zeros(2, 2, dtype=torch.long)).shape
    torch.Size([])
    """
    cfg, B, dev = D.cfg, x0.shape[0], x0.device
    rnd = lambda *shape: torch.randn(*shape, generator=generator, device=dev)  # noqa: E731
    weight = motion_weights(x0, obs[:, -1], cfg.motion_weight)  # from the clean context
    sigma = (cfg.P_mean + cfg.P_std * rnd(B)).exp()
    noisy_ctx = torch.rand(B, generator=generator, device=dev) < cfg.ctx_noise_p
    sigma_ctx = torch.rand(B, generator=generator, device=dev) * cfg.ctx_noise_max * noisy_ctx
    obs = obs + sigma_ctx.view(B, 1, 1, 1, 1) * rnd(*obs.shape)
    y0 = x0 - obs[:, -1] if cfg.residual else x0
    y = y0 + sigma.view(B, 1, 1, 1) * rnd(*x0.shape)
    F_y, s = D.raw(y, sigma, obs, act, sigma_ctx)
    target = (y0 - s.c_skip.view(B, 1, 1, 1) * y) / s.c_out.view(B, 1, 1, 1)
    if weight is None:
        return F.mse_loss(F_y, target)
    return ((F_y.float() - target.float()).square() * weight).mean()


def motion_weights(x0, last, motion_weight: float) -> torch.Tensor | None:
    """Per-pixel loss weights (B, 1, H, W): 1 + motion_weight where the frame x0 differs from
    the context's `last` frame, 1 elsewhere, scaled so that their mean over the batch is 1
    (the loss keeps its size); None when motion_weight is 0 (the plain loss).

    >>> last = torch.zeros(1, 3, 2, 2)
    >>> x0 = last.clone(); x0[0, 0, 0, 0] = 1
    >>> motion_weights(x0, last, 1.0).flatten().double().round(decimals=3).tolist()
    [1.6, 0.8, 0.8, 0.8]
    """
    if not motion_weight:
        return None
    moving = (x0 - last).abs().amax(dim=1, keepdim=True) > 1e-3
    weight = 1 + motion_weight * moving.float()
    return weight / weight.mean()


def reward_loss(
    model: RewardEndModel,
    obs,
    action,
    nxt,
    reward_idx,
    end,
    end_weight: float,
    life=None,
    life_weight: float | None = None,
    reward_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward cross-entropy (its classes weighted by `reward_weight`, none = alike) plus the
    end (and lost-life) binary cross-entropies, their positive classes weighted by
    `end_weight` (and `life_weight`, default the same). obs (B, K, 3, H, W) and nxt
    (B, 3, H, W) in [-1, 1]; reward_idx (B,) reward classes; end and life (B,) bool."""
    r_logits, e_logit, l_logit = model(obs, action, nxt)
    bce = F.binary_cross_entropy_with_logits
    w_end = torch.tensor(end_weight, device=obs.device)
    ce = F.cross_entropy(r_logits.float(), reward_idx, weight=reward_weight, reduction="none")
    if reward_weight is not None:  # the weights shift the classes' shares, not the loss's
        ce = ce / reward_weight.mean()  # scale (which the gradient clipping reads)
    loss = ce.mean() + bce(e_logit, end.float(), pos_weight=w_end)
    if model.life_head:
        w_life = torch.tensor(end_weight if life_weight is None else life_weight, device=obs.device)
        loss = loss + bce(l_logit, life.float(), pos_weight=w_life)
    return loss

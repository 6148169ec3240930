"""Decision thresholds of the reward/end model, chosen on recorded play.

Episode ends and lost lives are rare (Pong ends once in ~800 steps), so the end model is
trained with its positive class up-weighted, and its logits are then read with a threshold
chosen where it predicts best (F1) on real transitions, instead of at probability one half.
The level below which a drawn pixel keeps the last frame's (`SamplerConfig.still`) is chosen
on the training play too (`choose_still`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldsim.data.segments import SegmentSampler
from worldsim.data.store import Dataset
from worldsim.models.reward import best_threshold
from worldsim.models.world_model import WorldModel, to_uint8, to_unit


@torch.no_grad()
def reward_logits(
    model: WorldModel, data: SegmentSampler, index: np.ndarray, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reward (N, classes), end (N,) and lost-life (N,) logits of the one-step segments
    `index` of `data`."""
    K, dev = data.K, model.reward_values.device
    out: list[list[torch.Tensor]] = [[], [], []]
    for i in range(0, len(index), batch):
        frames, act, *_ = data._gather(index[i : i + batch])
        x = to_unit(torch.from_numpy(frames).to(dev).permute(0, 1, 4, 2, 3))
        logits = model.reward(x[:, :K], torch.from_numpy(act[:, K - 1]).to(dev), x[:, K])
        for o, t in zip(out, logits, strict=True):
            o.append(t.float().cpu())
    r, e, l_ = (torch.cat(o) for o in out)
    return r, e, l_


def _examples(data: SegmentSampler, negatives: int, seed: int):
    """Every transition of `data` that scored, ended the episode or lost a life, and
    `negatives` others at random, each weighted by the share of all others it stands for."""
    _, rews, ends, lost = data.flat  # one-step segment j is flat transition j
    positive = ends | lost | (rews != 0)
    others = np.flatnonzero(~positive)
    drawn = np.random.default_rng(seed).choice(others, min(negatives, len(others)), replace=False)
    index = np.concatenate([np.flatnonzero(positive), drawn])
    weights = torch.ones(len(index))
    weights[int(positive.sum()) :] = len(others) / max(len(drawn), 1)
    r, e, l_ = (torch.from_numpy(x[index]) for x in (rews, ends, lost))
    return index, weights, r.float(), e, l_


def calibrate(
    model: WorldModel, ds: Dataset, split: str = "train", negatives: int = 4096, seed: int = 0
) -> dict[str, float]:
    """{"end": logit, "life": logit} thresholds with the best F1 on `split` of `ds`."""
    data = SegmentSampler(ds, split, model.cfg.denoiser.context)
    index, weights, _, ends, lost = _examples(data, negatives, seed)
    _, e_logit, l_logit = reward_logits(model, data, index)
    out = {"end": best_threshold(e_logit, ends, weights)}
    if model.reward.life_head:
        out["life"] = best_threshold(l_logit, lost, weights)
    return out


def end_scores(
    model: WorldModel,
    data: SegmentSampler,
    thresholds: dict[str, float],
    negatives: int = 4096,
    seed: int = 0,
) -> dict[str, float | None]:
    """Precision and recall of the non-zero reward, end (and lost-life) predictions over all
    of `data`'s transitions (every one that scored, ended or lost a life, and a weighted draw
    of the others), and their false alarms per 1,000 steps. Rare rewards (a maze's exit, once
    in ~15,000 steps) are all counted, where a random draw of transitions would miss them.
    A precision is None where the model predicted none, a recall where the data has none."""
    index, weights, rews, ends, lost = _examples(data, negatives, seed)
    r_logit, e_logit, l_logit = reward_logits(model, data, index)
    out: dict[str, float | None] = {}
    scored = model.reward_values.cpu().float()[r_logit.argmax(1)]
    pairs = [("reward", scored != 0, rews != 0, scored == rews)]
    for name, logit, real in [("end", e_logit, ends)] + (
        [("life", l_logit, lost)] if model.reward.life_head else []
    ):
        pred = logit > thresholds.get(name, 0.0)
        pairs.append((name, pred, real, torch.ones_like(pred)))
    for name, pred, real, right in pairs:
        hit = pred & real & right  # a reward counts where its amount is right too
        tp, fp = float(weights[hit].sum()), float(weights[pred & ~hit].sum())
        out[f"{name}_precision"] = tp / (tp + fp) if tp + fp > 0 else None
        out[f"{name}_recall"] = tp / int(real.sum()) if real.any() else None
        out[f"{name}_false_per_1k"] = 1000 * fp / float(weights.sum())
        out[f"{name}_seen"] = int(real.sum())
    return out


STILL_LEVELS = (0, 4, 8, 16, 32, 48, 64)
"""The `SamplerConfig.still` levels a world is bundled choosing from."""


@torch.no_grad()
def choose_still(
    world_dir: Path, ds: Dataset, n: int = 256, seed: int = 0, moving_loss: float = 1.0
) -> tuple[int, dict[int, tuple[float, float]]]:
    """The `still` level a world draws best with: the one of `STILL_LEVELS` whose next frames
    (the world's default sampler, from real context, on `n` transitions of `ds`'s training
    play) are nearest the real ones over the whole frame, of those that keep the moving
    pixels' PSNR within `moving_loss` dB of the raw draw's. Returns it, and each level's
    (whole, moving) PSNR."""
    from worldsim.sim.world import World, keep_still
    from worldsim.sim.world_file import load_world

    bundle = load_world(world_dir)
    world = World(bundle, bundle.sampler(still=0))
    seg = SegmentSampler(ds, "train", bundle.context).sample(n, np.random.default_rng(seed))
    gen = torch.Generator().manual_seed(seed)
    obs, act, K = to_unit(seg.obs), seg.act, bundle.context
    drawn = torch.cat(
        [world.draw(obs[i : i + 64, :K], act[i : i + 64], gen) for i in range(0, n, 64)]
    )
    last, real = obs[:, K - 1], seg.obs[:, K]
    mask = (seg.obs[:, K - 1].float() - real.float()).abs().amax(1) > 0  # the moving pixels
    scores = {}
    for level in STILL_LEVELS:
        x = to_uint8(keep_still(drawn, last, level, packed=False)) if level else to_uint8(drawn)
        scores[level] = (_psnr(x, real).mean().item(), _psnr(x, real, mask).nanmean().item())
    return pick_still(scores, moving_loss), scores


def pick_still(scores: dict[int, tuple[float, float]], moving_loss: float = 1.0) -> int:
    """The level (a key of `scores`: level -> (whole, moving) PSNR; 0 = the raw draw) with
    the best whole-frame PSNR of those within `moving_loss` dB of the raw draw's moving
    pixels (a NaN moving PSNR, no pixel moving, does not rule a level out).

    >>> pick_still({0: (30.0, 20.0), 8: (35.0, 19.5), 16: (36.0, 18.0)})
    8
    >>> pick_still({0: (30.0, 20.0), 8: (29.0, 20.0)})
    0
    """
    floor = scores[0][1] - moving_loss
    return max((lv for lv in scores if not scores[lv][1] < floor), key=lambda lv: scores[lv][0])


def _psnr(x: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR (dB, capped at 60) of uint8 frames (N, 3, H, W), over the pixels of
    `mask` (N, H, W) where given (NaN where it is empty), as `worldsim eval` scores it."""
    err = (x.float() - real.float()) ** 2
    m = torch.ones_like(err[:, :1]) if mask is None else mask[:, None].float()
    mse = (err * m).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3)))
    return (10 * torch.log10(255.0**2 / mse)).clamp(max=60.0)

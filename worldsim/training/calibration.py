"""Decision thresholds of the reward/end model, chosen on recorded play.

Episode ends and lost lives are rare (Pong ends once in ~800 steps), so the end model is
trained with its positive class up-weighted, and its logits are then read with a threshold
chosen where it predicts best (F1) on real transitions, instead of at probability one half.
"""

from __future__ import annotations

import numpy as np
import torch

from worldsim.data.segments import SegmentSampler
from worldsim.data.store import Dataset
from worldsim.models.reward import best_threshold
from worldsim.models.world_model import WorldModel, to_unit


@torch.no_grad()
def reward_logits(
    model: WorldModel, data: SegmentSampler, index: np.ndarray, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """End and lost-life logits (N,) of the one-step segments `index` of `data`."""
    K, dev = data.K, model.reward_values.device
    ends, lives = [], []
    for i in range(0, len(index), batch):
        frames, act, *_ = data._gather(index[i : i + batch])
        x = to_unit(torch.from_numpy(frames).to(dev).permute(0, 1, 4, 2, 3))
        _, e, l_ = model.reward(x[:, :K], torch.from_numpy(act[:, K - 1]).to(dev), x[:, K])
        ends.append(e.float().cpu())
        lives.append(l_.float().cpu())
    return torch.cat(ends), torch.cat(lives)


def _examples(data: SegmentSampler, negatives: int, seed: int):
    """Every transition of `data` that ended the episode or lost a life, and `negatives`
    others at random, each weighted by the share of all others it stands for."""
    _, _, ends, lost = data.flat  # one-step segment j is flat transition j
    positive = ends | lost
    others = np.flatnonzero(~positive)
    drawn = np.random.default_rng(seed).choice(others, min(negatives, len(others)), replace=False)
    index = np.concatenate([np.flatnonzero(positive), drawn])
    weights = torch.ones(len(index))
    weights[int(positive.sum()) :] = len(others) / max(len(drawn), 1)
    return index, weights, torch.from_numpy(ends[index]), torch.from_numpy(lost[index])


def calibrate(
    model: WorldModel, ds: Dataset, split: str = "train", negatives: int = 4096, seed: int = 0
) -> dict[str, float]:
    """{"end": logit, "life": logit} thresholds with the best F1 on `split` of `ds`."""
    data = SegmentSampler(ds, split, model.cfg.denoiser.context)
    index, weights, ends, lost = _examples(data, negatives, seed)
    e_logit, l_logit = reward_logits(model, data, index)
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
) -> dict[str, float]:
    """Precision and recall of the end (and lost-life) predictions over all of `data`'s
    transitions (its ends and lost lives, and a weighted draw of the others)."""
    index, weights, ends, lost = _examples(data, negatives, seed)
    e_logit, l_logit = reward_logits(model, data, index)
    out = {}
    pairs = [("end", e_logit, ends)] + ([("life", l_logit, lost)] if model.reward.life_head else [])
    for name, logit, real in pairs:
        pred = logit > thresholds.get(name, 0.0)
        tp, fp = float(weights[pred & real].sum()), float(weights[pred & ~real].sum())
        out[f"{name}_precision"] = tp / (tp + fp) if tp + fp > 0 else float("nan")
        out[f"{name}_recall"] = tp / int(real.sum()) if real.any() else float("nan")
        out[f"{name}_false_per_1k"] = 1000 * fp / float(weights.sum())
        out[f"{name}_seen"] = int(real.sum())
    return out

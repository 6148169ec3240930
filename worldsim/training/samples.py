"""PNG sample grids so a person can watch a world model learn: context | predicted | real."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from worldsim.data.segments import SegmentSampler
from worldsim.models.denoiser import Denoiser
from worldsim.models.samplers import SamplerConfig
from worldsim.models.world_model import to_uint8, to_unit
from worldsim.sim.world import Sampler

EULER_3 = SamplerConfig("euler", steps=3)


def write_sample_grid(
    denoiser: Denoiser,
    data: SegmentSampler,
    path: Path,
    device,
    sampler: SamplerConfig = EULER_3,
    rows: int = 6,
    scale: int = 2,
) -> None:
    """One row per held-out segment: its K context frames, the prediction, the real frame."""
    K = denoiser.cfg.context
    batch = data.sample(rows, np.random.default_rng(0))
    obs = batch.obs.to(device)
    gen = torch.Generator(device).manual_seed(0)
    pred = Sampler(denoiser, sampler)(to_unit(obs[:, :K]), batch.act[:, :K].to(device), gen)
    tiles = torch.cat(
        [obs[:, :K], to_uint8(pred)[:, None], obs[:, K : K + 1]], dim=1
    )  # (B, K+2, 3, H, W)
    cells = tiles.permute(0, 3, 1, 4, 2).cpu().numpy()  # (B, H, K+2, W, 3)
    B, H, N, W, _ = cells.shape
    grid = np.ascontiguousarray(cells.reshape(B * H, N * W, 3))
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[..., ::-1])

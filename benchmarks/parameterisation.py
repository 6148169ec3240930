"""Benchmark: residual vs plain denoiser parameterisation on a small Bricks setup.

    python benchmarks/parameterisation.py            # both, about 5 minutes on one core

The test suite's tiny config (Bricks at 32x32, 6,000 steps of scripted play, a quarter held
out, 1,500 steps at batch 32), trained once with `model.denoiser.residual=true` and once with
false; held-out PSNR at horizons 1, 4 and 16, autoregressive, for Euler 1 and 3 steps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from worldsim.config import load_config
from worldsim.data.collect import CollectConfig, collect
from worldsim.data.segments import SegmentSampler
from worldsim.evaluation.rollout import copy_last, rollout, score
from worldsim.models.samplers import SamplerConfig
from worldsim.sim.world import next_frame
from worldsim.training.train import TrainConfig, Trainer

TRAIN = [
    "model=tiny",
    "steps=1500",
    "eval_every=100000",
    "sample_every=100000",
    "ckpt_every=100000",
    "optim.lr=1e-3",
    "optim.warmup=20",
    "ema=0.95",
]


def row(name: str, s: dict) -> str:
    w, m = s["whole"], s["moving"]
    whole, moving = (f"{v[0]:.1f} / {v[3]:.1f} / {v[15]:.1f}" for v in (w, m))
    return f"| {name} | {whole} | {moving} |"


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "bricks32"
    collect(
        load_config(
            "collect",
            CollectConfig,
            [f"out={data}", "steps=6000", "workers=1", "test_fraction=0.25", "env.frame_size=32"],
        )
    )
    lines = [
        "| parameterisation, sampler | whole h1 / h4 / h16 | moving h1 / h4 / h16 |",
        "|---|---|---|",
    ]
    for residual in (True, False):
        cfg = load_config(
            "train",
            TrainConfig,
            [
                f"data={data}",
                f"out={tmp / str(residual)}",
                *TRAIN,
                f"model.denoiser.residual={str(residual).lower()}",
            ],
        )
        trainer = Trainer(cfg)
        trainer.fit()
        K = cfg.model.denoiser.context
        b = SegmentSampler(trainer.ds, "test", K, horizon=16).sample(64, np.random.default_rng(0))
        for steps in (1, 3):
            gen = torch.Generator().manual_seed(0)
            g = rollout(
                lambda c, a, n=steps, gen=gen, d=trainer.ema.denoiser: next_frame(
                    d, c, a, SamplerConfig("euler", n), gen
                ),
                b.obs,
                b.act,
                K,
                16,
            )
            lines.append(
                row(f"{'residual' if residual else 'plain'}, Euler {steps}", score(g, b.obs, K))
            )
    lines.append(row("copy last frame", score(copy_last(b.obs, K, 16), b.obs, K)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

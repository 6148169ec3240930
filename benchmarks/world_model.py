"""Benchmark: the default world model trained on Bricks for a fixed CPU budget.

    python benchmarks/world_model.py --data data/bricks --run runs/bench --train-minutes 80
    python benchmarks/world_model.py --run runs/bricks            # evaluate an existing run

Reports held-out PSNR at horizons 1, 4 and 16 (autoregressive, replaying the real actions)
over the whole frame and over the moving pixels, against copy-the-last-frame, for Euler
with 1, 3 and 10 steps, and training samples/s (from the run's log). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from worldsim import files
from worldsim.config import from_dict
from worldsim.data.segments import SegmentSampler
from worldsim.data.store import Dataset
from worldsim.evaluation.rollout import copy_last, rollout, score
from worldsim.models.samplers import SamplerConfig
from worldsim.models.world_model import ModelConfig, WorldModel
from worldsim.sim import world_file
from worldsim.sim.world import next_frame

HORIZONS = (1, 4, 16)


def load_run(run: Path) -> tuple[WorldModel, dict]:
    path = world_file.latest_checkpoint(run)
    state = files.load_json(path / "state.json")
    model = WorldModel(
        from_dict(ModelConfig, state["model"]),
        len(state["action_meanings"]),
        state["reward_values"],
    )
    files.load_weights(model, files.load_tensors(path / "ema.safetensors"), path)
    return model.eval(), state


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run",
        required=True,
        help="run folder to evaluate (and to train into with --train-minutes)",
    )
    p.add_argument("--data", default="data/bricks", help="dataset (for training)")
    p.add_argument(
        "--train-minutes", type=float, default=0, help="train the default model this long first"
    )
    p.add_argument("--starts", type=int, default=64, help="held-out starting points")
    args = p.parse_args()
    if args.train_minutes:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "worldsim",
                "train",
                f"data={args.data}",
                f"out={args.run}",
                f"minutes={args.train_minutes}",
                "steps=1000000",
            ],
            check=True,
        )
    model, state = load_run(Path(args.run))
    K = model.cfg.denoiser.context
    test = SegmentSampler(Dataset.open(state["config"]["data"]), "test", K, horizon=max(HORIZONS))
    batch = test.sample(args.starts, np.random.default_rng(0))
    H = max(HORIZONS)
    rows = [("copy last frame", "-", score(copy_last(batch.obs, K, H), batch.obs, K), 0.0)]
    for steps in (1, 3, 10):
        cfg = SamplerConfig("euler", steps)
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        out = rollout(
            lambda ctx, a, cfg=cfg, gen=gen: next_frame(model.denoiser, ctx, a, cfg, gen),
            batch.obs,
            batch.act,
            K,
            H,
        )
        rows.append(
            ("Euler", steps, score(out, batch.obs, K), (time.perf_counter() - t) / (len(out) * H))
        )
    log = [json.loads(line) for line in open(Path(args.run) / "log.jsonl")]
    sps = np.median([r["samples_per_s"] for r in log[10:]] or [float("nan")])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"run: {args.run}, step {state['step']}, {log[-1]['time'] / 60:.0f} min of training, "
        f"{sps:.1f} training samples/s (median), {args.starts} held-out starts"
    )
    cols = (
        " | ".join(f"whole h{h}" for h in HORIZONS)
        + " | "
        + " | ".join(f"moving h{h}" for h in HORIZONS)
    )
    print(f"| sampler | steps | {cols} | ms/frame (batch {args.starts}) |")
    print("|---|---|" + "---|" * (2 * len(HORIZONS) + 1))
    for name, steps, s, secs in rows:
        vals = [s["whole"][h - 1] for h in HORIZONS] + [s["moving"][h - 1] for h in HORIZONS]
        print(
            f"| {name} | {steps} | "
            + " | ".join(f"{v:.1f}" for v in vals)
            + f" | {1000 * secs:.1f} |"
        )


if __name__ == "__main__":
    main()

"""Make the README's animations: real play | the dream, from held-out episodes.

    python docs/make_showcase.py --world bricks --out docs/bricks.gif

Each row starts from a real held-out moment (the world's own dataset must be on disk:
`worldsim pipeline env=<game> preset=full` recreates it) and replays the real actions in
the world with its default sampler; the dream only ever sees its own frames.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldsim.data.segments import SegmentSampler
from worldsim.data.store import Dataset
from worldsim.data.video import upscale
from worldsim.evaluation.rollout import rollout
from worldsim.sim.world import World
from worldsim.sim.world_file import load_world


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--world", default="bricks")
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=int, default=3)
    args = p.parse_args()
    from PIL import Image

    bundle = load_world(args.world)
    K = bundle.context
    data = SegmentSampler(Dataset.open(bundle.meta["source"]["data"]), "test", K, args.steps)
    b = data.sample(args.rows, np.random.default_rng(args.seed))
    world, gen = World(bundle), torch.Generator().manual_seed(args.seed)
    dream = rollout(
        lambda ctx, a: world.draw(ctx, a, generator=gen),
        b.obs,
        b.act,
        K,
        args.steps,
    )
    real = b.obs[:, K:]
    gap = torch.full((*real.shape[:-1], 2), 128, dtype=torch.uint8)  # grey bar between panels
    rows = torch.cat([real, gap, dream], dim=-1)  # (rows, T, 3, H, 2W+2)
    grid = torch.cat(list(rows), dim=-2).permute(0, 2, 3, 1).numpy()  # (T, rows*H, 2W+2, 3)
    big = upscale(grid, args.scale)
    palette = Image.fromarray(np.concatenate(list(big[:: max(1, len(big) // 8)]))).quantize(64)
    frames = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in big]
    frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=80, loop=0,
                   optimize=True)  # fmt: skip
    print(f"wrote {args.out}: {len(grid)} frames, rows real | dream")


if __name__ == "__main__":
    main()

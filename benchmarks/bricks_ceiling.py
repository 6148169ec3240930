"""Benchmark: what a perfect Bricks world would score on `worldsim eval`'s moving-pixel PSNR.

    python benchmarks/bricks_ceiling.py [--starts 128] [--draws 8]

A world sees only the last K = 4 frames, not the game's state: the ball's sub-pixel position
and exact angle are hidden, and so is the angle of a launch that has not happened yet. So
even a perfect world cannot always put the ball on the real pixel 16 steps ahead. This
script measures how far that goes, with the real game as the world: for held-out-like
starts (fresh episodes of the scripted collection policy), it draws states consistent with
the 4 context frames (rejection sampling over the ball's sub-pixel position and angle, with
fresh randomness for launches), replays the real actions from each, and scores the frames
as `worldsim eval` does (PSNR over the pixels that differ between the last context frame
and the real target). Reported per horizon:

- a perfect sampler: one drawn state per rollout (what a sharp, exact world would score);
- the mean of the draws: a frame-averaged guess like the one a regression model converges
  to (with few draws it is noisier than the true average, so it reads a little low);
- copy the last frame, for reference.

Markdown on stdout.
"""

from __future__ import annotations

import argparse
import copy

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the games)
from worldsim.evaluation.metrics import moving_mask, psnr
from worldsim.policies import Policy, PolicyConfig

HORIZONS = (1, 4, 8, 16)


def episode(seed: int, max_steps: int):
    """Frames, actions (actions[i] produced frames[i]) and game states of one episode."""
    env = gym.make("worldsim/Bricks-v0")
    obs, _ = env.reset(seed=seed)
    policy = Policy(PolicyConfig(), env, np.random.default_rng(seed))
    frames, actions, states = [obs], [0], [copy.deepcopy(env.unwrapped)]
    for _ in range(max_steps):
        a = policy.act()
        obs, _, term, trunc, _ = env.step(a)
        frames.append(obs)
        actions.append(a)
        states.append(copy.deepcopy(env.unwrapped))
        if term or trunc:
            break
    return frames, actions, states


def draw_consistent(state, frames, actions, t, K, H, rng, draws: int, tries: int):
    """Up to `draws` rollouts (H frames each) from states that reproduce frames t..t+K-1."""
    out = []
    for _ in range(tries):
        game = copy.deepcopy(state)
        game._np_random = np.random.default_rng(rng.integers(2**62))  # unknown launch angles
        if not game.attached:  # hidden: sub-pixel position and the exact angle
            game.ball_x = np.floor(game.ball_x) + rng.random()
            game.ball_y = np.floor(game.ball_y) + rng.random()
            speed = np.hypot(game.ball_vx, game.ball_vy)
            # a flat prior +-0.6 rad wide: well beyond the angles the context allows
            angle = np.arctan2(game.ball_vx, -game.ball_vy) + rng.uniform(-0.6, 0.6)
            game.ball_vx, game.ball_vy = np.sin(angle) * speed, -np.cos(angle) * speed
        if all(np.array_equal(game.step(actions[t + k])[0], frames[t + k]) for k in range(1, K)):
            out.append(np.stack([game.step(actions[t + K + h])[0] for h in range(H)]))
            if len(out) == draws:
                break
    return out


def moving_psnr(gen: np.ndarray, real: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per-horizon moving-pixel PSNR of (H, h, w, 3) frames against the real ones."""
    g, r = (torch.from_numpy(x).permute(0, 3, 1, 2).float() for x in (gen, real))
    lst = torch.from_numpy(last).permute(2, 0, 1).float()[None].expand_as(r)
    return psnr(g, r, moving_mask(lst, r)).numpy()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--starts", type=int, default=128, help="starting points scored")
    p.add_argument("--draws", type=int, default=8, help="consistent states drawn per start")
    p.add_argument("--tries", type=int, default=50000, help="rejection-sampling budget per start")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    for key in ("starts", "draws", "tries"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    K, H = 4, max(HORIZONS)
    rng = np.random.default_rng(args.seed)
    sampler, mean, last_frame, skipped, ep = [], [], [], 0, 0
    while len(sampler) < args.starts:
        frames, actions, states = episode(10_000 + ep, 400)
        ep += 1
        for t in rng.choice(len(frames) - K - H, size=min(4, len(frames) - K - H), replace=False):
            draws = draw_consistent(
                states[t], frames, actions, t, K, H, rng, args.draws, args.tries
            )
            if not draws:
                skipped += 1
                continue
            real, last = np.stack(frames[t + K : t + K + H]), frames[t + K - 1]
            sampler.append(np.mean([moving_psnr(d, real, last) for d in draws], axis=0))
            avg = np.stack(draws).astype(np.float32).mean(0).round().astype(np.uint8)
            mean.append(moving_psnr(avg, real, last))
            last_frame.append(moving_psnr(np.stack([last] * H), real, last))
    print(
        f"Bricks, {len(sampler)} starts from {ep} fresh episodes of the scripted policy, "
        f"{args.draws} consistent states each ({skipped} starts skipped: none found)\n"
    )
    print("| moving-pixel PSNR (dB) | " + " | ".join(f"h{h}" for h in HORIZONS) + " |")
    print("|---|" + "---|" * len(HORIZONS))
    for name, rows in (
        ("perfect sampler", sampler),
        (f"mean of the {args.draws} draws", mean),
        ("copy last frame", last_frame),
    ):
        r = np.array(rows)
        print(
            f"| {name} | " + " | ".join(f"{np.nanmean(r[:, h - 1]):.1f}" for h in HORIZONS) + " |"
        )


if __name__ == "__main__":
    main()

"""Benchmark: does a world end episodes and pay rewards as often as its real game does?

    python benchmarks/dream_vs_real.py --world bricks [--envs 16] [--steps 400]

An agent trained in a world learns whatever the world rewards and punishes. This runs the
same simple policies in the world (its vector env, from its bundled real starts) and in the
real game, and counts episode ends and reward per 1,000 steps. Policies: uniform random,
and "hold action a" for each action (a, or a random action 10% of the time). Where the
dream ends far fewer episodes than the real game under some policy, it does not punish
what that policy does, and an agent trained in it will not learn to avoid it.
Markdown on stdout.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldsim.rl import real_env
from worldsim.vector_env import WorldModelVectorEnv


def policy(hold: int | None, n_actions: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """n actions: uniform (hold None), or `hold` with a random action 10% of the time."""
    if hold is None:
        return rng.integers(0, n_actions, n)
    return np.where(rng.random(n) < 0.1, rng.integers(0, n_actions, n), hold)


def dream(venv: WorldModelVectorEnv, hold: int | None, steps: int) -> tuple[float, float]:
    """Episode ends and reward per 1,000 steps of the world (ended dreams restart at once)."""
    envs, n = venv.num_envs, int(venv.single_action_space.n)
    venv.reset(seed=0)
    rng, ends, reward = np.random.default_rng(0), 0, 0.0
    for _ in range(steps):
        _, r, term, _, _ = venv.step(policy(hold, n, rng, envs))
        ends, reward = ends + int(term.sum()), reward + float(r.sum())
    return 1000 * ends / (envs * steps), 1000 * reward / (envs * steps)


def real(bundle, hold: int | None, envs: int, steps: int) -> tuple[float, float]:
    """The same in the real game."""
    env, ends, reward = real_env(bundle), 0, 0.0
    n = int(env.action_space.n)
    for i in range(envs):
        env.reset(seed=i)
        rng = np.random.default_rng(i)
        for _ in range(steps):
            _, r, term, trunc, _ = env.step(int(policy(hold, n, rng, 1)[0]))
            reward += float(r)
            if term or trunc:
                ends += int(term)
                env.reset()
    return 1000 * ends / (envs * steps), 1000 * reward / (envs * steps)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--world", default="bricks", help="shipped world name or world folder")
    p.add_argument("--envs", type=int, default=16, help="episodes run side by side")
    p.add_argument("--steps", type=int, default=400, help="steps per env")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = p.parse_args()
    if args.envs < 1 or args.steps < 1:
        p.error(f"--envs and --steps must be >= 1, got {args.envs}, {args.steps}")
    try:
        venv = WorldModelVectorEnv(args.envs, args.world, max_episode_steps=10**9,
                                   autoreset_mode="same_step", precision=args.precision)  # fmt: skip
    except (OSError, ValueError) as e:
        p.error(str(e))
    bundle, meanings = venv.bundle, venv.get_action_meanings()
    print(f"world {bundle.path}, {args.envs} envs x {args.steps} steps per policy, "
          f"torch {torch.__version__}, {args.precision}\n")  # fmt: skip
    print("| policy | ends / 1k steps, world | real | reward / 1k steps, world | real |")
    print("|---|---|---|---|---|")
    for hold in [None, *range(len(meanings))]:
        d_end, d_rew = dream(venv, hold, args.steps)
        r_end, r_rew = real(bundle, hold, args.envs, args.steps)
        label = "random" if hold is None else f"hold {meanings[hold]}"
        print(f"| {label} | {d_end:.2f} | {r_end:.2f} | {d_rew:.1f} | {r_rew:.1f} |", flush=True)


if __name__ == "__main__":
    main()

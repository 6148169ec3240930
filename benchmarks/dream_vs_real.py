"""Benchmark: does a world end episodes and pay rewards as often as its real game does?

    python benchmarks/dream_vs_real.py --world bricks [--envs 16] [--steps 400] [--life-loss]

An agent trained in a world learns whatever the world rewards and punishes. This runs the
same simple policies in the world (its vector env, from its bundled real starts) and in the
real game, and counts episode ends and reward per 1,000 steps. Policies: uniform random,
and "hold action a" for each action (a, or a random action 10% of the time). Where the
dream ends far fewer episodes than the real game under some policy, it does not punish
what that policy does, and an agent trained in it will not learn to avoid it. With
--life-loss (worlds that predict lost lives), a lost life counts as an end in both, as it
does when `worldsim rl` trains with `life_loss`. Markdown on stdout.
"""

from __future__ import annotations

import argparse

import torch

from worldsim.rl import dream_rates, real_rates
from worldsim.sim.vector_env import WorldModelVectorEnv


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--world", default="bricks", help="shipped world name or world folder")
    p.add_argument("--envs", type=int, default=16, help="episodes run side by side")
    p.add_argument("--steps", type=int, default=400, help="steps per env")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--life-loss", action="store_true", help="count lost lives as ends")
    args = p.parse_args()
    if args.envs < 1 or args.steps < 1:
        p.error(f"--envs and --steps must be >= 1, got {args.envs}, {args.steps}")
    try:
        venv = WorldModelVectorEnv(
            args.envs,
            args.world,
            max_episode_steps=10**9,
            autoreset_mode="same_step",
            precision=args.precision,
            end_on_life_loss=args.life_loss,
        )
    except (OSError, ValueError) as e:
        p.error(str(e))
    bundle, meanings = venv.bundle, venv.get_action_meanings()
    print(
        f"world {bundle.path}, {args.envs} envs x {args.steps} steps per policy, "
        f"torch {torch.__version__}, {args.precision}"
        + (", a lost life counts as an end" if args.life_loss else "")
        + "\n"
    )
    print("| policy | ends / 1k steps, world | real | reward / 1k steps, world | real |")
    print("|---|---|---|---|---|")
    for hold in [None, *range(len(meanings))]:
        d_end, d_rew = dream_rates(venv, hold, args.steps)
        r_end, r_rew = real_rates(bundle, hold, args.envs, args.steps, 0, args.life_loss)
        label = "random" if hold is None else f"hold {meanings[hold]}"
        print(f"| {label} | {d_end:.2f} | {r_end:.2f} | {d_rew:.1f} | {r_rew:.1f} |", flush=True)


if __name__ == "__main__":
    main()
